//! The integrity checks: what on-call is alerted by.
//!
//! One [`run`] returns [`Finding`]s. The catalog checks run every time and read only the catalog
//! and usersync's small tables: the schema usersync installed ([`crate::db::verify`]), the
//! repair queue, every foreign key into `auth.users` or `public.user_profiles`, the policies.
//! The data checks read tables whole and come in three groups ([`Counts`]): the census of users
//! and profiles (users without a profile, stale e-mails, soft-deleted users' personal data),
//! the orphan profiles, and the configured user-id columns without a foreign key. `usersync
//! check` and the daemon's full scan count every group; a daemon cycle counts a group again only
//! when something since its last count can have changed it, and shows the others as last
//! counted ([`DataFindings`], kept in `usersync.scan_state` by [`stored`]), so a finding stays
//! until a later count clears it. The rolled-back delete probe that proves deleting a user
//! takes its profile along runs only when asked (`check --e2e`, `integrity.probe_schedule`).

mod checks;
mod columns;
pub mod history;
mod probe;
pub mod stored;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::IntegritySettings;
use crate::db::verify;
use crate::error::Result;
pub use crate::finding::{Finding, FixKind, Level};
use crate::sync::policy::Policy;

/// Every check [`run`] performs: the `check` label of `usersync_integrity_findings`, zero when it
/// found nothing.
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
    "empty_from_metadata",
    "policy",
];

/// Which groups of data checks a run counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Users and profiles in one join: users without a profile, stale e-mails, soft-deleted
    /// users' personal data.
    pub census: bool,
    /// Profiles without a user.
    pub orphans: bool,
    /// Rows of `integrity.user_id_columns` whose user is gone.
    pub user_id_columns: bool,
}

impl Counts {
    pub const ALL: Counts = Counts {
        census: true,
        orphans: true,
        user_id_columns: true,
    };
    pub const NONE: Counts = Counts {
        census: false,
        orphans: false,
        user_id_columns: false,
    };
}

/// What each group of data checks found when it was last counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFindings {
    #[serde(default)]
    pub census: Vec<Finding>,
    #[serde(default)]
    pub orphans: Vec<Finding>,
    #[serde(default)]
    pub user_id_columns: Vec<Finding>,
}

impl DataFindings {
    /// These findings with each group `counted` replaced by its new count.
    pub fn updated(&self, counted: &Counted) -> DataFindings {
        let pick = |new: &Option<Vec<Finding>>, old: &Vec<Finding>| {
            new.clone().unwrap_or_else(|| old.clone())
        };
        DataFindings {
            census: pick(&counted.census, &self.census),
            orphans: pick(&counted.orphans, &self.orphans),
            user_id_columns: pick(&counted.user_id_columns, &self.user_id_columns),
        }
    }

    /// Whether the user-id columns' last count found a row naming no user: counted again each
    /// cycle until one finds none (deleting such rows leaves no trace in the journal).
    pub fn user_id_orphans(&self) -> bool {
        self.user_id_columns
            .iter()
            .any(|f| f.check == "user_id_column_orphans" && f.count > 0)
    }

    /// Whether the last count found orphan profiles: counted again after profile deletions.
    pub fn orphans_found(&self) -> bool {
        !self.orphans.is_empty()
    }
}

/// The groups one run counted, with what each found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub census: Option<Vec<Finding>>,
    pub orphans: Option<Vec<Finding>>,
    pub user_id_columns: Option<Vec<Finding>>,
}

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    /// Every finding: the catalog checks', and each data group's, counted now or as last counted.
    pub findings: Vec<Finding>,
    pub duration_ms: f64,
    /// Profiles the sweep's lifecycle statements would change, as the census counted them.
    pub lifecycle_pending: i64,
    /// The data groups this run counted: the daemon keeps them ([`stored`]).
    #[serde(skip)]
    pub counted: Counted,
}

