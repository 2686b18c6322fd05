//! The cheap path (sync::watch): an unchanged cycle that reads nothing of auth.users; a crash
//! that loses the statistics; random drift of every kind between daemon cycles (`drift`); a
//! count the journal has not caught up with yet (`settle`).

mod drift;
mod settle;

use std::sync::Arc;

use tokio_postgres::Client;
use usersync::daemon::run_job;
use usersync::job::JobKind;
use usersync::state::Shared;

use crate::support::TestDb;

/// The exact answer, from the tables: live users without a profile (the policy includes
/// anonymous users), profiles without a user, soft-deleted users' profiles (the policy is
/// `delete`).
pub(super) async fn oracle(c: &Client) -> (i64, i64, i64) {
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM auth.users u WHERE u.deleted_at IS NULL
                       AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)),
                    (SELECT count(*) FROM public.user_profiles p
                       WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = p.id)),
                    (SELECT count(*) FROM auth.users u JOIN public.user_profiles p ON p.id = u.id
                       WHERE u.deleted_at IS NOT NULL)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

pub(super) fn full_scans(shared: &Shared) -> u64 {
    usersync::sync::watch::Reason::ALL
        .iter()
        .map(|r| {
            shared
                .metrics
                .full_scans
                .with_label_values(&[r.as_str()])
                .get()
        })
        .sum()
}

pub(super) fn finding(shared: &Shared, check: &str) -> i64 {
    shared
        .metrics
        .integrity_findings
        .with_label_values(&[check])
        .get()
}

/// One daemon cycle: the integrity check, then the sweep, as their schedules run them.
async fn cycle(shared: &Arc<Shared>) {
    for kind in [JobKind::Integrity, JobKind::Sweep] {
        let run = run_job(shared, kind).await;
        assert!(run.outcome.ran(), "{} failed: {}", kind.name(), run.summary);
    }
}

