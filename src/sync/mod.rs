//! The reconcile step: find live auth users without a profile and create them, in parallel
//! batches, idempotently. The daemon, the CLI and the tests all call [`run`] and get a
//! [`Report`].
//!
//! The repair queue is drained first. Then one statement counts the missing users. When a few
//! are missing (up to [`plan::LIST_LIMIT`]), they are listed, sorted into ranges of
//! `auth.users`'s pages (see [`plan`] for why pages and not ids), and [`apply::create`] makes
//! their profiles in batches of `sync.batch_size` users. When many are (a backfill, which the
//! planner's statistics announce, so that not even the count runs first), [`ranges`] sweeps the
//! table range by range, each batch one statement over a few hundred pages. Either way
//! `sync.workers` workers claim each range with a PostgreSQL advisory lock held while they work
//! on it, so workers in one process and in several replicas never do the same range at once; a
//! range another process holds is left to it. Each batch is its own short transaction.

pub mod apply;
pub mod explain;
pub mod plan;
pub mod policy;
mod ranges;
pub mod repair;
mod report;
pub mod settle;
pub mod watch;

use crate::db::RowExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::SyncSettings;
use crate::db::{self, Db};
use crate::error::{DbContext, Error, Result};

pub use apply::Failure;
/// The page-range batch statement and the settings it runs under: the plan tests EXPLAIN them.
pub use ranges::{BATCH as PAGE_BATCH, PLAN as PAGE_BATCH_SETTINGS};
pub use repair::RepairReport;
pub use report::Report;

/// Advisory lock namespace of the sweep's ranges (the two-key form: namespace, range).
pub const RANGE_LOCK_NAMESPACE: i32 = 0x7573_7972; // "usyr"

/// Failures listed in a report; the count covers them all.
const MAX_LISTED_FAILURES: usize = 100;

/// How one pass runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Detect only: write nothing, list who would get a profile.
    pub dry_run: bool,
    /// With `dry_run`, also show the profile each user would get.
    pub preview: bool,
    pub workers: u32,
    pub batch_size: u32,
    /// The lifecycle policies the pass applies (the database's, in the daemon and the CLI).
    pub policy: policy::Policy,
    /// Retry every user in the repair queue now, whatever its backoff: a manual `usersync
    /// sync` after fixing the cause. The daemon keeps the backoff.
    pub retry_queue_now: bool,
    /// Apply the lifecycle policies to every profile after the creation (a few statements
    /// that each join both tables). The CLI always does; the daemon when its integrity check
    /// last counted work for them, so that its sweep of an unchanged database stays one join.
    pub apply_lifecycle: bool,
    /// Most missing users a pass lists ([`plan::LIST_LIMIT`]); with more, it sweeps the table
    /// by page range instead. Tests lower it to exercise both.
    pub list_limit: u64,
    /// Drain the repair queue first. The daemon drains it itself, under the one lock every
    /// drain of its takes, and says with `queue_empty` whether it was left empty.
    pub drain_queue: bool,
    /// The repair queue was empty after its drain: the page-range sweep then looks no user up
    /// in it. Set by [`run`] after its own drain.
    pub queue_empty: bool,
    /// When it turns true the pass stops between batches: every batch is either committed
    /// or untouched. The daemon's shutdown.
    pub stop: Option<tokio_util::sync::CancellationToken>,
}

impl Options {
    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.is_cancelled())
    }

    /// These options with the policies of the database (what the triggers apply), so that the
    /// sweep and the triggers agree whatever this process's configuration says.
    pub fn with_policy(self, policy: policy::Policy) -> Options {
        Options { policy, ..self }
    }
}

impl Options {
    pub fn from_settings(s: &SyncSettings) -> Options {
        Options {
            dry_run: false,
            preview: false,
            workers: s.workers,
            batch_size: s.batch_size,
            policy: s.policy(),
            retry_queue_now: false,
            apply_lifecycle: true,
            list_limit: plan::LIST_LIMIT,
            drain_queue: true,
            queue_empty: false,
            stop: None,
        }
    }
}

/// Live progress of a pass, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    /// Users found missing.
    pub total: AtomicU64,
    /// Of those, handled so far (created, raced, deferred or failed).
    pub done: AtomicU64,
    pub created: AtomicU64,
}

