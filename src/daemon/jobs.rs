//! The scheduled jobs: the sweep, the repair pass, the integrity check and the full scan.
//!
//! The sweep and the integrity check each start with a look at PostgreSQL's statistics
//! ([`sync::watch`]): while every change to `auth.users` and the profiles went through
//! usersync's triggers, neither reads the two tables (the sweep drains the repair queue, the
//! check reads the catalog and shows the last full scan's data findings). When the look finds a
//! change around the triggers, or cannot vouch (a restart, a reset, no full scan yet), either job
//! runs the full scan at once: the sweep over both tables, then every integrity check, then the
//! new baseline. The full scan also runs on its own schedule, whatever the statistics say.
//!
//! A job never overlaps itself in one process: a tick that finds the previous run still going
//! is skipped and counted. Across replicas the sweep shares work through its range locks, the
//! repair pass through `FOR UPDATE SKIP LOCKED`, and the integrity check runs where its
//! advisory lock is taken; a replica that dies releases its locks with its connections.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;
use tracing::Instrument;

use super::Shared;
use crate::error::Result;
use crate::metrics::Outcome;
use crate::{db, integrity, metrics, sync};

/// Advisory lock namespace of the daemon's jobs (the two-key form: namespace, job).
const JOB_LOCK_NAMESPACE: i32 = 0x7573_796a; // "usyj"
const INTEGRITY_LOCK: i32 = 3;
const FULL_SCAN_LOCK: i32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Sweep,
    Repair,
    Integrity,
    /// The sweep and every integrity check over the two whole tables.
    FullScan,
    /// The integrity check with the rolled-back delete probe (`integrity.probe_schedule`):
    /// the same job, its metrics and its lock, one more check.
    IntegrityProbe,
}

impl JobKind {
    /// The jobs with a metric label of their own (the probe runs as the integrity job).
    pub const LABELLED: [JobKind; 4] = [
        JobKind::Sweep,
        JobKind::Repair,
        JobKind::Integrity,
        JobKind::FullScan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::Sweep => "sweep",
            JobKind::Repair => "repair",
            JobKind::Integrity | JobKind::IntegrityProbe => "integrity",
            JobKind::FullScan => "full_scan",
        }
    }
}

/// One lock per job: held while it runs.
#[derive(Default)]
pub struct Jobs {
    sweep: Mutex<()>,
    repair: Mutex<()>,
    integrity: Mutex<()>,
    full_scan_job: Mutex<()>,
    /// Held by whichever job runs a full scan (its own, the sweep, the integrity check).
    full_scan: Mutex<()>,
}

impl Jobs {
    fn lock(&self, kind: JobKind) -> &Mutex<()> {
        match kind {
            JobKind::Sweep => &self.sweep,
            JobKind::Repair => &self.repair,
            JobKind::Integrity | JobKind::IntegrityProbe => &self.integrity,
            JobKind::FullScan => &self.full_scan_job,
        }
    }
}

/// A scheduled tick: runs the job unless it is still running from the last tick.
pub async fn run(shared: Arc<Shared>, kind: JobKind) {
    let Ok(_running) = shared.jobs.lock(kind).try_lock() else {
        tracing::info!(job = kind.name(), "previous run still going; tick skipped");
        // The board keeps the run that is going; the metric counts the skip.
        shared
            .metrics
            .runs
            .with_label_values(&[kind.name(), Outcome::Skipped.as_str()])
            .inc();
        return;
    };
    execute(&shared, kind).await;
}

/// A repair the listener asks for: waits for a running one to finish, then runs, so a
/// notification is never lost to a skip.
pub async fn repair_now(shared: &Arc<Shared>) {
    let _running = shared.jobs.lock(JobKind::Repair).lock().await;
    execute(shared, JobKind::Repair).await;
}

async fn execute(shared: &Shared, kind: JobKind) {
    if shared.shutdown.is_cancelled() {
        return;
    }
    if !shared.may_write() {
        tracing::debug!(
            job = kind.name(),
            "the database has not been reached yet; tick skipped"
        );
        return;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let span = tracing::info_span!("job", job = kind.name(), run_id = %run_id);
    async {
        let m = &shared.metrics;
        let timer = m
            .run_duration
            .with_label_values(&[kind.name()])
            .start_timer();
        let started = Instant::now();
        let outcome = match kind {
            JobKind::Sweep => sweep(shared).await,
            JobKind::Repair => repair(shared).await,
            JobKind::Integrity => check(shared, false).await,
            JobKind::IntegrityProbe => check(shared, true).await,
            JobKind::FullScan => full_scan(shared, sync::watch::Reason::Scheduled, None).await,
        };
        timer.observe_duration();
        let (label, summary) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                if e.is_unreachable() {
                    shared.database_down();
                }
                let error = crate::error::Chain(&e).to_string();
                tracing::warn!(%error, "job run failed; retried on its next tick");
                (Outcome::Error, error)
            }
        };
        if label.ran() {
            m.database_up.set(1);
            m.last_success
                .with_label_values(&[kind.name()])
                .set(metrics::now());
        }
        m.runs
            .with_label_values(&[kind.name(), label.as_str()])
            .inc();
        shared.board.record(
            kind.name(),
            super::board::LastRun {
                outcome: label,
                finished_at: metrics::now(),
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                summary,
            },
        );
        tracing::debug!(
            outcome = label.as_str(),
            duration_ms = started.elapsed().as_millis() as u64,
            "job run ended"
        );
    }
    .instrument(span)
    .await
}

