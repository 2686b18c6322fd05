//! Attacks on usersync, each performed for real and each required to fail as an attack: code
//! of an attacker's never runs as usersync or as its definer, the API roles cannot write what
//! is not theirs, a held lock cannot pin the daemon, and every fix runs as printed. Where it
//! helps to show the attack is real, the same attack is first shown to work where the defence
//! is absent (migration 0001 alone, or a session that is not pinned).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::daemon::{Daemon, NEVER, eventually, users_without_trigger};
use crate::support::{
    APP_ROLE, AuthUser, RUNTIME_ROLE, TestDb, count, insert_users, supabase_default_privileges,
    usersync,
};

const TOKEN: &str = "attack-token-0123456789abcdef";

/// The sign-up as GoTrue's own credential, with a temporary domain named `text` whose CHECK
/// records who evaluates it, and a temporary function that would shadow one the builder calls.
async fn sign_up_with_shadowed_types(admin: &Client) -> Uuid {
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.pwned (who text, at timestamptz DEFAULT now());
             GRANT INSERT ON public.pwned TO PUBLIC;
             SET ROLE supabase_auth_admin;
             CREATE FUNCTION pg_temp.evil(v pg_catalog.text) RETURNS boolean
                 LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO public.pwned (who) VALUES (current_user);
                     RETURN true;
                 END $$;
             CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.evil(VALUE));
             CREATE FUNCTION pg_temp.jsonb_typeof(j jsonb) RETURNS pg_catalog.text
                 LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO public.pwned (who) VALUES ('function:' || current_user);
                     RETURN 'string';
                 END $$;
             RESET ROLE;",
        )
        .await
        .unwrap();
    let user = AuthUser::email(&format!("{}@example.test", Uuid::new_v4().simple()));
    insert_users(admin, std::slice::from_ref(&user))
        .await
        .unwrap();
    user.id
}

