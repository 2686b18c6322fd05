//! The binary itself: exit codes, one-line errors, redaction, and the "done when" path.

use crate::support::{TestDb, schema_snapshot, usersync};

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A configuration file that is removed when dropped.
mod tempfile_path {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "usersync-it-config-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Asserts a configuration error: exit 78 and one line on stderr naming `key`.
fn assert_config_error(args: &[&str], env: &[(&str, &str)], key: &str, what: &str) {
    let (code, stdout, stderr) = usersync(args, env);
    assert_eq!(code, 78, "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(key) && stderr.contains(what), "{stderr}");
    assert!(stdout.is_empty());
}

#[test]
fn bad_configuration_exits_78_with_one_line_naming_the_key() {
    let unknown = write_config("[database]\npool_sise = 4\n");
    assert_config_error(
        &["config", "--config", unknown.as_str()],
        &[],
        "pool_sise",
        "unknown field",
    );
    let unknown_section = write_config("[databse]\nurl = \"x\"\n");
    assert_config_error(
        &["config", "--config", unknown_section.as_str()],
        &[],
        "databse",
        "unknown field",
    );
    let wrong_type = write_config("[sync]\nworkers = \"many\"\n");
    assert_config_error(
        &["config", "--config", wrong_type.as_str()],
        &[],
        "sync.workers",
        "integer",
    );
    let zero = write_config("[database]\npool_size = 0\n");
    assert_config_error(
        &["config", "--config", zero.as_str()],
        &[],
        "database.pool_size",
        "out of range",
    );
    let cron = write_config("[sync]\nschedule = \"every five minutes\"\n");
    assert_config_error(
        &["config", "--config", cron.as_str()],
        &[],
        "sync.schedule",
        "cron expression",
    );
    assert_config_error(
        &["config"],
        &[("USERSYNC__SYNC__BATCH_SIZE", "ten")],
        "USERSYNC__SYNC__BATCH_SIZE",
        "not an integer",
    );
    assert_config_error(
        &["config"],
        &[("USERSYNC__SYNC__BATHC_SIZE", "10")],
        "USERSYNC__SYNC__BATHC_SIZE",
        "unknown key",
    );
    assert_config_error(
        &["config"],
        &[("DATABASE_URL", "mysql://x")],
        "database.url",
        "not a PostgreSQL URL",
    );
    let (code, _, stderr) = usersync(&["config", "--config", "/nonexistent/usersync.toml"], &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("/nonexistent/usersync.toml: no such file"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = usersync(&["migrate", "sideways"], &[]);
    assert_eq!(code, 2);
    let (code, _, _) = usersync(&["migrate", "up", "--to", "one"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn config_prints_the_effective_settings_with_the_password_redacted() {
    let file = write_config("[sync]\nbatch_size = 500\n");
    let (code, stdout, stderr) = usersync(
        &["config", "--config", file.as_str()],
        &[
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db.example:6543/postgres",
            ),
            ("USERSYNC__DATABASE__POOL_SIZE", "3"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("url = \"postgres://app:***@db.example:6543/postgres?sslmode=prefer\""),
        "{stdout}"
    );
    assert!(stdout.contains("pool_size = 3"), "{stdout}");
    assert!(stdout.contains("batch_size = 500"), "{stdout}");
    // What `config` prints is itself a valid configuration file.
    let printed = write_config(&stdout);
    let (code, again, _) = usersync(&["config", "--config", printed.as_str()], &[]);
    assert_eq!(code, 0);
    assert_eq!(again, stdout);
}

#[test]
fn an_unreachable_database_exits_69_naming_host_and_port_but_not_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/postgres");
    let (code, _, stderr) = usersync(&["migrate", "status"], &[("DATABASE_URL", &url)]);
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn migrate_up_then_verify_e2e_passes_and_a_disabled_trigger_fails_verify_with_its_fix() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let before = schema_snapshot(&admin).await;
    let url = db.app_url();
    let env = [("DATABASE_URL", url.as_str())];

    let (code, stdout, stderr) = usersync(&["migrate", "up"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("applied 0001_user_profiles"), "{stdout}");
    let (code, stdout, stderr) = usersync(&["migrate", "verify", "--e2e"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}");

    admin
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();
    let (code, stdout, _) = usersync(&["migrate", "verify"], &env);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("trigger\n  expected: enabled\n  found:    disabled"),
        "{stdout}"
    );
    let (code, json, _) = usersync(&["migrate", "verify", "--json"], &env);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(report["ok"], false);
    assert_eq!(report["findings"][0]["check"], "trigger");
    // The fix runs as printed by the migration role, hosted Supabase's `postgres`, which may
    // not ALTER auth.users (only its owner may enable a trigger there), but may replace a
    // trigger: CREATE OR REPLACE TRIGGER needs the TRIGGER privilege and enables it again.
    let fix = report["findings"][0]["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(
            "CREATE OR REPLACE TRIGGER usersync_on_auth_user_created AFTER INSERT ON auth.users"
        ),
        "{fix}"
    );
    assert!(stdout.contains(fix), "{stdout}");
    let denied = db
        .app()
        .await
        .batch_execute("ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    db.app().await.batch_execute(fix).await.unwrap();
    let (code, stdout, _) = usersync(&["migrate", "verify"], &env);
    assert_eq!(code, 0, "{stdout}");
    db.admin()
        .await
        .batch_execute("ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created")
        .await
        .unwrap();

    let (code, stdout, _) = usersync(&["migrate", "status", "--json"], &env);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[0]["state"], "applied");

    let (code, stdout, stderr) = usersync(&["migrate", "down", "--to", "0"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("rolled back 0002_hardening")
            && stdout.contains("rolled back 0001_user_profiles"),
        "{stdout}"
    );
    let after = schema_snapshot(&admin).await;
    assert_eq!(
        before,
        after,
        "{}",
        crate::support::snapshot_diff(&before, &after)
    );
}

#[tokio::test]
async fn migrate_on_a_database_without_auth_says_it_is_not_supabase() {
    let db = TestDb::new().await;
    db.admin()
        .await
        .batch_execute("DROP SCHEMA auth CASCADE")
        .await
        .unwrap();
    let url = db.app_url();
    let (code, _, stderr) = usersync(&["migrate", "up"], &[("DATABASE_URL", &url)]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim(),
        "usersync: no auth.users table: is this a Supabase database?"
    );
}

#[test]
fn config_never_prints_the_api_token_and_rejects_a_short_one() {
    let token = "a-secret-token-nobody-may-see";
    let (code, stdout, stderr) = usersync(&["config"], &[("USERSYNC__API__TOKEN", token)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains(token), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    assert_config_error(
        &["config"],
        &[("USERSYNC__API__TOKEN", "short")],
        "api.token",
        "shorter than 16",
    );
}

#[tokio::test]
async fn logs_carry_no_email_password_or_token() {
    let test_db = crate::support::TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email, raw_user_meta_data)
                 SELECT gen_random_uuid(), 'secret' || g || '@leak.test',
                        jsonb_build_object('full_name', CASE WHEN g % 3 = 0 THEN 'Rejected' END)
                 FROM generate_series(1, 30) g;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;
             ALTER TABLE public.user_profiles ADD CONSTRAINT no_rejects
                 CHECK (full_name IS DISTINCT FROM 'Rejected');",
        )
        .await
        .unwrap();
    let url = test_db.app_url();
    let token = "log-leak-token-0123456789";
    for format in ["text", "json"] {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("USERSYNC__API__TOKEN", token),
            ("USERSYNC__LOG__FORMAT", format),
            ("USERSYNC__LOG__LEVEL", "info"),
        ];
        // Failed users wait out a backoff; clear it so each format sees the failures.
        admin
            .batch_execute("DELETE FROM usersync.repair_queue")
            .await
            .unwrap();
        let (code, stdout, stderr) = usersync(&["sync"], &env);
        assert_eq!(code, 1, "some users fail: {stdout}{stderr}");
        assert!(
            stderr.contains("queued for repair"),
            "failures are logged: {stderr}"
        );
        for secret in ["@leak.test", token, "usersync-test"] {
            assert!(
                !stderr.contains(secret),
                "{format} logs contain {secret:?}:\n{stderr}"
            );
        }
        let (code, _, stderr) = usersync(&["check"], &env);
        assert_eq!(code, 1);
        assert!(
            !stderr.contains("@leak.test") && !stderr.contains(token),
            "{stderr}"
        );
    }
}
