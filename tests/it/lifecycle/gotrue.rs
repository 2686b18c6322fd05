//! GoTrue's statements for each event of a user's life (internal/models/user.go): what the
//! database sees, and what the model expects of it.

use proptest::prelude::*;
use tokio_postgres::Client;
use uuid::Uuid;

use serde_json::{Map, Value};

use super::model::{Model, User};
use crate::support::{AuthUser, insert_users};

#[derive(Clone, Debug)]
pub(super) enum Event {
    /// 0 e-mail, 1 phone, 2 anonymous, 3 OAuth with a name, 4 e-mail inserted already deleted.
    SignUp(u8),
    Convert(usize),
    EmailChange(usize),
    SignIn(usize),
    SoftDelete(usize),
    Restore(usize),
    HardDelete(usize),
    /// GoTrue's UpdateUserMetaData, which merges keys into raw_user_meta_data (a null value
    /// removes one): 0 `PUT /user` with `data`, 1 the admin API's update of `user_metadata`,
    /// 2 a signup link generated again for an unconfirmed user, 3 identity linking (a new
    /// auth.identities row, the provider's claims merged in).
    Metadata(usize, u8, Vec<(usize, Option<usize>)>),
    /// The application writes the profile: 0 a name and the admin role, 1 a picture, 2 the name
    /// cleared, 3 the picture cleared.
    AppEdit(usize, u8),
    Triggers(bool),
}

/// The keys a metadata update touches, and the values it sets.
const KEYS: [&str; 5] = ["full_name", "name", "avatar_url", "picture", "bio"];

fn value(i: usize) -> Value {
    match i {
        0 => Value::from("Ada Lovelace"),
        1 => Value::from("   "),
        2 => Value::from(" Grace Hopper "),
        3 => Value::from("https://img.example.test/a.png"),
        _ => Value::from(7),
    }
}

pub(super) fn event() -> impl Strategy<Value = Event> {
    // Half the events about one of the first three users, so that one user's life has many
    // steps (an application's name, then metadata that brings another).
    let who = prop_oneof![
        3 => 0..3usize,
        1 => any::<prop::sample::Index>().prop_map(|i| i.index(1 << 16)),
    ];
    let patch = prop::collection::vec(
        (0..KEYS.len(), prop::option::weighted(0.8, 0..5usize)),
        1..4,
    );
    prop_oneof![
        4 => (0u8..5).prop_map(Event::SignUp),
        2 => who.clone().prop_map(Event::Convert),
        2 => who.clone().prop_map(Event::EmailChange),
        1 => who.clone().prop_map(Event::SignIn),
        2 => who.clone().prop_map(Event::SoftDelete),
        1 => who.clone().prop_map(Event::Restore),
        1 => who.clone().prop_map(Event::HardDelete),
        5 => (who.clone(), 0u8..4, patch).prop_map(|(i, k, p)| Event::Metadata(i, k, p)),
        3 => (who, 0u8..4).prop_map(|(i, k)| Event::AppEdit(i, k)),
        1 => any::<bool>().prop_map(Event::Triggers),
    ]
}

/// GoTrue's statements for `event`, the model following them while the triggers are on.
pub(super) async fn apply(admin: &Client, model: &mut Model, triggers: &mut bool, event: &Event) {
    let pick = |i: usize| (!model.users.is_empty()).then(|| i % model.users.len());
    match *event {
        Event::SignUp(kind) => sign_up(admin, model, *triggers, kind).await,
        Event::Triggers(on) => {
            let verb = if on { "ENABLE" } else { "DISABLE" };
            admin
                .batch_execute(&format!(
                    "ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_created;
                     ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_updated;
                     ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_metadata;"
                ))
                .await
                .unwrap();
            *triggers = on;
        }
        Event::HardDelete(i) => {
            let Some(i) = pick(i) else { return };
            let old = model.users.remove(i);
            let sql = "DELETE FROM auth.users WHERE id = $1 AND $2::text IS NULL";
            as_gotrue(admin, sql, old.id, None).await;
            model.profiles.remove(&old.id);
        }
        Event::AppEdit(i, kind) => {
            let Some(i) = pick(i) else { return };
            app_edit(admin, model, model.users[i].id, kind).await;
        }
        Event::Metadata(i, 3, _) => {
            // Identity linking: the identity row first, as GoTrue writes it.
            let Some(i) = pick(i) else { return };
            let sql = "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, created_at)
                       VALUES (gen_random_uuid()::text, $1, $2::text::jsonb, 'github', now())";
            let claims = serde_json::json!({ "sub": "1", "email_verified": true }).to_string();
            as_gotrue(admin, sql, model.users[i].id, Some(&claims)).await;
            change(admin, model, *triggers, i, event).await;
        }
        Event::Convert(i)
        | Event::Metadata(i, ..)
        | Event::EmailChange(i)
        | Event::SignIn(i)
        | Event::SoftDelete(i)
        | Event::Restore(i) => {
            let Some(i) = pick(i) else { return };
            change(admin, model, *triggers, i, event).await;
        }
    }
}