#[tokio::test]
async fn a_temporary_type_of_gotrues_role_never_runs_inside_the_definer() {
    // Where the definer pins `search_path = ''` (migration 0001 alone), the attack works.
    let old = TestDb::new().await;
    let mut app = old.app().await;
    let to_0001 = usersync::db::migrate::UpOptions {
        to: Some(1),
        ..Default::default()
    };
    usersync::db::migrate::up(&mut app, to_0001).await.unwrap();
    let admin = old.admin().await;
    sign_up_with_shadowed_types(&admin).await;
    let who: Vec<String> = admin
        .query("SELECT who FROM public.pwned", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        who.contains(&APP_ROLE.to_string()),
        "under 0001 the attacker's CHECK runs as the definer's owner: {who:?}"
    );

    // With 0002 the same sign-up gets its profile and nothing of the attacker's runs.
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let id = sign_up_with_shadowed_types(&admin).await;
    assert_eq!(
        count(&admin, "public.pwned").await,
        0,
        "the attacker's code ran"
    );
    let profiles: i64 = admin
        .query_one(
            "SELECT count(*) FROM public.user_profiles WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(profiles, 1, "the sign-up still got its profile");
    assert_eq!(count(&admin, "usersync.repair_queue").await, 0);
}

/// Better-matching overloads of built-ins usersync calls, in `public` and in a schema named
/// like usersync's role (the first entry of the default search_path): each advances
/// `public.trap_hits` when it runs, and returns something plausible so that a capture would go
/// unnoticed but for the counter.
const TRAPS: &str = "
    CREATE SEQUENCE public.trap_hits;
    GRANT USAGE ON SEQUENCE public.trap_hits TO PUBLIC;
    CREATE SCHEMA usersync_runtime;
    GRANT USAGE ON SCHEMA usersync_runtime TO PUBLIC;
    DO $$
    DECLARE
        s text;
    BEGIN
        FOREACH s IN ARRAY ARRAY['public', 'usersync_runtime'] LOOP
            EXECUTE pg_catalog.format($f$
                CREATE FUNCTION %1$I.format(text, name, regclass, regclass) RETURNS text
                    LANGUAGE sql AS 'SELECT CASE WHEN nextval(''public.trap_hits'') > 0 THEN NULL END::text';
                CREATE FUNCTION %1$I.format(text, text) RETURNS text
                    LANGUAGE sql AS 'SELECT CASE WHEN nextval(''public.trap_hits'') > 0 THEN NULL END::text';
                CREATE FUNCTION %1$I.format(text, name) RETURNS text
                    LANGUAGE sql AS 'SELECT CASE WHEN nextval(''public.trap_hits'') > 0 THEN NULL END::text';
                CREATE FUNCTION %1$I.power(integer, integer) RETURNS double precision
                    LANGUAGE sql AS 'SELECT (1 + 0 * nextval(''public.trap_hits''))::double precision';
                CREATE FUNCTION %1$I.cardinality(smallint[]) RETURNS integer
                    LANGUAGE sql AS 'SELECT 1 + 0 * nextval(''public.trap_hits'')::integer';
                CREATE FUNCTION %1$I.jsonb_build_object(text, text) RETURNS jsonb
                    LANGUAGE sql AS 'SELECT jsonb_build_object(''x'', nextval(''public.trap_hits''))';
                CREATE FUNCTION %1$I.trap_step(text[], text) RETURNS text[]
                    LANGUAGE sql AS 'SELECT $1 || $2 || nextval(''public.trap_hits'')::text';
                CREATE AGGREGATE %1$I.array_agg(text) (sfunc = %1$I.trap_step, stype = text[]);
                CREATE FUNCTION %1$I.btrim(character varying) RETURNS text
                    LANGUAGE sql AS 'SELECT nextval(''public.trap_hits'')::text';
                CREATE OPERATOR %1$I.= (leftarg = uuid, rightarg = uuid,
                                        function = %1$I.trap_equals);
            $f$, s);
        END LOOP;
    END $$;";

const TRAP_EQUALS: &str = "
    CREATE FUNCTION public.trap_equals(uuid, uuid) RETURNS boolean
        LANGUAGE sql AS 'SELECT $1 OPERATOR(pg_catalog.=) $2 AND nextval(''public.trap_hits'') > 0';
    CREATE FUNCTION usersync_runtime.trap_equals(uuid, uuid) RETURNS boolean
        LANGUAGE sql AS 'SELECT $1 OPERATOR(pg_catalog.=) $2 AND nextval(''public.trap_hits'') > 0';";

async fn trap_hits(admin: &Client) -> bool {
    admin
        .query_one("SELECT is_called FROM public.trap_hits", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloads_in_public_and_in_the_role_schema_never_capture_a_usersync_call() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    set_traps(&admin).await;
    every_command_runs_clear_of_the_traps(&db, &admin).await;
    the_daemon_runs_clear_of_the_traps(&db, &admin).await;

    // The traps are live: a session on the default search_path walks into them.
    let unpinned = db.runtime().await;
    unpinned
        .query(
            "SELECT format('%s', 'x'::text), array_agg(id::text) FROM usersync.auth_users",
            &[],
        )
        .await
        .unwrap();
    assert!(trap_hits(&admin).await, "an unpinned session is captured");
}

/// The traps, and work for every path: users without a profile, a NOT VALID key.
async fn set_traps(admin: &Client) {
    // The trap functions' schema for the operator must exist first.
    let traps = TRAPS.replacen(
        "CREATE SCHEMA usersync_runtime;",
        &format!("CREATE SCHEMA usersync_runtime; {TRAP_EQUALS}"),
        1,
    );
    admin.batch_execute(&traps).await.unwrap();
    users_without_trigger(admin, 30).await;
    admin
        .batch_execute(
            "CREATE TABLE public.notes (owner uuid);
             INSERT INTO public.notes VALUES (gen_random_uuid());
             ALTER TABLE public.notes ADD FOREIGN KEY (owner) REFERENCES auth.users (id)
                 ON DELETE CASCADE NOT VALID;
             GRANT SELECT ON public.notes TO usersync_runtime;",
        )
        .await
        .unwrap();
}

async fn every_command_runs_clear_of_the_traps(db: &TestDb, admin: &Client) {
    let runtime = db.runtime_url();
    let migration = db.app_url();
    let as_runtime = [("DATABASE_URL", runtime.as_str())];
    let as_migration = [("DATABASE_URL", migration.as_str())];
    for (args, env) in [
        (&["sync", "--dry-run", "-v"][..], &as_runtime),
        (&["sync", "--json"][..], &as_runtime),
        (&["check", "--json"][..], &as_runtime),
        (&["users", "list", "--json"][..], &as_runtime),
        (&["migrate", "verify", "--e2e"][..], &as_migration),
        (&["check", "--e2e"][..], &as_migration),
    ] {
        let (code, stdout, stderr) = usersync(args, env);
        assert!(
            code == 0 || (args[0] == "check" && code == 1),
            "usersync {args:?}: exit {code}\n{stdout}\n{stderr}"
        );
        assert!(!trap_hits(admin).await, "usersync {args:?} ran a trap");
    }
}

/// The daemon's jobs (with a queued failure to repair) and the API, as the runtime role.
async fn the_daemon_runs_clear_of_the_traps(db: &TestDb, admin: &Client) {
    users_without_trigger(admin, 10).await;
    admin
        .batch_execute(
            "INSERT INTO usersync.repair_queue (user_id, last_error, last_sqlstate)
             SELECT id, 'queued by the test', 'XX000' FROM auth.users LIMIT 3
             ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]))
    .await;
    let auth = format!("Bearer {TOKEN}");
    let created = eventually(Duration::from_secs(15), || async {
        daemon
            .metric("usersync_integrity_findings{check=\"missing_profile\"}")
            .await
            == 0.0
            && daemon
                .metric("usersync_job_runs_total{job=\"integrity\",outcome=\"success\"}")
                .await
                >= 2.0
            && daemon
                .metric("usersync_job_runs_total{job=\"repair\",outcome=\"success\"}")
                .await
                >= 1.0
    })
    .await;
    assert!(created, "the daemon's jobs ran");
    let (status, _, body) = daemon
        .request("GET", "/v1/users?limit=5", &[("Authorization", &auth)])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(daemon.get("/readyz").await.0, 200);
    daemon.stop().await.unwrap();
    assert!(!trap_hits(admin).await, "the daemon ran a trap");
}

