//! `usersync explain` and `GET /v1/users/{id}/explain` on GoTrue's schema: each reason a user
//! has the profile it has (or none), a failing insert in the repair queue with its SQLSTATE,
//! exit codes 0, 1 and 2, the text and the JSON saying the same, the API the same as the CLI.

use serde_json::Value;
use uuid::Uuid;

use crate::daemon::{Daemon, FAIL_IN_SIGNUP_SESSION, NEVER, sign_up_failing};
use crate::support::{AuthUser, TestDb, insert_users, usersync};

const TOKEN: &str = "explain-token-0123456789abcdef";

/// `usersync explain WHO` and `--json`, as the runtime role: exit code, text, JSON.
fn explain(db: &TestDb, who: &str) -> (i32, String, Value) {
    let url = db.runtime_url();
    let env = [("DATABASE_URL", url.as_str())];
    let (code, text, stderr) = usersync(&["explain", who], &env);
    let (json_code, json, _) = usersync(&["explain", who, "--json"], &env);
    assert_eq!(code, json_code, "text and JSON exit alike: {stderr}");
    let json = serde_json::from_str(&json).unwrap_or(Value::Null);
    (code, text, json)
}

/// The text says what the JSON says: the reason, the profile's state, the queue's SQLSTATE,
/// each action.
fn agree(text: &str, json: &Value) {
    let why = match json["why"].as_str().unwrap() {
        "live" => "yes: a live user",
        "anonymous_excluded" => "no: anonymous",
        "soft_deleted" => "no: soft-deleted",
        "born_deleted" => "no: inserted already deleted",
        other => panic!("{other}"),
    };
    assert!(text.contains(why), "{why} in\n{text}");
    match json["profile"]["state"].as_str() {
        Some(state) => assert!(text.contains(&format!("profile: {state}")), "{text}"),
        None => assert!(text.contains("profile: none"), "{text}"),
    }
    if let Some(sqlstate) = json["repair_queue"]["last_sqlstate"].as_str() {
        assert!(text.contains(&format!("SQLSTATE {sqlstate}")), "{text}");
    } else {
        assert!(text.contains("repair queue: not queued"), "{text}");
    }
    let actions = json["actions"].as_array().unwrap();
    if actions.is_empty() {
        assert!(text.contains("usersync sync would: nothing"), "{text}");
    }
    for a in actions {
        let words = match a["action"].as_str().unwrap() {
            "create_profile" => "create the profile",
            "fill_email" => "fill the profile's e-mail",
            "follow_email" => "follow the user's new e-mail",
            "fill_from_metadata" => "from the metadata",
            "scrub" => "scrub the profile's personal data",
            "delete_profile" => "delete the profile",
            "dequeue" => "take the user out of the repair queue",
            other => panic!("{other}"),
        };
        assert!(text.contains(words), "{words} in\n{text}");
    }
}

fn actions(json: &Value) -> Vec<&str> {
    json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect()
}

