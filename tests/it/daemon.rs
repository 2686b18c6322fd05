//! `usersync run`, started in-process on port 0 against a test database.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use usersync::config::Settings;

use crate::support::{AuthUser, TestDb, count, insert_users};

/// A daemon running in this process.
pub struct Daemon {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<usersync::Result<()>>,
}

impl Daemon {
    pub async fn start(settings: Settings) -> Daemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(usersync::daemon::run(settings, listener, async {
            let _ = stopped.await;
        }));
        Daemon {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// GET `path`: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.request("GET", path, &[]).await;
        (status, body)
    }

    /// Any request: (status, head, body).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        request_at(self.addr, method, path, headers).await
    }

    /// The value of one sample in /metrics, e.g. `usersync_database_up`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    }

    pub async fn stop(mut self) -> usersync::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

/// Any request, on a connection of its own: (status, head, body). Spawnable: it needs only the
/// address.
pub async fn request_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: usersync\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_string(), body.to_string())
}

/// Waits until `condition` holds, up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub const NEVER: &str = "0 0 0 1 1 *"; // once a year: keeps a job out of the way

pub fn emails(n: usize, tag: &str) -> Vec<AuthUser> {
    (0..n)
        .map(|i| {
            AuthUser::email(&format!(
                "{tag}{i}.{}@example.test",
                uuid::Uuid::new_v4().simple()
            ))
        })
        .collect()
}

/// Signs up `n` users in a session whose profile inserts fail ([`FAIL_IN_SIGNUP_SESSION`]):
/// each lands in the repair queue, with a NOTIFY. Their ids.
pub async fn sign_up_failing(test_db: &TestDb, n: usize, tag: &str) -> Vec<uuid::Uuid> {
    let signup = test_db.admin().await;
    signup.batch_execute("SET test.flaky = on").await.unwrap();
    let users = emails(n, tag);
    insert_users(&signup, &users).await.unwrap();
    users.iter().map(|u| u.id).collect()
}

/// How many of these users have a profile.
pub async fn profiles_of(client: &tokio_postgres::Client, ids: &[uuid::Uuid]) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM public.user_profiles WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0)
}

pub async fn users_without_trigger(admin: &tokio_postgres::Client, n: i64) {
    admin
        .batch_execute(&format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 'd' || g || '.' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n}) g;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_health_and_metrics_and_a_sweep_raises_the_created_counter() {
    let test_db = TestDb::migrated().await;
    users_without_trigger(&test_db.admin().await, 40).await;
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]))
    .await;
    assert_eq!(
        daemon.get("/healthz").await,
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(daemon.get("/readyz").await.0, 200);
    assert_eq!(daemon.get("/nowhere").await.0, 404);
    let created = "usersync_profiles_created_total{source=\"sweep\"}";
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon.metric(created).await == 40.0
        })
        .await
    );
    assert_eq!(
        count(&test_db.admin().await, "public.user_profiles").await,
        40
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon
                .metric("usersync_job_runs_total{job=\"integrity\",outcome=\"success\"}")
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(daemon.metric("usersync_database_up").await, 1.0);
    assert_eq!(
        daemon
            .metric("usersync_integrity_findings{check=\"missing_profile\"}")
            .await,
        0.0
    );

    // A broken schema makes the daemon unready, not dead.
    test_db
        .admin()
        .await
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the readiness cache
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""reason":"schema""#) && body.contains(r#""checks":["trigger"]"#),
        "{body}"
    );
    assert_eq!(daemon.get("/healthz").await.0, 200);

    // promtool judges a real scrape.
    let (_, scrape) = daemon.get("/metrics").await;
    daemon.stop().await.unwrap();
    promtool_passes(&scrape);
}

