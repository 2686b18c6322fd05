//! The sweep by page range: a backfill, or any pass with more users missing than one list
//! should hold.
//!
//! No listing of the missing users comes first. The workers take the ranges of `auth.users`'s
//! pages in order from a shared counter, claim each with its advisory lock, and run one
//! statement per batch of pages: a TID range scan of those pages, each user looked up in the
//! profiles' primary key, the missing ones inserted as the builder makes them, and the counts
//! of the batch returned. It is the bare `INSERT … SELECT … NOT EXISTS` cut into short
//! transactions along the heap, so it reads every page once, in order, whatever the table's
//! size, and holds one batch's counts in memory.
//!
//! Why not one listing (an anti-join) first: once the profile table outgrows `work_mem`, the
//! hash anti-join runs in batches and hands its rows back batch by batch, each in heap order
//! but the whole not: at 10M users a sweep saw every range some 66 times, 27,646 units of
//! ~358 users, and each round of a million users scanned the whole table again (issue 14).
//!
//! A batch that fails as a whole (one bad row) is done again user by user through
//! [`apply::create`], so that one user fails alone and goes to the repair queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use uuid::Uuid;

use super::plan::{RANGE_BLOCKS, Tid};
use super::{Options, Progress, RANGE_LOCK_NAMESPACE, RangeReport, apply};
use crate::db::{self, Db, RowExt};
use crate::error::{DbContext, Error, Result, is_connection_error};

/// The heap's extent and density, read once per pass.
#[derive(Clone, Copy, Debug)]
pub(super) struct Extent {
    pub blocks: u32,
    /// Users per page, as the planner's statistics say (at least one).
    pub per_page: f64,
}

impl Extent {
    pub fn ranges(&self) -> u32 {
        self.blocks.div_ceil(RANGE_BLOCKS).max(1)
    }

    /// Pages per batch for about `batch_size` users.
    pub fn batch_pages(&self, batch_size: u32) -> u32 {
        ((f64::from(batch_size) / self.per_page) as u32).clamp(1, RANGE_BLOCKS)
    }
}

/// What a batch should take: long enough that its fixed costs (a transaction, a plan) stay a
/// few percent, short enough that a stall (a checkpoint, a backend writing out dirty buffers for
/// itself) keeps it well under half a second. At 10M users a batch of 10,000 took 215 ms on
/// average and up to 647 ms with two workers (benches/scale.rs).
const BATCH_TARGET: Duration = Duration::from_millis(150);

/// Pages per batch: at most what `sync.batch_size` users fill, adjusted after each batch
/// toward [`BATCH_TARGET`] by at most half or half again.
#[derive(Clone, Copy, Debug)]
struct Pacer {
    pages: u32,
    most: u32,
}

impl Pacer {
    fn new(extent: Extent, batch_size: u32) -> Pacer {
        let most = extent.batch_pages(batch_size);
        Pacer { pages: most, most }
    }

    fn after(&mut self, took: Duration) {
        let ratio = BATCH_TARGET.as_secs_f64() / took.as_secs_f64().max(1e-3);
        let pages = (f64::from(self.pages) * ratio.clamp(0.5, 1.5)).round() as u32;
        self.pages = pages.clamp(1, self.most);
    }
}

pub(super) async fn extent(client: &tokio_postgres::Client) -> Result<Extent> {
    let row = client
        .query_one(
            concat!(
                "SELECT (pg_catalog.pg_relation_size(c.oid)
                         / pg_catalog.current_setting('block_size')::pg_catalog.int8)::pg_catalog.int8,
                        CASE WHEN c.relpages > 0 AND c.reltuples > 0
                             THEN c.reltuples::pg_catalog.float8 / c.relpages ELSE 1 END
                 FROM pg_catalog.pg_class c WHERE c.oid = ",
                crate::auth_users_oid!()
            ),
            &[],
        )
        .await
        .context("reading the size of auth.users")?;
    let blocks: i64 = row.value(0)?;
    let per_page: f64 = row.value(1)?;
    Ok(Extent {
        blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
        per_page: per_page.max(1.0),
    })
}

