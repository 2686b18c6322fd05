//! The users API under load: wrk on loopback against the real `usersync run` at 1M users.
//!
//!     cargo bench --bench users_api                 # 1,000,000 users (needs wrk)
//!     cargo bench --bench users_api -- --users 100000
//!
//! Times `GET /v1/users?limit=100` for the first page and for a page 90% deep (its cursor),
//! p50/p99 latency and throughput, then the same deep page done with OFFSET in plain SQL
//! against the keyset statement, to show the gap.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BenchDb, arg_value, median_of, populate, timed};

const TOKEN: &str = "bench-token-0123456789abcdef";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = arg_value("--users").unwrap_or(1_000_000);
    let (bench, db) = BenchDb::create().await;
    populate(&db, users).await;
    db.batch_execute(
        "INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
         SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
         FROM auth.users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
         WHERE random() < 0.9",
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE").await.unwrap();
    let deep_offset = (users as f64 * 0.9) as i64;
    let deep_id: uuid::Uuid = db
        .query_one(
            "SELECT id FROM auth.users WHERE deleted_at IS NULL ORDER BY id OFFSET $1 LIMIT 1",
            &[&deep_offset],
        )
        .await
        .unwrap()
        .get(0);
    let cursor = usersync::db::users::encode_cursor(deep_id);

    let (first, deep) = load(&bench.url, &cursor);
    let (keyset, offset) = plain_sql(&db, deep_id, deep_offset).await;
    drop(db);
    bench.drop_db().await;

    println!("\nGET /v1/users?limit=100 at {users} users, wrk -t2 -c16 -d10s on loopback:");
    for (label, r) in [("first page", &first), ("page 90% deep", &deep)] {
        println!(
            "    {label:<14} p50 {:>8}  p99 {:>8}  {:>8.0} req/s",
            r.p50, r.p99, r.rps
        );
    }
    println!(
        "    deep / first: p50 {:.2}x, throughput {:.2}x (target: the deep page within 1.5x)",
        millis(&deep.p50) / millis(&first.p50),
        first.rps / deep.rps
    );
    println!("\nthe same deep page in plain SQL (median of 5):");
    println!(
        "    keyset  (WHERE id > cursor)  {:>9.3} ms",
        keyset.as_secs_f64() * 1e3
    );
    println!(
        "    OFFSET {deep_offset:<9}            {:>9.3} ms  ({:.0}x)",
        offset.as_secs_f64() * 1e3,
        offset.as_secs_f64() / keyset.as_secs_f64()
    );
}

/// The real daemon with the users API, loaded by wrk on the first page and on a deep one.
fn load(url: &str, cursor: &str) -> (WrkResult, WrkResult) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("run")
        .env("DATABASE_URL", url)
        .env("USERSYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("USERSYNC__API__TOKEN", TOKEN)
        .env("USERSYNC__SYNC__SCHEDULE", "0 0 0 1 1 *")
        .env("USERSYNC__INTEGRITY__SCHEDULE", "0 0 0 1 1 *")
        .env("USERSYNC__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("running usersync run");
    std::thread::sleep(Duration::from_secs(2));
    let base = format!("http://127.0.0.1:{port}/v1/users?limit=100");
    let first = wrk(&base);
    let deep = wrk(&format!("{base}&cursor={cursor}"));
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    (first, deep)
}

/// The same deep page in plain SQL: keyset and OFFSET, median of 5.
async fn plain_sql(
    db: &tokio_postgres::Client,
    deep_id: uuid::Uuid,
    deep_offset: i64,
) -> (Duration, Duration) {
    let keyset_sql = format!(
        "SELECT u.id FROM auth.users u LEFT JOIN public.user_profiles p ON p.id = u.id
         WHERE u.id > '{deep_id}' AND u.deleted_at IS NULL ORDER BY u.id LIMIT 100"
    );
    let offset_sql = format!(
        "SELECT u.id FROM auth.users u LEFT JOIN public.user_profiles p ON p.id = u.id
         WHERE u.deleted_at IS NULL ORDER BY u.id OFFSET {deep_offset} LIMIT 100"
    );
    let keyset = median_of(5, || async {
        timed(db.query(keyset_sql.as_str(), &[])).await.0
    })
    .await;
    let offset = median_of(5, || async {
        timed(db.query(offset_sql.as_str(), &[])).await.0
    })
    .await;
    (keyset, offset)
}

/// wrk's latency text ("6.95ms", "1.90s", "850.00us") in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        "m" => value * 60e3,
        _ => f64::NAN,
    }
}

struct WrkResult {
    p50: String,
    p99: String,
    rps: f64,
}

fn wrk(url: &str) -> WrkResult {
    let started = Instant::now();
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d10s", "--latency", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(url)
        .output()
        .expect("wrk (Debian package wrk) is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "wrk did not run: {text}"
    );
    assert!(!text.contains("Non-2xx"), "errors under load: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    WrkResult {
        p50: field("50%"),
        p99: field("99%"),
        rps: field("Requests/sec:").parse().unwrap(),
    }
}
