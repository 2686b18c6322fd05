//! The sync engine: detection, creation, preservation, reporting and idempotence on random
//! populations, the repair queue, concurrency.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::json;
use tokio_postgres::Client;
use usersync::sync::{self, Options};
use uuid::Uuid;

use crate::property;
use crate::support::{AuthUser, TestDb, count, insert_users, usersync};

/// One user of a generated population.
#[derive(Clone, Debug)]
struct Member {
    user: AuthUser,
    /// Some(edits) when the user already has a profile, edited by the application.
    profile: Option<AppEdits>,
}

#[derive(Clone, Debug)]
struct AppEdits {
    full_name: Option<String>,
    role: String,
    is_active: bool,
}

fn member() -> impl Strategy<Value = Member> {
    let kind = 0..4u8; // email, phone, anonymous, email with OAuth metadata
    let edits = prop::option::of(
        (
            prop::option::of("\\PC{0,30}"),
            prop_oneof![
                Just("user".to_string()),
                Just("admin".to_string()),
                "[a-z]{1,8}"
            ],
            any::<bool>(),
        )
            .prop_map(|(full_name, role, is_active)| AppEdits {
                full_name,
                role,
                is_active,
            }),
    );
    let odd = crate::signup::metadata();
    (kind, odd, prop::bool::weighted(0.2), edits).prop_map(|(kind, odd, deleted, profile)| {
        let id = Uuid::new_v4();
        let meta = match kind {
            3 => Some(json!({"name": "Ada Lovelace", "picture": "https://example.test/a.png"})),
            _ => odd,
        };
        Member {
            user: AuthUser {
                id,
                email: matches!(kind, 0 | 3).then(|| format!("{}@example.test", id.simple())),
                phone: (kind == 1).then(|| format!("1{}", id.as_u128() % 10u128.pow(14))),
                is_anonymous: kind == 2,
                user_meta: meta,
                created_at: Some(chrono::Utc::now()),
                deleted,
            },
            profile,
        }
    })
}

/// A population plus how the pass runs over it.
#[derive(Clone, Debug)]
struct Case {
    members: Vec<Member>,
    workers: u32,
    batch_size: u32,
    include_anonymous: bool,
    /// Most users a pass lists: the default, or small enough that it sweeps by page range.
    list_limit: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(member(), 0..60),
        1u32..4,
        1u32..25,
        any::<bool>(),
        prop_oneof![Just(usersync::sync::plan::LIST_LIMIT), 0u64..20],
    )
        .prop_map(
            |(members, workers, batch_size, include_anonymous, list_limit)| Case {
                members,
                workers,
                batch_size,
                include_anonymous,
                list_limit,
            },
        )
}

/// Loads a population with the trigger off (users from before the trigger, a restore), then
/// gives some of them a profile the application has edited.
async fn load(admin: &Client, members: &[Member]) -> Result<(), TestCaseError> {
    admin
        .batch_execute(
            "TRUNCATE auth.users CASCADE;
             ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created",
        )
        .await
        .map_err(property::fail)?;
    let users: Vec<AuthUser> = members.iter().map(|m| m.user.clone()).collect();
    insert_users(admin, &users).await.map_err(property::fail)?;
    admin
        .batch_execute("ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created")
        .await
        .map_err(property::fail)?;
    for m in members {
        if let Some(e) = &m.profile {
            admin
                .execute(
                    "INSERT INTO public.user_profiles (id, email, full_name, role, is_active, created_at, updated_at)
                     VALUES ($1, 'edited@app.test', $2, $3, $4, '2001-01-01', '2002-02-02')",
                    &[&m.user.id, &e.full_name, &e.role, &e.is_active],
                )
                .await
                .map_err(property::fail)?;
        }
    }
    Ok(())
}