impl Report {
    /// Adds the data groups this run did not count, as `stored` has them.
    pub fn with_stored(mut self, stored: &DataFindings) -> Report {
        let groups = [
            (&self.counted.census, &stored.census),
            (&self.counted.orphans, &stored.orphans),
            (&self.counted.user_id_columns, &stored.user_id_columns),
        ];
        let carried: Vec<Finding> = groups
            .into_iter()
            .filter(|(now, _)| now.is_none())
            .flat_map(|(_, kept)| kept.iter().cloned())
            .collect();
        self.findings.extend(carried);
        sort(&mut self.findings);
        self.ok = !self.has_errors();
        self
    }

    /// Whether any finding is at error level.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count()
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

fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| (a.level, &a.check, &a.object).cmp(&(b.level, &b.check, &b.object)));
}

/// The policies a run judges by: the database's, which the triggers apply, and this process's
/// configuration (a difference is the `policy` finding).
#[derive(Clone, Copy, Debug)]
pub struct Policies {
    pub database: Policy,
    pub configured: Policy,
}

/// Runs the catalog checks and the data groups `counts` asks for. Reads only; with `probe`, also
/// the delete probe, rolled back.
#[tracing::instrument(skip_all, fields(probe))]
pub async fn run(
    client: &mut Client,
    settings: &IntegritySettings,
    policies: Policies,
    counts: Counts,
    probe: bool,
) -> Result<Report> {
    let started = Instant::now();
    let schema = verify::verify(client).await?;
    let installed = !schema.findings.iter().any(|f| {
        matches!(
            f.check.as_str(),
            "profile_table" | "repair_queue" | "profile_function"
        )
    });
    let mut findings: Vec<Finding> = schema.findings.into_iter().map(from_verify).collect();
    let mut report = Report {
        ok: false,
        findings: Vec::new(),
        duration_ms: 0.0,
        lifecycle_pending: 0,
        counted: Counted::default(),
    };
    // Without the table and queue there is nothing further to count.
    if installed {
        checks::policy(&policies, &mut findings);
        // The counts read whole tables: the scan timeout, not the batch one, bounds them.
        crate::db::begin_scan(client).await?;
        let counted = count(client, settings, &policies.database, counts, &mut report).await;
        crate::db::end_scan(client).await?;
        counted?;
        checks::repair_queue(client, settings, &mut findings).await?;
        columns::foreign_keys(client, &mut findings).await?;
        if probe {
            probe::cascade_delete(client, &mut findings).await?;
        }
    }
    let counted = &report.counted;
    for group in [&counted.census, &counted.orphans, &counted.user_id_columns] {
        findings.extend(group.iter().flatten().cloned());
    }
    sort(&mut findings);
    report.findings = findings;
    report.ok = !report.has_errors();
    report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        findings = report.findings.len(),
        errors = report.errors(),
        duration_ms = report.duration_ms as u64,
        "integrity check finished"
    );
    Ok(report)
}

/// The data groups `counts` asks for, into `report.counted`.
async fn count(
    client: &Client,
    settings: &IntegritySettings,
    policy: &Policy,
    counts: Counts,
    report: &mut Report,
) -> Result<()> {
    if counts.census {
        let (found, lifecycle_pending) = checks::census(client, settings, policy).await?;
        report.counted.census = Some(found);
        report.lifecycle_pending = lifecycle_pending;
    }
    if counts.orphans {
        report.counted.orphans = Some(checks::orphans(client).await?);
    }
    if counts.user_id_columns {
        report.counted.user_id_columns = Some(columns::user_id_columns(client, settings).await?);
    }
    Ok(())
}

/// A broken promise of `migrate verify`, as an integrity finding.
fn from_verify(f: verify::Finding) -> Finding {
    Finding {
        title: format!("{}: expected {}", f.check, f.expected),
        object: None,
        level: f.level,
        fix_kind: f.fix_kind,
        detail: format!("found {}", f.found),
        count: 1,
        samples: Vec::new(),
        fix: f.fix,
        check: f.check,
    }
}