/// GoTrue's statements for a change of user `i`, the model following while the triggers are
/// on and their WHEN lets the change through.
async fn change(admin: &Client, model: &mut Model, triggers: bool, i: usize, event: &Event) {
    let mut user = model.users[i].clone();
    for (sql, value, after) in changes(event, &user) {
        as_gotrue(admin, sql, user.id, value.as_deref()).await;
        // The triggers in PostgreSQL's order, by name: the metadata's, then the update's.
        if triggers && user.fires_metadata(&after) {
            model.metadata(&user, &after);
        }
        if triggers && user.fires_update(&after) {
            model.updated(&user, &after);
        }
        user = after;
    }
    model.users[i] = user;
}

/// The application's own write of a profile: never usersync's to undo.
async fn app_edit(admin: &Client, model: &mut Model, id: Uuid, kind: u8) {
    let set = match kind {
        0 => "role = 'admin', full_name = 'App Name'",
        1 => "avatar_url = 'https://app.example.test/me.png'",
        2 => "full_name = NULL",
        _ => "avatar_url = NULL",
    };
    admin
        .execute(
            &format!("UPDATE public.user_profiles SET {set} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    if let Some(p) = model.profiles.get_mut(&id) {
        match kind {
            0 => {
                p.role = "admin".into();
                p.full_name = Some("App Name".into());
            }
            1 => p.avatar_url = Some("https://app.example.test/me.png".into()),
            2 => p.full_name = None,
            _ => p.avatar_url = None,
        }
    }
}

/// A sign-up of one kind: 0 e-mail, 1 phone, 2 anonymous, 3 OAuth with a name, 4 e-mail
/// inserted already deleted.
async fn sign_up(admin: &Client, model: &mut Model, triggers: bool, kind: u8) {
    let id = Uuid::new_v4();
    let mut user = AuthUser::email(&format!("{}@example.test", id.simple()));
    user.id = id;
    match kind {
        1 => {
            user.email = None;
            user.phone = Some(format!("1{}", id.as_u128() % 10u128.pow(14)));
        }
        2 => {
            user.email = None;
            user.is_anonymous = true;
        }
        3 => {
            let name = format!("Name {}", &id.simple().to_string()[..6]);
            user.user_meta = Some(serde_json::json!({ "full_name": name, "picture": 7 }));
        }
        4 => user.deleted = true,
        _ => {}
    }
    insert_users(admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    let meta = match &user.user_meta {
        Some(Value::Object(meta)) => meta.clone(),
        _ => Map::new(),
    };
    let u = User {
        id,
        email: user.email.clone(),
        anonymous: user.is_anonymous,
        meta,
        deleted: user.deleted,
    };
    if triggers {
        model.create(&u);
    }
    model.users.push(u);
}

/// GoTrue's statements for a change of one user, each with a value for `$2` and the user as
/// the statement leaves it; none when the change does not apply.
fn changes(event: &Event, old: &User) -> Vec<(&'static str, Option<String>, User)> {
    let with = |email: &str| User {
        email: Some(email.to_string()),
        ..old.clone()
    };
    match event {
        Event::Convert(_) if old.anonymous && !old.deleted => {
            let email = format!("{}@converted.test", old.id.simple());
            let permanent = User {
                anonymous: false,
                ..with(&email)
            };
            vec![
                (sql::SET_EMAIL, Some(email.clone()), with(&email)),
                (sql::MAKE_PERMANENT, None, permanent),
            ]
        }
        Event::EmailChange(_) if !old.deleted && old.email.is_some() => {
            let email = format!(
                "{}.{}@changed.test",
                Uuid::new_v4().simple(),
                old.id.simple()
            );
            vec![(sql::CONFIRM_EMAIL_CHANGE, Some(email.clone()), with(&email))]
        }
        // No profile change, no trigger.
        Event::SignIn(_) => vec![(sql::SIGN_IN, None, old.clone())],
        Event::SoftDelete(_) if !old.deleted => {
            let email = format!("{}@deleted.invalid", old.id.simple());
            let deleted = User {
                deleted: true,
                ..with(&email)
            };
            let blanked = User {
                meta: Map::new(),
                ..deleted.clone()
            };
            vec![
                (sql::SOFT_DELETE, Some(email), deleted),
                (sql::EMPTY_USER_META, None, blanked.clone()),
                (sql::EMPTY_APP_META, None, blanked),
            ]
        }
        Event::Metadata(_, _, patch) => {
            let mut meta = old.meta.clone();
            for (key, set) in patch {
                match set {
                    Some(v) => meta.insert(KEYS[*key].to_string(), value(*v)),
                    None => meta.remove(KEYS[*key]),
                };
            }
            let json = Value::Object(meta.clone()).to_string();
            vec![(
                sql::UPDATE_USER_META,
                Some(json),
                User {
                    meta,
                    ..old.clone()
                },
            )]
        }
        Event::Restore(_) if old.deleted => {
            let restored = User {
                deleted: false,
                ..old.clone()
            };
            vec![(sql::RESTORE, None, restored)]
        }
        _ => Vec::new(),
    }
}

/// GoTrue's statements (internal/models/user.go), `$1` the user's id and `$2` a value.
mod sql {
    /// SetEmail.
    pub const SET_EMAIL: &str =
        "UPDATE auth.users SET email = $2, updated_at = now() WHERE id = $1";
    /// The confirmation that makes an anonymous user permanent.
    pub const MAKE_PERMANENT: &str =
        "UPDATE auth.users SET is_anonymous = false, updated_at = now()
         WHERE id = $1 AND $2::text IS NULL";
    /// ConfirmEmailChange.
    pub const CONFIRM_EMAIL_CHANGE: &str = "UPDATE auth.users SET email = $2, email_change = '',
             email_change_token_current = '', email_change_token_new = '',
             email_change_confirm_status = 0, updated_at = now()
         WHERE id = $1";
    /// UpdateLastSignInAt.
    pub const SIGN_IN: &str = "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now()
         WHERE id = $1 AND $2::text IS NULL";
    /// SoftDeleteUser: e-mail and phone obfuscated, tokens cleared, deleted_at set.
    pub const SOFT_DELETE: &str =
        "UPDATE auth.users SET email = $2, phone = substr(md5(id::text), 1, 15),
             encrypted_password = NULL, email_change = '', phone_change = '',
             confirmation_token = '', recovery_token = '', email_change_token_current = '',
             email_change_token_new = '', phone_change_token = '', deleted_at = now(),
             updated_at = now()
         WHERE id = $1";
    /// SoftDeleteUser's emptying of both metadata.
    pub const EMPTY_USER_META: &str =
        "UPDATE auth.users SET raw_user_meta_data = '{}', updated_at = now()
         WHERE id = $1 AND $2::text IS NULL";
    pub const EMPTY_APP_META: &str =
        "UPDATE auth.users SET raw_app_meta_data = '{}', updated_at = now()
         WHERE id = $1 AND $2::text IS NULL";
    /// UpdateUserMetaData: the merged metadata, written with `UpdateOnly(u, "raw_user_meta_data")`.
    pub const UPDATE_USER_META: &str = "UPDATE auth.users SET raw_user_meta_data = $2::text::jsonb,
             updated_at = now()
         WHERE id = $1";
    /// A restore (an operator's, GoTrue has none).
    pub const RESTORE: &str =
        "UPDATE auth.users SET deleted_at = NULL WHERE id = $1 AND $2::text IS NULL";
}

/// A statement as GoTrue's role runs it: $1 the user, $2 a value.
async fn as_gotrue(admin: &Client, sql: &str, id: Uuid, value: Option<&str>) {
    admin
        .batch_execute("SET ROLE supabase_auth_admin")
        .await
        .unwrap();
    let result = admin.execute(sql, &[&id, &value]).await;
    admin.batch_execute("RESET ROLE").await.unwrap();
    result.unwrap_or_else(|e| panic!("{sql}: {e}"));
}
