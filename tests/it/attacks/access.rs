//! Who may do what: the API roles, the runtime role, a held lock, fixes for awkward names, the probe's schedule.

use super::*;

/// anon and authenticated, with Supabase's default privileges in force before `migrate up`.
async fn as_api_role(
    admin: &Client,
    role: &str,
    user: Option<Uuid>,
    sql: &str,
) -> Result<u64, String> {
    let claims = user.map_or("{}".to_string(), |id| format!(r#"{{"sub": "{id}"}}"#));
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {role};
             SELECT set_config('request.jwt.claims', '{claims}', true);"
        ))
        .await
        .unwrap();
    let result = admin.execute(sql, &[]).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    admin.batch_execute(end).await.unwrap();
    result.map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())
}

const DENIED: &str = "42501";

#[tokio::test]
async fn without_0002_supabases_default_privileges_let_anon_empty_the_profiles() {
    let old = TestDb::new().await;
    let old_admin = old.admin().await;
    supabase_default_privileges(&old_admin).await;
    let to_0001 = usersync::db::migrate::UpOptions {
        to: Some(1),
        ..Default::default()
    };
    usersync::db::migrate::up(&mut old.app().await, to_0001)
        .await
        .unwrap();
    assert_eq!(
        as_api_role(&old_admin, "anon", None, "TRUNCATE public.user_profiles").await,
        Ok(0),
        "the attack works without 0002"
    );
}

/// A migrated database with Supabase's default privileges and two users, a and b.
async fn two_users() -> (TestDb, Client, AuthUser, AuthUser) {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    supabase_default_privileges(&admin).await;
    usersync::db::migrate::up(&mut db.app().await, Default::default())
        .await
        .unwrap();
    let (a, b) = (
        AuthUser::email("a@example.test"),
        AuthUser::email("b@example.test"),
    );
    insert_users(&admin, &[a.clone(), b.clone()]).await.unwrap();
    (db, admin, a, b)
}

#[tokio::test]
async fn the_api_roles_cannot_truncate_promote_themselves_or_read_others() {
    let (_db, admin, a, b) = two_users().await;
    for sql in [
        "TRUNCATE public.user_profiles",
        "SELECT * FROM public.user_profiles",
        "UPDATE public.user_profiles SET full_name = 'x'",
        "DELETE FROM public.user_profiles",
    ] {
        assert_eq!(
            as_api_role(&admin, "anon", None, sql).await,
            Err(DENIED.into()),
            "anon: {sql}"
        );
    }
    let me = Some(a.id);
    let own = |set: &str| {
        format!(
            "UPDATE public.user_profiles SET {set} WHERE id = '{}'",
            a.id
        )
    };
    for sql in [
        "TRUNCATE public.user_profiles".to_string(),
        own("role = 'admin'"),
        own("is_active = true"),
        own("email = 'x@y'"),
        own("id = gen_random_uuid()"),
        format!("DELETE FROM public.user_profiles WHERE id = '{}'", a.id),
        format!(
            "INSERT INTO public.user_profiles (id) VALUES ('{}')",
            Uuid::new_v4()
        ),
    ] {
        assert_eq!(
            as_api_role(&admin, "authenticated", me, &sql).await,
            Err(DENIED.into()),
            "authenticated: {sql}"
        );
    }
    // Own row: readable and its name editable; the other user's row: invisible.
    let read = "SELECT id FROM public.user_profiles";
    assert_eq!(as_api_role(&admin, "authenticated", me, read).await, Ok(1));
    let rename =
        |id: Uuid| format!("UPDATE public.user_profiles SET full_name = 'Ada' WHERE id = '{id}'");
    assert_eq!(
        as_api_role(&admin, "authenticated", me, &rename(a.id)).await,
        Ok(1)
    );
    assert_eq!(
        as_api_role(&admin, "authenticated", me, &rename(b.id)).await,
        Ok(0)
    );
    let role: String = admin
        .query_one(
            "SELECT role FROM public.user_profiles WHERE id = $1",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "user");
}

