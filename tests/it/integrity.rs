//! `usersync check`: exactly what was broken on random populations, no false positives, and
//! the exit codes.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tokio_postgres::Client;
use usersync::config::IntegritySettings;
use usersync::integrity::{self, Finding, Level, Report};
use uuid::Uuid;

use crate::property;
use crate::support::{AuthUser, RUNTIME_ROLE, TestDb, insert_users, usersync};

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

/// Ways production data drifts.
#[derive(Clone, Debug)]
enum Sabotage {
    /// Profiles deleted while the trigger was off (their users now have none).
    DeleteProfiles(Vec<prop::sample::Index>),
    /// Profiles inserted under session_replication_role = replica: no foreign key check.
    OrphanProfiles(u8),
    /// An application table with a NOT VALID foreign key and orphan rows.
    NotValidReference {
        orphans: u8,
        to_profiles: bool,
    },
    /// An application table whose foreign key would block deleting a user.
    RestrictReference {
        to_profiles: bool,
    },
    /// Rows of refresh_tokens (a user id without a foreign key) whose user is gone.
    StaleRefreshTokens(u8),
    DisableTrigger,
    NoSecurityDefiner,
}

fn sabotage() -> impl Strategy<Value = Sabotage> {
    prop_oneof![
        prop::collection::vec(any::<prop::sample::Index>(), 1..5)
            .prop_map(Sabotage::DeleteProfiles),
        (1u8..5).prop_map(Sabotage::OrphanProfiles),
        ((0u8..5), any::<bool>()).prop_map(|(orphans, to_profiles)| Sabotage::NotValidReference {
            orphans,
            to_profiles
        }),
        any::<bool>().prop_map(|to_profiles| Sabotage::RestrictReference { to_profiles }),
        (1u8..5).prop_map(Sabotage::StaleRefreshTokens),
        Just(Sabotage::DisableTrigger),
        Just(Sabotage::NoSecurityDefiner),
    ]
}