/// One batch of pages ($1 <= ctid < $2), $3 include_anonymous, in one statement: the users who
/// should have a profile, inserted (with `$waiting`, unless they wait out a repair backoff);
/// those who have one already are skipped by ON CONFLICT, whose look into the primary key is
/// the one a NOT EXISTS would repeat for every user (measured: 5% of a backfill). The bare
/// statement, cut to a few hundred pages. Then
/// its counts, from a second look at the same pages (in shared buffers by now) that looks up
/// only the deleted and anonymous users, never given a profile, and (with `$queue`) the users
/// of the batch left waiting out a backoff, found from the queue's side. Measured: the counts
/// cost 3% of a batch where a statement that also counts its candidates costs 30%
/// (benches/scale.rs, 1M users). A macro, so that both forms stay string constants.
macro_rules! batch_statement {
    ($waiting:literal, $deferred:literal) => {
        concat!(
            "
    WITH made AS (
        INSERT INTO public.user_profiles
            (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
        SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at,
               p.updated_at
        FROM usersync.auth_users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text,
                                                                   u.raw_user_meta_data, u.created_at) AS p
        WHERE u.row_address >= $1 AND u.row_address < $2 AND ",
            crate::should_have_profile!("$3"),
            $waiting,
            "
        ON CONFLICT (id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM made), count(*),
           count(*) FILTER (WHERE u.deleted_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)),
           count(*) FILTER (WHERE u.deleted_at IS NULL AND u.is_anonymous AND NOT $3
               AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)),
           ",
            $deferred,
            "
    FROM usersync.auth_users u
    WHERE u.row_address >= $1 AND u.row_address < $2"
        )
    };
}

/// A batch that leaves users in a repair backoff alone.
pub const BATCH: &str = batch_statement!(
    "
          AND NOT EXISTS (SELECT 1 FROM usersync.repair_queue q
                          WHERE q.user_id = u.id AND q.next_attempt_at > now())",
    "(SELECT count(*) FROM usersync.repair_queue q JOIN usersync.auth_users w ON w.id = q.user_id
        WHERE q.next_attempt_at > now() AND w.row_address >= $1 AND w.row_address < $2
          AND w.deleted_at IS NULL AND ($3 OR NOT w.is_anonymous)
          AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = w.id))"
);

/// A batch of a pass that found the repair queue empty after draining it: no user waits out a
/// backoff (a failure recorded meanwhile is at worst tried once more), so no user is looked up
/// in the queue.
const BATCH_NO_QUEUE: &str = batch_statement!("", "0::pg_catalog.int8");

// The same batch's users without a profile, for the one-by-one retry of a batch that failed:
// whether each is deleted, anonymous.
const LIST: &str = "
    SELECT u.id, u.deleted_at IS NOT NULL, u.is_anonymous FROM usersync.auth_users u
    WHERE u.row_address >= $1 AND u.row_address < $2
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)";

// Its users, counted.
const SCANNED: &str =
    "SELECT count(*) FROM usersync.auth_users u WHERE u.row_address >= $1 AND u.row_address < $2";

// A batch reads a few hundred pages of auth.users (a TID range scan) and looks each user up in
// the profiles' primary key: never a hash or merge join over the whole profile table, and never
// a sequential scan of it, which a freshly emptied table invites (the planner takes it for
// empty) and which turns quadratic as the sweep fills it (measured: a 60 s batch at 1M users).
// Its commit need not wait for the disk: a batch lost in a crash is swept again.
pub const PLAN: &str = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
                    SET LOCAL enable_seqscan = off; SET LOCAL synchronous_commit = off";

/// Sweeps every range of the table with `options.workers` workers.
pub(super) async fn sweep(
    db: &Db,
    options: &Options,
    extent: Extent,
    progress: &Arc<Progress>,
) -> Result<Vec<RangeReport>> {
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..options.workers.max(1) {
        let (db, options, next, progress) =
            (db.clone(), options.clone(), next.clone(), progress.clone());
        workers.spawn(async move { worker(&db, &options, extent, &next, &progress).await });
    }
    super::join_workers(workers).await
}

async fn worker(
    db: &Db,
    options: &Options,
    extent: Extent,
    next: &AtomicU32,
    progress: &Progress,
) -> Result<Vec<RangeReport>> {
    let mut done = Vec::new();
    let mut client = db.get().await?;
    let mut pacer = Pacer::new(extent, options.batch_size);
    loop {
        let range = next.fetch_add(1, Ordering::Relaxed);
        if range >= extent.ranges() || options.stopped() {
            return Ok(done);
        }
        let key = range as i32;
        if !db::try_advisory_lock(&client, RANGE_LOCK_NAMESPACE, key).await? {
            tracing::debug!(range, "range held by another process");
            done.push(RangeReport {
                busy: true,
                ..RangeReport::default()
            });
            continue;
        }
        let result = sweep_range(&mut client, options, extent, range, &mut pacer, progress).await;
        client = match db::release_advisory_lock(client, RANGE_LOCK_NAMESPACE, key).await {
            Some(c) => c,
            None => {
                result?;
                return Err(Error::Internal(format!(
                    "could not release the lock of range {range}"
                )));
            }
        };
        done.push(result?);
    }
}