/// What PostgreSQL counts of reads of auth.users: heap blocks, index blocks, scans.
async fn reads_of_auth_users(admin: &Client) -> (i64, i64, i64) {
    // This session's own reads (its plans open auth.users's indexes) counted first.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let row = admin
        .query_one(
            "SELECT coalesce(io.heap_blks_read + io.heap_blks_hit, 0),
                    coalesce(io.idx_blks_read + io.idx_blks_hit, 0),
                    coalesce(st.seq_scan + st.idx_scan, 0)
             FROM pg_statio_all_tables io JOIN pg_stat_all_tables st USING (relid)
             WHERE relid = 'auth.users'::regclass",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Closes the daemon's connections and waits until their backends are gone: a backend flushes
/// its statistics when it exits.
async fn close(shared: Arc<Shared>, db: &TestDb, admin: &Client) {
    shared.db.pool.close();
    drop(shared);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backends still open");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_cycle_reads_nothing_of_auth_users_and_changes_cost_no_scan() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, created_at)
             SELECT gen_random_uuid(), 'u' || g || '@example.test', now()
             FROM generate_series(1, 3000) g",
        )
        .await
        .unwrap();
    let settings = db.runtime_settings_with(&[]);
    let shared = Shared::new(settings.clone()).unwrap();
    let run = run_job(&shared, JobKind::FullScan).await;
    assert!(run.outcome.ran(), "{}", run.summary);
    close(shared, &db, &admin).await;
    let before = reads_of_auth_users(&admin).await;

    let shared = Shared::new(settings.clone()).unwrap();
    for _ in 0..3 {
        cycle(&shared).await;
    }
    assert_eq!(full_scans(&shared), 0);
    let summary = run_job(&shared, JobKind::Sweep).await.summary;
    assert!(
        summary.starts_with("nothing changed around the triggers"),
        "{summary}"
    );
    close(shared, &db, &admin).await;
    assert_eq!(
        reads_of_auth_users(&admin).await,
        before,
        "unchanged cycles read auth.users (heap blocks, index blocks, scans)"
    );

    // Sign-ups and profile deletions through the triggers: handled, and still no scan.
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, created_at)
             SELECT gen_random_uuid(), 'v' || g || '@example.test', now()
             FROM generate_series(1, 200) g;
             DELETE FROM public.user_profiles WHERE id IN
                 (SELECT id FROM public.user_profiles ORDER BY id LIMIT 50);
             SELECT pg_stat_force_next_flush();",
        )
        .await
        .unwrap();
    let shared = Shared::new(settings.clone()).unwrap();
    cycle(&shared).await;
    assert_eq!(full_scans(&shared), 0);
    assert_eq!(shared.metrics.changes_seen.get(), 250);
    assert_eq!(oracle(&admin).await, (0, 0, 0));

    // The measure works: a full scan reads the table.
    let before = reads_of_auth_users(&admin).await;
    let run = run_job(&shared, JobKind::FullScan).await;
    assert!(run.outcome.ran(), "{}", run.summary);
    close(shared, &db, &admin).await;
    let after = reads_of_auth_users(&admin).await;
    assert!(
        after.0 > before.0 && after.2 > before.2,
        "{before:?} {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_the_statistics_hands_to_the_full_scan() {
    let mut cluster = crate::support::OwnCluster::start("crash", &[], &[]).await;
    let mut app = crate::support::connect(&cluster.app_url().parse().unwrap()).await;
    usersync::db::migrate::up(&mut app, Default::default())
        .await
        .unwrap();
    let settings = usersync::config::Settings::load(&usersync::config::Sources {
        file: None,
        env: vec![("DATABASE_URL".into(), cluster.app_url())],
    })
    .unwrap();
    let shared = Shared::new(settings.clone()).unwrap();
    let run = run_job(&shared, JobKind::FullScan).await;
    assert!(run.outcome.ran(), "{}", run.summary);
    shared.db.pool.close();
    drop(shared);

    // Users written around the trigger, then the server crashes: the rows survive (WAL), the
    // statistics that counted them do not.
    let admin = crate::support::connect(&cluster.config("postgres")).await;
    admin
        .batch_execute(
            "SET session_replication_role = replica;
         INSERT INTO auth.users (id, email, created_at)
         SELECT gen_random_uuid(), 'c' || g || '@example.test', now()
         FROM generate_series(1, 25) g;",
        )
        .await
        .unwrap();
    // The test cluster commits asynchronously: make the baseline and the rows durable.
    admin.batch_execute("CHECKPOINT").await.unwrap();
    drop((app, admin));
    cluster.crash();
    cluster.resume().await;

    let shared = Shared::new(settings).unwrap();
    cycle(&shared).await;
    assert_eq!(
        shared
            .metrics
            .full_scans
            .with_label_values(&["server_restarted"])
            .get(),
        1
    );
    let admin = crate::support::connect(&cluster.config("postgres")).await;
    let users: i64 = admin
        .query_one("SELECT count(*) FROM auth.users WHERE email LIKE 'c%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 25, "the rows survived the crash");
    assert_eq!(
        admin
            .query_one(
                "SELECT count(*) FROM public.user_profiles WHERE email LIKE 'c%'",
                &[]
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        25,
        "the full scan created them"
    );
    assert_eq!(oracle(&admin).await.0, 0);
    // The new baseline holds: the next cycle is quiet.
    cycle(&shared).await;
    assert_eq!(full_scans(&shared), 1);
}

#[tokio::test]
async fn verify_names_a_disabled_companion_trigger_and_its_fix_runs() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    for (table, trigger, check) in [
        (
            "auth.users",
            "usersync_on_auth_user_updated",
            "trigger.updated",
        ),
        (
            "auth.users",
            "usersync_on_auth_users_deleted",
            "trigger.users_deleted",
        ),
        (
            "public.user_profiles",
            "usersync_on_profiles_deleted",
            "trigger.profiles_deleted",
        ),
    ] {
        admin
            .batch_execute(&format!("ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
            .await
            .unwrap();
        let report = usersync::db::verify::verify(&db.app().await).await.unwrap();
        let finding = report
            .findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("{check} not reported: {:?}", report.findings));
        assert_eq!(finding.found, "disabled");
        admin.batch_execute(&finding.fix).await.unwrap();
        let report = usersync::db::verify::verify(&db.app().await).await.unwrap();
        assert!(report.ok, "{:?}", report.findings);
    }
}
