//! The cheap path (sync::watch): random drift of every kind between daemon cycles, each cycle
//! checked against an exact anti-join; an unchanged cycle that reads nothing of auth.users;
//! a crash that loses the statistics.

use std::sync::Arc;

use futures_util::SinkExt;
use proptest::prelude::*;
use tokio_postgres::Client;
use usersync::daemon::run_job;
use usersync::job::JobKind;
use usersync::state::Shared;

use crate::property;
use crate::support::TestDb;

/// One kind of drift, with how many rows it touches.
#[derive(Clone, Debug)]
enum Drift {
    /// Sign-ups through the trigger: no drift at all.
    SignUps(u8),
    /// `ALTER TABLE … DISABLE TRIGGER`, inserts, enabled again (pg_restore --disable-triggers).
    InsertTriggerOff(u8),
    /// Inserts under `session_replication_role = replica` (Supabase's data-only restore).
    InsertReplica(u8),
    /// COPY under `replica`.
    CopyReplica(u8),
    /// An application deleting live users' profiles (the delete trigger queues them).
    DeleteProfiles(u8),
    /// The same under `replica`: no trigger.
    DeleteProfilesReplica(u8),
    TruncateProfiles,
    /// Users deleted under `replica`: no cascade, orphan profiles.
    DeleteUsersReplica(u8),
    /// Inserts under `replica`, then `pg_stat_reset()`: the evidence is gone.
    InsertThenStatsReset(u8),
    /// Soft-deleted users restored while the update trigger is disabled, then enabled again:
    /// only the catalog shows it.
    RestoreTriggerOff(u8),
    /// Soft-deleted users restored under `replica` (the policy is `delete`: they have no
    /// profile): an UPDATE, which waits for the scheduled full scan.
    RestoreReplica(u8),
    /// Users soft-deleted under `replica`: their profiles stay, also for the full scan.
    SoftDeleteReplica(u8),
}

impl Drift {
    /// Whether the cheap path cannot see it: it waits for the scheduled full scan.
    fn waits_for_full_scan(&self) -> bool {
        matches!(self, Drift::RestoreReplica(_) | Drift::SoftDeleteReplica(_))
    }

    /// Whether it is no drift at all: a cycle after it must not scan.
    fn through_triggers(&self) -> bool {
        matches!(self, Drift::SignUps(_) | Drift::DeleteProfiles(_))
    }
}

fn drift() -> impl Strategy<Value = Drift> {
    let n = 1u8..12;
    prop_oneof![
        2 => n.clone().prop_map(Drift::SignUps),
        1 => n.clone().prop_map(Drift::InsertTriggerOff),
        1 => n.clone().prop_map(Drift::InsertReplica),
        1 => n.clone().prop_map(Drift::CopyReplica),
        2 => n.clone().prop_map(Drift::DeleteProfiles),
        1 => n.clone().prop_map(Drift::DeleteProfilesReplica),
        1 => Just(Drift::TruncateProfiles),
        1 => n.clone().prop_map(Drift::DeleteUsersReplica),
        1 => n.clone().prop_map(Drift::InsertThenStatsReset),
        1 => n.clone().prop_map(Drift::RestoreTriggerOff),
        1 => n.clone().prop_map(Drift::RestoreReplica),
        1 => n.prop_map(Drift::SoftDeleteReplica),
    ]
}

const SIGN_UP: &str = "
    INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data, created_at,
                            updated_at)
    SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
           'authenticated', 'w' || gen_random_uuid() || '@example.test', '{}', now(), now()
    FROM generate_series(1, $1::int)";

/// Applies one drift on a connection of its own, with `signups` sign-ups through the trigger
/// on another at the same time; both flush their statistics before returning, as a writer's
/// backend does within seconds of going idle.
async fn apply(db: &TestDb, drift: &Drift, signups: u8) {
    let (writer, other) = (db.admin().await, db.admin().await);
    let concurrent = async {
        if signups > 0 {
            other
                .execute(SIGN_UP, &[&i32::from(signups)])
                .await
                .unwrap();
        }
        flush(&other).await;
    };
    let drifted = async {
        write(&writer, drift).await;
        flush(&writer).await;
    };
    tokio::join!(concurrent, drifted);
}