async fn sweep_range(
    client: &mut deadpool_postgres::Object,
    options: &Options,
    extent: Extent,
    range: u32,
    pacer: &mut Pacer,
    progress: &Progress,
) -> Result<RangeReport> {
    let mut report = RangeReport::default();
    let first = range * RANGE_BLOCKS;
    let last_range = range + 1 >= extent.ranges();
    let end = first.saturating_add(RANGE_BLOCKS);
    let mut from = first;
    while from < end && !options.stopped() {
        let to = from.saturating_add(pacer.pages).min(end);
        let lower = Tid {
            block: from,
            offset: 0,
        };
        // The last batch of the table reaches past its end: rows added since it was measured.
        let upper = if last_range && to == end {
            Tid {
                block: u32::MAX,
                offset: u16::MAX,
            }
        } else {
            Tid {
                block: to,
                offset: 0,
            }
        };
        pacer.after(batch(client, options, lower, upper, &mut report, progress).await?);
        from = to;
    }
    Ok(report)
}

async fn batch(
    client: &mut deadpool_postgres::Object,
    options: &Options,
    lower: Tid,
    upper: Tid,
    report: &mut RangeReport,
    progress: &Progress,
) -> Result<Duration> {
    let started = Instant::now();
    let include = options.policy.include_anonymous;
    let statement = if options.queue_empty {
        BATCH_NO_QUEUE
    } else {
        BATCH
    };
    let result = async {
        let tx = client.transaction().await?;
        tx.batch_execute(PLAN).await?;
        let row = tx.query_one(statement, &[&lower, &upper, &include]).await?;
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(row)
    }
    .await;
    let counts = match result {
        Ok(row) => {
            let count = |i: usize| -> Result<u64> { Ok(row.value::<i64>(i)? as u64) };
            let (made, waiting) = (count(0)?, count(4)?);
            report.scanned += count(1)?;
            report.skipped_deleted += count(2)?;
            report.skipped_anonymous += count(3)?;
            // A profile that appeared while the batch ran (ON CONFLICT) is neither missing
            // nor raced here: the batch does not count its candidates.
            report.users += made + waiting;
            report.created += made;
            report.deferred += waiting;
            (made + waiting, made)
        }
        Err(e) if is_connection_error(&e) => {
            return Err(e).context("creating a batch of profiles");
        }
        Err(e) => {
            tracing::debug!(error = %e, "batch failed; retrying its users one by one");
            one_by_one(client, options, lower, upper, report).await?
        }
    };
    progress.done.fetch_add(counts.0, Ordering::Relaxed);
    progress.created.fetch_add(counts.1, Ordering::Relaxed);
    report.batches += 1;
    let took = started.elapsed();
    report.longest_batch = report.longest_batch.max(took);
    Ok(took)
}

/// The batch's users through [`apply::create`], which isolates the one that fails.
async fn one_by_one(
    client: &mut deadpool_postgres::Object,
    options: &Options,
    lower: Tid,
    upper: Tid,
    report: &mut RangeReport,
) -> Result<(u64, u64)> {
    let include = options.policy.include_anonymous;
    let scanned: i64 = client
        .query_one(SCANNED, &[&lower, &upper])
        .await
        .context("counting a batch's users")?
        .value(0)?;
    report.scanned += scanned as u64;
    let mut ids: Vec<Uuid> = Vec::new();
    for row in client
        .query(LIST, &[&lower, &upper])
        .await
        .context("listing a batch's users without a profile")?
    {
        let (id, deleted, anonymous): (Uuid, bool, bool) =
            (row.value(0)?, row.value(1)?, row.value(2)?);
        match (deleted, anonymous && !include) {
            (true, _) => report.skipped_deleted += 1,
            (false, true) => report.skipped_anonymous += 1,
            (false, false) => ids.push(id),
        }
    }
    let mode = apply::Mode {
        include_anonymous: include,
        repairing: false,
    };
    let outcome = apply::create(client, &ids, None, mode).await?;
    for f in &outcome.failures {
        tracing::warn!(user_id = %f.user_id, sqlstate = %f.sqlstate, reason = %f.reason,
            "profile could not be created; queued for repair");
    }
    report.users += ids.len() as u64;
    report.created += outcome.created;
    report.raced += outcome.raced;
    report.deferred += outcome.deferred;
    report.left_missing.extend(outcome.left_missing);
    report.failures.extend(outcome.failures);
    Ok((ids.len() as u64, outcome.created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_when_slow_grow_back_when_fast_and_stay_within_the_configured_size() {
        let extent = Extent {
            blocks: 100_000,
            per_page: 25.0,
        };
        let mut pacer = Pacer::new(extent, 10_000);
        assert_eq!(pacer.pages, 400);
        pacer.after(Duration::from_millis(600));
        assert_eq!(pacer.pages, 200, "at most halved");
        pacer.after(Duration::from_millis(150));
        assert_eq!(pacer.pages, 200, "on target");
        pacer.after(Duration::from_millis(100));
        assert_eq!(pacer.pages, 300);
        for _ in 0..10 {
            pacer.after(Duration::from_millis(10));
        }
        assert_eq!(pacer.pages, 400, "never past sync.batch_size users");
        for _ in 0..20 {
            pacer.after(Duration::from_secs(5));
        }
        assert_eq!(pacer.pages, 1, "at least a page");
    }
}