/// The policies the triggers apply: the database's (`migrate up` writes them), else this
/// configuration's (before migration 0003).
async fn policy_of(
    shared: &Shared,
    client: &tokio_postgres::Client,
) -> Result<sync::policy::Policy> {
    let configured = shared.settings.sync.policy();
    Ok(sync::policy::Policy::load(client)
        .await?
        .unwrap_or(configured))
}

/// A job's outcome label and a one-line summary for the status page.
type Ran = (Outcome, String);

async fn sweep(shared: &Shared) -> Result<Ran> {
    let client = shared.db.get().await?;
    let look = look(shared, &client).await?;
    drop(client);
    match look {
        Some(look) if look.due.is_none() => {
            let (outcome, summary) = repair(shared).await?;
            let summary = format!(
                "nothing changed around the triggers; {} changes they handled; repair queue: {summary}",
                look.journaled
            );
            Ok((outcome, summary))
        }
        Some(look) => {
            let reason = look.due.clone().expect("due");
            full_scan(shared, reason, Some(look.reading)).await
        }
        // Before migration 0004: nothing to look at, every sweep is whole.
        None => sweep_whole(shared).await,
    }
}

/// The cheap look, when migration 0004 is in: counts what the triggers handled.
async fn look(
    shared: &Shared,
    client: &tokio_postgres::Client,
) -> Result<Option<sync::watch::Look>> {
    if !sync::watch::installed(client).await? {
        return Ok(None);
    }
    let look = sync::watch::look(client).await?;
    shared.metrics.changes_seen.inc_by(look.journaled);
    if let Some(reason) = &look.due {
        tracing::info!(%reason, "a full scan is due");
    }
    Ok(Some(look))
}

/// The sweep over both whole tables, with the lifecycle statements.
async fn sweep_whole(shared: &Shared) -> Result<Ran> {
    let m = &shared.metrics;
    let policy = policy_of(shared, &*shared.db.get().await?).await?;
    let options = sync::Options {
        stop: Some(shared.shutdown.clone()),
        apply_lifecycle: true,
        ..sync::Options::from_settings(&shared.settings.sync)
    }
    .with_policy(policy);
    let leading = m.leading("sweep");
    let report = sync::run(&shared.db, &options, None).await;
    drop(leading);
    let report = report?;
    m.profiles_created
        .with_label_values(&["sweep"])
        .inc_by(report.created);
    if let Some(repair) = &report.repair {
        m.profiles_created
            .with_label_values(&["repair"])
            .inc_by(repair.created);
        m.repair_queue_depth.set(repair.remaining as i64);
    }
    let left = report.missing.saturating_sub(report.created + report.raced);
    m.users_missing_profile.set(left as i64);
    // sync::run logged the report's counts inside this job's span.
    Ok(outcome(
        report.failed,
        format!(
            "{} users scanned, {} missing, {} created, {} failed",
            report.scanned, report.missing, report.created, report.failed
        ),
    ))
}

/// The full scan: the whole sweep, then every integrity check, then the baseline the next
/// looks compare with (read before the sweep started, so that nothing written meanwhile is
/// taken as seen). One at a time in a process, and across replicas by an advisory lock.
async fn full_scan(
    shared: &Shared,
    reason: sync::watch::Reason,
    reading: Option<sync::watch::Reading>,
) -> Result<Ran> {
    let Ok(_running) = shared.jobs.full_scan.try_lock() else {
        return Ok((Outcome::Skipped, "a full scan is already running".into()));
    };
    let client = shared.db.get().await?;
    if !db::try_advisory_lock(&client, JOB_LOCK_NAMESPACE, FULL_SCAN_LOCK).await? {
        return Ok((
            Outcome::Busy,
            "another replica is running a full scan".into(),
        ));
    }
    let begun = Instant::now();
    let scanned = async {
        let installed = sync::watch::installed(&client).await?;
        let reading = match reading {
            Some(reading) => Some(reading),
            None if installed => Some(sync::watch::read(&client).await?),
            None => None,
        };
        if installed {
            // What the triggers journaled until now, the full scan sees for itself.
            shared
                .metrics
                .changes_seen
                .inc_by(sync::watch::purge(&client).await?);
        }
        let started = std::time::SystemTime::now();
        tracing::info!(%reason, "full scan starting");
        let (outcome, swept) = sweep_whole(shared).await?;
        let mut checks = shared.db.get().await?;
        let report = integrity::run(
            &mut checks,
            &shared.settings.integrity,
            &shared.settings.sync.policy(),
            integrity::Scope::Full,
            false,
        )
        .await?;
        let findings = serde_json::to_value(report.data_findings()).expect("findings serialize");
        let summary = publish(shared, report);
        if let Some(reading) = reading
            && !shared.shutdown.is_cancelled()
        {
            sync::watch::record(&client, &reading, started, &findings).await?;
        }
        let m = &shared.metrics;
        m.full_scans.with_label_values(&[reason.as_str()]).inc();
        // Whichever job ran it: the full scan's own staleness alert watches this, and the
        // status page shows it as the full scan's last run.
        m.last_success
            .with_label_values(&[JobKind::FullScan.name()])
            .set(metrics::now());
        shared.board.record(
            JobKind::FullScan.name(),
            super::board::LastRun {
                outcome,
                finished_at: metrics::now(),
                duration_ms: begun.elapsed().as_secs_f64() * 1e3,
                summary: format!("({reason}) {swept}; {summary}"),
            },
        );
        Ok::<_, crate::Error>((outcome, format!("full scan ({reason}): {swept}; {summary}")))
    }
    .await;
    drop(db::release_advisory_lock(client, JOB_LOCK_NAMESPACE, FULL_SCAN_LOCK).await);
    scanned
}

