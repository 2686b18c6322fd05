//! One run of a job, top to bottom: the tick → one look at the journal and the statistics
//! (`sync::watch`, the journal's one reader, whose deletions it adds up where every job and
//! every replica sees them) → the decision: nothing changed around the triggers, or a full scan
//! is due and why → the repair queue, the catalog checks and the data counts that are due, or
//! the full scan → one typed [`Done`], which [`super::publish`] puts on the metrics, the board
//! and the log.
//!
//! Locks: a job never overlaps itself in one process; every drain of the repair queue takes
//! one lock (`Locks::drain`); the full scan and the integrity check's data counts take advisory
//! locks too, so that one replica runs them at a time. The policies are loaded once per run.

use std::sync::Arc;

use crate::db::{FULL_SCAN_KEY, Held, INTEGRITY_KEY, JOB_NAMESPACE};
use crate::error::Result;
use crate::integrity::{self, Counts, Policies};
use crate::job::JobKind;
use crate::state::Shared;
use crate::sync::repair::RepairReport;
use crate::sync::watch::{self, Due, Look, Reason};
use crate::{sync, words::plural};

/// How a run ended, typed: its outcome label, its metrics and its line on the status page
/// follow from it.
#[derive(Debug)]
pub enum Done {
    /// The sweep when nothing changed around the triggers (or what the statistics count around
    /// them is still settling): it drained the repair queue.
    Quiet {
        handled: u64,
        settling: Option<Due>,
        repair: RepairReport,
    },
    /// A repair pass: the repair job's, the NOTIFY listener's.
    Repaired(RepairReport),
    /// The integrity check when nothing changed around the triggers: the catalog checks, the
    /// data counts that were due (and not being counted by another replica), the rest as last
    /// counted.
    Checked {
        handled: u64,
        settling: Option<Due>,
        counted: Counts,
        report: integrity::Report,
    },
    /// The full scan, whichever job ran it.
    FullScan(Box<FullScan>),
    /// The previous run of the job was still going.
    Skipped,
    /// Another replica, or another job of this process, is running what it needed.
    Busy(&'static str),
}

/// What a full scan did.
#[derive(Debug)]
pub struct FullScan {
    pub due: Due,
    /// Changes the triggers had handled since the last look.
    pub handled: u64,
    pub repair: RepairReport,
    pub sync: sync::Report,
    pub checks: integrity::Report,
}

/// Runs `job` once; `probe` adds the rolled-back delete probe to an integrity check.
pub async fn tick(shared: &Arc<Shared>, job: JobKind, probe: bool) -> Result<Done> {
    let policies = policies(shared).await?;
    match job {
        // The runner holds the drain lock for the repair job.
        JobKind::Repair => repair(shared, &policies).await.map(Done::Repaired),
        JobKind::FullScan => {
            full_scan(shared, &policies, Due::because(Reason::Scheduled), None).await
        }
        JobKind::Sweep => sweep(shared, &policies).await,
        JobKind::Integrity => check(shared, &policies, probe).await,
    }
}

/// The policies the triggers apply (the database's; this configuration's before migration
/// 0003), and this configuration's: loaded once per run.
pub async fn policies(shared: &Shared) -> Result<Policies> {
    let configured = shared.settings.sync.policy();
    let client = shared.db.get().await?;
    let database = sync::policy::load(&client).await?.unwrap_or(configured);
    Ok(Policies {
        database,
        configured,
    })
}

/// A repair pass; the caller holds the drain lock. The leader gauge is up while it runs.
pub async fn repair(shared: &Shared, policies: &Policies) -> Result<RepairReport> {
    let _leading = shared.metrics.leading(JobKind::Repair);
    let mut client = shared.db.get().await?;
    let mut failures = Vec::new();
    let report = sync::repair::drain(&mut client, &policies.database, false, &mut failures).await?;
    for f in &failures {
        tracing::warn!(user_id = %f.user_id, sqlstate = %f.sqlstate, reason = %f.reason,
            "profile could not be created; left in the repair queue");
    }
    Ok(report)
}

/// One look, with this process's suspicion and the settings' horizon.
async fn look(shared: &Shared, client: &tokio_postgres::Client) -> Result<Look> {
    let horizon = shared.settings.sync.statistics_horizon;
    watch::look(client, &shared.suspicion, horizon).await
}

/// A repair pass under the drain lock, waiting for a drain that is running.
async fn repair_waiting(shared: &Shared, policies: &Policies) -> Result<RepairReport> {
    let _drain = shared.locks.drain.lock().await;
    repair(shared, policies).await
}

async fn sweep(shared: &Arc<Shared>, policies: &Policies) -> Result<Done> {
    let look = self::look(shared, &*shared.db.get().await?).await?;
    match look.due {
        Some(due) => full_scan(shared, policies, due, Some(look)).await,
        None => Ok(Done::Quiet {
            handled: look.handled,
            settling: look.settling,
            repair: repair_waiting(shared, policies).await?,
        }),
    }
}

/// The integrity check: the catalog every time, on every replica (each shows the same), and
/// the data counts that are due.
async fn check(shared: &Arc<Shared>, policies: &Policies, probe: bool) -> Result<Done> {
    let client = shared.db.get().await?;
    let look = self::look(shared, &client).await?;
    match look.due {
        None => counted_check(shared, client, policies, look, probe).await,
        Some(due) => {
            drop(client);
            full_scan(shared, policies, due, Some(look)).await
        }
    }
}

/// The catalog checks, and each data count the look says is due: the user-id columns after
/// users were deleted, or while their last count found rows naming no user (deleting those rows
/// leaves no trace); the orphans after profiles were deleted, when the last count found some.
/// One replica counts, under an advisory lock; a replica that finds it held shows what the
/// other keeps. What was counted is kept; the rest is shown as last counted.
async fn counted_check(
    shared: &Shared,
    mut client: deadpool_postgres::Object,
    policies: &Policies,
    look: Look,
    probe: bool,
) -> Result<Done> {
    let stored = integrity::stored::load(&**client).await?;
    let deletions = look.deletions;
    let due = Counts {
        census: false,
        orphans: deletions.profiles_pending() && stored.orphans_found(),
        user_id_columns: deletions.users_pending() || stored.user_id_orphans(),
    };
    let locked = due != Counts::NONE
        && crate::db::try_advisory_lock(&client, JOB_NAMESPACE, INTEGRITY_KEY).await?;
    let counts = if locked { due } else { Counts::NONE };
    let settings = &shared.settings.integrity;
    let checked = async {
        let report = integrity::run(&mut client, settings, *policies, counts, probe).await?;
        // Profile deletions with no orphans to count again are seen all the same.
        let users = counts.user_id_columns.then_some(deletions.users);
        let profiles = (counts.orphans || !stored.orphans_found()).then_some(deletions.profiles);
        integrity::stored::save(&**client, &report.counted, users, profiles).await?;
        let report = report.with_stored(&stored);
        history(shared, &mut client, &report).await;
        Ok::<_, crate::Error>(report)
    }
    .await;
    if locked {
        crate::db::release_advisory_lock(client, JOB_NAMESPACE, INTEGRITY_KEY).await;
    }
    Ok(Done::Checked {
        handled: look.handled,
        settling: look.settling,
        counted: counts,
        report: checked?,
    })
}

/// The full scan: the whole sweep, then every integrity check, then the baseline the next
/// looks compare with (read before the sweep started, so nothing written meanwhile is taken as
/// seen). One at a time in a process, and across replicas by an advisory lock.
async fn full_scan(
    shared: &Arc<Shared>,
    policies: &Policies,
    due: Due,
    look: Option<Look>,
) -> Result<Done> {
    let Ok(_running) = shared.locks.full_scan.try_lock() else {
        return Ok(Done::Busy("a full scan is already running"));
    };
    let client = shared.db.get().await?;
    let Some(mut held) = Held::try_take(client, JOB_NAMESPACE, FULL_SCAN_KEY).await? else {
        return Ok(Done::Busy("another replica is running a full scan"));
    };
    tracing::info!(reason = due.reason.as_str(), "full scan starting: {due}");
    let scanned = scan(shared, &mut held, policies, due, look).await;
    held.release().await;
    scanned.map(|scan| Done::FullScan(Box::new(scan)))
}

async fn scan(
    shared: &Arc<Shared>,
    client: &mut tokio_postgres::Client,
    policies: &Policies,
    due: Due,
    look: Option<Look>,
) -> Result<FullScan> {
    let (reading, looked) = match look {
        Some(look) => (look.reading, look.handled),
        None => (watch::read(client).await?, 0),
    };
    // What the triggers journaled until now the full scan sees for itself.
    let (emptied, deletions) = watch::empty_journal(client).await?;
    let started = std::time::SystemTime::now();
    let repair = repair_waiting(shared, policies).await?;
    let options = sync::Options {
        stop: Some(shared.shutdown.clone()),
        apply_lifecycle: true,
        drain_queue: false,
        queue_empty: repair.remaining == 0,
        ..sync::Options::from_settings(&shared.settings.sync)
    }
    .with_policy(policies.database);
    let swept = {
        let _leading = shared.metrics.leading(JobKind::Sweep);
        sync::run(&shared.db, &options, None).await?
    };
    let mut checks_client = shared.db.get().await?;
    let settings = &shared.settings.integrity;
    let checks =
        integrity::run(&mut checks_client, settings, *policies, Counts::ALL, false).await?;
    if !shared.shutdown.is_cancelled() {
        use crate::error::DbContext;
        let tx = client
            .transaction()
            .await
            .context("recording the full scan")?;
        watch::record(&tx, &reading, started, &deletions).await?;
        let (users, profiles) = (Some(deletions.users), Some(deletions.profiles));
        integrity::stored::save(&tx, &checks.counted, users, profiles).await?;
        tx.commit().await.context("recording the full scan")?;
        // What the statistics counted until the baseline is the new baseline's.
        shared.suspicion.clear();
        history(shared, client, &checks).await;
    }
    Ok(FullScan {
        due,
        handled: looked + emptied,
        repair,
        sync: swept,
        checks,
    })
}

/// Each check's value into the findings' history, when it changed. A failure is logged: the
/// history is for people, the run's findings are on the metrics either way.
async fn history(shared: &Shared, client: &mut tokio_postgres::Client, report: &integrity::Report) {
    let values = report.values();
    if let Err(e) = integrity::history::record(client, &values, &shared.settings.integrity).await {
        tracing::warn!(error = %crate::error::Chain(&e), "the findings' history was not recorded");
    }
}

impl Done {
    /// The `outcome` label: failed when a user's profile could not be made.
    pub fn outcome(&self) -> crate::job::Outcome {
        use crate::job::Outcome;
        let failed = match self {
            Done::Quiet { repair, .. } | Done::Repaired(repair) => repair.failed,
            Done::FullScan(scan) => scan.repair.failed + scan.sync.failed,
            Done::Checked { .. } => 0,
            Done::Skipped => return Outcome::Skipped,
            Done::Busy(_) => return Outcome::Busy,
        };
        if failed > 0 {
            Outcome::Failed
        } else {
            Outcome::Success
        }
    }
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Quiet {
                handled,
                settling,
                repair,
            } => write!(
                f,
                "{} ({} handled); repair queue: {}",
                Settling(*settling),
                plural(*handled, "change"),
                Repair(repair)
            ),
            Done::Repaired(repair) => write!(f, "{}", Repair(repair)),
            Done::Checked {
                counted,
                report,
                settling,
                ..
            } => {
                write!(
                    f,
                    "{}{}",
                    Findings(report, f.alternate()),
                    Recounted(*counted)
                )?;
                match settling {
                    Some(_) => write!(f, "; {}", Settling(*settling)),
                    None => Ok(()),
                }
            }
            Done::FullScan(scan) => write!(
                f,
                "full scan, because {}: {} scanned, {} missing, {} created, {} failed; {}",
                scan.due,
                plural(scan.sync.scanned, "user"),
                scan.sync.missing,
                scan.sync.created,
                scan.sync.failed + scan.repair.failed,
                Findings(&scan.checks, f.alternate())
            ),
            Done::Skipped => f.write_str("the previous run was still going; tick skipped"),
            Done::Busy(why) => f.write_str(why),
        }
    }
}

