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
use crate::support::{TestDb, usersync};

mod gotrue;

use gotrue::{apply, event};

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
pub(super) struct User {
    id: Uuid,
    email: Option<String>,
    anonymous: bool,
    name: Option<String>,
    deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Profile {
    email: Option<String>,
    full_name: Option<String>,
    role: String,
    is_active: bool,
}

/// The policies, applied to a model of both tables.
pub(super) struct Model {
    policy: Policy,
    users: Vec<User>,
    profiles: BTreeMap<Uuid, Profile>,
}

impl User {
    /// Whether the update trigger fires on this change: its WHEN clause.
    fn fires_update(&self, new: &User) -> bool {
        self.email != new.email || self.anonymous != new.anonymous || self.deleted != new.deleted
    }
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