async fn with_triggers_off(db: &TestDb, users: &[AuthUser]) {
    let admin = db.admin().await;
    admin
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    insert_users(&admin, users).await.unwrap();
    admin
        .batch_execute("ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
}

/// One user of each kind: live with a profile, anonymous (under include_anonymous = false),
/// inserted already deleted, soft-deleted yesterday's sign-up, and one the trigger missed.
struct Kinds {
    live: AuthUser,
    anonymous: AuthUser,
    born_deleted: AuthUser,
    soft_deleted: AuthUser,
    missed: AuthUser,
}

async fn kinds(db: &TestDb) -> Kinds {
    let admin = db.admin().await;
    let live = AuthUser::email("live@example.test");
    let anonymous = AuthUser {
        email: None,
        is_anonymous: true,
        ..AuthUser::email("anon@example.test")
    };
    let born_deleted = AuthUser {
        deleted: true,
        ..AuthUser::email("import@example.test")
    };
    // Signed up yesterday, soft-deleted now (one deleted within a second of signing up reads as
    // inserted already deleted).
    let soft_deleted = AuthUser {
        created_at: Some(chrono::Utc::now() - chrono::Duration::days(1)),
        ..AuthUser::email("gone@example.test")
    };
    let all = [
        live.clone(),
        anonymous.clone(),
        born_deleted.clone(),
        soft_deleted.clone(),
    ];
    insert_users(&admin, &all).await.unwrap();
    let missed = AuthUser {
        user_meta: Some(serde_json::json!({ "name": "Missed Person" })),
        ..AuthUser::email("missed@example.test")
    };
    with_triggers_off(db, std::slice::from_ref(&missed)).await;
    admin
        .batch_execute(&format!(
            "UPDATE usersync.policy SET include_anonymous = false;
             UPDATE auth.users SET deleted_at = now(), email = NULL WHERE id = '{}';",
            soft_deleted.id
        ))
        .await
        .unwrap();
    Kinds {
        live,
        anonymous,
        born_deleted,
        soft_deleted,
        missed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_each_reason_and_what_sync_would_do() {
    let db = TestDb::migrated().await;
    let Kinds {
        live,
        anonymous,
        born_deleted,
        soft_deleted,
        missed,
    } = kinds(&db).await;

    // A live user with its profile: nothing to do, exit 0, by id and by e-mail alike.
    let (code, text, json) = explain(&db, "live@example.test");
    assert_eq!(code, 0, "{text}");
    agree(&text, &json);
    assert_eq!(json["why"], "live");
    assert_eq!(json["profile"]["state"], "active");
    let (_, by_id, _) = explain(&db, &live.id.to_string());
    assert_eq!(by_id, text);

    // A live user the trigger missed: create it, exit 1; the builder's name comes with it.
    let (code, text, json) = explain(&db, &missed.id.to_string());
    assert_eq!(
        (code, actions(&json)),
        (1, vec!["create_profile"]),
        "{text}"
    );
    agree(&text, &json);

    // Anonymous under include_anonymous = false: none, and nothing to do (its profile from
    // before the policy changed is left to the application).
    let (code, text, json) = explain(&db, &anonymous.id.to_string());
    assert_eq!(json["why"], "anonymous_excluded", "{text}");
    assert_eq!(json["should_have_profile"], false);
    assert_eq!(code, 0, "{text}");
    agree(&text, &json);

    // Inserted already deleted: no profile, nothing to do.
    let (code, text, json) = explain(&db, &born_deleted.id.to_string());
    assert_eq!(
        (code, json["why"].as_str()),
        (0, Some("born_deleted")),
        "{text}"
    );
    assert!(json["profile"].is_null());
    agree(&text, &json);

    // Soft-deleted through the trigger: scrubbed, nothing left to do.
    let (code, text, json) = explain(&db, &soft_deleted.id.to_string());
    assert_eq!(json["why"], "soft_deleted", "{text}");
    assert_eq!(json["profile"]["state"], "scrubbed");
    assert_eq!(code, 0, "{text}");
    agree(&text, &json);

    // No such user: exit 2, by id and by e-mail; the e-mail is not repeated.
    let url = db.runtime_url();
    let env = [("DATABASE_URL", url.as_str())];
    let (code, _, stderr) = usersync(&["explain", &Uuid::new_v4().to_string()], &env);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = usersync(&["explain", "nobody@example.test"], &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("nobody@example.test"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_a_failing_insert_with_its_sqlstate_and_what_the_lifecycle_would_change() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    // A sign-up whose profile insert fails: queued by the trigger, with the SQLSTATE.
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();
    let [failing] = sign_up_failing(&db, 1, "failing").await[..] else {
        panic!("one user")
    };
    let (code, text, json) = explain(&db, &failing.to_string());
    assert_eq!(code, 1, "{text}");
    assert_eq!(json["repair_queue"]["last_sqlstate"], "P0001", "{json}");
    assert_eq!(json["repair_queue"]["failures"], 1);
    assert!(text.contains("transient failure"), "the error: {text}");
    assert_eq!(actions(&json), ["create_profile"]);
    agree(&text, &json);

    // Metadata that arrived while the update trigger was off, an e-mail changed under
    // follow_email: the lifecycle's actions, each named.
    let user = AuthUser::email("meta@example.test");
    insert_users(&admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "UPDATE usersync.policy SET follow_email = true;
             ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_updated;
             ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_metadata;
             UPDATE auth.users SET raw_user_meta_data = '{{\"picture\": \"https://img.example.test/p.png\"}}',
                                   email = 'new@example.test'
             WHERE id = '{}';
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_metadata;",
            user.id
        ))
        .await
        .unwrap();
    let (code, text, json) = explain(&db, &user.id.to_string());
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        actions(&json),
        ["follow_email", "fill_from_metadata"],
        "{json}"
    );
    assert_eq!(
        json["actions"][1]["fields"],
        serde_json::json!(["avatar_url"])
    );
    assert_eq!(json["profile"]["email_behind"], true);
    agree(&text, &json);
    // What it said is what sync does: after one, nothing is left.
    let url = db.runtime_url();
    assert_eq!(usersync(&["sync"], &[("DATABASE_URL", url.as_str())]).0, 0);
    let (code, text, json) = explain(&db, &user.id.to_string());
    assert_eq!((code, actions(&json)), (0, vec![]), "{text}");
    assert_eq!(
        json["profile"]["avatar_url"],
        "https://img.example.test/p.png"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_explains_as_the_cli_does_behind_the_token() {
    let db = TestDb::migrated().await;
    let user = AuthUser::email("api@example.test");
    with_triggers_off(&db, std::slice::from_ref(&user)).await;
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await;
    let path = format!("/v1/users/{}/explain", user.id);
    assert_eq!(daemon.get(&path).await.0, 401, "the token is required");
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = daemon
        .request("GET", &path, &[("Authorization", &auth)])
        .await;
    assert_eq!(status, 200, "{body}");
    let from_api: Value = serde_json::from_str(&body).unwrap();
    let (_, _, from_cli) = explain(&db, &user.id.to_string());
    assert_eq!(from_api, from_cli);
    let unknown = format!("/v1/users/{}/explain", Uuid::new_v4());
    let (status, _, _) = daemon
        .request("GET", &unknown, &[("Authorization", &auth)])
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = daemon
        .request(
            "GET",
            "/v1/users/not-a-uuid/explain",
            &[("Authorization", &auth)],
        )
        .await;
    assert_eq!(status, 400);
    daemon.stop().await.unwrap();
}