async fn flush(client: &Client) {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

async fn write(c: &Client, drift: &Drift) {
    let replica = "SET session_replication_role = replica;";
    let live = "SELECT u.id FROM auth.users u JOIN public.user_profiles p ON p.id = u.id
                WHERE u.deleted_at IS NULL ORDER BY random()";
    let sql = match drift {
        Drift::SignUps(n) => {
            c.execute(SIGN_UP, &[&i32::from(*n)]).await.unwrap();
            return;
        }
        Drift::InsertTriggerOff(n) => format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 'off' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;"
        ),
        Drift::InsertReplica(n) => format!(
            "{replica} INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 'r' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});"
        ),
        Drift::CopyReplica(n) => {
            c.batch_execute(replica).await.unwrap();
            let sink = c
                .copy_in("COPY auth.users (id, email, created_at) FROM STDIN")
                .await
                .unwrap();
            let mut sink = std::pin::pin!(sink);
            for _ in 0..*n {
                let id = uuid::Uuid::new_v4();
                let line = format!("{id}\tcopy.{id}@example.test\t2026-01-01 00:00:00+00\n");
                sink.send(bytes::Bytes::from(line)).await.unwrap();
            }
            sink.finish().await.unwrap();
            return;
        }
        Drift::DeleteProfiles(n) => format!(
            "DELETE FROM public.user_profiles WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::DeleteProfilesReplica(n) => format!(
            "{replica} DELETE FROM public.user_profiles WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::TruncateProfiles => "TRUNCATE public.user_profiles;".into(),
        Drift::DeleteUsersReplica(n) => format!(
            "{replica} DELETE FROM auth.users WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::InsertThenStatsReset(n) => format!(
            "{replica} INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 's' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});
             SELECT pg_stat_force_next_flush();
             SELECT pg_sleep(0.05);"
        ),
        Drift::RestoreTriggerOff(n) => format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_updated;
             UPDATE auth.users SET deleted_at = NULL WHERE id IN
                 (SELECT id FROM auth.users WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT {n});
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;"
        ),
        Drift::RestoreReplica(n) => format!(
            "{replica} UPDATE auth.users SET deleted_at = NULL WHERE id IN
                 (SELECT id FROM auth.users WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT {n});"
        ),
        Drift::SoftDeleteReplica(n) => format!(
            "{replica} UPDATE auth.users SET deleted_at = now(), email = NULL WHERE id IN ({live} LIMIT {n});"
        ),
    };
    c.batch_execute(&sql).await.unwrap();
    if let Drift::InsertThenStatsReset(_) = drift {
        // After the inserts' counts reached the shared statistics, on another session.
        c.batch_execute("RESET session_replication_role; SELECT pg_stat_reset();")
            .await
            .unwrap();
    }
}

/// The exact answer, from the tables: live users without a profile (the policy includes
/// anonymous users), profiles without a user, soft-deleted users' profiles (the policy is
/// `delete`).
async fn oracle(c: &Client) -> (i64, i64, i64) {
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

fn full_scans(shared: &Shared) -> u64 {
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

fn finding(shared: &Shared, check: &str) -> i64 {
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

#[test]
fn every_drift_is_found_by_the_cheap_path_or_handed_to_the_full_scan() {
    let rt = property::runtime();
    let db = rt.block_on(TestDb::migrated());
    let admin = rt.block_on(db.admin());
    rt.block_on(async {
        admin
            .batch_execute(
                "UPDATE usersync.policy SET soft_deleted = 'delete';
                 INSERT INTO auth.users (id, email, created_at, deleted_at)
                 SELECT gen_random_uuid(), 'seed' || g || '@example.test', now(),
                        CASE WHEN g % 4 = 0 THEN now() END
                 FROM generate_series(1, 80) g;",
            )
            .await
            .unwrap();
    });
    let settings = db.runtime_settings_with(&[("USERSYNC__SYNC__SOFT_DELETED", "delete")]);
    let shared = Shared::new(settings).unwrap();
    let steps = prop::collection::vec((drift(), 0u8..4), 1..6);
    property::check("watch", steps, |steps| {
        rt.block_on(async {
            // Each case starts from a full scan: a clean state and a baseline.
            let run = run_job(&shared, JobKind::FullScan).await;
            prop_assert!(run.outcome.ran(), "full scan: {}", run.summary);
            // Orphans of earlier cases are the application's to delete.
            admin
                .batch_execute(
                    "DELETE FROM public.user_profiles p
                     WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = p.id)",
                )
                .await
                .unwrap();
            let mut waiting = false;
            for (i, (drift, signups)) in steps.iter().enumerate() {
                apply(&db, drift, *signups).await;
                waiting |= drift.waits_for_full_scan();
                let before = full_scans(&shared);
                cycle(&shared).await;
                let scanned = full_scans(&shared) > before;
                let (missing, orphans, left) = oracle(&admin).await;
                // Changes the triggers saw cost no full scan.
                prop_assert!(
                    !(drift.through_triggers() && scanned),
                    "step {i} {drift:?}: changes through the triggers made a full scan"
                );
                if !waiting {
                    prop_assert_eq!(
                        missing,
                        0,
                        "step {} {:?}: users left without a profile",
                        i,
                        drift
                    );
                    prop_assert_eq!(
                        left,
                        0,
                        "step {} {:?}: soft-deleted users' profiles left",
                        i,
                        drift
                    );
                }
                prop_assert_eq!(
                    finding(&shared, "orphan_profile"),
                    orphans,
                    "step {} {:?}: orphans reported (full scan: {})",
                    i,
                    drift,
                    scanned
                );
                prop_assert_eq!(finding(&shared, "missing_profile"), 0);
            }
            // The scheduled full scan catches what waited for it.
            let run = run_job(&shared, JobKind::FullScan).await;
            prop_assert!(run.outcome.ran(), "full scan: {}", run.summary);
            let (missing, orphans, left) = oracle(&admin).await;
            prop_assert_eq!((missing, left), (0, 0), "after the full scan");
            prop_assert_eq!(finding(&shared, "orphan_profile"), orphans);
            Ok(())
        })
    });
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
