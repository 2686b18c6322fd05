//! The users API: complete, flagged, schema-valid pages on random populations, consistent
//! paging under sign-ups, the pinned schema, tokens, errors, and random requests.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::Value;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::daemon::{Daemon, NEVER};
use crate::property;
use crate::support::{AuthUser, TestDb, insert_users, usersync};

const TOKEN: &str = "test-token-0123456789abcdef";

fn schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(usersync::http::users::SCHEMA).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

async fn api(test_db: &TestDb) -> Daemon {
    Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await
}

async fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = daemon
        .request("GET", path, &[("Authorization", &auth)])
        .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}")),
    )
}

/// Every user of every page, following next_cursor.
async fn all_pages(
    daemon: &Daemon,
    limit: usize,
    extra: &str,
    schema: &jsonschema::Validator,
) -> Vec<Value> {
    let mut users = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/users?limit={limit}{extra}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(daemon, &path).await;
        assert_eq!(status, 200, "{page}");
        assert!(schema.is_valid(&page), "{page}");
        let batch = page["users"].as_array().unwrap();
        assert!(batch.len() <= limit);
        users.extend(batch.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return users,
        }
    }
}

/// What the two tables hold for `id`, as the API should show it.
async fn expected(client: &Client, id: Uuid) -> Value {
    let row = client
        .query_one(
            "SELECT json_build_object(
                 'id', u.id, 'email', u.email, 'phone', u.phone,
                 'is_anonymous', u.is_anonymous, 'deleted', u.deleted_at IS NOT NULL,
                 'profile_missing', p.id IS NULL,
                 -- A soft-deleted user's name and picture are never served.
                 'full_name', CASE WHEN u.deleted_at IS NULL THEN
                     COALESCE(p.full_name, CASE WHEN p.id IS NULL THEN b.full_name END) END,
                 'avatar_url', CASE WHEN u.deleted_at IS NULL THEN
                     COALESCE(p.avatar_url, CASE WHEN p.id IS NULL THEN b.avatar_url END) END,
                 'role', COALESCE(p.role, 'user'), 'is_active', COALESCE(p.is_active, true),
                 'profile_created', p.created_at IS NOT NULL)::text
             FROM auth.users u LEFT JOIN public.user_profiles p ON p.id = u.id
             CROSS JOIN LATERAL usersync.build_profile(u) b WHERE u.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    serde_json::from_str(&row.get::<_, String>(0)).unwrap()
}

fn member() -> impl Strategy<Value = (AuthUser, Option<(String, bool)>)> {
    let profile = prop::option::of(("[a-z]{1,8}", any::<bool>()));
    (0..3u8, "\\PC{0,20}", prop::bool::weighted(0.15), profile).prop_map(
        |(kind, name, deleted, profile)| {
            let id = Uuid::new_v4();
            let user = AuthUser {
                id,
                email: (kind == 0).then(|| format!("{}@example.test", id.simple())),
                phone: (kind == 1).then(|| format!("1{}", id.as_u128() % 10u128.pow(14))),
                is_anonymous: kind == 2,
                user_meta: Some(serde_json::json!({ "name": name })),
                created_at: (kind != 1).then(chrono::Utc::now),
                deleted,
            };
            (user, profile)
        },
    )
}

/// The users (the trigger off, so that none has a profile yet) and the profiles the
/// application made.
async fn populate(
    admin: &Client,
    members: &[(AuthUser, Option<(String, bool)>)],
) -> Result<(), TestCaseError> {
    admin
        .batch_execute(
            "TRUNCATE auth.users CASCADE;
             ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created",
        )
        .await
        .map_err(property::fail)?;
    let users: Vec<AuthUser> = members.iter().map(|(u, _)| u.clone()).collect();
    insert_users(admin, &users).await.map_err(property::fail)?;
    admin
        .batch_execute("ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created")
        .await
        .map_err(property::fail)?;
    for (u, profile) in members {
        if let Some((role, active)) = profile {
            admin
                .execute(
                    "INSERT INTO public.user_profiles (id, full_name, role, is_active) VALUES ($1, 'App Name', $2, $3)",
                    &[&u.id, role, active],
                )
                .await
                .map_err(property::fail)?;
        }
    }
    Ok(())
}

