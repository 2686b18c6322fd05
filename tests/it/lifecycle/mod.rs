//! The profile through GoTrue's whole lifecycle: random sequences of GoTrue's own statements
//! (sign-ups of every kind, anonymous conversion, e-mail change, sign-ins, metadata written
//! later through `PUT /user`, the admin API, a new signup link and identity linking, soft
//! delete with GoTrue's blanking, restore, hard delete), interleaved with the application
//! editing names and pictures, some with usersync's triggers disabled, under random policies:
//! with the triggers on the table follows a model of the policies event by event, and after one
//! sweep it is exactly what the model says (filled where empty and allowed, never
//! overwriting, never for a soft-deleted user).

use std::collections::BTreeMap;

use proptest::prelude::*;
use usersync::sync::Options;
use usersync::sync::policy::{Policy, SoftDeleted};

use crate::property;
use crate::support::{TestDb, usersync};

mod gotrue;
mod model;

use gotrue::{apply, event};
use model::{Model, profiles};

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![
            SoftDeleted::Scrub,
            SoftDeleted::Delete,
            SoftDeleted::Keep,
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(include_anonymous, follow_email, soft_deleted, fill_from_metadata)| Policy {
                include_anonymous,
                follow_email,
                soft_deleted,
                fill_from_metadata,
            },
        )
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
                     ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_metadata;
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