mod access;

#[tokio::test]
async fn a_statement_that_runs_too_long_is_ended_by_the_server() {
    let db = TestDb::migrated().await;
    let settings = db.runtime_settings_with(&[("USERSYNC__DATABASE__STATEMENT_TIMEOUT_SECS", "1")]);
    let pool = usersync::db::connect(&settings.database).await.unwrap();
    let client = pool.get().await.unwrap();
    let started = std::time::Instant::now();
    let err = client
        .simple_query("SELECT pg_catalog.pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // And a whole-table statement gets the longer scan timeout, then the short one again.
    usersync::db::begin_scan(&client).await.unwrap();
    let raised: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(raised, "30min");
    usersync::db::end_scan(&client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_no_database_user_and_no_server_message() {
    let db = TestDb::migrated().await;
    let url = db
        .runtime_url()
        .replacen(crate::support::RUNTIME_ROLE, "no_such_role_7f3a", 1);
    let settings = usersync::config::Settings::load(&usersync::config::Sources {
        file: None,
        env: vec![("DATABASE_URL".into(), url)],
    })
    .unwrap();
    let daemon = crate::daemon::Daemon::start(settings).await;
    let (status, body) = daemon.get("/readyz").await;
    daemon.stop().await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("\"reason\":\"unreachable\""), "{body}");
    assert!(body.contains("127.0.0.1:"), "{body}");
    for leak in [
        "no_such_role_7f3a",
        "does not exist",
        "authentication",
        "FATAL",
    ] {
        assert!(!body.contains(leak), "{leak} in {body}");
    }
}