/// Every field of a listed user is what the tables hold; a missing profile is flagged, with a
/// new profile's defaults and null timestamps.
async fn shown_as_the_tables_hold(
    admin: &Client,
    shown: &serde_json::Value,
) -> Result<(), TestCaseError> {
    let id: Uuid = shown["id"].as_str().unwrap().parse().unwrap();
    let truth = expected(admin, id).await;
    for (field, path) in [
        ("email", "/email"),
        ("phone", "/phone"),
        ("is_anonymous", "/is_anonymous"),
        ("profile_missing", "/profile_missing"),
        ("role", "/profile/role"),
        ("is_active", "/profile/is_active"),
        ("full_name", "/profile/full_name"),
        ("avatar_url", "/profile/avatar_url"),
    ] {
        prop_assert_eq!(shown.pointer(path), truth.get(field), "{} of {}", field, id);
    }
    prop_assert_eq!(
        shown["deleted_at"].is_null(),
        !truth["deleted"].as_bool().unwrap()
    );
    prop_assert_eq!(
        shown["profile"]["created_at"].is_null(),
        !truth["profile_created"].as_bool().unwrap()
    );
    if shown["profile_missing"] == true {
        prop_assert_eq!(&shown["profile"]["role"], "user");
        prop_assert_eq!(&shown["profile"]["is_active"], true);
    }
    Ok(())
}

/// A single user, with and without a profile, reads as it was listed.
async fn single_users_match(
    daemon: &Daemon,
    listed: &[Value],
    schema: &jsonschema::Validator,
) -> Result<(), TestCaseError> {
    for shown in listed.iter().take(3) {
        let path = format!("/v1/users/{}", shown["id"].as_str().unwrap());
        let (status, one) = get(daemon, &path).await;
        prop_assert_eq!(status, 200);
        prop_assert!(schema.is_valid(&one));
        prop_assert_eq!(&one, shown);
    }
    Ok(())
}

/// On random populations, paging through everything yields each user once,
/// every field equals what the two tables hold, users without a profile are listed and
/// flagged with a new profile's defaults, and every response validates against the schema.
#[test]
fn listed_users_are_complete_flagged_and_match_the_schema() {
    let rt = property::runtime();
    let schema = schema();
    let (test_db, daemon) = rt.block_on(async {
        let test_db = TestDb::migrated().await;
        let daemon = api(&test_db).await;
        (test_db, daemon)
    });
    let strategy = (
        prop::collection::vec(member(), 0..30),
        1usize..12,
        any::<bool>(),
    );
    property::check(
        "listed_users",
        strategy,
        |(members, limit, include_deleted)| {
            rt.block_on(async {
                let admin = test_db.admin().await;
                populate(&admin, &members).await?;
                let extra = if include_deleted {
                    "&include_deleted=true"
                } else {
                    ""
                };
                let listed = all_pages(&daemon, limit, extra, &schema).await;
                let ids: Vec<Uuid> = listed
                    .iter()
                    .map(|u| u["id"].as_str().unwrap().parse().unwrap())
                    .collect();
                let mut sorted = ids.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(&sorted, &ids, "each user once, in id order");
                let visible: BTreeSet<Uuid> = members
                    .iter()
                    .filter(|(u, _)| include_deleted || !u.deleted)
                    .map(|(u, _)| u.id)
                    .collect();
                prop_assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), visible);

                for shown in &listed {
                    shown_as_the_tables_hold(&admin, shown).await?;
                }

                // missing_profile=true lists exactly those that should have one: live
                // (a soft-deleted user never gets a profile), anonymous ones included by default.
                let missing = all_pages(
                    &daemon,
                    limit,
                    &format!("{extra}&missing_profile=true"),
                    &schema,
                )
                .await;
                prop_assert!(
                    missing
                        .iter()
                        .all(|u| u["profile_missing"] == true && u["deleted_at"].is_null())
                );
                let flagged = listed
                    .iter()
                    .filter(|u| u["profile_missing"] == true && u["deleted_at"].is_null())
                    .count();
                prop_assert_eq!(missing.len(), flagged);

                single_users_match(&daemon, &listed, &schema).await?;
                Ok(())
            })
        },
    );
    rt.block_on(daemon.stop()).unwrap();
}

