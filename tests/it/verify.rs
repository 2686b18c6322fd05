//! `migrate verify`: every broken promise named, and the rolled-back sign-up probe.

use proptest::prelude::*;
use usersync::db::migrate::{self, UpOptions};
use usersync::db::{probe, verify};

use crate::property;
use crate::support::{TestDb, count, schema_snapshot};

#[tokio::test]
async fn a_fresh_install_verifies_and_the_probe_leaves_nothing_behind() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let before = schema_snapshot(&admin).await;
    let mut app = db.app().await;
    let mut report = verify::verify(&app).await.unwrap();
    assert!(report.ok, "{:#?}", report.findings);
    probe::run(&mut app, &mut report).await.unwrap();
    assert!(report.ok, "{:#?}", report.findings);
    assert_eq!(schema_snapshot(&admin).await, before);
    for table in [
        "auth.users",
        "public.user_profiles",
        "usersync.repair_queue",
    ] {
        assert_eq!(count(&admin, table).await, 0, "{table} after the probe");
    }
}

#[tokio::test]
async fn before_up_verify_names_the_pending_migration_and_every_missing_object() {
    let db = TestDb::new().await;
    let report = verify::verify(&db.app().await).await.unwrap();
    assert!(!report.ok);
    assert_eq!(
        report.failed_checks(),
        [
            "migrations",
            "profile_function",
            "profile_table",
            "repair_queue",
            "trigger",
            "trigger_function"
        ]
    );
}

#[tokio::test]
async fn the_probe_finds_a_trigger_that_lets_sign_ups_fail() {
    let db = TestDb::migrated().await;
    // A hand-written trigger function of the kind that breaks sign-ups: no exception handler.
    db.admin()
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION usersync.on_auth_user_created() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
             BEGIN
                 INSERT INTO public.user_profiles (id) VALUES (NEW.id);
                 RETURN NULL;
             END $$",
        )
        .await
        .unwrap();
    let mut app = db.app().await;
    let mut report = verify::verify(&app).await.unwrap();
    assert!(
        report.ok,
        "the catalog cannot see inside the function: {:#?}",
        report.findings
    );
    probe::run(&mut app, &mut report).await.unwrap();
    assert_eq!(report.failed_checks(), ["e2e.failure_queued", "e2e.signup"]);
}

/// One way an object gets broken in production.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sabotage {
    DropTrigger,
    DisableTrigger,
    DropForeignKey,
    ForeignKeyNotValid,
    NoSecurityDefiner,
    DropColumn(&'static str),
    GrantExecuteToAnon,
}

impl Sabotage {
    fn sql(self) -> String {
        match self {
            Sabotage::DropTrigger => {
                "DROP TRIGGER usersync_on_auth_user_created ON auth.users".into()
            }
            Sabotage::DisableTrigger => {
                "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created".into()
            }
            Sabotage::DropForeignKey => {
                "ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_id_fkey".into()
            }
            Sabotage::ForeignKeyNotValid => "ALTER TABLE public.user_profiles
                 DROP CONSTRAINT user_profiles_id_fkey,
                 ADD CONSTRAINT user_profiles_id_fkey FOREIGN KEY (id)
                     REFERENCES auth.users (id) ON DELETE CASCADE NOT VALID"
                .into(),
            // A migration that recreated the function and forgot SECURITY DEFINER.
            Sabotage::NoSecurityDefiner => "DO $$ BEGIN EXECUTE replace(
                 pg_get_functiondef('usersync.on_auth_user_created()'::regprocedure),
                 'SECURITY DEFINER', ''); END $$"
                .into(),
            Sabotage::DropColumn(c) => format!("ALTER TABLE public.user_profiles DROP COLUMN {c}"),
            Sabotage::GrantExecuteToAnon => {
                "GRANT EXECUTE ON FUNCTION usersync.on_auth_user_created() TO anon".into()
            }
        }
    }

    fn check(self) -> String {
        match self {
            Sabotage::DropTrigger | Sabotage::DisableTrigger => "trigger".into(),
            Sabotage::DropForeignKey | Sabotage::ForeignKeyNotValid => "foreign_key".into(),
            Sabotage::NoSecurityDefiner => "trigger_function.security_definer".into(),
            Sabotage::DropColumn(c) => format!("column.{c}"),
            Sabotage::GrantExecuteToAnon => "trigger_function.execute_grants".into(),
        }
    }
}

fn sabotage_set() -> impl Strategy<Value = Vec<Sabotage>> {
    let trigger = prop_oneof![
        Just(None),
        Just(Some(Sabotage::DropTrigger)),
        Just(Some(Sabotage::DisableTrigger))
    ];
    let fk = prop_oneof![
        Just(None),
        Just(Some(Sabotage::DropForeignKey)),
        Just(Some(Sabotage::ForeignKeyNotValid))
    ];
    let column = prop::option::of(
        prop::sample::select(vec![
            "email",
            "full_name",
            "avatar_url",
            "role",
            "is_active",
            "created_at",
            "updated_at",
        ])
        .prop_map(Sabotage::DropColumn),
    );
    let definer = prop::option::of(Just(Sabotage::NoSecurityDefiner));
    let grant = prop::option::of(Just(Sabotage::GrantExecuteToAnon));
    (
        trigger,
        fk,
        column,
        definer,
        grant,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(a, b, c, d, e, rotate)| {
            let mut set: Vec<Sabotage> = [a, b, c, d, e].into_iter().flatten().collect();
            if !set.is_empty() {
                let by = rotate.index(set.len());
                set.rotate_left(by);
            }
            set
        })
}

/// for any set of sabotage, verify fails and names exactly the broken objects;
/// with none, it passes.
#[test]
fn verify_names_exactly_the_sabotaged_objects() {
    let rt = property::runtime();
    let db = rt.block_on(TestDb::new());
    property::check("verify_names_sabotage", sabotage_set(), |set| {
        rt.block_on(async {
            let admin = db.admin().await;
            let mut app = db.app().await;
            migrate::down(&mut app, Some(0))
                .await
                .map_err(property::fail)?;
            migrate::up(&mut app, UpOptions::default())
                .await
                .map_err(property::fail)?;
            for s in &set {
                admin
                    .batch_execute(&s.sql())
                    .await
                    .map_err(property::fail)?;
            }
            let report = verify::verify(&app).await.map_err(property::fail)?;
            let mut expected: Vec<String> = set.iter().map(|s| s.check()).collect();
            expected.sort();
            prop_assert_eq!(
                report.failed_checks(),
                expected.iter().map(String::as_str).collect::<Vec<_>>()
            );
            prop_assert_eq!(report.ok, set.is_empty());
            for f in &report.findings {
                prop_assert!(
                    !f.fix.is_empty() && !f.expected.is_empty() && !f.found.is_empty(),
                    "{:?}",
                    f
                );
            }
            // Applying every fix the findings name (all SQL here) restores a clean verify.
            for f in &report.findings {
                admin
                    .batch_execute(&f.fix)
                    .await
                    .map_err(|e| property::fail(format!("fix {:?}: {e}", f.fix)))?;
            }
            let after = verify::verify(&app).await.map_err(property::fail)?;
            prop_assert!(after.ok, "after the fixes: {:#?}", after.findings);
            Ok(())
        })
    });
}
