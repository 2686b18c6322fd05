//! `usersync check`: exactly what was broken on random populations, no false positives, and
//! the exit codes.

use std::collections::BTreeSet;

use tokio_postgres::Client;
use usersync::config::IntegritySettings;
use usersync::integrity::{self, Finding, Level, Report};
use uuid::Uuid;

mod broken;

use crate::support::{AuthUser, TestDb, insert_users, usersync};

fn settings(test_db: &TestDb) -> IntegritySettings {
    let mut settings = test_db.settings().integrity;
    settings.grace_period = std::time::Duration::ZERO;
    settings
}

async fn check(test_db: &TestDb, settings: &IntegritySettings) -> Report {
    let mut app = test_db.app().await;
    integrity::run(
        &mut app,
        settings,
        integrity::Policies {
            database: Default::default(),
            configured: Default::default(),
        },
        integrity::Counts::ALL,
        false,
    )
    .await
    .unwrap()
}

fn findings<'a>(report: &'a Report, check: &str) -> Vec<&'a Finding> {
    report
        .findings
        .iter()
        .filter(|f| f.check == check)
        .collect()
}

fn emails(n: usize) -> Vec<AuthUser> {
    (0..n)
        .map(|_| AuthUser::email(&format!("{}@example.test", Uuid::new_v4().simple())))
        .collect()
}

async fn ids(client: &Client, sql: &str) -> BTreeSet<String> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Uuid>(0).to_string())
        .collect()
}

#[tokio::test]
async fn a_clean_database_with_the_full_auth_schema_has_no_findings() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    insert_users(&admin, &emails(20)).await.unwrap();
    // Rows in every auth table that references a user, and in the two that hold ids freely.
    admin
        .batch_execute(
            "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider)
                 SELECT id::text, id, '{}', 'email' FROM auth.users;
             INSERT INTO auth.sessions (id, user_id) SELECT gen_random_uuid(), id FROM auth.users;
             INSERT INTO auth.refresh_tokens (token, user_id, session_id)
                 SELECT 'token', s.user_id::text, s.id FROM auth.sessions s;
             INSERT INTO auth.flow_state (id, user_id, auth_code)
                 SELECT gen_random_uuid(), id, 'code' FROM auth.users;",
        )
        .await
        .unwrap();
    let report = check(&test_db, &settings(&test_db)).await;
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.ok && !report.has_errors());
    assert!(report.values().values().all(|v| *v == 0));
}

#[tokio::test]
async fn users_younger_than_the_grace_period_are_not_missing_yet() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    insert_users(&admin, &emails(3)).await.unwrap();
    let mut with_grace = settings(&test_db);
    with_grace.grace_period = std::time::Duration::from_secs(3600);
    assert!(findings(&check(&test_db, &with_grace).await, "missing_profile").is_empty());
    let report = check(&test_db, &settings(&test_db)).await;
    assert_eq!(findings(&report, "missing_profile")[0].count, 3);
}

#[tokio::test]
async fn the_repair_queue_reports_stale_and_failing_items() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute("ALTER TABLE public.user_profiles ADD CONSTRAINT no CHECK (false) NOT VALID")
        .await
        .unwrap();
    insert_users(&admin, &emails(2)).await.unwrap();
    admin
        .batch_execute(
            "UPDATE usersync.repair_queue SET first_failed_at = now() - interval '1 day';
             UPDATE usersync.repair_queue SET attempts = 7
             WHERE user_id = (SELECT user_id FROM usersync.repair_queue ORDER BY user_id LIMIT 1)",
        )
        .await
        .unwrap();
    let report = check(&test_db, &settings(&test_db)).await;
    let stale = findings(&report, "repair_queue_stale");
    let failing = findings(&report, "repair_queue_failing");
    assert_eq!((stale[0].count, stale[0].level), (2, Level::Warning));
    assert_eq!((failing[0].count, failing[0].level), (1, Level::Error));
    assert!(failing[0].detail.contains("no"), "{}", failing[0].detail);
}

#[tokio::test]
async fn a_configured_column_that_does_not_exist_is_a_warning_not_a_failure() {
    let test_db = TestDb::migrated().await;
    let mut settings = settings(&test_db);
    settings
        .user_id_columns
        .push(usersync::config::UserIdColumn {
            schema: "public".into(),
            table: "no_such_table".into(),
            column: "user_id".into(),
        });
    // Unregistered, it cannot be counted: the fix registers it (what `migrate grant` does).
    let report = check(&test_db, &settings).await;
    let found = findings(&report, "unreadable_table");
    assert_eq!(found.len(), 1, "{:#?}", report.findings);
    assert_eq!(
        found[0].fix,
        "INSERT INTO usersync.user_id_columns (schema_name, table_name, column_name) VALUES \
         ('public', 'no_such_table', 'user_id') ON CONFLICT DO NOTHING;"
    );
    test_db
        .app()
        .await
        .batch_execute(&found[0].fix)
        .await
        .unwrap();
    let report = check(&test_db, &settings).await;
    let found = findings(&report, "user_id_column_orphans");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].level, Level::Warning);
    assert_eq!(
        found[0].object.as_deref(),
        Some("public.no_such_table.user_id")
    );
}

#[tokio::test]
async fn check_exits_0_when_clean_and_1_on_an_error_with_one_json_document() {
    let test_db = TestDb::migrated().await;
    let url = test_db.app_url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("USERSYNC__INTEGRITY__GRACE_PERIOD_SECS", "0"),
    ];
    let (code, stdout, stderr) = usersync(&["check"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: no findings"), "{stdout}");

    test_db
        .admin()
        .await
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    let (code, stdout, _) = usersync(&["check", "--json"], &env);
    assert_eq!(code, 1, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(report["findings"][0]["check"], "trigger");
    assert_eq!(report["findings"][0]["level"], "error");
    let (code, stdout, _) = usersync(&["check"], &env);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("ERRORS (1)") && stdout.contains("CREATE OR REPLACE TRIGGER"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_referencing_table_usersync_may_not_read_is_a_warning() {
    let test_db = TestDb::migrated().await;
    // Owned by the superuser, no grant: usersync_app cannot count its orphans.
    test_db
        .admin()
        .await
        .batch_execute(
            "CREATE TABLE public.secrets (owner uuid);
             ALTER TABLE public.secrets ADD FOREIGN KEY (owner) REFERENCES auth.users (id)
                 ON DELETE CASCADE NOT VALID",
        )
        .await
        .unwrap();
    let report = check(&test_db, &settings(&test_db)).await;
    let found = findings(&report, "unreadable_table");
    assert_eq!(found.len(), 1, "{:#?}", report.findings);
    assert_eq!(found[0].level, Level::Warning);
    assert_eq!(
        found[0].fix,
        "GRANT USAGE ON SCHEMA public TO usersync_app; \
         GRANT SELECT (owner) ON TABLE public.secrets TO usersync_app;"
    );
    assert!(!report.has_errors(), "{:#?}", report.findings);
    // The fix runs as printed, and then there is nothing left to warn about.
    test_db
        .admin()
        .await
        .batch_execute(&found[0].fix)
        .await
        .unwrap();
    let report = check(&test_db, &settings(&test_db)).await;
    assert!(
        findings(&report, "unreadable_table").is_empty(),
        "{:#?}",
        report.findings
    );
}
