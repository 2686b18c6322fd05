//! The URLs Supabase's "Connect" dialog offers, through a real PgBouncer: the transaction
//! pooler is refused in one line (exit 78) before anything is written; through the session
//! pooler the daemons sweep, share ranges, repair on NOTIFY and keep the cheap path.

use std::time::{Duration, Instant};

use crate::daemon::{
    Daemon, FAIL_IN_SIGNUP_SESSION, NEVER, emails, eventually, profiles_of, sign_up_failing,
    users_without_trigger,
};
use crate::support::pgbouncer::{Mode, PgBouncer};
use crate::support::{TestDb, count, insert_users};

/// Runs the binary until it exits, at most `limit`: (exit code, stderr).
fn run_until_exit(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("usersync {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_transaction_pooler_is_refused_in_one_line_naming_the_urls_that_work() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    users_without_trigger(&admin, 25).await;
    let (host, port) = db.server();
    let Some(bouncer) = PgBouncer::start(
        "a_transaction_pooler_is_refused",
        Mode::Transaction,
        &host,
        port,
    ) else {
        return;
    };
    let runtime = bouncer.url(&db.runtime_url());
    let migration = bouncer.url(&db.app_url());
    let cases: [(&[&str], &str); 5] = [
        (&["sync"], &runtime),
        (&["check"], &runtime),
        (&["users", "list"], &runtime),
        (&["migrate", "up"], &migration),
        (&["run"], &runtime),
    ];
    for (args, url) in cases {
        let env = [
            ("DATABASE_URL", url),
            ("USERSYNC__HTTP__LISTEN", "127.0.0.1:0"),
            ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ];
        let (code, stderr) = run_until_exit(args, &env, Duration::from_secs(30));
        assert_eq!(code, 78, "{args:?}: {stderr}");
        let refusal: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("usersync: "))
            .collect();
        assert_eq!(refusal.len(), 1, "{args:?}: {stderr}");
        for words in [
            "database.url",
            "transaction-mode pooler",
            "session pooler",
            "direct connection",
        ] {
            assert!(refusal[0].contains(words), "{args:?}: {words}: {stderr}");
        }
    }
    assert_eq!(
        count(&admin, "public.user_profiles").await,
        0,
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_session_pooler_replicas_sweep_repair_by_notify_and_keep_the_cheap_path() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();
    users_without_trigger(&admin, 3000).await;
    let (host, port) = db.server();
    let Some(bouncer) = PgBouncer::start("through_a_session_pooler", Mode::Session, &host, port)
    else {
        return;
    };
    let url = bouncer.url(&db.runtime_url());
    let settings = db.runtime_settings_with(&[
        ("DATABASE_URL", url.as_str()),
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__BATCH_SIZE", "250"),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER),
        ("USERSYNC__SYNC__FULL_SCAN_SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]);
    let (a, b) = (
        Daemon::start(settings.clone()).await,
        Daemon::start(settings).await,
    );

    // The sweep, shared between the replicas by range locks held on pooled sessions.
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&admin, "public.user_profiles").await == 3000
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sweep = "usersync_profiles_created_total{source=\"sweep\"}";
    assert_eq!(a.metric(sweep).await + b.metric(sweep).await, 3000.0);

    // NOTIFY through the pooler: a failed sign-up is repaired at once.
    for daemon in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                daemon.metric("usersync_repair_listener_up").await == 1.0
            })
            .await
        );
    }
    let ids = sign_up_failing(&db, 5, "flaky").await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            profiles_of(&admin, &ids).await == 5
        })
        .await,
        "repaired through NOTIFY"
    );

    // The cheap path: sign-ups through the trigger cost no full scan.
    let scans = "usersync_full_scans_total{reason=\"unseen_changes\"}";
    let changes = "usersync_trigger_changes_total";
    let before = (
        a.metric(scans).await + b.metric(scans).await,
        a.metric(changes).await + b.metric(changes).await,
    );
    insert_users(&admin, &emails(20, "cheap")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.metric(changes).await + b.metric(changes).await >= before.1 + 20.0
        })
        .await,
        "the cycles counted the trigger's changes"
    );
    assert_eq!(a.metric(scans).await + b.metric(scans).await, before.0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
