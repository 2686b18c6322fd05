//! docs/hosted-supabase.md, run as written on hosted Supabase's roles and privileges
//! (tests/fixtures/hosted.sql): `postgres` (here `usersync_app`) is not a superuser, does not
//! own `auth`, holds USAGE on it without grant option; the runtime role is created by it.

use std::time::Duration;

use crate::daemon::{
    FAIL_IN_SIGNUP_SESSION, emails, eventually, profiles_of, request_at, sign_up_failing,
    users_without_trigger,
};
use crate::support::docs::{blocks, run_lines, shell};
use crate::support::{OwnDir, TestDb, count, insert_users, supabase_default_privileges, usersync};

const DOC: &str = "docs/hosted-supabase.md";
const PASSWORD: &str = "use-a-long-random-password";

/// The document's runtime role, `usersync_runtime`, under a name of this test's own (roles
/// are the cluster's, shared by every test).
struct Runtime {
    role: String,
}

impl Runtime {
    fn new(db: &TestDb) -> Runtime {
        Runtime {
            role: format!("usersync_rt_{}", db.name.trim_start_matches("usersync_it_")),
        }
    }

    fn text(&self, doc: &str) -> String {
        doc.replace("usersync_runtime", &self.role)
    }
}

/// Whether `usersync migrate status` shows every migration applied.
fn all_applied(url: &str) -> bool {
    let (code, status, stderr) =
        usersync(&["migrate", "status", "--json"], &[("DATABASE_URL", url)]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    status
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "applied")
}

/// The daemon of the document's `usersync run`, in a process group of its own.
struct Running(std::process::Child);

impl Running {
    /// SIGTERM to the command the shell runs (or to the shell, where it ran it in its place);
    /// the shell then exits as the command did.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut targets: Vec<i32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if targets.is_empty() {
            targets.push(pid as i32);
        }
        for target in targets {
            unsafe { libc::kill(target, libc::SIGTERM) };
        }
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_install_path_runs_as_written_with_hosted_supabases_roles() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    supabase_default_privileges(&admin).await;
    // Users from before usersync: none has a profile.
    insert_users(&admin, &emails(30, "early")).await.unwrap();
    let runtime = Runtime::new(&db);
    let app = db.app().await;
    for sql in blocks(DOC, "hosted-sql") {
        app.batch_execute(&runtime.text(&sql)).await.unwrap();
    }
    let env = [
        ("MIGRATION_URL", db.app_url()),
        ("RUNTIME_URL", db.url_as(&runtime.role, PASSWORD)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cwd = std::env::temp_dir();
    for name in ["hosted-install", "hosted-runtime"] {
        for block in blocks(DOC, name) {
            run_lines(&runtime.text(&block), &env, &cwd);
        }
    }
    assert_eq!(
        count(&admin, "public.user_profiles").await,
        30,
        "sync created them"
    );
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();

    the_documented_daemon_runs_as_the_runtime_role(&db, &runtime, &env, &cwd).await;

    for block in blocks(DOC, "hosted-remove") {
        run_lines(&block, &env, &cwd);
    }
    assert_eq!(
        count(&admin, "pg_catalog.pg_namespace WHERE nspname = 'usersync'").await,
        0
    );
    assert_eq!(
        count(&admin, "auth.users").await,
        73,
        "auth.users untouched"
    );
    for sql in blocks(DOC, "hosted-drop-role") {
        app.batch_execute(&runtime.text(&sql)).await.unwrap();
    }
}

/// The daemon as the runtime role, started by the doc's command: ready within 10 s, a failed
/// sign-up repaired through NOTIFY, a sweep of users the trigger missed, 0 on SIGTERM.
async fn the_documented_daemon_runs_as_the_runtime_role(
    db: &TestDb,
    runtime: &Runtime,
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) {
    let admin = db.admin().await;
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let mut daemon_env = env.to_vec();
    daemon_env.extend([
        ("USERSYNC__HTTP__LISTEN", listen.as_str()),
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]);
    let [line] = &blocks(DOC, "hosted-daemon")[..] else {
        panic!("one daemon block");
    };
    let daemon = Running(
        shell(&runtime.text(line), &daemon_env, cwd)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && request_at(addr, "GET", "/readyz", &[]).await.0 == 200
    })
    .await;
    assert!(ready, "{:?}", request_at(addr, "GET", "/readyz", &[]).await);
    let listening = eventually(Duration::from_secs(10), || async {
        request_at(addr, "GET", "/metrics", &[])
            .await
            .2
            .contains("usersync_repair_listener_up 1")
    })
    .await;
    assert!(listening);
    let ids = sign_up_failing(db, 3, "flaky").await;
    let repaired = eventually(Duration::from_secs(3), || async {
        profiles_of(&admin, &ids).await == 3
    })
    .await;
    assert!(repaired, "repaired through NOTIFY");
    users_without_trigger(&admin, 40).await;
    let swept = eventually(Duration::from_secs(15), || async {
        count(&admin, "public.user_profiles").await == 73
    })
    .await;
    assert!(
        swept,
        "{} profiles",
        count(&admin, "public.user_profiles").await
    );
    assert!(daemon.stop().success(), "SIGTERM ends it with 0");
}

