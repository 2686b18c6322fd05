//! TLS to PostgreSQL and outage recovery, against clusters of the tests' own.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::daemon::{eventually, request_at};
use crate::support::{OwnCluster, connect, count, usersync};

/// A CA and a server certificate it signs for localhost and 127.0.0.1: (ca pem, cert, key).
fn certificates() -> (String, String, String) {
    certificates_for(&["localhost", "127.0.0.1"])
}

/// A CA and a server certificate it signs for `names`.
fn certificates_for(names: &[&str]) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn write_temp(name: &str, contents: &str) -> String {
    let path = std::env::temp_dir().join(format!("usersync-it-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn verify_full_connects_with_the_ca_and_fails_clearly_without_it() {
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    let ssl = [
        "ssl=on".to_string(),
        "ssl_cert_file=server.crt".to_string(),
        "ssl_key_file=server.key".to_string(),
    ];
    let cluster = OwnCluster::start(
        "tls",
        &[
            ("server.crt", cert.as_bytes()),
            ("server.key", key.as_bytes()),
        ],
        &ssl,
    )
    .await;
    let ca_file = write_temp("ca.pem", &ca);
    let other_file = write_temp("other-ca.pem", &other_ca);
    let url = cluster.app_url();

    for (mode, ca_cert) in [
        ("verify-full", ca_file.as_str()),
        ("require", ""),
        ("prefer", ""),
    ] {
        let sources = usersync::config::Sources {
            file: None,
            env: vec![
                ("DATABASE_URL".into(), url.clone()),
                ("USERSYNC__DATABASE__SSLMODE".into(), mode.into()),
                ("USERSYNC__DATABASE__CA_CERT".into(), ca_cert.into()),
            ],
        };
        let settings = usersync::config::Settings::load(&sources).unwrap();
        let db = usersync::db::connect(&settings.database).await.unwrap();
        let encrypted: bool = db
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(encrypted, "{mode} speaks TLS");
    }

    // Another CA: exit 69 and one line that says why, never the password.
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("USERSYNC__DATABASE__SSLMODE", "verify-full"),
        ("USERSYNC__DATABASE__CA_CERT", other_file.as_str()),
    ];
    let (code, _, stderr) = usersync(&["migrate", "status"], &env);
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", cluster.port)),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(!stderr.contains("usersync-test"), "{stderr}");

    // verify-full without a CA file is a configuration error, before anything connects.
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("USERSYNC__DATABASE__SSLMODE", "verify-full"),
    ];
    let (code, _, stderr) = usersync(&["migrate", "status"], &env);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("database.ca_cert"), "{stderr}");
    let _ = std::fs::remove_file(ca_file);
    let _ = std::fs::remove_file(other_file);
}

