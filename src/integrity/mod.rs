//! The integrity checks: what on-call is alerted by.
//!
//! One [`run`] returns [`Finding`]s: users without a profile, profiles without a user, the
//! schema usersync installed (from [`crate::db::verify`]), the repair queue, every foreign key
//! into `auth.users` or `public.user_profiles` found in the catalog, the configured user-id
//! columns that have no foreign key. That deleting a user takes its profile and queue rows
//! along is read from the catalog (the foreign keys present, validated, ON DELETE CASCADE, their
//! triggers enabled: [`crate::db::verify`]); the rolled-back delete probe that proves it by
//! writing to `auth.users` runs only when asked (`check --e2e`, `integrity.probe_schedule`).
//! `usersync check` prints them; the daemon turns [`Report::values`] into one metric per check.

mod checks;
mod probe;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::IntegritySettings;
use crate::db::verify::{self, FixKind};
use crate::error::Result;
use crate::sync::policy::Policy;

/// How bad a finding is: `check` exits 1 on any error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Info,
}

/// One thing that is wrong, with what remedies it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    /// Stable name: `missing_profile`, `orphan_profile`, `foreign_key_not_valid`, ...
    pub check: String,
    pub level: Level,
    /// The table, constraint or column concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub title: String,
    pub detail: String,
    /// How many rows (or objects) are affected.
    pub count: i64,
    /// Up to ten user ids, never e-mails.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
    /// The SQL or the step that remedies it.
    pub fix: String,
    /// `sql`: runs as printed; `command`: a step for a person.
    pub fix_kind: FixKind,
}

/// The outcome of one run of every check.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub findings: Vec<Finding>,
    pub duration_ms: f64,
    /// Profiles the sweep's lifecycle statements would change (the daemon's sweep applies them
    /// only when this is not zero).
    pub lifecycle_pending: i64,
}

/// Every check [`run`] performs, so that a clean run still reports each as zero.
pub const CHECKS: &[&str] = &[
    "missing_profile",
    "orphan_profile",
    "schema",
    "cascade_delete",
    "repair_queue_stale",
    "repair_queue_failing",
    "foreign_key_not_valid",
    "foreign_key_blocks_delete",
    "user_id_column_orphans",
    "unreadable_table",
    "stale_email",
    "soft_deleted_personal_data",
    "policy",
];

impl Report {
    /// Its findings of the data checks ([`DATA_CHECKS`]).
    pub fn data_findings(&self) -> Vec<Finding> {
        self.findings
            .iter()
            .filter(|f| DATA_CHECKS.contains(&f.check.as_str()))
            .cloned()
            .collect()
    }

    /// Adds the findings of the data checks carried from the last full scan, but for those of
    /// the checks this run made again.
    pub fn carry(&mut self, findings: Vec<Finding>, scope: Scope) {
        let again = |check: &str| {
            matches!(scope, Scope::Cycle { orphans: true, .. }) && check == "orphan_profile"
        };
        self.findings.extend(
            findings
                .into_iter()
                .filter(|f| DATA_CHECKS.contains(&f.check.as_str()) && !again(&f.check)),
        );
        self.findings
            .sort_by(|a, b| (a.level, &a.check, &a.object).cmp(&(b.level, &b.check, &b.object)));
        self.ok = !self.has_errors();
    }

    /// Whether any finding is at error level.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// One value per check, zero when it found nothing: the affected count summed over its
    /// findings. Schema findings (from `migrate verify`) count under `schema`.
    pub fn values(&self) -> BTreeMap<&'static str, i64> {
        let mut values: BTreeMap<&'static str, i64> = CHECKS.iter().map(|c| (*c, 0)).collect();
        for f in &self.findings {
            let key = CHECKS
                .iter()
                .find(|c| **c == f.check)
                .copied()
                .unwrap_or("schema");
            *values.entry(key).or_default() += f.count;
        }
        values
    }
}

/// The checks that read the two tables whole (the full scan's); the others read the catalog
/// and usersync's own small tables.
pub const DATA_CHECKS: &[&str] = &[
    "missing_profile",
    "orphan_profile",
    "stale_email",
    "soft_deleted_personal_data",
];

/// How much one run reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every check: `usersync check`, and the daemon's full scan.
    Full,
    /// The daemon's cycle between full scans: the catalog, the queue, and the configured
    /// user-id columns only when users were deleted since the last cycle. The data checks'
    /// findings are the last full scan's, which nothing has changed since (crate::sync::watch).
    Cycle {
        users_deleted: bool,
        /// Count the profiles without a user again: the last full scan found some and
        /// profiles were deleted since.
        orphans: bool,
    },
}

/// Runs every check once. Reads only; with `probe`, also the delete probe, rolled back.
#[tracing::instrument(skip_all, fields(probe))]
pub async fn run(
    client: &mut Client,
    settings: &IntegritySettings,
    configured: &Policy,
    scope: Scope,
    probe: bool,
) -> Result<Report> {
    let started = Instant::now();
    let mut findings = Vec::new();
    let mut lifecycle_pending = 0;

    let schema = verify::verify(client).await?;
    let installed = !schema.findings.iter().any(|f| {
        matches!(
            f.check.as_str(),
            "profile_table" | "repair_queue" | "profile_function"
        )
    });
    findings.extend(schema.findings.into_iter().map(|f| Finding {
        title: format!("{}: expected {}", f.check, f.expected),
        object: None,
        level: f.level,
        fix_kind: f.fix_kind,
        detail: format!("found {}", f.found),
        count: 1,
        samples: Vec::new(),
        fix: f.fix,
        check: f.check,
    }));
    // Without the table and queue there is nothing further to count.
    if installed {
        // The counts read whole tables: the scan timeout, not the batch one, bounds them.
        crate::db::begin_scan(client).await?;
        let counted = async {
            // The triggers apply the database's policies; this configuration may differ.
            let policy = match Policy::load(client).await? {
                Some(policy) => {
                    checks::policy(configured, &policy, &mut findings);
                    policy
                }
                None => *configured,
            };
            match scope {
                Scope::Full => {
                    lifecycle_pending =
                        checks::one_to_one(client, settings, &policy, &mut findings).await?;
                }
                Scope::Cycle { orphans: true, .. } => {
                    checks::orphans(client, &mut findings).await?;
                }
                Scope::Cycle { .. } => {}
            }
            checks::repair_queue(client, settings, &mut findings).await?;
            checks::foreign_keys(client, &mut findings).await?;
            match scope {
                Scope::Full
                | Scope::Cycle {
                    users_deleted: true,
                    ..
                } => checks::user_id_columns(client, settings, &mut findings).await,
                Scope::Cycle { .. } => Ok(()),
            }
        }
        .await;
        crate::db::end_scan(client).await?;
        counted?;
        if probe {
            probe::cascade_delete(client, &mut findings).await?;
        }
    }

    findings.sort_by(|a, b| (a.level, &a.check, &a.object).cmp(&(b.level, &b.check, &b.object)));
    let report = Report {
        ok: !findings.iter().any(|f| f.level == Level::Error),
        findings,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
        lifecycle_pending,
    };
    tracing::info!(
        findings = report.findings.len(),
        errors = report
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count(),
        duration_ms = report.duration_ms as u64,
        "integrity check finished"
    );
    Ok(report)
}
