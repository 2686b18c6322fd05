//! Scale: the backfill and an unchanged daemon cycle at 1M, 3M and 10M users, beside the bare
//! statements, in one run.
//!
//!     cargo bench --bench scale                              # 1M, 3M and 10M
//!     cargo bench --bench scale -- --sizes 1000000,3000000
//!     cargo bench --bench scale -- --build-only              # fill the cache, measure nothing
//!
//! The databases are kept between runs in a cluster of the bench's own (shared_buffers 1 GB, as
//! in the figures of issue 14) under `USERSYNC_SCALE_CACHE`, by default `target/tmp/scale-cache`:
//! the first run builds them (10M users take some minutes), a rerun finds them and skips the
//! build. Each run applies the current migrations first. Delete the directory to rebuild.
//!
//! Per size: (a) the bare `INSERT … SELECT … NOT EXISTS … ON CONFLICT DO NOTHING` into an empty
//! profile table, (b) `usersync sync` with one worker per core and (c) with one worker, each on
//! an emptied table; then, with nothing missing, one bare anti-join against the daemon's
//! unchanged cycle (its sweep and its integrity check), the same cycle after some sign-ups and
//! deletions, and the full scan that runs on its own schedule.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

const ROLES_SQL: &str = include_str!("../tests/fixtures/roles.sql");
const AUTH_SQL: &str = include_str!("../tests/fixtures/auth_schema.sql");

/// Users inserted per statement while building.
const BUILD_CHUNK: u64 = 500_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<u64> = sizes_arg().unwrap_or_else(|| vec![1_000_000, 3_000_000, 10_000_000]);
    let build_only = std::env::args().any(|a| a == "--build-only");
    let cache = std::env::var_os("USERSYNC_SCALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-cache"));
    let server = Server::start(&cache).await;
    for &users in &sizes {
        server.ensure_built(users).await;
    }
    if build_only {
        return;
    }
    let mut results = Vec::new();
    for &users in &sizes {
        results.push(scale::measure(&server, users).await);
    }
    scale::print(&results);
}

fn sizes_arg() -> Option<Vec<u64>> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--sizes")?;
    Some(
        args.get(i + 1)?
            .split(',')
            .map(|s| s.replace('_', "").parse().expect("--sizes: numbers"))
            .collect(),
    )
}

#[path = "scale_parts/server.rs"]
mod server;

use server::Server;

mod scale {
    use super::*;
    use common::{BARE_COUNT, BARE_INSERT, median_of, run_binary, timed};
    use usersync::daemon::run_job;
    use usersync::job::JobKind;
    use usersync::state::Shared;

    /// Changes through the triggers before the last measured cycle.
    const CHANGES: u64 = 1_000;

    pub struct Sized {
        pub users: u64,
        pub cores: usize,
        pub bare: Duration,
        pub many: common::BinaryRun,
        pub one: common::BinaryRun,
        pub anti_join: Duration,
        pub full_scan: Duration,
        pub cycle: Duration,
        pub cycle_blocks: (i64, i64, i64),
        pub changed_cycle: Duration,
    }

    pub async fn measure(server: &Server, users: u64) -> Sized {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut db = server.client(users).await;
        let url = server.runtime_url(&Server::dbname(users));
        prepare(&mut db, &url).await;
        eprintln!("{users} users: warming the cache");
        db.batch_execute("SELECT count(*) FROM auth.users")
            .await
            .unwrap();
        let (bare, many, one) = backfill(&db, &url, users, cores).await;
        eprintln!("{users} users: the steady state");
        let steady = steady(&db, &url).await;
        Sized {
            users,
            cores,
            bare,
            many,
            one,
            anti_join: steady.anti_join,
            full_scan: steady.full_scan,
            cycle: steady.cycle,
            cycle_blocks: steady.cycle_blocks,
            changed_cycle: steady.changed_cycle,
        }
    }