#[tokio::test]
async fn verify_ca_checks_the_chain_and_not_the_name_and_the_urls_sslmode_is_honoured() {
    // A certificate for another name, from the CA usersync is given.
    let (ca, cert, key) = certificates_for(&["db.elsewhere.invalid"]);
    let ssl = [
        "ssl=on".to_string(),
        "ssl_cert_file=server.crt".to_string(),
        "ssl_key_file=server.key".to_string(),
    ];
    let cluster = OwnCluster::start(
        "verify-ca",
        &[
            ("server.crt", cert.as_bytes()),
            ("server.key", key.as_bytes()),
        ],
        &ssl,
    )
    .await;
    let ca_file = write_temp("verify-ca.pem", &ca);
    // The mode in the URL, the CA from the configuration.
    let url = |mode: &str| format!("{}?sslmode={mode}", cluster.app_url());
    let verify_ca = url("verify-ca");
    let env = [
        ("DATABASE_URL", verify_ca.as_str()),
        ("USERSYNC__DATABASE__CA_CERT", ca_file.as_str()),
    ];
    let (code, _, stderr) = usersync(&["migrate", "status"], &env);
    assert_eq!(
        code, 0,
        "verify-ca accepts the chain whatever the name: {stderr}"
    );
    let verify_full = url("verify-full");
    let env = [
        ("DATABASE_URL", verify_full.as_str()),
        ("USERSYNC__DATABASE__CA_CERT", ca_file.as_str()),
    ];
    let (code, _, stderr) = usersync(&["migrate", "status"], &env);
    assert_eq!(code, 69, "verify-full compares the name: {stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let _ = std::fs::remove_file(ca_file);

    // sslmode=require in the URL, against a server without TLS: no plain-text fallback.
    let plain = OwnCluster::start("no-tls", &[], &[]).await;
    let require = format!("{}?sslmode=require", plain.app_url());
    let (code, _, stderr) = usersync(
        &["migrate", "status"],
        &[("DATABASE_URL", require.as_str())],
    );
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.to_lowercase().contains("tls"), "{stderr}");
    // The same in key=value form, and a conflicting database.sslmode is exit 78 naming both.
    let kv = format!(
        "host=127.0.0.1 port={} user=usersync_app password=usersync-test dbname=postgres sslmode=require",
        plain.port
    );
    let (code, _, stderr) = usersync(&["migrate", "status"], &[("DATABASE_URL", kv.as_str())]);
    assert_eq!(code, 69, "{stderr}");
    let (code, _, stderr) = usersync(
        &["migrate", "status"],
        &[
            ("DATABASE_URL", require.as_str()),
            ("USERSYNC__DATABASE__SSLMODE", "disable"),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("database.sslmode") && stderr.contains("sslmode=require"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_survives_the_database_restarting_and_loses_nothing() {
    let mut cluster = OwnCluster::start("restart", &[], &[]).await;
    let url = cluster.app_url();
    let env = [("DATABASE_URL", url.as_str())];
    assert_eq!(usersync(&["migrate", "up"], &env).0, 0);
    let admin = connect(&cluster.config("postgres")).await;
    admin
        .batch_execute(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email) SELECT gen_random_uuid(), 'r' || g || '@example.test'
                 FROM generate_series(1, 3000) g;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;",
        )
        .await
        .unwrap();
    let settings = usersync::config::Settings::load(&usersync::config::Sources {
        file: None,
        env: vec![
            ("DATABASE_URL".into(), url.clone()),
            ("USERSYNC__SYNC__SCHEDULE".into(), "* * * * * *".into()),
            ("USERSYNC__SYNC__BATCH_SIZE".into(), "100".into()),
            (
                "USERSYNC__DATABASE__CONNECT_TIMEOUT_SECS".into(),
                "1".into(),
            ),
        ],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(usersync::daemon::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let status = |path: &'static str| async move { request_at(addr, "GET", path, &[]).await.0 };
    let metrics = || async move { request_at(addr, "GET", "/metrics", &[]).await.2 };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The server goes away mid-backfill.
    cluster.pause();
    let unready_and_down = eventually(Duration::from_secs(20), || async {
        status("/readyz").await == 503 && metrics().await.contains("usersync_database_up 0")
    })
    .await;
    assert!(
        unready_and_down,
        "readiness 503 and usersync_database_up 0 while the database is down"
    );
    assert_eq!(status("/healthz").await, 200, "alive all along");

    // It comes back: everything resumes on its own.
    cluster.resume().await;
    let admin = connect(&cluster.config("postgres")).await;
    let done = eventually(Duration::from_secs(20), || async {
        count(&admin, "public.user_profiles").await == 3000
    })
    .await;
    assert!(done, "the backfill finished after the restart");
    let ready = eventually(Duration::from_secs(20), || async {
        status("/readyz").await == 200 && metrics().await.contains("usersync_database_up 1")
    })
    .await;
    assert!(
        ready,
        "ready again: {}",
        request_at(addr, "GET", "/readyz", &[]).await.2
    );
    let duplicates: i64 = admin
        .query_one(
            "SELECT count(*) - count(DISTINCT id) FROM public.user_profiles",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0);
    let _ = stop.send(());
    daemon.await.unwrap().expect("a clean shutdown");
}
