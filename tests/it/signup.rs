//! The sign-up trigger: every sign-up gets exactly one profile, and commits when the profile
//! cannot be made.

use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::property;
use crate::support::{AuthUser, TestDb, count, insert_users};

/// A metadata value the way OAuth providers, admin imports and odd clients send them.
fn meta_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,40}".prop_map(Value::from),
        "[ ]{0,3}\\PC{0,300}[ ]{0,3}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from("   ")),
        Just(Value::Null),
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!(["not", "a", "name"])),
    ]
}

pub fn metadata() -> impl Strategy<Value = Option<Value>> {
    let keys = prop::sample::subsequence(
        vec!["full_name", "name", "avatar_url", "picture", "other"],
        0..=5,
    );
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(json!([1, 2]))),
        1 => Just(Some(json!("just a string"))),
        6 => (keys, prop::collection::vec(meta_value(), 5)).prop_map(|(keys, values)| {
            let map: serde_json::Map<String, Value> =
                keys.into_iter().zip(values).map(|(k, v)| (k.to_string(), v)).collect();
            Some(Value::Object(map))
        }),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Email,
    Phone,
    Anonymous,
}

fn auth_user() -> impl Strategy<Value = AuthUser> {
    let kind = prop_oneof![Just(Kind::Email), Just(Kind::Phone), Just(Kind::Anonymous)];
    let created_at = prop_oneof![
        Just(None),
        (0i64..2_000_000_000).prop_map(|s| chrono::DateTime::from_timestamp(s, 0)),
    ];
    (kind, "[a-z0-9.+_-]{1,20}", metadata(), created_at).prop_map(
        |(kind, local, meta, created_at)| {
            let id = Uuid::new_v4();
            AuthUser {
                id,
                email: matches!(kind, Kind::Email)
                    .then(|| format!("{local}.{}@example.test", id.simple())),
                phone: matches!(kind, Kind::Phone)
                    .then(|| format!("1{}", id.as_u128() % 10u128.pow(14))),
                is_anonymous: matches!(kind, Kind::Anonymous),
                user_meta: meta,
                created_at,
                deleted: false,
            }
        },
    )
}

/// What `usersync.build_profile` derives from metadata: the first of `keys` holding a JSON
/// string that, trimmed of spaces, is not empty.
fn expected_text(meta: &Option<Value>, keys: &[&str]) -> Option<String> {
    let object = meta.as_ref()?.as_object()?;
    keys.iter().find_map(|k| {
        let Value::String(text) = object.get(*k)? else {
            return None;
        };
        let trimmed = text.trim_matches(' ');
        (!trimmed.is_empty()).then(|| trimmed.to_string())
    })
}

/// Any sign-up commits and gets exactly one profile with
/// its id, role `user`, `is_active` true, and the name and picture from its metadata.
#[test]
fn every_sign_up_gets_exactly_one_profile_with_defaults() {
    let rt = property::runtime();
    let db = rt.block_on(TestDb::migrated());
    property::check(
        "one_profile_per_sign_up",
        prop::collection::vec(auth_user(), 1..12),
        |users| {
            rt.block_on(async {
                let admin = db.admin().await;
                admin
                    .batch_execute("TRUNCATE auth.users CASCADE")
                    .await
                    .map_err(property::fail)?;
                insert_users(&admin, &users).await.map_err(property::fail)?;
                prop_assert_eq!(
                    count(&admin, "public.user_profiles").await,
                    users.len() as i64
                );
                for u in &users {
                    let rows = admin
                        .query(
                            "SELECT p.role, p.is_active, p.email, p.full_name, p.avatar_url,
                                p.created_at = coalesce(u.created_at, p.created_at)
                         FROM public.user_profiles p JOIN auth.users u USING (id) WHERE p.id = $1",
                            &[&u.id],
                        )
                        .await
                        .map_err(property::fail)?;
                    prop_assert_eq!(rows.len(), 1, "profiles of {}", u.id);
                    let r = &rows[0];
                    prop_assert_eq!(r.get::<_, String>(0), "user");
                    prop_assert!(r.get::<_, bool>(1));
                    prop_assert_eq!(r.get::<_, Option<String>>(2), u.email.clone());
                    prop_assert_eq!(
                        r.get::<_, Option<String>>(3),
                        expected_text(&u.user_meta, &["full_name", "name"])
                    );
                    prop_assert_eq!(
                        r.get::<_, Option<String>>(4),
                        expected_text(&u.user_meta, &["avatar_url", "picture"])
                    );
                    prop_assert!(r.get::<_, bool>(5), "created_at follows the user's");
                }
                prop_assert_eq!(count(&admin, "usersync.repair_queue").await, 0);
                Ok(())
            })
        },
    );
}

