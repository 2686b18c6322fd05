//! `migrate up|down|status`: the history, the lock, the refusals, and up and down reaching
//! the schema of their version.

use proptest::prelude::*;
use usersync::Error;
use usersync::db::migrate::{self, State, UpOptions};

use crate::property;
use crate::support::{
    AuthUser, TestDb, count, insert_users, schema_snapshot, snapshot_diff,
    supabase_default_privileges,
};

#[tokio::test]
async fn up_installs_everything_and_a_second_up_is_a_no_op() {
    let db = TestDb::new().await;
    let mut app = db.app().await;
    let steps = migrate::up(&mut app, UpOptions::default()).await.unwrap();
    let every: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(steps.iter().map(|s| s.version).collect::<Vec<_>>(), every);
    let installed = schema_snapshot(&app).await;

    let again = migrate::up(&mut app, UpOptions::default()).await.unwrap();
    assert!(again.is_empty(), "second up applied {again:?}");
    assert_eq!(schema_snapshot(&app).await, installed);

    let status = migrate::status(&app).await.unwrap();
    assert_eq!(status.len(), migrate::MIGRATIONS.len());
    assert!(
        status
            .iter()
            .all(|s| matches!(s.state, State::Applied { .. })),
        "{status:?}"
    );
    let history: String = app
        .query_one(
            "SELECT checksum FROM usersync.schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, migrate::MIGRATIONS[0].checksum());
}

#[tokio::test]
async fn down_restores_the_schema_and_keeps_auth_rows_and_application_tables() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    admin
        .batch_execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, user_id uuid); INSERT INTO public.orders VALUES (1, gen_random_uuid())")
        .await
        .unwrap();
    let before = schema_snapshot(&admin).await;
    let mut app = db.app().await;
    migrate::up(&mut app, UpOptions::default()).await.unwrap();
    let users: Vec<AuthUser> = (0..5)
        .map(|i| AuthUser::email(&format!("u{i}@example.test")))
        .collect();
    insert_users(&admin, &users).await.unwrap();

    let steps = migrate::down(&mut app, Some(0)).await.unwrap();
    assert_eq!(steps.len(), migrate::MIGRATIONS.len());
    let after = schema_snapshot(&admin).await;
    assert_eq!(before, after, "{}", snapshot_diff(&before, &after));
    assert_eq!(count(&admin, "auth.users").await, 5);
    assert_eq!(count(&admin, "public.orders").await, 1);
    assert!(migrate::down(&mut app, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn down_stops_without_dropping_anything_when_the_application_depends_on_profiles() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE public.posts (id bigint PRIMARY KEY,
                 author uuid REFERENCES public.user_profiles (id))",
        )
        .await
        .unwrap();
    let before = schema_snapshot(&admin).await;
    let mut app = db.app().await;
    let err = migrate::down(&mut app, Some(0)).await.unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(err.contains("rolling back 0001_user_profiles"), "{err}");
    assert!(
        err.contains("posts"),
        "the message names the dependent table: {err}"
    );
    assert_eq!(schema_snapshot(&admin).await, before);
}

#[tokio::test]
async fn a_database_without_auth_users_is_not_supabase() {
    let db = TestDb::new().await;
    db.admin()
        .await
        .batch_execute("DROP SCHEMA auth CASCADE")
        .await
        .unwrap();
    let mut app = db.app().await;
    let err = migrate::up(&mut app, UpOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotSupabase));
    assert_eq!(
        err.to_string(),
        "no auth.users table: is this a Supabase database?"
    );
}

const HANDLE_NEW_USER: &str = "
    CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = '' AS $$
    BEGIN
        INSERT INTO public.profiles (id) VALUES (NEW.id);
        RETURN NEW;
    END $$;
    CREATE TABLE public.profiles (id uuid PRIMARY KEY);
    CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
        FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();";

#[tokio::test]
async fn an_existing_profile_trigger_is_reported_not_doubled() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    admin.batch_execute(HANDLE_NEW_USER).await.unwrap();
    let before = schema_snapshot(&admin).await;
    let mut app = db.app().await;

    let err = migrate::up(&mut app, UpOptions::default())
        .await
        .unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(
        err.contains("on_auth_user_created calling handle_new_user()")
            && err.contains("--allow-existing-trigger"),
        "{err}"
    );
    assert_eq!(
        schema_snapshot(&admin).await,
        before,
        "a refused up changes nothing"
    );

    let options = UpOptions {
        allow_existing_trigger: true,
        ..Default::default()
    };
    migrate::up(&mut app, options).await.unwrap();
    let user = AuthUser::email("both@example.test");
    insert_users(&admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    assert_eq!(count(&admin, "public.user_profiles").await, 1);
    assert_eq!(count(&admin, "public.profiles").await, 1);
}

#[tokio::test]
async fn a_profile_table_usersync_did_not_create_is_refused() {
    let db = TestDb::new().await;
    db.admin()
        .await
        .batch_execute("CREATE TABLE public.user_profiles (id uuid PRIMARY KEY, bio text)")
        .await
        .unwrap();
    let mut app = db.app().await;
    let err = migrate::up(&mut app, UpOptions::default())
        .await
        .unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(err.contains("public.user_profiles already exists"), "{err}");
}

