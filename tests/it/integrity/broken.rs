//! `usersync check` on random populations broken in every way: exactly what was broken is found.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tokio_postgres::Client;
use usersync::integrity::{self, Finding};

use super::{emails, findings, ids, settings};
use crate::property;
use crate::support::{AuthUser, RUNTIME_ROLE, TestDb, insert_users};

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
    let exec = |sql: String| exec(admin, sql);
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
        } => not_valid_reference(admin, n, *orphans, *to_profiles, expected).await?,
        Sabotage::RestrictReference { to_profiles } => {
            restrict_reference(admin, n, *to_profiles, expected).await?
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

async fn exec(admin: &Client, sql: String) -> Result<(), TestCaseError> {
    admin.batch_execute(&sql).await.map_err(property::fail)
}

fn target(to_profiles: bool) -> &'static str {
    if to_profiles {
        "public.user_profiles"
    } else {
        "auth.users"
    }
}

/// An application table with a NOT VALID foreign key, two good rows, `orphans` bad ones and a
/// NULL; application tables belong to the role usersync runs as, as on Supabase.
async fn not_valid_reference(
    admin: &Client,
    n: usize,
    orphans: u8,
    to_profiles: bool,
    expected: &mut Expected,
) -> Result<(), TestCaseError> {
    let target = target(to_profiles);
    exec(
        admin,
        format!(
            "SET ROLE usersync_app;
             CREATE TABLE public.notes_{n} (id serial PRIMARY KEY, owner uuid);
             INSERT INTO public.notes_{n} (owner) SELECT id FROM auth.users LIMIT 2;
             INSERT INTO public.notes_{n} (owner) SELECT gen_random_uuid() FROM generate_series(1, {orphans});
             INSERT INTO public.notes_{n} (owner) VALUES (NULL);
             ALTER TABLE public.notes_{n} ADD CONSTRAINT notes_{n}_owner_fkey FOREIGN KEY (owner)
                 REFERENCES {target} (id) ON DELETE CASCADE NOT VALID;
             RESET ROLE"
        ),
    )
    .await?;
    expected.not_valid.push((
        format!("public.notes_{n}.notes_{n}_owner_fkey"),
        format!("SELECT count(*) FROM public.notes_{n} WHERE owner IS NOT NULL AND owner NOT IN (SELECT id FROM {target})"),
    ));
    Ok(())
}

/// An application table whose foreign key would block deleting a user.
async fn restrict_reference(
    admin: &Client,
    n: usize,
    to_profiles: bool,
    expected: &mut Expected,
) -> Result<(), TestCaseError> {
    let target = target(to_profiles);
    exec(
        admin,
        format!(
            "SET ROLE usersync_app;
             CREATE TABLE public.orders_{n} (id serial PRIMARY KEY,
                 buyer uuid REFERENCES {target} (id) ON DELETE RESTRICT);
             RESET ROLE"
        ),
    )
    .await?;
    expected.counted.push((
        "foreign_key_blocks_delete",
        format!("public.orders_{n}.orders_{n}_buyer_fkey"),
        1,
    ));
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
                let mut app = fresh_schema(&test_db).await?;
                let users = emails(n_users);
                insert_users(&admin, &users).await.map_err(property::fail)?;
                let mut expected = Expected::default();
                for (n, s) in sabotage.iter().enumerate() {
                    apply(&admin, n, s, &users, &mut expected).await?;
                }
                delete_users(&admin, &users, &deletions).await?;
                let policies = integrity::Policies {
                    database: Default::default(),
                    configured: Default::default(),
                };
                let report = integrity::run(
                    &mut app,
                    &settings(&test_db),
                    policies,
                    integrity::Counts::ALL,
                    false,
                )
                .await
                .map_err(property::fail)?;
                for (object, sql) in std::mem::take(&mut expected.not_valid) {
                    let orphans: i64 = admin
                        .query_one(sql.as_str(), &[])
                        .await
                        .map_err(property::fail)?
                        .get(0);
                    expected
                        .counted
                        .push(("foreign_key_not_valid", object, orphans));
                }
                let drifted = users_and_profiles_match(&admin, &report).await?;
                constraints_match(&report, &expected)?;
                user_id_column_orphans_match(&admin, &report).await?;
                let errors = drifted
                    || !expected.schema.is_empty()
                    || expected
                        .counted
                        .iter()
                        .any(|(c, _, n)| *c == "foreign_key_not_valid" && *n > 0);
                prop_assert_eq!(report.has_errors(), errors, "{:#?}", report.findings);
                Ok(())
            })
        },
    );
}

