//! The sync engine against the bare SQL, in one run on data the bench builds itself.
//!
//!     cargo bench --bench sync                    # 1,000,000 users
//!     cargo bench --bench sync -- --users 100000
//!
//! With every profile missing (the table truncated and vacuumed first, the planner trap that
//! can turn a backfill quadratic): (a) the bare single `INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT DO
//! NOTHING`, (b) `usersync sync` with 1 worker, (c) with one worker per core, (d) one INSERT
//! round trip per user on a sample. Then the steady state with nothing missing: the full sweep
//! against a bare anti-join count, and a repair pass over an empty queue. (b) and (c) run the
//! real binary, whose peak resident memory is read from the kernel when it exits.
//!
//! Needs a superuser URL in `USERSYNC_BENCH_DATABASE_URL`, `DATABASE_URL`, or a server on
//! 127.0.0.1:5432; it creates and drops its own database.

mod common;

use std::time::{Duration, Instant};

use common::{
    BARE_COUNT, BARE_INSERT, BenchDb, arg_value, median_of, populate, row, run_binary, timed,
};
use tokio_postgres::Client;
use uuid::Uuid;

const SAMPLE: usize = 5_000;

/// The backfill's figures.
struct Backfill {
    bare: Duration,
    created: u64,
    trap: Option<Duration>,
    one: common::BinaryRun,
    many: common::BinaryRun,
    per_row: Duration,
}

/// The steady state's.
struct Steady {
    count: Duration,
    sweep: Duration,
    sweep_lifecycle: Duration,
    repair: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = arg_value("--users").unwrap_or(1_000_000);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let (bench, db) = BenchDb::create().await;
    populate(&db, users).await;
    eprintln!("{users} users built in {:.1?}", started.elapsed());
    let backfill = backfill(&db, &bench.url, users, cores).await;
    let settings = bench.settings(&[("USERSYNC__SYNC__WORKERS", &cores.to_string())]);
    let steady = steady(&db, &settings).await;
    drop(db);
    bench.drop_db().await;
    print_backfill(users, cores, &backfill);
    print_steady(cores, &steady);
}

/// Every profile missing. The bare statement runs on a truncated table the planner knows
/// nothing about (it then assumes a few pages and hashes); it is also timed in the trap state,
/// truncated and vacuumed, which usersync has to survive on its own.
async fn backfill(db: &Client, url: &str, users: u64, cores: usize) -> Backfill {
    empty_profiles(db, false).await;
    let (bare, created) = timed(db.execute(BARE_INSERT, &[])).await;
    let created = created.unwrap();
    empty_profiles(db, true).await;
    let trap = if users <= 200_000 {
        Some(timed(db.execute(BARE_INSERT, &[])).await.0)
    } else {
        None // quadratic: many minutes at a million
    };
    empty_profiles(db, true).await;
    let one = run_binary(url, 1);
    assert_eq!(
        one.created, created,
        "usersync created what the bare statement did"
    );
    empty_profiles(db, true).await;
    let many = run_binary(url, cores);
    assert_eq!(many.created, created);
    let per_row = per_row_sample(db).await * users as u32;
    Backfill {
        bare,
        created,
        trap,
        one,
        many,
        per_row,
    }
}

/// Nothing missing: the sweep's detection alone, and with the lifecycle statements (what the
/// CLI's `usersync sync` and the daemon's full scan run), against the bare count; a repair pass
/// over an empty queue. The daemon's cycles between full scans read neither table
/// (benches/scale.rs measures them).
async fn steady(db: &Client, settings: &usersync::config::Settings) -> Steady {
    db.batch_execute("VACUUM ANALYZE public.user_profiles")
        .await
        .unwrap();
    let count = median_of(5, || async { timed(db.query_one(BARE_COUNT, &[])).await.0 }).await;
    let pool = usersync::db::connect(&settings.database).await.unwrap();
    let options = usersync::sync::Options {
        apply_lifecycle: false,
        ..usersync::sync::Options::from_settings(&settings.sync)
    };
    let with_lifecycle = usersync::sync::Options {
        apply_lifecycle: true,
        ..options.clone()
    };
    let sweep = |options: usersync::sync::Options| {
        let pool = pool.clone();
        async move {
            median_of(5, || async {
                let (elapsed, report) = timed(usersync::sync::run(&pool, &options, None)).await;
                assert_eq!(report.unwrap().total_created(), 0);
                elapsed
            })
            .await
        }
    };
    let (sweep_plain, sweep_lifecycle) = (sweep(options).await, sweep(with_lifecycle).await);
    let mut client = pool.get().await.unwrap();
    let mut repairs = Vec::new();
    for _ in 0..21 {
        let (took, drained) = timed(usersync::sync::repair::drain(
            &mut client,
            &Default::default(),
            false,
            &mut Vec::new(),
        ))
        .await;
        drained.unwrap();
        repairs.push(took);
    }
    repairs.sort();
    let repair = repairs[repairs.len() / 2];
    Steady {
        count,
        sweep: sweep_plain,
        sweep_lifecycle,
        repair,
    }
}