#[tokio::test]
async fn a_drifted_migration_is_shown_and_up_refuses_naming_the_file() {
    let db = TestDb::migrated().await;
    let mut app = db.app().await;
    app.batch_execute(
        "UPDATE usersync.schema_migrations SET checksum = 'edited' WHERE version = 1",
    )
    .await
    .unwrap();
    let status = migrate::status(&app).await.unwrap();
    assert_eq!(
        status[0].state,
        State::Drifted {
            applied_checksum: "edited".into()
        }
    );
    let err = migrate::up(&mut app, UpOptions::default())
        .await
        .unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(
        err.contains("migrations/0001_user_profiles.up.sql"),
        "{err}"
    );
}

#[tokio::test]
async fn two_concurrent_ups_apply_each_migration_once() {
    let db = TestDb::new().await;
    let (mut a, mut b) = (db.app().await, db.app().await);
    let (ra, rb) = tokio::join!(
        migrate::up(&mut a, UpOptions::default()),
        migrate::up(&mut b, UpOptions::default())
    );
    let applied = ra.unwrap().len() + rb.unwrap().len();
    assert_eq!(applied, migrate::MIGRATIONS.len());
    assert_eq!(
        count(&a, "usersync.schema_migrations").await,
        migrate::MIGRATIONS.len() as i64
    );
}

#[tokio::test]
async fn unknown_target_versions_are_rejected_before_anything_runs() {
    let db = TestDb::new().await;
    let mut app = db.app().await;
    let beyond = migrate::MIGRATIONS.len() as i32 + 1;
    let options = UpOptions {
        to: Some(beyond),
        ..Default::default()
    };
    let err = migrate::up(&mut app, options).await.unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(
        err.contains(&format!("--to {beyond}: no such migration")),
        "{err}"
    );
    let err = migrate::down(&mut app, Some(9)).await.unwrap_err();
    let err = usersync::error::Chain(&err).to_string();
    assert!(err.contains("--to 9: no such migration"), "{err}");
}

#[derive(Clone, Debug)]
enum Op {
    /// `up --to V` (0: nothing to apply).
    Up(i32),
    /// `down --to V`.
    Down(i32),
    SignUps(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let versions = 0..=migrate::latest();
    prop_oneof![
        versions.clone().prop_map(Op::Up),
        versions.prop_map(Op::Down),
        (1u8..4).prop_map(Op::SignUps)
    ]
}

/// after any sequence of `up --to V`, `down --to V` and sign-ups, the schema is
/// always the one version V has (the one reached by stepping up from nothing), and auth rows
/// stay. With Supabase's default privileges in force, so that 0002's saved grants come back.
#[test]
fn up_and_down_always_reach_the_schema_of_their_version() {
    let rt = property::runtime();
    let (db, snapshots) = rt.block_on(async {
        let db = TestDb::new().await;
        let admin = db.admin().await;
        supabase_default_privileges(&admin).await;
        let mut snapshots = vec![schema_snapshot(&admin).await];
        for m in migrate::MIGRATIONS {
            let options = UpOptions {
                to: Some(m.version),
                ..UpOptions::default()
            };
            migrate::up(&mut db.app().await, options).await.unwrap();
            snapshots.push(schema_snapshot(&admin).await);
        }
        migrate::down(&mut db.app().await, Some(0)).await.unwrap();
        (db, snapshots)
    });
    property::check(
        "up_and_down",
        proptest::collection::vec(op(), 1..8),
        |ops| {
            rt.block_on(async {
                let admin = db.admin().await;
                let mut app = db.app().await;
                // Each case starts from nothing, even after a failed one (when shrinking).
                migrate::down(&mut app, Some(0))
                    .await
                    .map_err(property::fail)?;
                let mut users = count(&admin, "auth.users").await;
                let mut at = 0;
                for op in ops {
                    match op {
                        Op::Up(0) => {}
                        Op::Up(to) => {
                            let options = UpOptions {
                                to: Some(to),
                                ..UpOptions::default()
                            };
                            migrate::up(&mut app, options)
                                .await
                                .map_err(property::fail)?;
                            at = at.max(to);
                        }
                        Op::Down(to) => {
                            migrate::down(&mut app, Some(to))
                                .await
                                .map_err(property::fail)?;
                            at = at.min(to);
                        }
                        Op::SignUps(n) => {
                            let new: Vec<AuthUser> = (0..n)
                                .map(|_| {
                                    AuthUser::email(&format!(
                                        "{}@example.test",
                                        uuid::Uuid::new_v4()
                                    ))
                                })
                                .collect();
                            insert_users(&admin, &new).await.map_err(property::fail)?;
                            users += i64::from(n);
                        }
                    }
                    let now = schema_snapshot(&admin).await;
                    let expected = &snapshots[at as usize];
                    prop_assert!(
                        &now == expected,
                        "at version {at}: {}",
                        snapshot_diff(expected, &now)
                    );
                    prop_assert_eq!(count(&admin, "auth.users").await, users);
                }
                migrate::down(&mut app, Some(0))
                    .await
                    .map_err(property::fail)?;
                Ok(())
            })
        },
    );
}

#[tokio::test]
async fn the_suite_runs_on_the_postgresql_usersync_pg_bindir_names() {
    let db = TestDb::new().await;
    let version: String = db
        .admin()
        .await
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("tests run on PostgreSQL {version}");
    let Some(dir) = std::env::var_os("USERSYNC_PG_BINDIR") else {
        return;
    };
    let named = std::process::Command::new(std::path::Path::new(&dir).join("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let named = String::from_utf8_lossy(&named.stdout).into_owned();
    let major = version.split('.').next().unwrap();
    assert!(
        named.contains(&format!(" {major}.")),
        "USERSYNC_PG_BINDIR has {named}, the tests ran on {version}"
    );
}
