//! The reconcile step: find live auth users without a profile and create them, in parallel
//! batches, idempotently. The daemon, the CLI and the tests all call [`run`] and get a
//! [`Report`].
//!
//! The repair queue is drained first. Then [`plan::detect`] finds the missing users, split
//! into ranges of `auth.users`'s pages (see [`plan`] for why pages and not ids).
//! `sync.workers` workers take ranges from a shared counter and claim each with a PostgreSQL
//! advisory lock held while they work on it, so workers in one process and in several replicas
//! never do the same range at once; a range another process holds is left to it. Within a
//! range, [`apply::create`] creates the profiles in batches of `sync.batch_size` users in heap
//! order, each batch its own short transaction.

pub mod apply;
pub mod plan;
pub mod repair;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::SyncSettings;
use crate::db::Db;
use crate::error::{DbContext, Error, Result};

pub use apply::Failure;
pub use repair::RepairReport;

/// Advisory lock namespace of the sweep's ranges (the two-key form: namespace, range).
const RANGE_LOCK_NAMESPACE: i32 = 0x7573_7972; // "usyr"

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
    pub include_anonymous: bool,
}

impl Options {
    pub fn from_settings(s: &SyncSettings) -> Options {
        Options {
            dry_run: false,
            preview: false,
            workers: s.workers,
            batch_size: s.batch_size,
            include_anonymous: s.include_anonymous,
        }
    }
}

/// What a pass found and did. Each count is of users.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Auth users examined.
    pub scanned: u64,
    /// Live users without a profile that this pass handled (all that were detected, unless a
    /// backfill beyond one round found more meanwhile).
    pub missing: u64,
    /// Profiles this pass created (besides the repair pass's).
    pub created: u64,
    /// Missing when detected, but with a profile (or no longer live) when their batch ran.
    pub raced: u64,
    /// Missing, but in the repair queue waiting out a backoff after failing.
    pub deferred: u64,
    /// Soft-deleted users without a profile: they never get one.
    pub skipped_deleted: u64,
    /// Anonymous users without a profile, when `sync.include_anonymous` is false.
    pub skipped_anonymous: u64,
    /// Users whose profile could not be created, in the sweep and the repair pass.
    pub failed: u64,
    /// The first failures with their reasons.
    pub failures: Vec<Failure>,
    /// The repair queue drain that ran first (not in a dry run).
    pub repair: Option<RepairReport>,
    pub batches: u64,
    /// Ranges of `auth.users` pages that had work, as claimed (or found busy).
    pub ranges: u32,
    /// Ranges skipped because another process held them.
    pub ranges_busy: u32,
    pub longest_batch_ms: f64,
    pub duration_ms: f64,
    /// Dry run: the users that would get a profile, in id order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_create: Vec<Uuid>,
    /// Dry run with preview: the profile each would get.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<serde_json::Value>,
}

impl Report {
    /// Profiles created by the sweep and the repair pass together.
    pub fn total_created(&self) -> u64 {
        self.created + self.repair.as_ref().map_or(0, |r| r.created)
    }

    fn note_detection(&mut self, plan: &plan::Plan) {
        self.scanned = plan.scanned;
        self.skipped_deleted = plan.skipped_deleted;
        self.skipped_anonymous = plan.skipped_anonymous;
    }

    fn absorb(&mut self, other: RangeReport) {
        self.ranges += 1;
        self.created += other.created;
        self.raced += other.raced;
        self.deferred += other.deferred;
        self.batches += other.batches;
        self.ranges_busy += other.busy as u32;
        self.longest_batch_ms = self
            .longest_batch_ms
            .max(other.longest_batch.as_secs_f64() * 1e3);
        self.failed += other.failures.len() as u64;
        self.failures.extend(other.failures);
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
        let plan = plan::detect(&client, options.include_anonymous, i32::MAX).await?;
        report.note_detection(&plan);
        report.missing = plan.missing_total;
        if options.preview {
            for ids in plan.ids().chunks(options.batch_size as usize) {
                report.profiles.extend(apply::preview(&client, ids).await?);
            }
        }
        report.would_create = plan.ids();
        report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        return Ok(report);
    }

    let mut failures = Vec::new();
    let repaired = repair::drain(&mut client, options.include_anonymous, &mut failures).await?;
    report.failed += failures.len() as u64;
    report.failures.extend(failures);
    report.repair = Some(repaired);
    analyze_if_stale(&client).await?;

