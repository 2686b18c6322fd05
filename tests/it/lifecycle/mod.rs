//! The profile through GoTrue's whole lifecycle: random sequences of GoTrue's own statements
//! (sign-ups of every kind, anonymous conversion, e-mail change, sign-ins, soft delete with
//! GoTrue's blanking, restore, hard delete, the application editing profiles), some with
//! usersync's triggers disabled, under random policies; after one sweep the profile table is
//! exactly what a model of the policies says.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tokio_postgres::Client;
use usersync::sync::Options;
use usersync::sync::policy::{Policy, SoftDeleted};
use uuid::Uuid;

use crate::property;
use crate::support::{AuthUser, TestDb, insert_users, usersync};

#[derive(Clone, Debug)]
enum Event {
    /// 0 e-mail, 1 phone, 2 anonymous, 3 OAuth with a name, 4 e-mail inserted already deleted.
    SignUp(u8),
    Convert(usize),
    EmailChange(usize),
    SignIn(usize),
    SoftDelete(usize),
    Restore(usize),
    HardDelete(usize),
    AppEdit(usize),
    Triggers(bool),
}

fn event() -> impl Strategy<Value = Event> {
    let who = any::<prop::sample::Index>().prop_map(|i| i.index(1 << 16));
    prop_oneof![
        4 => (0u8..5).prop_map(Event::SignUp),
        2 => who.clone().prop_map(Event::Convert),
        2 => who.clone().prop_map(Event::EmailChange),
        1 => who.clone().prop_map(Event::SignIn),
        2 => who.clone().prop_map(Event::SoftDelete),
        1 => who.clone().prop_map(Event::Restore),
        1 => who.clone().prop_map(Event::HardDelete),
        1 => who.prop_map(Event::AppEdit),
        1 => any::<bool>().prop_map(Event::Triggers),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![
            SoftDeleted::Scrub,
            SoftDeleted::Delete,
            SoftDeleted::Keep,
        ]),
    )
        .prop_map(|(include_anonymous, follow_email, soft_deleted)| Policy {
            include_anonymous,
            follow_email,
            soft_deleted,
        })
}

#[derive(Clone, Debug)]
struct User {
    id: Uuid,
    email: Option<String>,
    anonymous: bool,
    name: Option<String>,
    deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Profile {
    email: Option<String>,
    full_name: Option<String>,
    role: String,
    is_active: bool,
}

/// The policies, applied to a model of both tables.
struct Model {
    policy: Policy,
    users: Vec<User>,
    profiles: BTreeMap<Uuid, Profile>,
}

impl Model {
    fn eligible(&self, u: &User) -> bool {
        !u.deleted && (!u.anonymous || self.policy.include_anonymous)
    }

    fn create(&mut self, u: &User) {
        if self.eligible(u) {
            self.profiles.entry(u.id).or_insert(Profile {
                email: u.email.clone(),
                full_name: u.name.clone(),
                role: "user".into(),
                is_active: true,
            });
        }
    }

    /// The update trigger, after a change of e-mail, is_anonymous or deleted_at.
    fn updated(&mut self, old: &User, new: &User) {
        if new.deleted {
            if !old.deleted {
                match self.policy.soft_deleted {
                    SoftDeleted::Scrub => {
                        if let Some(p) = self.profiles.get_mut(&new.id) {
                            p.email = None;
                            p.full_name = None;
                            p.is_active = false;
                        }
                    }
                    SoftDeleted::Delete => {
                        self.profiles.remove(&new.id);
                    }
                    SoftDeleted::Keep => {}
                }
            }
            return;
        }
        self.create(new);
        if old.email != new.email
            && new.email.is_some()
            && let Some(p) = self.profiles.get_mut(&new.id)
            && (p.email.is_none() || self.policy.follow_email)
        {
            p.email = new.email.clone();
        }
    }