#[tokio::test]
async fn migrate_grant_names_each_privilege_the_granting_role_cannot_pass_on() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let n = db.name.trim_start_matches("usersync_it_").to_string();
    let (granter, target) = (
        format!("usersync_granter_{n}"),
        format!("usersync_target_{n}"),
    );
    // A granter that holds the runtime's privileges without grant option (as hosted postgres
    // holds USAGE on auth), and one it does not hold at all.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {granter} LOGIN PASSWORD '{PASSWORD}';
             CREATE ROLE {target} LOGIN;
             GRANT USAGE ON SCHEMA usersync TO {granter};
             GRANT SELECT ON usersync.auth_users TO {granter};
             GRANT SELECT, INSERT, DELETE ON usersync.user_id_columns TO {granter};"
        ))
        .await
        .unwrap();
    let url = db.url_as(&granter, PASSWORD);
    let (code, stdout, stderr) = usersync(
        &["migrate", "grant", &target],
        &[("DATABASE_URL", url.as_str())],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains("granted:"), "{stdout}");
    assert!(
        stdout.contains(
            "SELECT ON TABLE usersync.auth_users: the connecting role holds it without grant option"
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("INSERT ON TABLE public.user_profiles: the connecting role does not hold it"),
        "{stdout}"
    );
    // PostgreSQL itself only warns for the first kind: the read-back is what fails.
    let (_, json, _) = usersync(
        &["migrate", "grant", &target, "--json"],
        &[("DATABASE_URL", url.as_str())],
    );
    let granted: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(!granted["missing"].as_array().unwrap().is_empty());
    // The migration role can: the same command then passes, and verify agrees.
    let (code, stdout, _) = usersync(
        &["migrate", "grant", &target],
        &[("DATABASE_URL", db.app_url().as_str())],
    );
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout, _) = usersync(
        &["migrate", "verify", "--runtime-role", &target],
        &[("DATABASE_URL", db.app_url().as_str())],
    );
    assert_eq!(code, 0, "{stdout}");
    admin
        .batch_execute(&format!(
            "REVOKE SELECT ON usersync.auth_users FROM {target};"
        ))
        .await
        .unwrap();
    let (code, stdout, _) = usersync(
        &["migrate", "verify", "--runtime-role", &target],
        &[("DATABASE_URL", db.app_url().as_str())],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("SELECT ON TABLE usersync.auth_users"),
        "{stdout}"
    );
    admin
        .batch_execute(&format!(
            "DROP POLICY IF EXISTS usersync_runtime_{target} ON public.user_profiles;
             DROP OWNED BY {granter}, {target}; DROP ROLE {granter}, {target};"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn without_supautils_migrate_down_stops_naming_it_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute("ALTER EVENT TRIGGER supautils_drop_trigger_grants DISABLE")
        .await
        .unwrap();
    let [block] = &blocks(DOC, "hosted-remove")[..] else {
        panic!("one removal block");
    };
    let url = db.app_url();
    let output = shell(
        block,
        &[("MIGRATION_URL", url.as_str())],
        &std::env::temp_dir(),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("usersync: "))
        .expect("one line");
    assert!(line.contains("supautils.drop_trigger_grants"), "{line}");
    assert!(line.contains("must be owner"), "{line}");
    assert!(all_applied(&url), "nothing rolled back");
}

#[tokio::test]
async fn exported_supabase_cli_files_applied_with_psql_leave_usersync_installed() {
    if !crate::support::tool(
        "exported_supabase_cli_files",
        "psql",
        &["--version"],
        "Debian package postgresql-client",
    ) {
        return;
    }
    let db = TestDb::new().await;
    let project = OwnDir::new("supabase-project");
    let [block] = &blocks(DOC, "hosted-export")[..] else {
        panic!("one export block");
    };
    run_lines(block, &[], project.path());
    let folder = project.path().join("supabase/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), usersync::db::migrate::MIGRATIONS.len());
    for (file, m) in files.iter().zip(usersync::db::migrate::MIGRATIONS) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(&format!("_usersync_{}.sql", m.name)),
            "{name}"
        );
        assert_eq!(name.split('_').next().unwrap().len(), 14, "{name}");
        // As the Supabase CLI would: in name order, one transaction each, as postgres.
        let output = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f"])
            .arg(file)
            .arg(db.app_url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let url = db.app_url();
    let env = [("DATABASE_URL", url.as_str())];
    assert!(all_applied(&url));
    let (code, stdout, stderr) = usersync(&["migrate", "verify", "--e2e"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = usersync(&["migrate", "up"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to apply"), "{stdout}");

    // Again: nothing new. Without the newest file (a release that adds one): only it, after
    // everything in the folder.
    let again = run_lines(block, &[], project.path());
    assert!(
        String::from_utf8_lossy(&again[0].stdout).starts_with("nothing to export"),
        "{:?}",
        again[0]
    );
    let newest = files.last().unwrap();
    std::fs::remove_file(newest).unwrap();
    std::fs::write(folder.join("29990101000000_team_change.sql"), "SELECT 1;\n").unwrap();
    let again = run_lines(block, &[], project.path());
    let written = String::from_utf8_lossy(&again[0].stdout).into_owned();
    assert_eq!(written.lines().count(), 1, "{written}");
    assert!(written.contains("29990101000001_usersync_"), "{written}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_the_status_page_name_the_privilege_the_runtime_role_lacks() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute(&format!(
            "REVOKE SELECT ON usersync.auth_users FROM {};",
            crate::support::RUNTIME_ROLE
        ))
        .await
        .unwrap();
    let daemon = crate::daemon::Daemon::start(db.runtime_settings_with(&[])).await;
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "permission", "{body}");
    assert_eq!(
        body["permission"],
        serde_json::json!(["SELECT ON TABLE usersync.auth_users"]),
        "{body}"
    );
    let (_, page) = daemon.get("/").await;
    assert!(page.contains("<h2>Not ready</h2>"), "{page}");
    assert!(
        page.contains("<code>SELECT ON TABLE usersync.auth_users</code>"),
        "{page}"
    );
    let (_, json) = daemon.get("/status").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["not_ready"]["reason"], "permission");
    daemon.stop().await.unwrap();
}