/// Ways a test makes profile creation fail, as applications do by accident.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    /// Every insert fails a CHECK.
    CheckAll,
    /// Only profiles with a name fail (some sign-ups break, others do not).
    CheckNamed,
    /// A NOT NULL column without a default, added by the application.
    NotNullColumn,
}

impl Breakage {
    fn sql(self) -> &'static str {
        match self {
            Breakage::CheckAll => {
                "ALTER TABLE public.user_profiles ADD CONSTRAINT broken CHECK (false) NOT VALID"
            }
            Breakage::CheckNamed => {
                "ALTER TABLE public.user_profiles ADD CONSTRAINT broken CHECK (full_name IS NULL) NOT VALID"
            }
            Breakage::NotNullColumn => {
                "ALTER TABLE public.user_profiles ADD COLUMN nickname text NOT NULL"
            }
        }
    }

    fn undo(self) -> &'static str {
        match self {
            Breakage::NotNullColumn => "ALTER TABLE public.user_profiles DROP COLUMN nickname",
            _ => "ALTER TABLE public.user_profiles DROP CONSTRAINT broken",
        }
    }

    fn fails(self, user: &AuthUser) -> Option<&'static str> {
        match self {
            Breakage::CheckAll => Some("23514"),
            Breakage::CheckNamed => {
                expected_text(&user.user_meta, &["full_name", "name"]).map(|_| "23514")
            }
            Breakage::NotNullColumn => Some("23502"),
        }
    }
}

/// Authentication resilience: with profile creation failing, every sign-up still
/// commits, and each failure is in the repair queue with its SQLSTATE, and nothing else is.
#[test]
fn sign_ups_commit_when_profile_creation_fails_and_failures_are_queued() {
    let rt = property::runtime();
    let db = rt.block_on(TestDb::migrated());
    let breakage = prop_oneof![
        Just(Breakage::CheckAll),
        Just(Breakage::CheckNamed),
        Just(Breakage::NotNullColumn)
    ];
    property::check(
        "sign_ups_commit",
        (breakage, prop::collection::vec(auth_user(), 1..10)),
        |(breakage, users)| {
            rt.block_on(async {
                let admin = db.admin().await;
                admin
                    .batch_execute("TRUNCATE auth.users CASCADE")
                    .await
                    .map_err(property::fail)?;
                admin
                    .batch_execute(breakage.sql())
                    .await
                    .map_err(property::fail)?;
                let inserted = insert_users(&admin, &users).await;
                admin
                    .batch_execute(breakage.undo())
                    .await
                    .map_err(property::fail)?;
                inserted.map_err(property::fail)?;
                prop_assert_eq!(count(&admin, "auth.users").await, users.len() as i64);
                for u in &users {
                    let profile = admin
                        .query("SELECT 1 FROM public.user_profiles WHERE id = $1", &[&u.id])
                        .await
                        .map_err(property::fail)?
                        .len();
                    let queued: Vec<String> = admin
                        .query(
                            "SELECT last_sqlstate FROM usersync.repair_queue WHERE user_id = $1",
                            &[&u.id],
                        )
                        .await
                        .map_err(property::fail)?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    match breakage.fails(u) {
                        Some(state) => {
                            prop_assert_eq!(profile, 0);
                            prop_assert_eq!(queued, vec![state.to_string()]);
                        }
                        None => {
                            prop_assert_eq!(profile, 1);
                            prop_assert!(queued.is_empty());
                        }
                    }
                }
                Ok(())
            })
        },
    );
}

#[tokio::test]
async fn a_failed_trigger_notifies_the_repair_channel_on_commit() {
    let db = TestDb::migrated().await;
    let (listener, mut connection) = db.connect_raw().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN usersync_repair")
        .await
        .unwrap();

    let admin = db.admin().await;
    admin.batch_execute(Breakage::CheckAll.sql()).await.unwrap();
    let user = AuthUser::email("notify@example.test");
    insert_users(&admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    let (channel, payload) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(channel, "usersync_repair");
    assert_eq!(payload, user.id.to_string());
}