    /// One sweep: what the triggers missed.
    fn sweep(&mut self) {
        for u in self.users.clone() {
            self.create(&u);
            let Some(p) = self.profiles.get_mut(&u.id) else {
                continue;
            };
            if u.deleted {
                match self.policy.soft_deleted {
                    SoftDeleted::Scrub => {
                        p.email = None;
                        p.full_name = None;
                        p.is_active = false;
                    }
                    SoftDeleted::Delete => {
                        self.profiles.remove(&u.id);
                    }
                    SoftDeleted::Keep => {}
                }
                continue;
            }
            if u.email.is_some()
                && ((p.email.is_none() && !u.anonymous)
                    || (self.policy.follow_email && p.email != u.email))
            {
                p.email = u.email.clone();
            }
        }
    }
}

/// GoTrue's statements for each event (internal/models/user.go): what the database sees.
async fn apply(admin: &Client, model: &mut Model, triggers: &mut bool, event: &Event) {
    let pick = |i: usize| (!model.users.is_empty()).then(|| i % model.users.len());
    match event {
        Event::SignUp(kind) => {
            let id = Uuid::new_v4();
            let mut user = AuthUser::email(&format!("{}@example.test", id.simple()));
            user.id = id;
            let mut name = None;
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
                    name = Some(format!("Name {}", &id.simple().to_string()[..6]));
                    user.user_meta = Some(serde_json::json!({ "full_name": name, "picture": 7 }));
                }
                4 => user.deleted = true,
                _ => {}
            }
            insert_users(admin, std::slice::from_ref(&user))
                .await
                .unwrap();
            let u = User {
                id,
                email: user.email.clone(),
                anonymous: user.is_anonymous,
                name,
                deleted: user.deleted,
            };
            if *triggers {
                model.create(&u);
            }
            model.users.push(u);
        }
        Event::Convert(i) => {
            let Some(i) = pick(*i) else { return };
            let old = model.users[i].clone();
            if !old.anonymous || old.deleted {
                return;
            }
            // SetEmail, then the confirmation that makes the user permanent.
            let email = format!("{}@converted.test", old.id.simple());
            as_gotrue(
                admin,
                "UPDATE auth.users SET email = $2, updated_at = now() WHERE id = $1",
                old.id,
                Some(&email),
            )
            .await;
            let mid = User {
                email: Some(email),
                ..old.clone()
            };
            if *triggers {
                model.updated(&old, &mid);
            }
            as_gotrue(admin, "UPDATE auth.users SET is_anonymous = false, updated_at = now() WHERE id = $1 AND $2::text IS NULL", old.id, None).await;
            let new = User {
                anonymous: false,
                ..mid.clone()
            };
            if *triggers {
                model.updated(&mid, &new);
            }
            model.users[i] = new;
        }
        Event::EmailChange(i) => {
            let Some(i) = pick(*i) else { return };
            let old = model.users[i].clone();
            if old.deleted || old.email.is_none() {
                return;
            }
            let email = format!(
                "{}.{}@changed.test",
                Uuid::new_v4().simple(),
                old.id.simple()
            );
            // ConfirmEmailChange.
            as_gotrue(
                admin,
                "UPDATE auth.users SET email = $2, email_change = '', email_change_token_current = '',
                     email_change_token_new = '', email_change_confirm_status = 0, updated_at = now()
                 WHERE id = $1",
                old.id,
                Some(&email),
            )
            .await;
            let new = User {
                email: Some(email),
                ..old.clone()
            };
            if *triggers {
                model.updated(&old, &new);
            }
            model.users[i] = new;
        }
        Event::SignIn(i) => {
            let Some(i) = pick(*i) else { return };
            // UpdateLastSignInAt: no profile change, no trigger.
            as_gotrue(admin, "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = $1 AND $2::text IS NULL", model.users[i].id, None).await;
        }
        Event::SoftDelete(i) => {
            let Some(i) = pick(*i) else { return };
            let old = model.users[i].clone();
            if old.deleted {
                return;
            }
            // SoftDeleteUser: e-mail and phone obfuscated, tokens cleared, deleted_at set; then
            // both metadata emptied.
            let email = format!("{}@deleted.invalid", old.id.simple());
            as_gotrue(
                admin,
                "UPDATE auth.users SET email = $2, phone = substr(md5(id::text), 1, 15),
                     encrypted_password = NULL, email_change = '', phone_change = '',
                     confirmation_token = '', recovery_token = '', email_change_token_current = '',
                     email_change_token_new = '', phone_change_token = '', deleted_at = now(),
                     updated_at = now()
                 WHERE id = $1",
                old.id,
                Some(&email),
            )
            .await;
            as_gotrue(admin, "UPDATE auth.users SET raw_user_meta_data = '{}', updated_at = now() WHERE id = $1 AND $2::text IS NULL", old.id, None).await;
            as_gotrue(admin, "UPDATE auth.users SET raw_app_meta_data = '{}', updated_at = now() WHERE id = $1 AND $2::text IS NULL", old.id, None).await;
            let new = User {
                email: Some(email),
                deleted: true,
                name: None,
                ..old.clone()
            };
            if *triggers {
                model.updated(&old, &new);
            }
            model.users[i] = new;
        }
        Event::Restore(i) => {
            let Some(i) = pick(*i) else { return };
            let old = model.users[i].clone();
            if !old.deleted {
                return;
            }
            as_gotrue(
                admin,
                "UPDATE auth.users SET deleted_at = NULL WHERE id = $1 AND $2::text IS NULL",
                old.id,
                None,
            )
            .await;
            let new = User {
                deleted: false,
                ..old.clone()
            };
            if *triggers {
                model.updated(&old, &new);
            }
            model.users[i] = new;
        }
        Event::HardDelete(i) => {
            let Some(i) = pick(*i) else { return };
            let old = model.users.remove(i);
            as_gotrue(
                admin,
                "DELETE FROM auth.users WHERE id = $1 AND $2::text IS NULL",
                old.id,
                None,
            )
            .await;
            model.profiles.remove(&old.id);
        }
        Event::AppEdit(i) => {
            let Some(i) = pick(*i) else { return };
            let id = model.users[i].id;
            admin
                .execute(
                    "UPDATE public.user_profiles SET role = 'admin', full_name = 'App Name' WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            if let Some(p) = model.profiles.get_mut(&id) {
                p.role = "admin".into();
                p.full_name = Some("App Name".into());
            }
        }
        Event::Triggers(on) => {
            let verb = if *on { "ENABLE" } else { "DISABLE" };
            admin
                .batch_execute(&format!(
                    "ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_created;
                     ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_updated;"
                ))
                .await
                .unwrap();
            *triggers = *on;
        }
    }
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