/// A fresh schema for each case: the application tables of earlier cases dropped, no users,
/// usersync down and up again and granted to the runtime role.
async fn fresh_schema(test_db: &TestDb) -> Result<Client, TestCaseError> {
    let admin = test_db.admin().await;
    let mut app = test_db.app().await;
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
    usersync::db::migrate::down(&mut app, Some(0))
        .await
        .map_err(property::fail)?;
    usersync::db::migrate::up(&mut app, Default::default())
        .await
        .map_err(property::fail)?;
    let columns = test_db.settings().integrity.user_id_columns;
    usersync::db::grant::grant(&mut app, RUNTIME_ROLE, &columns)
        .await
        .map_err(property::fail)?;
    Ok(app)
}

/// Deleting any subset of users leaves no profile of theirs (unless a key blocked it).
async fn delete_users(
    admin: &Client,
    users: &[AuthUser],
    which: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    let mut deleted = Vec::new();
    for i in which {
        let id = users[i.index(users.len())].id;
        let _ = admin
            .execute("DELETE FROM auth.users WHERE id = $1", &[&id])
            .await;
        deleted.push(id);
    }
    let count = |sql: &'static str| {
        let deleted = &deleted;
        async move {
            let n: i64 = admin
                .query_one(sql, &[deleted])
                .await
                .map_err(property::fail)?
                .get(0);
            Ok::<i64, TestCaseError>(n)
        }
    };
    let left = count("SELECT count(*) FROM public.user_profiles WHERE id = ANY($1)").await?;
    let gone = count("SELECT count(*) FROM auth.users WHERE id = ANY($1)").await?;
    if gone == 0 {
        prop_assert_eq!(left, 0, "profiles of deleted users remain");
    }
    Ok(())
}

/// Exactly the users without a profile and the profiles without a user are reported; whether
/// there were any.
async fn users_and_profiles_match(
    admin: &Client,
    report: &integrity::Report,
) -> Result<bool, TestCaseError> {
    let missing = ids(
        admin,
        "SELECT id FROM auth.users EXCEPT SELECT id FROM public.user_profiles",
    )
    .await;
    let orphans = ids(
        admin,
        "SELECT id FROM public.user_profiles EXCEPT SELECT id FROM auth.users",
    )
    .await;
    for (check, truth) in [("missing_profile", &missing), ("orphan_profile", &orphans)] {
        let found = findings(report, check);
        if truth.is_empty() {
            prop_assert!(found.is_empty(), "{} reported: {:?}", check, found);
        } else {
            prop_assert_eq!(found.len(), 1);
            prop_assert_eq!(found[0].count, truth.len() as i64, "{}", check);
            let samples: BTreeSet<String> = found[0].samples.iter().cloned().collect();
            prop_assert!(
                samples.is_subset(truth),
                "{} samples not among the truth",
                check
            );
            prop_assert_eq!(samples.len(), truth.len().min(10));
        }
    }
    Ok(!missing.is_empty() || !orphans.is_empty())
}

/// Each sabotaged constraint, with its table and count, and no other; each broken schema
/// object.
fn constraints_match(report: &integrity::Report, expected: &Expected) -> Result<(), TestCaseError> {
    for (check, object, count) in &expected.counted {
        let found: Vec<&Finding> = findings(report, check)
            .into_iter()
            .filter(|f| f.object.as_deref() == Some(object.as_str()))
            .collect();
        prop_assert_eq!(
            found.len(),
            1,
            "{} on {}: {:#?}",
            check,
            object,
            report.findings
        );
        prop_assert_eq!(found[0].count, *count, "{} on {}", check, object);
    }
    let named = expected
        .counted
        .iter()
        .map(|(c, o, _)| (*c, o.as_str()))
        .collect::<BTreeSet<_>>();
    for f in &report.findings {
        if f.check.starts_with("foreign_key_") {
            let key = (f.check.as_str(), f.object.as_deref().unwrap_or(""));
            prop_assert!(
                named.iter().any(|(c, o)| (*c, *o) == key),
                "unexpected {:?}",
                f
            );
        }
    }
    for name in &expected.schema {
        prop_assert!(!findings(report, name).is_empty(), "{} not reported", name);
    }
    Ok(())
}

/// The orphans of the user-id columns without a foreign key, against an independent count.
async fn user_id_column_orphans_match(
    admin: &Client,
    report: &integrity::Report,
) -> Result<(), TestCaseError> {
    let stale: i64 = admin
        .query_one(
            "SELECT count(*) FROM auth.refresh_tokens t WHERE t.user_id IS NOT NULL
             AND t.user_id NOT IN (SELECT id::text FROM auth.users)",
            &[],
        )
        .await
        .map_err(property::fail)?
        .get(0);
    let reported: i64 = findings(report, "user_id_column_orphans")
        .iter()
        .filter(|f| f.object.as_deref() == Some("auth.refresh_tokens.user_id"))
        .map(|f| f.count)
        .sum();
    prop_assert_eq!(reported, stale);
    Ok(())
}