    // Rounds of at most ROUND_LIMIT ids; users left missing on purpose (deferred, failed)
    // are not handled twice in one pass.
    let mut handled: HashSet<Uuid> = HashSet::new();
    let mut plan = plan::detect(&client, options.include_anonymous, plan::ROUND_LIMIT).await?;
    tracing::debug!(
        missing = plan.missing_total,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "detected"
    );
    report.note_detection(&plan);
    progress.total.store(plan.missing_total, Ordering::Relaxed);
    loop {
        let complete = plan.missing.len() < plan::ROUND_LIMIT as usize;
        plan.missing.retain(|m| !handled.contains(&m.id));
        if plan.missing.is_empty() {
            break;
        }
        report.missing += plan.missing.len() as u64;
        let round =
            apply_round(db, options, Arc::new(std::mem::take(&mut plan)), &progress).await?;
        let created = round.iter().map(|r| r.created).sum::<u64>();
        for r in round {
            handled.extend(r.left_missing.iter().copied());
            report.absorb(r);
        }
        if complete || created == 0 {
            break;
        }
        let ids = plan::missing(&client, options.include_anonymous, plan::ROUND_LIMIT, 0).await?;
        plan = plan::Plan {
            missing: ids,
            ..plan::Plan::default()
        };
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
        duration_ms = report.duration_ms as u64,
        "sync pass finished"
    );
    Ok(report)
}

/// What one range contributed.
#[derive(Debug, Default)]
struct RangeReport {
    busy: bool,
    created: u64,
    raced: u64,
    deferred: u64,
    batches: u64,
    longest_batch: Duration,
    failures: Vec<Failure>,
    /// Deferred or failed: still without a profile, on purpose.
    left_missing: Vec<Uuid>,
}

/// Creates the profiles of a plan: `options.workers` workers claim ranges and batch them.
async fn apply_round(
    db: &Db,
    options: &Options,
    plan: Arc<plan::Plan>,
    progress: &Arc<Progress>,
) -> Result<Vec<RangeReport>> {
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..options.workers.max(1) {
        let (db, options, plan, next, progress) = (
            db.clone(),
            options.clone(),
            plan.clone(),
            next.clone(),
            progress.clone(),
        );
        workers.spawn(async move { worker(&db, &options, &plan, &next, &progress).await });
    }
    let mut ranges = Vec::new();
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(done)) => ranges.extend(done),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(Error::Internal(format!("a sync worker died: {join}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(ranges),
    }
}

async fn worker(
    db: &Db,
    options: &Options,
    plan: &plan::Plan,
    next: &AtomicU32,
    progress: &Progress,
) -> Result<Vec<RangeReport>> {
    let by_range = plan.by_range();
    let mut client: Option<deadpool_postgres::Object> = None;
    let mut done = Vec::new();
    loop {
        let next_range = next.fetch_add(1, Ordering::Relaxed) as usize;
        let Some(&(range, users)) = by_range.get(next_range) else {
            return Ok(done);
        };
        let conn = match &mut client {
            Some(c) => c,
            None => client.insert(db.get().await?),
        };
        let key = range as i32;
        let locked: bool = conn
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                &[&RANGE_LOCK_NAMESPACE, &key],
            )
            .await
            .context("claiming a range")?
            .get(0);
        if !locked {
            tracing::debug!(range, "range held by another process");
            done.push(RangeReport {
                busy: true,
                ..RangeReport::default()
            });
            continue;
        }
        let result = create_range(conn, options, users, progress).await;
        let unlocked = conn
            .execute(
                "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
                &[&RANGE_LOCK_NAMESPACE, &key],
            )
            .await;
        if unlocked.is_err() {
            // Closing the connection is what releases the lock now.
            if let Some(c) = client.take() {
                let _ = deadpool_postgres::Object::take(c);
            }
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
    let mut report = RangeReport::default();
    for chunk in users.chunks(options.batch_size as usize) {
        let batch: Vec<Uuid> = chunk.iter().map(|m| m.id).collect();
        let tids: Vec<plan::Tid> = chunk.iter().map(|m| m.tid).collect();
        let outcome = apply::create(
            client,
            &batch,
            Some(&tids),
            options.include_anonymous,
            false,
        )
        .await?;
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
/// freshly emptied table that looks like one row can turn a backfill quadratic, DESIGN.md).
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
        .get(0);
    if stale {
        tracing::debug!("analyzing public.user_profiles before the sweep");
        client
            .batch_execute("ANALYZE (SKIP_LOCKED) public.user_profiles")
            .await
            .context("analyzing public.user_profiles")?;
    }
    Ok(())
}