async fn profiles(admin: &Client) -> BTreeMap<Uuid, Profile> {
    admin
        .query(
            "SELECT id, email, full_name, role, is_active FROM public.user_profiles",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                Profile {
                    email: r.get(1),
                    full_name: r.get(2),
                    role: r.get(3),
                    is_active: r.get(4),
                },
            )
        })
        .collect()
}

#[test]
fn after_any_lifecycle_one_sweep_leaves_the_profiles_the_policies_say() {
    let rt = property::runtime();
    let db = rt.block_on(TestDb::migrated());
    let settings = db.runtime_settings_with(&[]);
    let pool = rt
        .block_on(usersync::db::connect(&settings.database))
        .unwrap();
    let strategy = (policy(), prop::collection::vec(event(), 1..40));
    property::check("lifecycle", strategy, |(policy, events)| {
        rt.block_on(async {
            let admin = db.admin().await;
            admin
                .batch_execute(
                    "ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;
                     ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;
                     TRUNCATE auth.users CASCADE;",
                )
                .await
                .map_err(property::fail)?;
            usersync::sync::policy::store(&policy, &admin)
                .await
                .map_err(property::fail)?;
            let mut model = Model {
                policy,
                users: Vec::new(),
                profiles: BTreeMap::new(),
            };
            let mut triggers = true;
            for event in &events {
                apply(&admin, &mut model, &mut triggers, event).await;
                // With the triggers on, the table follows the model event by event.
                if triggers {
                    prop_assert_eq!(
                        &profiles(&admin).await,
                        &model.profiles,
                        "after {:?}",
                        event
                    );
                }
            }
            let options = Options {
                workers: 2,
                batch_size: 3,
                ..Options::from_settings(&settings.sync)
            }
            .with_policy(policy);
            let report = usersync::sync::run(&pool, &options, None)
                .await
                .map_err(property::fail)?;
            prop_assert_eq!(report.failed, 0);
            model.sweep();
            prop_assert_eq!(&profiles(&admin).await, &model.profiles, "after the sweep");
            // A second sweep changes nothing.
            let again = usersync::sync::run(&pool, &options, None)
                .await
                .map_err(property::fail)?;
            prop_assert_eq!(again.total_created(), 0);
            prop_assert_eq!(&again.applied, &Default::default());
            Ok(())
        })
    });
}

mod edges;