fn print_backfill(users: u64, cores: usize, b: &Backfill) {
    let a = b.bare.as_secs_f64();
    let ratio = |d: Duration| d.as_secs_f64() / a;
    println!(
        "\nbackfill of {} missing profiles among {users} users ({cores} cores):",
        b.created
    );
    row("(a) bare INSERT … SELECT, one statement", b.bare, 1.0, "");
    row(
        "(b) usersync sync, 1 worker",
        b.one.elapsed,
        ratio(b.one.elapsed),
        "target ≤ 1.1",
    );
    let many = format!("(c) usersync sync, {cores} workers");
    row(&many, b.many.elapsed, ratio(b.many.elapsed), "target ≤ 0.8");
    if let Some(trap) = b.trap {
        row(
            "    the same, emptied table not analyzed",
            trap,
            ratio(trap),
            "the planner trap",
        );
    }
    let per_row = format!("(d) one round trip per user (from {SAMPLE})");
    row(&per_row, b.per_row, ratio(b.per_row), "");
    println!(
        "    longest batch transaction: {:.0} ms (1 worker), {:.0} ms ({cores} workers); target < 500 ms",
        b.one.longest_batch_ms, b.many.longest_batch_ms
    );
    println!(
        "    peak resident memory of usersync: {:.1} MB (1 worker), {:.1} MB ({cores} workers); target ≤ 50 MB",
        b.one.peak_rss_mb, b.many.peak_rss_mb
    );
}

fn print_steady(cores: usize, s: &Steady) {
    let ratio = |d: Duration| d.as_secs_f64() / s.count.as_secs_f64();
    println!("\nsteady state, nothing missing (median of 5):");
    row("bare anti-join count", s.count, 1.0, "");
    let sweep = format!("usersync full sweep without the lifecycle, {cores} workers");
    row(&sweep, s.sweep, ratio(s.sweep), "target ≤ 1.2");
    let lifecycle = "    with the lifecycle statements (CLI, full scan)";
    row(lifecycle, s.sweep_lifecycle, ratio(s.sweep_lifecycle), "");
    println!(
        "    repair pass over an empty queue: {:.2} ms (median of 21); target ≤ 5 ms",
        s.repair.as_secs_f64() * 1e3
    );
}

/// An emptied profile table; `trap`: also vacuumed, so the planner takes it for one row.
async fn empty_profiles(db: &Client, trap: bool) {
    db.batch_execute("TRUNCATE public.user_profiles")
        .await
        .unwrap();
    if trap {
        db.batch_execute("VACUUM public.user_profiles")
            .await
            .unwrap();
    }
    db.batch_execute("CHECKPOINT").await.unwrap();
}

/// Per-user cost of one INSERT round trip per user, on a sample: profiles deleted, then
/// created again one statement each.
async fn per_row_sample(db: &Client) -> Duration {
    let ids: Vec<Uuid> = db
        .query(
            &format!(
                "DELETE FROM public.user_profiles
                 WHERE id IN (SELECT id FROM public.user_profiles LIMIT {SAMPLE}) RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let insert = db
        .prepare(
            "INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
             SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
             FROM auth.users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
             WHERE u.id = $1 ON CONFLICT (id) DO NOTHING",
        )
        .await
        .unwrap();
    let started = Instant::now();
    for id in &ids {
        db.execute(&insert, &[id]).await.unwrap();
    }
    started.elapsed() / ids.len().max(1) as u32
}
