//! Around the lifecycle: older GoTrue schemas, a manual sync's retries, check's lifecycle findings, the daemon's lifecycle sweep, metadata that arrives later.

use super::*;
use crate::support::{AuthUser, insert_users};
use tokio_postgres::Client;
use uuid::Uuid;

#[tokio::test]
async fn an_older_gotrue_schema_is_refused_naming_the_column_and_the_oldest_supported() {
    let db = TestDb::new().await;
    db.admin()
        .await
        .batch_execute("DROP INDEX auth.users_is_anonymous_idx; ALTER TABLE auth.users DROP COLUMN is_anonymous")
        .await
        .unwrap();
    let url = db.app_url();
    let (code, _, stderr) = usersync(&["migrate", "up"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no column is_anonymous") && stderr.contains("20240214120130"),
        "{stderr}"
    );
    let (code, stdout, _) = usersync(&["migrate", "verify"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 1);
    assert!(stdout.contains("auth_schema"), "{stdout}");
}

#[tokio::test]
async fn a_manual_sync_retries_every_queued_user_now_and_says_so() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    // A cause that makes profiles fail, a failed repair that set a long backoff, then the fix.
    admin
        .batch_execute(
            "ALTER TABLE public.user_profiles ADD CONSTRAINT blocked CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    let user = AuthUser::email("queued@example.test");
    insert_users(&admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    admin
        .batch_execute(
            "UPDATE usersync.repair_queue SET attempts = 5, next_attempt_at = now() + interval '1 hour';
             ALTER TABLE public.user_profiles DROP CONSTRAINT blocked;",
        )
        .await
        .unwrap();
    let url = db.runtime_url();
    let (code, stdout, stderr) = usersync(&["sync", "--json"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["repair"]["retried_now"], true, "{stdout}");
    assert_eq!(report["repair"]["created"], 1, "{stdout}");
    assert_eq!(report["deferred"], 0, "{stdout}");
    let (code, text, _) = usersync(&["sync"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 0);
    assert!(text.contains("retried every queued user"), "{text}");
}

#[tokio::test]
async fn check_reports_stale_emails_and_personal_data_left_by_soft_deletes() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let users: Vec<AuthUser> = (0..3)
        .map(|i| AuthUser::email(&format!("life{i}@example.test")))
        .collect();
    insert_users(&admin, &users).await.unwrap();
    // What the triggers would have handled, done with them off: an e-mail change, a soft delete.
    admin
        .batch_execute(&format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_updated;
             UPDATE auth.users SET email = 'new@example.test' WHERE id = '{}';
             UPDATE auth.users SET email = 'x@deleted.invalid', deleted_at = now() WHERE id = '{}';
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;",
            users[0].id, users[1].id
        ))
        .await
        .unwrap();
    let url = db.runtime_url();
    let (code, json, _) = usersync(&["check", "--json"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let find = |check: &str| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no {check} in {json}"))
    };
    let stale = find("stale_email");
    assert_eq!(stale["level"], "warning");
    assert_eq!(stale["count"], 1);
    let left = find("soft_deleted_personal_data");
    assert_eq!(left["level"], "error");
    assert_eq!(left["samples"][0], users[1].id.to_string());
    // The sweep scrubs; follow_email is off, so the stale e-mail stays a warning.
    let (code, _, stderr) = usersync(&["sync"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 0, "{stderr}");
    let (code, json, _) = usersync(&["check", "--json"], &[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, 0, "{json}");
    assert!(!json.contains("soft_deleted_personal_data") && json.contains("stale_email"));
    // A configuration that differs from the database's policies is named.
    let (_, json, _) = usersync(
        &["check", "--json"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("USERSYNC__SYNC__FOLLOW_EMAIL", "true"),
        ],
    );
    assert!(json.contains("\"policy\""), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_scrubs_what_the_triggers_missed_once_a_cycle_sees_the_trigger_toggled() {
    use std::time::Duration;
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let user = AuthUser::email("daemon-scrub@example.test");
    insert_users(&admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    let daemon = crate::daemon::Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]))
    .await;
    // Let the first cycle (a full scan: no baseline yet) pass, then soft-delete the user
    // behind the update trigger's back: the trigger's catalog row changes, so the next cycle
    // runs a full scan, which applies the lifecycle.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    admin
        .batch_execute(&format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_updated;
             UPDATE auth.users SET email = 'gone@deleted.invalid', deleted_at = now()
             WHERE id = '{}';
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;",
            user.id
        ))
        .await
        .unwrap();
    let scrubbed = crate::daemon::eventually(Duration::from_secs(15), || async {
        admin
            .query_one(
                "SELECT email IS NULL AND NOT is_active FROM public.user_profiles WHERE id = $1",
                &[&user.id],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    daemon.stop().await.unwrap();
    assert!(scrubbed, "the daemon's sweep scrubbed the profile");
}

/// GoTrue's UpdateUserMetaData, as its role runs it: the whole merged metadata.
async fn set_metadata(admin: &Client, id: Uuid, meta: serde_json::Value) {
    admin
        .batch_execute("SET ROLE supabase_auth_admin")
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE auth.users SET raw_user_meta_data = $2, updated_at = now() WHERE id = $1",
            &[&id, &meta],
        )
        .await
        .unwrap();
    admin.batch_execute("RESET ROLE").await.unwrap();
}

async fn name_and_picture(admin: &Client, id: Uuid) -> (Option<String>, Option<String>) {
    let row = admin
        .query_one(
            "SELECT full_name, avatar_url FROM public.user_profiles WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn metadata_that_arrives_later_fills_what_is_empty_and_never_what_the_application_wrote() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let (empty, edited, deleted) = (
        AuthUser::email("phone-person@example.test"),
        AuthUser::email("edited@example.test"),
        AuthUser::email("deleted@example.test"),
    );
    insert_users(&admin, &[empty.clone(), edited.clone(), deleted.clone()])
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE public.user_profiles SET full_name = 'Chosen Name',
                 avatar_url = 'https://app.example.test/chosen.png' WHERE id = $1",
            &[&edited.id],
        )
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE auth.users SET deleted_at = now() WHERE id = $1",
            &[&deleted.id],
        )
        .await
        .unwrap();
    let later = serde_json::json!({
        "full_name": "Phone Person",
        "avatar_url": "https://img.example.test/p.png"
    });
    for user in [&empty, &edited, &deleted] {
        set_metadata(&admin, user.id, later.clone()).await;
    }
    let filled = (
        Some("Phone Person".to_string()),
        Some("https://img.example.test/p.png".to_string()),
    );
    assert_eq!(name_and_picture(&admin, empty.id).await, filled);
    let chosen = (
        Some("Chosen Name".to_string()),
        Some("https://app.example.test/chosen.png".to_string()),
    );
    assert_eq!(
        name_and_picture(&admin, edited.id).await,
        chosen,
        "never overwritten"
    );
    assert_eq!(
        name_and_picture(&admin, deleted.id).await,
        (None, None),
        "never filled"
    );
    // The sweep neither: what the trigger left is what the policies say.
    let url = db.runtime_url();
    assert_eq!(usersync(&["sync"], &[("DATABASE_URL", url.as_str())]).0, 0);
    assert_eq!(name_and_picture(&admin, edited.id).await, chosen);
    assert_eq!(name_and_picture(&admin, deleted.id).await, (None, None));
}