/// What the look saw around the triggers, in words.
struct Settling(Option<Due>);

impl std::fmt::Display for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("nothing changed around the triggers"),
            Some(due) => write!(
                f,
                "{due}, unless the statistics are still settling: a full scan if it lasts"
            ),
        }
    }
}

/// A repair pass in words.
struct Repair<'a>(&'a RepairReport);

impl std::fmt::Display for Repair<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        write!(
            f,
            "{} due, {} created, {} failed, {} left",
            r.due, r.created, r.failed, r.remaining
        )
    }
}

/// A report's findings in words; on the board (`true`) only that they were checked, since the
/// findings panel shows the latest check's and a row's older count would contradict it.
struct Findings<'a>(&'a integrity::Report, bool);

impl std::fmt::Display for Findings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 {
            return f.write_str("checked (the findings are in their own panel)");
        }
        match (self.0.findings.len(), self.0.errors()) {
            (0, _) => f.write_str("no findings"),
            (n, 0) => f.write_str(&plural(n as u64, "finding")),
            (n, e) => write!(f, "{}, {e} at error level", plural(n as u64, "finding")),
        }
    }
}

/// The data groups a cycle counted again, in words.
struct Recounted(Counts);

impl std::fmt::Display for Recounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut groups = Vec::new();
        if self.0.orphans {
            groups.push("the orphan profiles");
        }
        if self.0.user_id_columns {
            groups.push("the user-id columns");
        }
        match groups.as_slice() {
            [] => Ok(()),
            groups => write!(f, " (counted again: {})", groups.join(" and ")),
        }
    }
}