/// with any limit, paging yields each user exactly once and in order while
/// sign-ups keep arriving; the same request twice gives the same page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_consistent_under_concurrent_sign_ups() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    let before: Vec<AuthUser> = (0..300)
        .map(|i| AuthUser::email(&format!("p19.{i}@example.test")))
        .collect();
    insert_users(&admin, &before).await.unwrap();
    let daemon = api(&test_db).await;
    let schema = schema();
    let signups = {
        let client = test_db.admin().await;
        tokio::spawn(async move {
            for i in 0..200 {
                let u = AuthUser::email(&format!("p19.late{i}@example.test"));
                insert_users(&client, &[u]).await.unwrap();
            }
        })
    };
    for limit in [1usize, 7, 50, 1000] {
        let listed = all_pages(&daemon, limit, "", &schema).await;
        let ids: Vec<String> = listed
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "limit {limit}: once each, in order");
        for u in &before {
            assert!(
                ids.contains(&u.id.to_string()),
                "limit {limit}: {} was present all along",
                u.id
            );
        }
    }
    signups.await.unwrap();
    let (_, first) = get(&daemon, "/v1/users?limit=20").await;
    let (_, again) = get(&daemon, "/v1/users?limit=20").await;
    assert_eq!(first, again);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_errors_and_the_api_switch() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    insert_users(&admin, &[AuthUser::email("one@example.test")])
        .await
        .unwrap();
    let schema = schema();

    // Without a token the routes do not exist.
    let off =
        Daemon::start(test_db.runtime_settings_with(&[("USERSYNC__SYNC__SCHEDULE", NEVER)])).await;
    assert_eq!(off.get("/v1/users").await.0, 404);
    off.stop().await.unwrap();

    let daemon = api(&test_db).await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token-0123456789")],
        vec![("Authorization", TOKEN)],
    ] {
        let (status, head, body) = daemon.request("GET", "/v1/users", &headers).await;
        assert_eq!(status, 401);
        assert!(
            head.to_lowercase().contains("www-authenticate: bearer"),
            "{head}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(schema.is_valid(&body));
    }
    for (path, status, code) in [
        ("/v1/users?limit=0", 400, "bad_limit"),
        ("/v1/users?limit=1001", 400, "bad_limit"),
        ("/v1/users?cursor=garbage", 400, "bad_cursor"),
        ("/v1/users?sort=email", 400, "bad_parameter"),
        ("/v1/users/not-a-uuid", 400, "bad_id"),
        (
            "/v1/users/00000000-0000-0000-0000-000000000000",
            404,
            "not_found",
        ),
    ] {
        let (got, body) = get(&daemon, path).await;
        assert_eq!(
            (got, body["error"].as_str().unwrap()),
            (status, code),
            "{path}"
        );
        assert!(schema.is_valid(&body), "{body}");
    }
    daemon.stop().await.unwrap();

    // The database down: 503 with its code.
    let down = Daemon::start(test_db.runtime_settings_with(&[
        (
            "DATABASE_URL",
            "postgres://usersync_app@127.0.0.1:1/postgres",
        ),
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__DATABASE__CONNECT_TIMEOUT_SECS", "1"),
    ]))
    .await;
    let (status, body) = get(&down, "/v1/users").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("database_unavailable"))
    );
    down.stop().await.unwrap();
}

#[test]
fn random_query_strings_and_headers_never_produce_a_server_error() {
    let rt = property::runtime();
    let (test_db, daemon) = rt.block_on(async {
        let test_db = TestDb::migrated().await;
        insert_users(
            &test_db.admin().await,
            &[AuthUser::email("fuzz@example.test")],
        )
        .await
        .unwrap();
        let daemon = api(&test_db).await;
        (test_db, daemon)
    });
    let token = format!("Bearer {TOKEN}");
    let path = prop_oneof![
        "/v1/users\\?[a-z_=&%0-9A-F+.-]{0,40}",
        "/v1/users/[a-zA-Z0-9%-]{0,40}",
        Just("/v1/users?limit=5&cursor=AQ".to_string()),
    ];
    let header = prop_oneof![
        Just(("Authorization".to_string(), token.clone())),
        ("[A-Za-z-]{1,12}", "[ -~]{0,30}"),
    ];
    property::check(
        "random_requests",
        (path, prop::collection::vec(header, 0..3)),
        |(path, headers)| {
            rt.block_on(async {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let (status, _, _) = daemon.request("GET", &path, &headers).await;
                prop_assert!(
                    (200..500).contains(&status),
                    "{} {:?} -> {}",
                    path,
                    headers,
                    status
                );
                Ok(())
            })
        },
    );
    rt.block_on(daemon.stop()).unwrap();
    drop(test_db);
}

#[tokio::test]
async fn users_list_and_get_on_the_command_line() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    let users: Vec<AuthUser> = (0..3)
        .map(|i| AuthUser::email(&format!("cli{i}@example.test")))
        .collect();
    insert_users(&admin, &users).await.unwrap();
    admin
        .execute(
            "DELETE FROM public.user_profiles WHERE id = $1",
            &[&users[0].id],
        )
        .await
        .unwrap();
    let url = test_db.runtime_url();
    let env = [("DATABASE_URL", url.as_str())];
    let (code, stdout, stderr) = usersync(&["users", "list", "--limit", "2", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let page: Value = serde_json::from_str(&stdout).unwrap();
    assert!(schema().is_valid(&page));
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (code, stdout, _) = usersync(&["users", "list", "--cursor", cursor], &env);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (code, stdout, _) = usersync(&["users", "get", &users[0].id.to_string()], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("PROFILE MISSING"), "{stdout}");
    let (code, _, stderr) = usersync(&["users", "list", "--cursor", "nope"], &env);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = usersync(&["users", "list", "--limit", "0"], &env);
    assert_eq!(code, 2);
}