#[tokio::test]
async fn verify_names_each_hole_an_application_grant_opens_and_its_fixes_close_them() {
    // An application that re-grants everything and adds the starter policies: verify names
    // each hole, the writes as errors, the wide read as a warning, and its fixes close them.
    let (db, admin, a, _) = two_users().await;
    admin
        .batch_execute(
            "GRANT ALL ON public.user_profiles TO anon, authenticated;
             CREATE POLICY \"Public profiles are viewable by everyone.\" ON public.user_profiles
                 FOR SELECT USING (true);
             CREATE POLICY \"Users can update own profile.\" ON public.user_profiles
                 FOR UPDATE USING (auth.uid() = id);",
        )
        .await
        .unwrap();
    let promote = format!(
        "UPDATE public.user_profiles SET role = 'admin' WHERE id = '{}'",
        a.id
    );
    assert_eq!(
        as_api_role(&admin, "authenticated", Some(a.id), &promote).await,
        Ok(1),
        "the application's grant opened self-promotion"
    );
    let report = usersync::db::verify::verify(&db.app().await).await.unwrap();
    assert!(!report.ok);
    let checks = report.failed_checks();
    for check in ["api_roles.write", "api_roles.update", "api_roles.read"] {
        assert!(checks.contains(&check), "{check} in {:#?}", report.findings);
    }
    for f in &report.findings {
        admin
            .batch_execute(&f.fix)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.fix));
    }
    let after = usersync::db::verify::verify(&db.app().await).await.unwrap();
    assert!(after.findings.is_empty(), "{:#?}", after.findings);
    assert_eq!(
        as_api_role(&admin, "anon", None, "TRUNCATE public.user_profiles").await,
        Err(DENIED.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_on_the_profiles_costs_the_api_a_503_and_nothing_else() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__API__TIMEOUT_SECS", "2"),
        ("USERSYNC__SYNC__SCHEDULE", "*/2 * * * * *"),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon.metric("usersync_database_up").await == 1.0
        })
        .await
    );

    // A session locks the table for 20 s; users without a profile arrive meanwhile.
    let locker = db.admin().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.user_profiles IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked_at = Instant::now();
    users_without_trigger(&admin, 20).await;

    let auth = format!("Bearer {TOKEN}");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (addr, auth) = (daemon.addr, auth.clone());
        calls.spawn(async move {
            let started = Instant::now();
            let (status, _, body) = crate::daemon::request_at(
                addr,
                "GET",
                "/v1/users?limit=10",
                &[("Authorization", &auth)],
            )
            .await;
            (status, body, started.elapsed())
        });
    }
    while let Some(call) = calls.join_next().await {
        let (status, body, took) = call.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("database_busy"), "{body}");
        assert!(took < Duration::from_secs(4), "answered after {took:?}");
    }
    // While it is held: alive, the database up, readiness answering in its own time.
    while locked_at.elapsed() < Duration::from_secs(20) {
        let started = Instant::now();
        assert_eq!(daemon.get("/healthz").await.0, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(daemon.metric("usersync_database_up").await, 1.0);
        let started = Instant::now();
        let (status, body) = daemon.get("/readyz").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/readyz took long"
        );
        assert!(status == 200 || !body.contains("unreachable"), "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    locker.batch_execute("COMMIT").await.unwrap();

    // The jobs resume: the sweep creates the missing profiles, the API answers.
    assert!(
        eventually(Duration::from_secs(15), || async {
            count(&admin, "public.user_profiles").await == 20
        })
        .await,
        "the sweep resumed"
    );
    let (status, _, body) = daemon
        .request("GET", "/v1/users?limit=10", &[("Authorization", &auth)])
        .await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn the_runtime_role_reads_what_it_needs_and_cannot_write_auth_users() {
    let db = TestDb::migrated().await;
    let runtime = db.runtime().await;
    let id = Uuid::new_v4();
    for sql in [
        format!("INSERT INTO auth.users (id) VALUES ('{id}')"),
        "UPDATE auth.users SET email = 'x@y'".to_string(),
        "DELETE FROM auth.users".to_string(),
        "SELECT encrypted_password FROM auth.users".to_string(),
        // Not even the columns usersync reads: it may not name schema auth at all.
        "SELECT id FROM auth.users".to_string(),
        "SELECT id FROM auth.refresh_tokens".to_string(),
        "TRUNCATE public.user_profiles".to_string(),
        // Its view of auth.users is read-only, and the user-id columns' count reads only what
        // the migration role registered.
        "INSERT INTO usersync.user_id_columns VALUES ('auth', 'users', 'encrypted_password')"
            .to_string(),
        "DELETE FROM usersync.auth_users".to_string(),
    ] {
        let err = runtime.batch_execute(&sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
    let report = usersync::db::verify::verify(&runtime).await.unwrap();
    assert!(report.ok, "{:#?}", report.findings);

    // A role without the grants is told which, and what to run.
    db.admin()
        .await
        .batch_execute(&format!(
            "REVOKE SELECT ON usersync.auth_users FROM {RUNTIME_ROLE}"
        ))
        .await
        .unwrap();
    let report = usersync::db::verify::verify(&runtime).await.unwrap();
    let finding = report
        .findings
        .iter()
        .find(|f| f.check == "runtime_grants")
        .expect("runtime_grants");
    assert!(
        finding
            .found
            .contains("SELECT ON TABLE usersync.auth_users"),
        "{finding:?}"
    );
    assert_eq!(
        finding.fix,
        format!("usersync migrate grant {RUNTIME_ROLE} (as the migration role)")
    );
    let (code, stdout, stderr) = usersync(
        &["migrate", "grant", RUNTIME_ROLE],
        &[("DATABASE_URL", db.app_url().as_str())],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(usersync::db::verify::verify(&runtime).await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_writes_no_probe_user_unless_its_schedule_asks() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    // The application's own trigger on auth.users counts every insert, rolled back or not.
    admin
        .batch_execute(
            "CREATE SEQUENCE public.auth_inserts;
             GRANT USAGE ON SEQUENCE public.auth_inserts TO PUBLIC;
             CREATE FUNCTION public.count_auth_insert() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM nextval('public.auth_inserts'); RETURN NULL; END $$;
             CREATE TRIGGER app_counts_inserts AFTER INSERT ON auth.users
                 FOR EACH ROW EXECUTE FUNCTION public.count_auth_insert();",
        )
        .await
        .unwrap();
    let inserted = || async {
        admin
            .query_one("SELECT is_called FROM public.auth_inserts", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon
                .metric("usersync_job_runs_total{job=\"integrity\",outcome=\"success\"}")
                .await
                >= 3.0
        })
        .await
    );
    daemon.stop().await.unwrap();
    assert!(
        !inserted().await,
        "the integrity check inserted into auth.users"
    );

    // Opted in, with a role that may write auth.users, the probe runs on its schedule.
    let daemon = Daemon::start(db.settings_with(&[
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
        ("USERSYNC__INTEGRITY__PROBE_SCHEDULE", "* * * * * *"),
        ("USERSYNC__SYNC__SCHEDULE", NEVER),
    ]))
    .await;
    assert!(eventually(Duration::from_secs(10), || async { inserted().await }).await);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn fixes_for_awkward_names_run_as_printed() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let users: Vec<AuthUser> = (0..2)
        .map(|i| AuthUser::email(&format!("awkward{i}@example.test")))
        .collect();
    insert_users(&admin, &users).await.unwrap();
    admin
        .batch_execute(
            r#"CREATE TABLE public."select" ("from" uuid REFERENCES auth.users (id));
               INSERT INTO public."select" SELECT id FROM auth.users;
               CREATE TABLE public."Mixed Case" ("from" uuid);
               INSERT INTO public."Mixed Case" VALUES (gen_random_uuid());
               ALTER TABLE public."Mixed Case" ADD CONSTRAINT "Mixed Key" FOREIGN KEY ("from")
                   REFERENCES auth.users (id) NOT VALID;
               CREATE TABLE public."order" ("from" text);
               INSERT INTO public."order" VALUES ('not a user');
               ALTER TABLE public.user_profiles ADD COLUMN "from" text NOT NULL DEFAULT '';
               ALTER TABLE public.user_profiles ALTER COLUMN "from" DROP DEFAULT;"#,
        )
        .await
        .unwrap();
    let url = db.runtime_url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("USERSYNC__INTEGRITY__USER_ID_COLUMNS", "public.order.from"),
    ];
    let findings = |json: &str| -> Vec<serde_json::Value> {
        let report: serde_json::Value = serde_json::from_str(json).expect("one JSON document");
        report["findings"].as_array().unwrap().clone()
    };
    let (code, json, stderr) = usersync(&["check", "--json"], &env);
    assert_eq!(code, 1, "{stderr}");
    let first = findings(&json);
    let checks: Vec<&str> = first.iter().map(|f| f["check"].as_str().unwrap()).collect();
    for expected in [
        "unreadable_table",
        "foreign_key_blocks_delete",
        "column.from",
    ] {
        assert!(checks.contains(&expected), "{expected} in {checks:?}");
    }
    // Run every SQL fix exactly as printed, round after round: a table made readable shows
    // what it holds (the NOT VALID key's orphans, the registered user-id column's), whose
    // fixes run too (the key's rewrite keeps it NOT VALID, so it never fails on them).
    let mut seen: Vec<String> = Vec::new();
    let mut findings_now = first;
    for _round in 0..5 {
        let sql: Vec<&serde_json::Value> = findings_now
            .iter()
            .filter(|f| f["fix_kind"] == "sql")
            .collect();
        if sql.is_empty() {
            break;
        }
        for f in sql {
            seen.push(f["check"].as_str().unwrap().to_string());
            let sql = f["fix"].as_str().unwrap();
            admin
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {sql}: {e}", f["check"]));
        }
        let (_, json, _) = usersync(&["check", "--json"], &env);
        findings_now = findings(&json);
    }
    for expected in ["foreign_key_not_valid", "user_id_column_orphans"] {
        assert!(seen.iter().any(|c| c == expected), "{expected} in {seen:?}");
    }
    let (code, json, _) = usersync(&["check", "--json"], &env);
    assert_eq!(code, 0, "{json}");
    assert!(findings(&json).is_empty(), "{json}");
}

#[tokio::test]
async fn an_unexpected_null_is_an_error_naming_the_column_not_a_panic() {
    use usersync::db::RowExt;
    let db = TestDb::new().await;
    let row = db
        .app()
        .await
        .query_one("SELECT NULL::text AS format", &[])
        .await
        .unwrap();
    let err = row.value::<String>(0).unwrap_err().to_string();
    assert!(err.contains("\"format\""), "{err}");
    assert_eq!(row.value::<Option<String>>(0).unwrap(), None);
}