/// One reconciliation pass: drain the repair queue, detect, then create by range.
#[tracing::instrument(skip_all, fields(dry_run = options.dry_run, workers = options.workers))]
pub async fn run(db: &Db, options: &Options, progress: Option<Arc<Progress>>) -> Result<Report> {
    let started = Instant::now();
    let progress = progress.unwrap_or_default();
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut client = db.get().await?;
    if options.dry_run {
        let plan = plan::detect(&mut client, &options.policy).await?;
        report.note_detection(&plan);
        report.missing = plan.missing_total;
        report.would_create = plan.ids();
        if options.preview {
            for ids in report.would_create.chunks(options.batch_size as usize) {
                report.profiles.extend(apply::preview(&client, ids).await?);
            }
        }
        report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        return Ok(report);
    }

    if options.drain_queue {
        let mut failures = Vec::new();
        let repaired = repair::drain(
            &mut client,
            &options.policy,
            options.retry_queue_now,
            &mut failures,
        )
        .await?;
        report.failed += failures.len() as u64;
        report.failures.extend(failures);
        report.repair = Some(repaired);
    }
    analyze_if_stale(&client).await?;

    // What the triggers missed of the rest of the lifecycle, on a connection of its own while
    // the missing profiles are created: the two touch different profiles (existing ones
    // against new ones built from the user as it is), and a backfill with one worker leaves a
    // core to it.
    let lifecycle = async {
        if !options.apply_lifecycle || options.stopped() {
            return Ok(None);
        }
        let client = db.get().await?;
        policy::apply(&client, &options.policy, None)
            .await
            .map(Some)
    };
    let (applied, ()) = tokio::try_join!(
        lifecycle,
        create(db, options, &mut client, &mut report, &progress)
    )?;
    if let Some(applied) = applied {
        report.applied = applied;
    }
    drop(client);
    report.failures.truncate(MAX_LISTED_FAILURES);
    report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        scanned = report.scanned,
        missing = report.missing,
        created = report.total_created(),
        raced = report.raced,
        deferred = report.deferred,
        failed = report.failed,
        ranges_busy = report.ranges_busy,
        duration_ms = report.duration_ms as u64,
        "sync pass finished"
    );
    Ok(report)
}

/// Counts the missing users, unless a backfill makes it pointless, and creates their profiles:
/// listed, or by page range.
async fn create(
    db: &Db,
    options: &Options,
    client: &mut deadpool_postgres::Object,
    report: &mut Report,
    progress: &Arc<Progress>,
) -> Result<()> {
    // A backfill goes straight to the ranges; otherwise the count says how many are missing.
    let backfill = plan::looks_like_backfill(client).await?;
    let counts = match backfill {
        Some(_) => None,
        None => Some(plan::count(client, &options.policy).await?),
    };
    match counts {
        Some(counts) if counts.missing_total <= options.list_limit => {
            report.note_detection(&counts);
            progress
                .total
                .store(counts.missing_total, Ordering::Relaxed);
            if counts.missing_total > 0 {
                let users = plan::list(client, &options.policy, counts.missing_total).await?;
                for range in sweep_listed(db, options, users, progress).await? {
                    report.absorb(range);
                }
            }
        }
        _ => {
            let extent = ranges::extent(client).await?;
            let queue_empty = report
                .repair
                .as_ref()
                .map_or(options.queue_empty, |r| r.remaining == 0);
            let options = &Options {
                queue_empty,
                ..options.clone()
            };
            let expected = counts.map_or(backfill.unwrap_or(0), |c| c.missing_total);
            progress.total.store(expected, Ordering::Relaxed);
            for range in ranges::sweep(db, options, extent, progress).await? {
                report.absorb(range);
            }
        }
    }
    Ok(())
}

/// The listed users' profiles: their ranges handed to `options.workers` workers that claim
/// each range's lock and create its profiles in batches.
async fn sweep_listed(
    db: &Db,
    options: &Options,
    users: Vec<plan::Missing>,
    progress: &Arc<Progress>,
) -> Result<Vec<RangeReport>> {
    let mut units: std::collections::VecDeque<(u32, Vec<plan::Missing>)> = Default::default();
    for user in users {
        match units.back_mut() {
            Some((range, unit)) if *range == user.range() => unit.push(user),
            _ => units.push_back((user.range(), vec![user])),
        }
    }
    let queue = Arc::new(std::sync::Mutex::new(units));
    let mut workers = JoinSet::new();
    for _ in 0..options.workers.max(1) {
        let (db, options, queue, progress) =
            (db.clone(), options.clone(), queue.clone(), progress.clone());
        workers.spawn(async move { worker(&db, &options, &queue, &progress).await });
    }
    join_workers(workers).await
}

/// Every worker's ranges, or the first error one of them met (the others still finish: each
/// batch is committed or untouched).
async fn join_workers(mut workers: JoinSet<Result<Vec<RangeReport>>>) -> Result<Vec<RangeReport>> {
    let mut done = Vec::new();
    let mut first_error: Option<Error> = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(ranges)) => done.extend(ranges),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(Error::Worker(join));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// What one range contributed.
