//! The daemon's memory: resident set of an idle `usersync run`, and after a thousand cycles.
//!
//!     cargo bench --bench daemon                  # 100,000 users, 1000 cycles
//!     cargo bench --bench daemon -- --users 1000000 --cycles 1000
//!
//! The real binary runs against a database the bench builds (users with profiles), with every
//! schedule at one second. A cycle is a sign-up whose profile the trigger fails to create (a
//! failure only the sign-up's session sees), repaired by the daemon through NOTIFY, waited
//! for, plus a scrape of /metrics and /readyz. VmRSS is read from /proc before and after.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BenchDb, arg_value, populate};

const FLAKY: &str = "
    CREATE FUNCTION public.flaky() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('bench.flaky', true) = 'on' THEN RAISE EXCEPTION 'transient'; END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER flaky BEFORE INSERT ON public.user_profiles
        FOR EACH ROW EXECUTE FUNCTION public.flaky();";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = arg_value("--users").unwrap_or(100_000);
    let cycles = arg_value("--cycles").unwrap_or(1000);
    let (bench, db) = BenchDb::create().await;
    populate(&db, users).await;
    db.batch_execute(
        "INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
         SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
         FROM auth.users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p",
    )
    .await
    .unwrap();
    db.batch_execute(FLAKY).await.unwrap();
    db.batch_execute("VACUUM ANALYZE").await.unwrap();

    let (mut daemon, listen) = start(&bench.url);
    std::thread::sleep(Duration::from_secs(5)); // a few of every job
    let idle = rss_kib(daemon.id());
    db.batch_execute("SET bench.flaky = on").await.unwrap();
    let loop_started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..cycles {
        slowest = slowest.max(cycle(&db, i).await);
        get(&listen, "/metrics").expect("metrics");
        get(&listen, "/readyz").expect("readyz");
    }
    let after = rss_kib(daemon.id());
    let metrics = get(&listen, "/metrics").unwrap();
    let repairs = metrics
        .lines()
        .find_map(|l| l.strip_prefix("usersync_profiles_created_total{source=\"repair\"} "))
        .unwrap_or("?")
        .to_string();
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    drop(db);
    bench.drop_db().await;

    println!("\nusersync run against {users} users, every schedule at one second:");
    println!(
        "    idle resident memory:                      {:>7.1} MB   target ≤ 20 MB",
        idle as f64 / 1024.0
    );
    println!(
        "    after {cycles} NOTIFY repair cycles + scrapes: {:>7.1} MB   growth {:+.1} MB in {:.0?}",
        after as f64 / 1024.0,
        (after as f64 - idle as f64) / 1024.0,
        loop_started.elapsed()
    );
    println!("    profiles repaired: {repairs}; slowest sign-up to profile: {slowest:.0?}");
    println!("    exit on SIGTERM: {status}");
}

/// The real binary, every schedule at one second, once it answers: it and its address.
fn start(url: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("run")
        .env("DATABASE_URL", url)
        .env("USERSYNC__HTTP__LISTEN", &listen)
        .env("USERSYNC__SYNC__SCHEDULE", "* * * * * *")
        .env("USERSYNC__SYNC__REPAIR_SCHEDULE", "* * * * * *")
        .env("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *")
        .env("USERSYNC__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("running usersync run");
    let started = Instant::now();
    while get(&listen, "/healthz").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (daemon, listen)
}

/// A sign-up whose profile the trigger fails to create, waited for until the daemon repaired
/// it: how long that took.
async fn cycle(db: &tokio_postgres::Client, i: u64) -> Duration {
    let id = uuid::Uuid::new_v4();
    let email = format!("cycle{i}.{}@bench.invalid", id.simple());
    db.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
        &[&id, &email],
    )
    .await
    .unwrap();
    let signed = Instant::now();
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM public.user_profiles WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        if done == 1 {
            return signed.elapsed();
        }
        assert!(
            signed.elapsed() < Duration::from_secs(10),
            "cycle {i} not repaired"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/pid/status")
}

/// GET `path`, the body when the status is 200.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then(|| {
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
}