/// Failed when a user failed (the run itself went through), else success.
fn outcome(failed: u64, summary: String) -> Ran {
    let outcome = if failed > 0 {
        Outcome::Failed
    } else {
        Outcome::Success
    };
    (outcome, summary)
}

async fn repair(shared: &Shared) -> Result<Ran> {
    let m = &shared.metrics;
    let mut client = shared.db.get().await?;
    let mut failures = Vec::new();
    let leading = m.leading("repair");
    let policy = policy_of(shared, &client).await?;
    let report = sync::repair::drain(&mut client, &policy, false, &mut failures).await;
    drop(leading);
    let report = report?;
    m.profiles_created
        .with_label_values(&["repair"])
        .inc_by(report.created);
    m.repair_queue_depth.set(report.remaining as i64);
    if report.due > 0 {
        tracing::info!(
            due = report.due,
            created = report.created,
            resolved = report.resolved,
            failed = report.failed,
            remaining = report.remaining,
            "repair pass finished"
        );
    }
    Ok(outcome(
        report.failed,
        format!(
            "{} due, {} created, {} failed, {} left in the queue",
            report.due, report.created, report.failed, report.remaining
        ),
    ))
}

async fn check(shared: &Shared, probe: bool) -> Result<Ran> {
    let m = &shared.metrics;
    let mut client = shared.db.get().await?;
    if !db::try_advisory_lock(&client, JOB_LOCK_NAMESPACE, INTEGRITY_LOCK).await? {
        tracing::debug!("another replica is running the integrity check");
        return Ok((Outcome::Busy, "another replica is running it".into()));
    }
    let leading = m.leading("integrity");
    let checked = async {
        let look = look(shared, &client).await?;
        let carried: Vec<integrity::Finding> = match &look {
            Some(look) if look.due.is_some() => return Ok(Err(look.clone())),
            Some(look) => serde_json::from_value(look.findings.clone()).unwrap_or_default(),
            None => Vec::new(),
        };
        let scope = match &look {
            Some(look) => integrity::Scope::Cycle {
                users_deleted: look.users_deleted > 0,
                orphans: look.profiles_deleted > 0
                    && carried.iter().any(|f| f.check == "orphan_profile"),
            },
            None => integrity::Scope::Full,
        };
        let mut report = integrity::run(
            &mut client,
            &shared.settings.integrity,
            &shared.settings.sync.policy(),
            scope,
            probe,
        )
        .await?;
        if scope != integrity::Scope::Full {
            report.carry(carried, scope);
            if let integrity::Scope::Cycle { orphans: true, .. } = scope {
                let findings =
                    serde_json::to_value(report.data_findings()).expect("findings serialize");
                sync::watch::store_findings(&client, &findings).await?;
            }
        }
        Ok::<_, crate::Error>(Ok(report))
    }
    .await;
    drop(leading);
    drop(db::release_advisory_lock(client, JOB_LOCK_NAMESPACE, INTEGRITY_LOCK).await);
    match checked? {
        Ok(report) => Ok((Outcome::Success, publish(shared, report))),
        Err(look) => {
            let reason = look.due.clone().expect("due");
            full_scan(shared, reason, Some(look.reading)).await
        }
    }
}

/// Puts a report's findings on the metrics and the status page; returns its summary.
fn publish(shared: &Shared, report: integrity::Report) -> String {
    let m = &shared.metrics;
    let values = report.values();
    for (check, value) in &values {
        m.integrity_findings.with_label_values(&[check]).set(*value);
    }
    m.users_missing_profile.set(values["missing_profile"]);
    let errors = report
        .findings
        .iter()
        .filter(|f| f.level == integrity::Level::Error)
        .count();
    // integrity::run logged its counts inside this job's span.
    let summary = format!(
        "{} findings, {errors} at error level",
        report.findings.len()
    );
    shared.board.findings(report.findings, metrics::now());
    summary
}