/// Every profile as text, by id: what "byte-identical" is compared on.
async fn profiles(client: &Client) -> Vec<(Uuid, String)> {
    client
        .query(
            "SELECT id, to_jsonb(p)::text FROM public.user_profiles p ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The users that should get a profile, computed independently of usersync's SQL.
async fn missing_by_sql(client: &Client, include_anonymous: bool) -> Vec<Uuid> {
    client
        .query(
            "SELECT id FROM auth.users WHERE deleted_at IS NULL AND ($1 OR NOT is_anonymous)
             EXCEPT SELECT id FROM public.user_profiles ORDER BY 1",
            &[&include_anonymous],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn scalar(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn options(case: &Case, dry_run: bool) -> Options {
    Options {
        dry_run,
        preview: false,
        workers: case.workers,
        batch_size: case.batch_size,
        // These properties are about creation; the lifecycle has its own (tests/it/lifecycle/).
        policy: usersync::sync::policy::Policy {
            include_anonymous: case.include_anonymous,
            follow_email: false,
            soft_deleted: usersync::sync::policy::SoftDeleted::Keep,
            fill_from_metadata: false,
        },
        retry_queue_now: false,
        apply_lifecycle: false,
        drain_queue: true,
        list_limit: case.list_limit,
        queue_empty: false,
        stop: None,
    }
}

/// On one population: detection, creation, preservation, reporting accuracy
/// and idempotence. One population serves all five, so each case checks them together.
#[test]
fn sync_detects_creates_preserves_reports_and_is_idempotent() {
    let rt = property::runtime();
    let (test_db, db) = rt.block_on(async {
        let test_db = TestDb::migrated().await;
        let db = usersync::db::connect(&test_db.settings().database)
            .await
            .unwrap();
        (test_db, db)
    });
    property::check("sync_pass", case(), |case| {
        rt.block_on(async {
            let admin = test_db.admin().await;
            load(&admin, &case.members).await?;
            let before = profiles(&admin).await;
            let expected = missing_by_sql(&admin, case.include_anonymous).await;
            let deleted_without = scalar(&admin, "SELECT count(*) FROM auth.users u WHERE deleted_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)").await;
            let anonymous_without = scalar(&admin, "SELECT count(*) FROM auth.users u WHERE deleted_at IS NULL AND is_anonymous AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)").await;
            let deleted_with: Vec<(Uuid, String)> = before
                .iter()
                .filter(|(id, _)| case.members.iter().any(|m| m.user.id == *id && m.user.deleted))
                .cloned()
                .collect();

            // Detection: the dry run finds exactly the SQL's set and writes nothing.
            let dry = sync::run(&db, &options(&case, true), None).await.map_err(property::fail)?;
            prop_assert_eq!(&dry.would_create, &expected);
            prop_assert_eq!(dry.missing, expected.len() as u64);
            prop_assert_eq!(profiles(&admin).await, before.clone(), "a dry run wrote");

            let report = sync::run(&db, &options(&case, false), None).await.map_err(property::fail)?;
            let after = profiles(&admin).await;

            // Creation: every live (eligible) user has one profile with the
            // defaults; no deleted user gained one.
            prop_assert!(missing_by_sql(&admin, case.include_anonymous).await.is_empty());
            let created: Vec<&(Uuid, String)> =
                after.iter().filter(|(id, _)| expected.contains(id)).collect();
            prop_assert_eq!(created.len(), expected.len());
            for (id, row) in created {
                let row: serde_json::Value = serde_json::from_str(row).unwrap();
                prop_assert_eq!(&row["role"], "user", "{}", id);
                prop_assert_eq!(&row["is_active"], true, "{}", id);
            }
            let deleted_after: Vec<(Uuid, String)> = after
                .iter()
                .filter(|(id, _)| case.members.iter().any(|m| m.user.id == *id && m.user.deleted))
                .cloned()
                .collect();
            prop_assert_eq!(deleted_after, deleted_with);

            // Preservation: every profile that existed is identical, whole row.
            for (id, row) in &before {
                let now = after.iter().find(|(a, _)| a == id).map(|(_, r)| r);
                prop_assert_eq!(now, Some(row), "profile {} changed", id);
            }

            // Reporting accuracy: every count is the measured difference.
            let measured = Measured {
                missing: expected.len() as u64,
                created: (after.len() - before.len()) as u64,
                deleted_without: deleted_without as u64,
                anonymous_without: anonymous_without as u64,
            };
            report_is_exact(&report, &case, &measured)?;

            // Idempotence: a second pass finds and creates nothing.
            let again = sync::run(&db, &options(&case, false), None).await.map_err(property::fail)?;
            prop_assert_eq!(again.missing, 0);
            prop_assert_eq!(again.total_created(), 0);
            prop_assert_eq!(profiles(&admin).await, after);
            Ok(())
        })
    });
}

/// What a case measured around a pass.
struct Measured {
    missing: u64,
    created: u64,
    deleted_without: u64,
    anonymous_without: u64,
}

/// Every count of the pass's report is the measured difference.
fn report_is_exact(report: &sync::Report, case: &Case, m: &Measured) -> Result<(), TestCaseError> {
    prop_assert_eq!(report.scanned, case.members.len() as u64);
    prop_assert_eq!(report.missing, m.missing);
    prop_assert_eq!(report.total_created(), m.created);
    prop_assert_eq!(report.created, m.missing);
    prop_assert_eq!(report.raced, 0);
    prop_assert_eq!(report.failed, 0);
    prop_assert_eq!(report.skipped_deleted, m.deleted_without);
    let anonymous_skipped = if case.include_anonymous {
        0
    } else {
        m.anonymous_without
    };
    prop_assert_eq!(report.skipped_anonymous, anonymous_skipped);
    if m.missing <= case.list_limit {
        // Listed: batches of users.
        let fewest = m.missing.div_ceil(case.batch_size as u64);
        prop_assert!(report.batches >= fewest && report.batches <= m.missing);
    } else {
        // Swept by page range: batches of pages, at least one.
        prop_assert!(report.batches >= 1, "{} batches", report.batches);
    }
    Ok(())
}

fn default_options() -> Options {
    Options {
        dry_run: false,
        preview: false,
        workers: 2,
        batch_size: 100,
        // These properties are about creation; the lifecycle has its own (tests/it/lifecycle/).
        policy: usersync::sync::policy::Policy {
            include_anonymous: true,
            follow_email: false,
            soft_deleted: usersync::sync::policy::SoftDeleted::Keep,
            fill_from_metadata: false,
        },
        retry_queue_now: false,
        apply_lifecycle: false,
        drain_queue: true,
        list_limit: usersync::sync::plan::LIST_LIMIT,
        queue_empty: false,
        stop: None,
    }
}

async fn users_without_trigger(admin: &Client, users: &[AuthUser]) {
    admin
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    insert_users(admin, users).await.unwrap();
    admin
        .batch_execute("ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
}

fn emails(n: usize, tag: &str) -> Vec<AuthUser> {
    (0..n)
        .map(|i| {
            AuthUser::email(&format!(
                "{tag}{i}.{}@example.test",
                Uuid::new_v4().simple()
            ))
        })
        .collect()
}

mod cases;