/// `promtool check metrics` accepts a scrape (skipped without promtool, outside CI).
fn promtool_passes(scrape: &str) {
    if !crate::support::tool(
        "the daemon's metrics pass promtool check metrics",
        "promtool",
        &["--version"],
        "Debian package prometheus",
    ) {
        return;
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (the prometheus package) is installed");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), scrape.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A trigger insert that fails only in the sign-up's own session, as a transient failure does:
/// the daemon's repair succeeds.
pub const FAIL_IN_SIGNUP_SESSION: &str = "
    CREATE FUNCTION public.flaky() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('test.flaky', true) = 'on' THEN
            RAISE EXCEPTION 'transient failure';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER flaky BEFORE INSERT ON public.user_profiles
        FOR EACH ROW EXECUTE FUNCTION public.flaky();";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sign_up_trigger_is_repaired_within_a_second_by_notify() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon.metric("usersync_repair_listener_up").await == 1.0
        })
        .await
    );

    let signup = test_db.admin().await;
    signup.batch_execute("SET test.flaky = on").await.unwrap();
    for round in 0..3 {
        let users = emails(5, &format!("flaky{round}"));
        insert_users(&signup, &users).await.unwrap();
        let committed = Instant::now();
        assert_eq!(
            count(&admin, "usersync.repair_queue").await.min(5),
            5,
            "the trigger failed and queued"
        );
        let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.id).collect();
        let repaired = eventually(Duration::from_secs(5), || async {
            admin
                .query_one(
                    "SELECT count(*) FROM public.user_profiles WHERE id = ANY($1)",
                    &[&ids],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 5
        })
        .await;
        let elapsed = committed.elapsed();
        assert!(
            repaired && elapsed < Duration::from_secs(1),
            "round {round}: repaired in {elapsed:?}"
        );
    }
    assert_eq!(count(&admin, "usersync.repair_queue").await, 0);
    assert_eq!(
        daemon
            .metric("usersync_profiles_created_total{source=\"repair\"}")
            .await,
        15.0
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_create_every_missing_profile_exactly_once() {
    let test_db = TestDb::migrated().await;
    users_without_trigger(&test_db.admin().await, 6000).await;
    let settings = test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__BATCH_SIZE", "250"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]);
    let (a, b) = (
        Daemon::start(settings.clone()).await,
        Daemon::start(settings).await,
    );
    let admin = test_db.admin().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&admin, "public.user_profiles").await == 6000
        })
        .await
    );
    // Let any pass still running finish before reading the counters.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let series = "usersync_profiles_created_total{source=\"sweep\"}";
    let created = a.metric(series).await + b.metric(series).await;
    assert_eq!(
        created, 6000.0,
        "each profile created by exactly one daemon"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_the_middle_of_a_backfill_leaves_whole_batches_and_exits_cleanly() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    users_without_trigger(&admin, 40_000).await;
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__BATCH_SIZE", "500"),
        ("USERSYNC__SYNC__WORKERS", "1"),
        ("USERSYNC__DAEMON__SHUTDOWN_GRACE_SECS", "10"),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&admin, "public.user_profiles").await > 0
        })
        .await
    );
    let asked = Instant::now();
    daemon.stop().await.expect("a clean shutdown");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped within the grace period"
    );
    let created = count(&admin, "public.user_profiles").await;
    assert!(
        created > 0 && created < 40_000,
        "interrupted mid-backfill: {created}"
    );
    // Every batch committed whole: one worker, heap order, 500 at a time.
    assert_eq!(
        created % 500,
        0,
        "{created} is not a number of whole batches"
    );
    // Nothing half-done: a pass completes the rest exactly.
    let db = usersync::db::connect(&test_db.runtime_settings_with(&[]).database)
        .await
        .unwrap();
    let report = usersync::sync::run(
        &db,
        &usersync::sync::Options::from_settings(&test_db.runtime_settings_with(&[]).sync),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.created as i64, 40_000 - created);
    assert_eq!(report.raced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_survived_and_work_resumes() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    users_without_trigger(&admin, 20_000).await;
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__BATCH_SIZE", "200"),
    ]))
    .await;
    // Kill every usersync connection, several times, while the backfill runs.
    let name = test_db.name.clone();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name LIKE 'usersync%'",
                &[&name],
            )
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&admin, "public.user_profiles").await == 20_000
        })
        .await,
        "the backfill finished after the terminations"
    );
    // The listener came back too: a failed sign-up is repaired promptly.
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon.metric("usersync_repair_listener_up").await == 1.0
        })
        .await
    );
    let signup = test_db.admin().await;
    signup.batch_execute("SET test.flaky = on").await.unwrap();
    let late = emails(1, "late");
    insert_users(&signup, &late).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            count(&admin, "public.user_profiles").await == 20_001
        })
        .await
    );
    assert_eq!(daemon.metric("usersync_database_up").await, 1.0);
    assert_eq!(daemon.get("/healthz").await.0, 200);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_malformed_client_does_not_stall_the_server() {
    let test_db = TestDb::migrated().await;
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await;
    // A client that sends half a request head and then nothing.
    let mut slow = TcpStream::connect(daemon.addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(daemon.get("/healthz").await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Garbage instead of HTTP gets a 400 and the connection closed.
    let mut garbage = TcpStream::connect(daemon.addr).await.unwrap();
    garbage
        .write_all(b"\x00\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        garbage.read_to_string(&mut response),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response:?}");
    assert_eq!(daemon.get("/metrics").await.0, 200);
    drop(slow);
    daemon.stop().await.unwrap();
}