    /// The current migrations, and the runtime role the daemon runs as, granted.
    async fn prepare(db: &mut Client, url: &str) {
        usersync::db::migrate::up(db, Default::default())
            .await
            .unwrap();
        db.batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'usersync_runtime') THEN
                     CREATE ROLE usersync_runtime LOGIN;
                 END IF;
             END $$",
        )
        .await
        .unwrap();
        let columns = settings(url).integrity.user_id_columns;
        let granted = usersync::db::grant::grant(db, "usersync_runtime", &columns)
            .await
            .unwrap();
        assert!(granted.complete(), "{:?}", granted.missing);
    }

    /// Every profile missing, each run on an emptied table: the bare statement, then the
    /// binary with one worker per core and with one.
    async fn backfill(
        db: &Client,
        url: &str,
        users: u64,
        cores: usize,
    ) -> (Duration, common::BinaryRun, common::BinaryRun) {
        empty_profiles(db, false).await;
        eprintln!("{users} users: the bare statement");
        let (bare, created) = timed(db.execute(BARE_INSERT, &[])).await;
        let created = created.unwrap();
        empty_profiles(db, true).await;
        eprintln!("{users} users: usersync sync, {cores} workers");
        let many = run_binary(url, cores);
        assert_eq!(
            many.created, created,
            "usersync created what the bare statement did"
        );
        empty_profiles(db, true).await;
        eprintln!("{users} users: usersync sync, 1 worker");
        let one = run_binary(url, 1);
        assert_eq!(one.created, created);
        (bare, many, one)
    }

    struct Steady {
        anti_join: Duration,
        full_scan: Duration,
        cycle: Duration,
        cycle_blocks: (i64, i64, i64),
        changed_cycle: Duration,
    }

    /// Nothing missing: the bare anti-join, the full scan, unchanged cycles and the blocks of
    /// auth.users they read, a cycle after changes through the triggers.
    async fn steady(db: &Client, url: &str) -> Steady {
        db.batch_execute("VACUUM ANALYZE public.user_profiles")
            .await
            .unwrap();
        db.batch_execute("CHECKPOINT").await.unwrap();
        let anti_join =
            median_of(3, || async { timed(db.query_one(BARE_COUNT, &[])).await.0 }).await;
        let settings = settings(url);
        let shared = Shared::new(settings.clone()).unwrap();
        let (full_scan, run) = timed(run_job(&shared, JobKind::FullScan)).await;
        assert!(run.outcome.ran(), "{}", run.summary);
        close(shared, db).await;
        let before = reads_of_auth_users(db).await;
        let shared = Shared::new(settings.clone()).unwrap();
        let cycle_took = median_of(5, || async { timed(cycle(&shared)).await.0 }).await;
        close(shared, db).await;
        let after = reads_of_auth_users(db).await;
        let cycle_blocks = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        let changed_cycle = changed(db, &settings).await;
        Steady {
            anti_join,
            full_scan,
            cycle: cycle_took,
            cycle_blocks,
            changed_cycle,
        }
    }

    /// Changes through the triggers (sign-ups and deleted profiles), then one cycle.
    async fn changed(db: &Client, settings: &usersync::config::Settings) -> Duration {
        db.batch_execute(&format!(
            "INSERT INTO auth.users (id, email, created_at)
             SELECT gen_random_uuid(), 'scale-change-' || gen_random_uuid() || '@bench.invalid', now()
             FROM generate_series(1, {});
             DELETE FROM public.user_profiles WHERE id IN
                 (SELECT id FROM public.user_profiles LIMIT {});
             SELECT pg_stat_force_next_flush();",
            CHANGES * 9 / 10,
            CHANGES / 10
        ))
        .await
        .unwrap();
        let shared = Shared::new(settings.clone()).unwrap();
        let (changed_cycle, ()) = timed(cycle(&shared)).await;
        assert_eq!(shared.metrics.changes_seen.get(), CHANGES);
        close(shared, db).await;
        db.batch_execute("DELETE FROM auth.users WHERE email LIKE 'scale-change-%'")
            .await
            .unwrap();
        changed_cycle
    }

    fn settings(url: &str) -> usersync::config::Settings {
        usersync::config::Settings::load(&usersync::config::Sources {
            file: None,
            env: vec![
                ("DATABASE_URL".into(), url.into()),
                ("USERSYNC__LOG__LEVEL".into(), "warn".into()),
            ],
        })
        .unwrap()
    }

    /// One daemon cycle: the integrity check and the sweep, as their schedules run them.
    async fn cycle(shared: &std::sync::Arc<Shared>) {
        for kind in [JobKind::Integrity, JobKind::Sweep] {
            let run = run_job(shared, kind).await;
            assert!(run.outcome.ran(), "{}: {}", kind.name(), run.summary);
            assert!(
                !run.summary.starts_with("full scan"),
                "an unchanged cycle ran a full scan: {}",
                run.summary
            );
        }
    }

    /// Closes the daemon's connections and waits for their backends to exit (each flushes its
    /// statistics as it does).
    async fn close(shared: std::sync::Arc<Shared>, db: &Client) {
        shared.db.pool.close();
        drop(shared);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let others: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if others == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn reads_of_auth_users(db: &Client) -> (i64, i64, i64) {
        // This session's own reads (its plans open auth.users's indexes) counted first.
        db.batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        db.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let row = db
            .query_one(
                "SELECT io.heap_blks_read + io.heap_blks_hit, io.idx_blks_read + io.idx_blks_hit,
                        st.seq_scan + st.idx_scan
                 FROM pg_statio_all_tables io JOIN pg_stat_all_tables st USING (relid)
                 WHERE relid = 'auth.users'::regclass",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// Every profile gone, and auth.users as the build left it: each backfill's foreign-key
    /// checks lock every user row (FOR KEY SHARE), which leaves the next backfill pages to
    /// clean up, so each of the three starts from frozen pages.
    async fn empty_profiles(db: &Client, vacuum: bool) {
        db.batch_execute("TRUNCATE public.user_profiles, usersync.repair_queue")
            .await
            .unwrap();
        if vacuum {
            db.batch_execute("VACUUM public.user_profiles")
                .await
                .unwrap();
        }
        db.batch_execute("VACUUM (FREEZE) auth.users")
            .await
            .unwrap();
        db.batch_execute("CHECKPOINT").await.unwrap();
    }

    pub fn print(results: &[Sized]) {
        let Some(first) = results.first() else { return };
        let cores = first.cores;
        println!(
            "\nbackfill, every profile missing (target: {cores} workers ≤ 0.8x, 1 worker ≤ 1.1x, batches < 500 ms, RSS ≤ 50 MB):"
        );
        println!(
            "    {:>10}  {:>9}  {:>18}  {:>18}  {:>15}  {:>14}",
            "users",
            "bare",
            format!("{cores} workers"),
            "1 worker",
            "longest batch",
            "peak RSS"
        );
        for r in results {
            let a = r.bare.as_secs_f64();
            println!(
                "    {:>10}  {:>8.1}s  {:>8.1}s {:>6.2}x   {:>8.1}s {:>6.2}x   {:>5.0} / {:>4.0} ms  {:>4.1} / {:>4.1} MB",
                r.users,
                a,
                r.many.elapsed.as_secs_f64(),
                r.many.elapsed.as_secs_f64() / a,
                r.one.elapsed.as_secs_f64(),
                r.one.elapsed.as_secs_f64() / a,
                r.many.longest_batch_ms,
                r.one.longest_batch_ms,
                r.many.peak_rss_mb,
                r.one.peak_rss_mb,
            );
        }
        println!(
            "\nsteady state, nothing missing (target: an unchanged cycle ≤ 0.05x the bare anti-join, no block of auth.users read):"
        );
        println!(
            "    {:>10}  {:>14}  {:>20}  {:>24}  {:>22}  {:>18}",
            "users",
            "bare anti-join",
            "unchanged cycle",
            "auth.users heap/index/scans",
            format!("after {CHANGES} changes"),
            "full scan"
        );
        for r in results {
            let a = r.anti_join.as_secs_f64();
            println!(
                "    {:>10}  {:>13.3}s  {:>9.1} ms {:>7.4}x  {:>24}  {:>11.1} ms {:>7.4}x  {:>8.2}s {:>6.2}x",
                r.users,
                a,
                r.cycle.as_secs_f64() * 1e3,
                r.cycle.as_secs_f64() / a,
                format!(
                    "{}/{}/{}",
                    r.cycle_blocks.0, r.cycle_blocks.1, r.cycle_blocks.2
                ),
                r.changed_cycle.as_secs_f64() * 1e3,
                r.changed_cycle.as_secs_f64() / a,
                r.full_scan.as_secs_f64(),
                r.full_scan.as_secs_f64() / a,
            );
        }
    }
}
