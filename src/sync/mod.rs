//! The reconcile step: find live auth users without a profile and create them, in parallel
//! batches, idempotently. The daemon, the CLI and the tests all call [`run`] and get a
//! [`Report`].
//!
//! The id space is split into [`plan::RANGES`] ranges. `sync.workers` workers take ranges from
//! a shared counter and claim each with a PostgreSQL advisory lock held for the range, so
//! workers in one process and in several replicas never do the same range at once; a range
//! another process holds is left to it. Per range, [`plan::detect`] finds the missing users in
//! one statement and [`apply::create`] creates them in batches of `sync.batch_size`, each its
//! own short transaction. The repair queue is drained first.

pub mod apply;
pub mod plan;
pub mod repair;

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
    /// Live users without a profile, as detected.
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

    fn absorb(&mut self, other: RangeReport) {
        self.scanned += other.scanned;
        self.missing += other.missing;
        self.created += other.created;
        self.raced += other.raced;
        self.deferred += other.deferred;
        self.skipped_deleted += other.skipped_deleted;
        self.skipped_anonymous += other.skipped_anonymous;
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
    /// Estimated auth users (from the planner's statistics), 0 when unknown.
    pub total: AtomicU64,
    pub scanned: AtomicU64,
    pub created: AtomicU64,
}

/// One reconciliation pass: drain the repair queue, then sweep every range.
#[tracing::instrument(skip_all, fields(dry_run = options.dry_run, workers = options.workers))]
pub async fn run(db: &Db, options: &Options, progress: Option<Arc<Progress>>) -> Result<Report> {
    let started = Instant::now();
    let progress = progress.unwrap_or_default();
    let mut report = Report {
        dry_run: options.dry_run,
        ranges: plan::RANGES,
        ..Report::default()
    };
    {
        let mut client = db.get().await?;
        progress
            .total
            .store(estimate_users(&client).await?, Ordering::Relaxed);
        if !options.dry_run {
            let mut failures = Vec::new();
            let repaired =
                repair::drain(&mut client, options.include_anonymous, &mut failures).await?;
            report.failed += failures.len() as u64;
            report.failures.extend(failures);
            report.repair = Some(repaired);
            analyze_if_stale(&client).await?;
        }
    }

    let next = Arc::new(AtomicU32::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..options.workers.max(1) {
        let (db, options, next, progress) =
            (db.clone(), options.clone(), next.clone(), progress.clone());
        workers.spawn(async move { worker(&db, &options, &next, &progress).await });
    }
    let mut previews: Vec<(u32, Vec<Uuid>, Vec<serde_json::Value>)> = Vec::new();
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(ranges)) => {
                for r in ranges {
                    previews.push((r.range, r.would_create.clone(), r.profiles.clone()));
                    report.absorb(r);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(Error::Internal(format!("a sync worker died: {join}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    previews.sort_by_key(|p| p.0);
    for (_, ids, profiles) in previews {
        report.would_create.extend(ids);
        report.profiles.extend(profiles);
    }
    report.failures.truncate(MAX_LISTED_FAILURES);
    report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        scanned = report.scanned,
        missing = report.missing,
        created = report.total_created(),
        raced = report.raced,
        failed = report.failed,
        duration_ms = report.duration_ms as u64,
        "sync pass finished"
    );
    Ok(report)
}

/// What one range contributed.
#[derive(Debug, Default)]
struct RangeReport {
    range: u32,
    busy: bool,
    scanned: u64,
    missing: u64,
    created: u64,
    raced: u64,
    deferred: u64,
    skipped_deleted: u64,
    skipped_anonymous: u64,
    batches: u64,
    longest_batch: Duration,
    failures: Vec<Failure>,
    would_create: Vec<Uuid>,
    profiles: Vec<serde_json::Value>,
}

async fn worker(
    db: &Db,
    options: &Options,
    next: &AtomicU32,
    progress: &Progress,
) -> Result<Vec<RangeReport>> {
    let mut client = db.get().await?;
    let mut done = Vec::new();
    loop {
        let range = next.fetch_add(1, Ordering::Relaxed);
        if range >= plan::RANGES {
            return Ok(done);
        }
        let locked: bool = client
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                &[&RANGE_LOCK_NAMESPACE, &(range as i32)],
            )
            .await
            .context("claiming a range")?
            .get(0);
        if !locked {
            tracing::debug!(range, "range held by another process");
            done.push(RangeReport {
                range,
                busy: true,
                ..RangeReport::default()
            });
            continue;
        }
        let result = sweep_range(&mut client, options, range, progress).await;
        let unlocked = client
            .execute(
                "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
                &[&RANGE_LOCK_NAMESPACE, &(range as i32)],
            )
            .await;
        if unlocked.is_err() {
            // Closing the connection is what releases the lock now.
            let _ = deadpool_postgres::Object::take(client);
            result?;
            return Err(Error::Internal(format!(
                "could not release the lock of range {range}"
            )));
        }
        done.push(result?);
    }
}

async fn sweep_range(
    client: &mut deadpool_postgres::Object,
    options: &Options,
    range: u32,
    progress: &Progress,
) -> Result<RangeReport> {
    let found = plan::detect(client, range, options.include_anonymous).await?;
    progress.scanned.fetch_add(found.scanned, Ordering::Relaxed);
    let mut report = RangeReport {
        range,
        scanned: found.scanned,
        missing: found.missing.len() as u64,
        skipped_deleted: found.skipped_deleted,
        skipped_anonymous: found.skipped_anonymous,
        ..RangeReport::default()
    };
    if options.dry_run {
        if options.preview {
            for ids in found.missing.chunks(options.batch_size as usize) {
                report.profiles.extend(apply::preview(client, ids).await?);
            }
        }
        report.would_create = found.missing;
        return Ok(report);
    }
    for ids in found.missing.chunks(options.batch_size as usize) {
        let outcome = apply::create(client, ids, options.include_anonymous, false).await?;
        progress
            .created
            .fetch_add(outcome.created, Ordering::Relaxed);
        report.batches += 1;
        report.created += outcome.created;
        report.raced += outcome.raced;
        report.deferred += outcome.deferred;
        report.longest_batch = report.longest_batch.max(outcome.elapsed);
        for f in &outcome.failures {
            tracing::warn!(user_id = %f.user_id, sqlstate = %f.sqlstate, reason = %f.reason,
                "profile could not be created; queued for repair");
        }
        report.failures.extend(outcome.failures);
    }
    Ok(report)
}

async fn estimate_users(client: &tokio_postgres::Client) -> Result<u64> {
    let estimate: f32 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::real FROM pg_catalog.pg_class WHERE oid = 'auth.users'::regclass",
            &[],
        )
        .await
        .context("estimating auth.users")?
        .get(0);
    Ok(estimate as u64)
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