#[derive(Debug, Default)]
struct RangeReport {
    busy: bool,
    /// Users examined (the page-range sweep counts them; a listed pass has the count's).
    scanned: u64,
    skipped_deleted: u64,
    skipped_anonymous: u64,
    /// Missing users handed to the range.
    users: u64,
    created: u64,
    raced: u64,
    deferred: u64,
    batches: u64,
    longest_batch: Duration,
    failures: Vec<Failure>,
    /// Deferred or failed: still without a profile, on purpose.
    left_missing: Vec<Uuid>,
}

/// Takes ranges off the queue until it is empty, claiming each with its advisory lock.
async fn worker(
    db: &Db,
    options: &Options,
    queue: &std::sync::Mutex<std::collections::VecDeque<(u32, Vec<plan::Missing>)>>,
    progress: &Progress,
) -> Result<Vec<RangeReport>> {
    let mut client: Option<deadpool_postgres::Object> = None;
    let mut done = Vec::new();
    loop {
        let next = queue.lock().expect("not poisoned").pop_front();
        let Some((range, users)) = next else {
            return Ok(done);
        };
        if options.stopped() {
            return Ok(done);
        }
        let mut conn = match client.take() {
            Some(c) => c,
            None => db.get().await?,
        };
        let key = range as i32;
        if !db::try_advisory_lock(&conn, RANGE_LOCK_NAMESPACE, key).await? {
            client = Some(conn);
            tracing::debug!(range, "range held by another process");
            progress
                .done
                .fetch_add(users.len() as u64, Ordering::Relaxed);
            done.push(RangeReport {
                busy: true,
                users: users.len() as u64,
                ..RangeReport::default()
            });
            continue;
        }
        let result = create_range(&mut conn, options, &users, progress).await;
        client = db::release_advisory_lock(conn, RANGE_LOCK_NAMESPACE, key).await;
        if client.is_none() {
            result?;
            return Err(Error::Internal(format!(
                "could not release the lock of range {range}"
            )));
        }
        done.push(result?);
    }
}

async fn create_range(
    client: &mut deadpool_postgres::Object,
    options: &Options,
    users: &[plan::Missing],
    progress: &Progress,
) -> Result<RangeReport> {
    let mut report = RangeReport {
        users: users.len() as u64,
        ..RangeReport::default()
    };
    for chunk in users.chunks(options.batch_size as usize) {
        if options.stopped() {
            break;
        }
        let batch: Vec<Uuid> = chunk.iter().map(|m| m.id).collect();
        let tids: Vec<plan::Tid> = chunk.iter().map(|m| m.tid).collect();
        let mode = apply::Mode {
            include_anonymous: options.policy.include_anonymous,
            repairing: false,
        };
        let outcome = apply::create(client, &batch, Some(&tids), mode).await?;
        progress
            .created
            .fetch_add(outcome.created, Ordering::Relaxed);
        progress
            .done
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        report.batches += 1;
        report.created += outcome.created;
        report.raced += outcome.raced;
        report.deferred += outcome.deferred;
        report.longest_batch = report.longest_batch.max(outcome.elapsed);
        report.left_missing.extend(outcome.left_missing);
        for f in &outcome.failures {
            tracing::warn!(user_id = %f.user_id, sqlstate = %f.sqlstate, reason = %f.reason,
                "profile could not be created; queued for repair");
        }
        report.failures.extend(outcome.failures);
    }
    Ok(report)
}

/// Refreshes the planner's statistics of `public.user_profiles` when they are far behind (a
/// freshly emptied table that looks like one row can turn a backfill quadratic; docs/design.md,
/// "How a sync pass works").
async fn analyze_if_stale(client: &tokio_postgres::Client) -> Result<()> {
    let stale: bool = client
        .query_one(
            "SELECT coalesce(s.n_mod_since_analyze > greatest(c.reltuples, 0) * 0.2 + 1000, false)
             FROM pg_catalog.pg_class c
             LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
             WHERE c.oid = 'public.user_profiles'::regclass",
            &[],
        )
        .await
        .context("reading the statistics of public.user_profiles")?
        .value(0)?;
    if stale {
        tracing::debug!("analyzing public.user_profiles before the sweep");
        client
            // The table's owner's function: the runtime role does not own it.
            .batch_execute("SELECT usersync.analyze_profiles()")
            .await
            .context("analyzing public.user_profiles")?;
    }
    Ok(())
}