/// What the sabotage should make the check report.
#[derive(Debug, Default)]
struct Expected {
    /// (check, object, count) of the findings sabotage must produce.
    counted: Vec<(&'static str, String, i64)>,
    /// (object, SQL counting its orphans independently) of NOT VALID foreign keys; the count
    /// is taken after all sabotage, since later steps can orphan more rows.
    not_valid: Vec<(String, String)>,
    schema: BTreeSet<&'static str>,
}

async fn apply(
    admin: &Client,
    n: usize,
    s: &Sabotage,
    users: &[AuthUser],
    expected: &mut Expected,
) -> Result<(), TestCaseError> {
    let exec = |sql: String| async move { admin.batch_execute(&sql).await.map_err(property::fail) };
    match s {
        Sabotage::DeleteProfiles(which) => {
            for i in which {
                let user = &users[i.index(users.len())];
                admin
                    .execute(
                        "DELETE FROM public.user_profiles WHERE id = $1",
                        &[&user.id],
                    )
                    .await
                    .map_err(property::fail)?;
            }
        }
        Sabotage::OrphanProfiles(k) => {
            exec(format!(
                "SET session_replication_role = replica;
                 INSERT INTO public.user_profiles (id) SELECT gen_random_uuid() FROM generate_series(1, {k});
                 RESET session_replication_role"
            ))
            .await?;
        }
        Sabotage::NotValidReference {
            orphans,
            to_profiles,
        } => {
            let target = if *to_profiles {
                "public.user_profiles"
            } else {
                "auth.users"
            };
            // Application tables belong to the role usersync runs as, as on Supabase.
            exec(format!(
                "SET ROLE usersync_app;
                 CREATE TABLE public.notes_{n} (id serial PRIMARY KEY, owner uuid);
                 INSERT INTO public.notes_{n} (owner) SELECT id FROM auth.users LIMIT 2;
                 INSERT INTO public.notes_{n} (owner) SELECT gen_random_uuid() FROM generate_series(1, {orphans});
                 INSERT INTO public.notes_{n} (owner) VALUES (NULL);
                 ALTER TABLE public.notes_{n} ADD CONSTRAINT notes_{n}_owner_fkey FOREIGN KEY (owner)
                     REFERENCES {target} (id) ON DELETE CASCADE NOT VALID;
                 RESET ROLE"
            ))
            .await?;
            expected.not_valid.push((
                format!("public.notes_{n}.notes_{n}_owner_fkey"),
                format!("SELECT count(*) FROM public.notes_{n} WHERE owner IS NOT NULL AND owner NOT IN (SELECT id FROM {target})"),
            ));
        }
        Sabotage::RestrictReference { to_profiles } => {
            let target = if *to_profiles {
                "public.user_profiles"
            } else {
                "auth.users"
            };
            exec(format!(
                "SET ROLE usersync_app;
                 CREATE TABLE public.orders_{n} (id serial PRIMARY KEY,
                     buyer uuid REFERENCES {target} (id) ON DELETE RESTRICT);
                 RESET ROLE"
            ))
            .await?;
            expected.counted.push((
                "foreign_key_blocks_delete",
                format!("public.orders_{n}.orders_{n}_buyer_fkey"),
                1,
            ));
        }
        Sabotage::StaleRefreshTokens(k) => {
            exec(format!(
                "INSERT INTO auth.refresh_tokens (token, user_id)
                 SELECT 'stale', gen_random_uuid()::text FROM generate_series(1, {k})"
            ))
            .await?;
        }
        Sabotage::DisableTrigger => {
            exec("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created".into())
                .await?;
            expected.schema.insert("trigger");
        }
        Sabotage::NoSecurityDefiner => {
            exec("DO $$ BEGIN EXECUTE replace(pg_get_functiondef('usersync.on_auth_user_created()'::regprocedure), 'SECURITY DEFINER', ''); END $$".into()).await?;
            expected.schema.insert("trigger_function.security_definer");
        }
    }
    Ok(())
}

/// On a random population with random sabotage, the check reports exactly
/// the users without a profile and the profiles without a user (11), deleting any users takes
/// their profiles along (12), every sabotaged constraint is found with its table and count
/// (13), and orphan counts per referencing table equal an independent count (14).
#[test]
fn check_finds_exactly_what_was_broken() {
    let rt = property::runtime();
    let test_db = rt.block_on(TestDb::new());
    let strategy = (
        1usize..25,
        prop::collection::vec(sabotage(), 0..4),
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    );
    property::check(
        "check_finds_what_was_broken",
        strategy,
        |(n_users, sabotage, deletions)| {
            rt.block_on(async {
            let admin = test_db.admin().await;
            let mut app = test_db.app().await;
            // A fresh schema and population for each case.
            admin
                .batch_execute(
                    "DO $$ DECLARE t text; BEGIN
                         FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public'
                                  AND (tablename LIKE 'notes\\_%' OR tablename LIKE 'orders\\_%') LOOP
                             EXECUTE format('DROP TABLE public.%I', t);
                         END LOOP;
                     END $$;
                     TRUNCATE auth.users, auth.refresh_tokens CASCADE;",
                )
                .await
                .map_err(property::fail)?;
            usersync::db::migrate::down(&mut app, Some(0)).await.map_err(property::fail)?;
            usersync::db::migrate::up(&mut app, Default::default()).await.map_err(property::fail)?;
            let columns = test_db.settings().integrity.user_id_columns;
            usersync::db::grant::grant(&mut app, RUNTIME_ROLE, &columns).await.map_err(property::fail)?;
            let users = emails(n_users);
            insert_users(&admin, &users).await.map_err(property::fail)?;

            let mut expected = Expected::default();
            for (n, s) in sabotage.iter().enumerate() {
                apply(&admin, n, s, &users, &mut expected).await?;
            }
            // deleting any subset of users leaves no profile of theirs.
            let mut deleted = Vec::new();
            for i in &deletions {
                let id = users[i.index(users.len())].id;
                let _ = admin.execute("DELETE FROM auth.users WHERE id = $1", &[&id]).await;
                deleted.push(id);
            }
            let left: i64 = admin
                .query_one("SELECT count(*) FROM public.user_profiles WHERE id = ANY($1)", &[&deleted])
                .await
                .map_err(property::fail)?
                .get(0);
            let gone: i64 = admin
                .query_one("SELECT count(*) FROM auth.users WHERE id = ANY($1)", &[&deleted])
                .await
                .map_err(property::fail)?
                .get(0);
            if gone == 0 {
                prop_assert_eq!(left, 0, "profiles of deleted users remain");
            }

            let report = integrity::run(&mut app, &settings(&test_db), integrity::Policies { database: Default::default(), configured: Default::default() }, integrity::Counts::ALL, false).await.map_err(property::fail)?;
            for (object, sql) in std::mem::take(&mut expected.not_valid) {
                let orphans: i64 = admin.query_one(sql.as_str(), &[]).await.map_err(property::fail)?.get(0);
                expected.counted.push(("foreign_key_not_valid", object, orphans));
            }

            // exactly the users without a profile and the profiles without a user.
            let missing = ids(&admin, "SELECT id FROM auth.users EXCEPT SELECT id FROM public.user_profiles").await;
            let orphans = ids(&admin, "SELECT id FROM public.user_profiles EXCEPT SELECT id FROM auth.users").await;
            for (check, truth) in [("missing_profile", &missing), ("orphan_profile", &orphans)] {
                let found = findings(&report, check);
                if truth.is_empty() {
                    prop_assert!(found.is_empty(), "{} reported: {:?}", check, found);
                } else {
                    prop_assert_eq!(found.len(), 1);
                    prop_assert_eq!(found[0].count, truth.len() as i64, "{}", check);
                    let samples: BTreeSet<String> = found[0].samples.iter().cloned().collect();
                    prop_assert!(samples.is_subset(truth), "{} samples not among the truth", check);
                    prop_assert_eq!(samples.len(), truth.len().min(10));
                }
            }

            // each sabotaged constraint, with its table and count.
            for (check, object, count) in &expected.counted {
                let found: Vec<&Finding> = findings(&report, check)
                    .into_iter()
                    .filter(|f| f.object.as_deref() == Some(object.as_str()))
                    .collect();
                prop_assert_eq!(found.len(), 1, "{} on {}: {:#?}", check, object, report.findings);
                prop_assert_eq!(found[0].count, *count, "{} on {}", check, object);
            }
            let named = expected.counted.iter().map(|(c, o, _)| (*c, o.as_str())).collect::<BTreeSet<_>>();
            for f in &report.findings {
                if f.check.starts_with("foreign_key_") {
                    let key = (f.check.as_str(), f.object.as_deref().unwrap_or(""));
                    prop_assert!(named.iter().any(|(c, o)| (*c, *o) == key), "unexpected {:?}", f);
                }
            }
            for name in &expected.schema {
                prop_assert!(!findings(&report, name).is_empty(), "{} not reported", name);
            }

            // orphans of the user-id columns without a foreign key.
            let stale: i64 = admin
                .query_one(
                    "SELECT count(*) FROM auth.refresh_tokens t WHERE t.user_id IS NOT NULL
                     AND t.user_id NOT IN (SELECT id::text FROM auth.users)",
                    &[],
                )
                .await
                .map_err(property::fail)?
                .get(0);
            let reported: i64 = findings(&report, "user_id_column_orphans")
                .iter()
                .filter(|f| f.object.as_deref() == Some("auth.refresh_tokens.user_id"))
                .map(|f| f.count)
                .sum();
            prop_assert_eq!(reported, stale);

            let errors = !missing.is_empty() || !orphans.is_empty() || !expected.schema.is_empty()
                || expected.counted.iter().any(|(c, _, n)| *c == "foreign_key_not_valid" && *n > 0);
            prop_assert_eq!(report.has_errors(), errors, "{:#?}", report.findings);
            Ok(())
        })
        },
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
