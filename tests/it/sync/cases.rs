//! Particular cases of a sync pass: repairs, failing batches, concurrency, the command line, moved rows, busy ranges, the planner trap.

use super::*;

#[tokio::test]
async fn a_repaired_profile_is_identical_to_one_the_trigger_makes() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    let mut user = AuthUser::email("ada@example.test");
    user.user_meta = Some(json!({"name": " Ada ", "avatar_url": "https://example.test/ada.png"}));
    let mut twin = user.clone();
    twin.id = Uuid::new_v4();
    twin.email = Some("twin@example.test".into());
    insert_users(&admin, std::slice::from_ref(&twin))
        .await
        .unwrap();
    users_without_trigger(&admin, std::slice::from_ref(&user)).await;

    let db = usersync::db::connect(&test_db.settings().database)
        .await
        .unwrap();
    let report = sync::run(&db, &default_options(), None).await.unwrap();
    assert_eq!(report.created, 1);
    let rows = admin
        .query(
            "SELECT full_name, avatar_url, role, is_active, created_at FROM public.user_profiles
             WHERE id = ANY($1) ORDER BY email",
            &[&vec![user.id, twin.id]],
        )
        .await
        .unwrap();
    let by_trigger: (Option<String>, Option<String>, String, bool) = (
        rows[1].get(0),
        rows[1].get(1),
        rows[1].get(2),
        rows[1].get(3),
    );
    let by_sync: (Option<String>, Option<String>, String, bool) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!(by_sync, by_trigger);
    assert_eq!(by_sync.0.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn the_repair_queue_is_drained_first_and_a_failing_item_never_blocks_the_others() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    // Sign-ups while the application's CHECK rejects everyone: all queued by the trigger.
    admin
        .batch_execute(
            "ALTER TABLE public.user_profiles ADD CONSTRAINT picky CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    let mut users = emails(5, "queued");
    users[0].user_meta = Some(json!({"full_name": "Bobby Tables"}));
    insert_users(&admin, &users).await.unwrap();
    assert_eq!(count(&admin, "usersync.repair_queue").await, 5);
    // The fix lands, but one user still fails it.
    admin
        .batch_execute(
            "ALTER TABLE public.user_profiles DROP CONSTRAINT picky,
                 ADD CONSTRAINT picky CHECK (full_name IS DISTINCT FROM 'Bobby Tables') NOT VALID",
        )
        .await
        .unwrap();

    let db = usersync::db::connect(&test_db.settings().database)
        .await
        .unwrap();
    let report = sync::run(&db, &default_options(), None).await.unwrap();
    let repair = report.repair.clone().unwrap();
    assert_eq!(
        (repair.due, repair.created, repair.failed, repair.remaining),
        (5, 4, 1, 1),
        "{report:#?}"
    );
    assert_eq!(report.failed, 1);
    assert_eq!(report.failures[0].user_id, users[0].id);
    assert_eq!(report.failures[0].sqlstate, "23514");
    assert!(
        report.failures[0].reason.contains("picky"),
        "{:?}",
        report.failures
    );
    // The sweep leaves the failed user to its backoff instead of failing it again.
    assert_eq!((report.missing, report.deferred, report.created), (1, 1, 0));

    let row = admin
        .query_one(
            "SELECT attempts, last_sqlstate, next_attempt_at > now() + interval '5 seconds'
             FROM usersync.repair_queue WHERE user_id = $1",
            &[&users[0].id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "23514");
    assert!(row.get::<_, bool>(2), "backed off");

    // Nothing due: an immediate second pass does not retry it.
    let again = sync::run(&db, &default_options(), None).await.unwrap();
    assert_eq!(again.repair.unwrap().due, 0);
    assert_eq!(again.failed, 0);
}

#[tokio::test]
async fn a_failing_batch_creates_the_rest_and_queues_each_failure_with_its_reason() {
    // Listed users in batches, and the page-range sweep of a backfill.
    for list_limit in [usersync::sync::plan::LIST_LIMIT, 0] {
        a_failing_batch(list_limit).await;
    }
}

async fn a_failing_batch(list_limit: u64) {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    let mut users = emails(30, "batch");
    for u in users.iter_mut().take(3) {
        u.user_meta = Some(json!({"full_name": "Rejected"}));
    }
    users_without_trigger(&admin, &users).await;
    admin
        .batch_execute("ALTER TABLE public.user_profiles ADD CONSTRAINT no_rejects CHECK (full_name IS DISTINCT FROM 'Rejected')")
        .await
        .unwrap();
    let db = usersync::db::connect(&test_db.settings().database)
        .await
        .unwrap();
    let options = Options {
        batch_size: 1000,
        list_limit,
        ..default_options()
    };
    let report = sync::run(&db, &options, None).await.unwrap();
    assert_eq!(
        (
            report.missing,
            report.created,
            report.failed,
            report.scanned
        ),
        (30, 27, 3, 30),
        "{report:#?}"
    );
    let failed: BTreeSet<Uuid> = report.failures.iter().map(|f| f.user_id).collect();
    let expected: BTreeSet<Uuid> = users.iter().take(3).map(|u| u.id).collect();
    assert_eq!(failed, expected);
    assert_eq!(count(&admin, "usersync.repair_queue").await, 3);
}

/// Sign-ups keep arriving, trigger on and then off, while two syncs with two workers each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_syncs_and_sign_ups_leave_every_user_with_exactly_one_profile() {
    for trigger_on in [true, false] {
        let test_db = TestDb::migrated().await;
        let admin = test_db.admin().await;
        users_without_trigger(&admin, &emails(2000, "old")).await;
        if !trigger_on {
            admin
                .batch_execute(
                    "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created",
                )
                .await
                .unwrap();
        }
        let settings = test_db.settings();
        let (a, b) = (
            usersync::db::connect(&settings.database).await.unwrap(),
            usersync::db::connect(&settings.database).await.unwrap(),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let signer = {
            let stop = stop.clone();
            let client = test_db.admin().await;
            tokio::spawn(async move {
                let mut signed = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    insert_users(&client, &emails(10, "new")).await?;
                    signed += 10;
                }
                Ok::<usize, tokio_postgres::Error>(signed)
            })
        };
        let options = Options {
            batch_size: 50,
            ..default_options()
        };
        for _ in 0..3 {
            let (ra, rb) =
                tokio::join!(sync::run(&a, &options, None), sync::run(&b, &options, None));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(ra.failed + rb.failed, 0, "{ra:#?} {rb:#?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let signed = signer.await.unwrap().expect("no sign-up was refused");
        assert!(signed > 0);
        let last = sync::run(&a, &options, None).await.unwrap();
        assert_eq!(last.failed, 0);
        assert_eq!(count(&admin, "auth.users").await, 2000 + signed as i64);
        assert_eq!(
            count(&admin, "public.user_profiles").await,
            2000 + signed as i64,
            "trigger on: {trigger_on}"
        );
        assert!(missing_by_sql(&admin, true).await.is_empty());
        assert_eq!(count(&admin, "usersync.repair_queue").await, 0);
    }
}

#[tokio::test]
async fn sync_on_the_command_line_reports_then_creates_exactly_the_missing_profiles() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, created_at, deleted_at)
             SELECT gen_random_uuid(), 'cli' || g || '@example.test', now(),
                    CASE WHEN g % 10 = 0 THEN now() END
             FROM generate_series(1, 3000) g;
             DELETE FROM public.user_profiles WHERE id IN
                 (SELECT id FROM public.user_profiles ORDER BY id LIMIT 700);
             UPDATE public.user_profiles SET role = 'editor'",
        )
        .await
        .unwrap();
    let before = profiles(&admin).await;
    let expected = missing_by_sql(&admin, true).await;
    assert!(expected.len() > 500);
    let url = test_db.app_url();
    let env = [("DATABASE_URL", url.as_str())];

    let (code, stdout, stderr) = usersync(&["sync", "--dry-run", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let dry: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let listed: Vec<Uuid> = serde_json::from_value(dry["would_create"].clone()).unwrap();
    assert_eq!(listed, expected);
    assert_eq!(profiles(&admin).await, before);

    let (code, stdout, stderr) = usersync(&["sync", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The 700 deleted profiles were queued for repair by the delete trigger; the pass drains
    // the queue first, then sweeps the users who never had one.
    assert_eq!(report["repair"]["created"], 700);
    assert_eq!(
        report["created"].as_u64().unwrap() + 700,
        expected.len() as u64
    );
    assert!(missing_by_sql(&admin, true).await.is_empty());
    let after = profiles(&admin).await;
    assert!(
        before.iter().all(|p| after.contains(p)),
        "pre-existing profiles unchanged"
    );

    let (code, stdout, _) = usersync(&["sync", "--json"], &env);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (again["missing"].as_u64(), again["created"].as_u64()),
        (Some(0), Some(0))
    );

    let (code, stdout, _) = usersync(&["sync"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("0 missing, 0 created"), "{stdout}");
}

#[tokio::test]
async fn users_whose_rows_moved_since_detection_still_get_their_profile() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    users_without_trigger(&admin, &emails(50, "moved")).await;
    let mut app = test_db.app().await;
    let plan = usersync::sync::plan::detect(&mut app, &Default::default())
        .await
        .unwrap();
    assert_eq!(plan.missing.len(), 50);
    // GoTrue updates a user on every sign-in; each update moves the row.
    admin
        .batch_execute("UPDATE auth.users SET last_sign_in_at = now()")
        .await
        .unwrap();
    let ids: Vec<Uuid> = plan.missing.iter().map(|m| m.id).collect();
    let tids: Vec<_> = plan.missing.iter().map(|m| m.tid).collect();
    let outcome = usersync::sync::apply::create(
        &mut app,
        &ids,
        Some(&tids),
        usersync::sync::apply::Mode {
            include_anonymous: true,
            repairing: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (outcome.created, outcome.raced, outcome.failures.len()),
        (50, 0, 0)
    );
    assert!(missing_by_sql(&admin, true).await.is_empty());
}

#[tokio::test]
async fn a_range_another_process_holds_is_left_to_it() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    users_without_trigger(&admin, &emails(200, "busy")).await;
    // A small table: every user is in the first range of pages.
    let holder = test_db.admin().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1, 0)",
            &[&sync::RANGE_LOCK_NAMESPACE],
        )
        .await
        .unwrap();
    let db = usersync::db::connect(&test_db.settings().database)
        .await
        .unwrap();
    let report = sync::run(&db, &default_options(), None).await.unwrap();
    assert_eq!(
        (report.ranges, report.ranges_busy, report.created),
        (1, 1, 0),
        "{report:#?}"
    );
    assert_eq!(count(&admin, "public.user_profiles").await, 0);
    drop(holder);
    let report = sync::run(&db, &default_options(), None).await.unwrap();
    assert_eq!((report.ranges_busy, report.created), (0, 200));
}

#[tokio::test]
async fn a_freshly_emptied_and_vacuumed_profile_table_is_refilled() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, created_at)
             SELECT gen_random_uuid(), 'trap' || g || '@example.test', now()
             FROM generate_series(1, 5000) g;
             ANALYZE auth.users;
             TRUNCATE public.user_profiles;",
        )
        .await
        .unwrap();
    admin
        .batch_execute("VACUUM ANALYZE public.user_profiles")
        .await
        .unwrap();
    let db = usersync::db::connect(&test_db.settings().database)
        .await
        .unwrap();
    let options = Options {
        batch_size: 700,
        workers: 2,
        ..default_options()
    };
    let report = sync::run(&db, &options, None).await.unwrap();
    assert_eq!(
        (report.missing, report.created, report.failed),
        (5000, 5000, 0)
    );
    assert!(missing_by_sql(&admin, true).await.is_empty());
}
