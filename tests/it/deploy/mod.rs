//! What ships in `deploy/`: the systemd unit, the alert rules and their tests, the Kubernetes
//! base, and a real Prometheus scraping a running daemon.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, NEVER};
use crate::support::{TestDb, count, tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a tool of the CI machine; its output on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{program} (installed by .ci/run): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_systemd_units_verify_and_their_exposure_is_at_most_2_5() {
    if !tool(
        "the systemd units verify",
        "systemd-analyze",
        &["--version"],
        "Debian package systemd",
    ) {
        return;
    }
    let read = |name: &str| {
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd").join(name)).unwrap()
    };
    let daemon = read("usersync.service");
    assert!(daemon.contains("Type=notify") && daemon.contains("WatchdogSec="));
    assert!(daemon.contains("Requires=usersync-migrate.service"));
    let migrate = read("usersync-migrate.service");
    for step in [
        "migrate up",
        "migrate grant usersync_runtime",
        "migrate verify --e2e --runtime-role usersync_runtime",
    ] {
        assert!(
            migrate.contains(step),
            "usersync-migrate.service runs {step}"
        );
    }
    // Two credentials: the daemon's file is the runtime role's, the migration's its own.
    assert!(daemon.contains("EnvironmentFile=/etc/usersync/usersync.env"));
    assert!(migrate.contains("EnvironmentFile=/etc/usersync/migrate.env"));
    assert!(read("usersync.env.example").contains("postgres://usersync_runtime:"));

    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("usersync-it-{}-unit", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["usersync.service", "usersync-migrate.service"] {
        std::fs::write(
            dir.join(name),
            read(name).replace("/usr/local/bin/usersync", env!("CARGO_BIN_EXE_usersync")),
        )
        .unwrap();
    }
    for name in ["usersync.service", "usersync-migrate.service"] {
        let path = dir.join(name);
        let path = path.to_str().unwrap();
        let verified = run("systemd-analyze", &["verify", path]);
        assert!(
            !verified.contains(&format!("{name}:")),
            "warnings about {name}:\n{verified}"
        );
        let security = run("systemd-analyze", &["security", "--offline=true", path]);
        let score: f64 = security
            .lines()
            .find_map(|l| {
                l.split(&format!("Overall exposure level for {name}:"))
                    .nth(1)
            })
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
        assert!(score <= 2.5, "{name}: exposure {score}:\n{security}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    if !tool(
        "the alert rules and their tests",
        "promtool",
        &["--version"],
        "Debian package prometheus",
    ) {
        return;
    }
    run(
        "promtool",
        &["check", "rules", "deploy/prometheus/usersync.rules.yml"],
    );
    run(
        "promtool",
        &["test", "rules", "deploy/prometheus/usersync.rules.test.yml"],
    );
    // Every alert links to its runbook entry, and every entry exists.
    let rules =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/usersync.rules.yml"))
            .unwrap();
    let runbook = std::fs::read_to_string(Path::new(ROOT).join("deploy/RUNBOOK.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8);
    for alert in alerts {
        assert!(
            runbook.contains(&format!("## {alert}")),
            "RUNBOOK.md has no entry for {alert}"
        );
        assert!(
            rules.contains(&format!("RUNBOOK.md#{}", alert.to_lowercase())),
            "{alert} has no runbook link"
        );
    }
}

/// `kubectl kustomize DIR` with no flags (what `apply -k`, a remote base, Argo CD and Flux
/// do), then kubernetes-validate against the Kubernetes schemas.
fn build_and_validate(test: &str, dir: &str) -> Option<String> {
    if !tool(
        test,
        "kubectl",
        &["version", "--client"],
        "Debian package kubectl",
    ) || !tool(
        test,
        "python3",
        &["-c", "import kubernetes_validate"],
        "PyPI package kubernetes-validate",
    ) {
        return None;
    }
    let built = run("kubectl", &["kustomize", dir]);
    let file = std::env::temp_dir().join(format!(
        "usersync-it-{}-{}.yaml",
        std::process::id(),
        dir.replace('/', "-")
    ));
    std::fs::write(&file, &built).unwrap();
    let validated = run(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            file.to_str().unwrap(),
        ],
    );
    for resource in [
        "configmap/",
        "service/usersync",
        "deployment/usersync",
        "poddisruptionbudget/usersync",
    ] {
        assert!(
            validated.contains(&format!("passed for resource {resource}")),
            "{dir}: {resource}:\n{validated}"
        );
    }
    let _ = std::fs::remove_file(file);
    Some(built)
}

#[test]
fn the_kubernetes_base_and_its_production_overlay_build_with_plain_kustomize() {
    // The configuration is single-sourced: the base's copy is config/usersync.toml.
    let config = std::fs::read_to_string(Path::new(ROOT).join("config/usersync.toml")).unwrap();
    let copy =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/usersync.toml")).unwrap();
    assert!(
        config == copy,
        "deploy/kubernetes/usersync.toml differs from config/usersync.toml: copy it again"
    );
    let Some(built) = build_and_validate("the Kubernetes base builds", "deploy/kubernetes") else {
        return;
    };
    for kind in [
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(built.contains(&format!("kind: {kind}")), "no {kind}");
    }
    for needle in [
        "/healthz",
        "/readyz",
        "- migrate\n        - up",
        "- grant\n        - usersync_runtime",
        "- verify\n        - --e2e\n        - --runtime-role\n        - usersync_runtime",
        "name: usersync-migrate",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "replicas: 2",
        "terminationGracePeriodSeconds: 30",
    ] {
        assert!(built.contains(needle), "no {needle}");
    }
    // The ConfigMap carries config/usersync.toml as it is.
    assert!(built.contains(config.lines().find(|l| l.starts_with("pool_size")).unwrap()));

    let production = build_and_validate(
        "the production overlay builds",
        "deploy/overlays/production",
    )
    .expect("the tools were there a moment ago");
    for needle in [
        "replicas: 3",
        "secretName: usersync-ca",
        "value: verify-full",
        "value: /etc/usersync-ca/ca.crt",
        "name: usersync-migrate",
    ] {
        assert!(production.contains(needle), "production: no {needle}");
    }
    // Every init container and the daemon get the CA.
    assert_eq!(production.matches("mountPath: /etc/usersync-ca").count(), 4);
}

#[test]
fn usersync_run_tells_systemd_it_is_ready_pings_the_watchdog_and_stops_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let rt = crate::property::runtime();
    let test_db = rt.block_on(TestDb::migrated());
    let dir = std::env::temp_dir().join(format!("usersync-it-{}-notify", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", test_db.app_url())
        .env("USERSYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    while !(received.iter().any(|m| m == "READY=1") && received.iter().any(|m| m == "WATCHDOG=1")) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "got {received:?}"
        );
        let n = socket.recv(&mut buf).expect("a notification");
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY comes once it serves.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn usersync_demo_starts_everything_repairs_the_missing_fifth_and_cleans_up_on_ctrl_c() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // README.md's line; `cargo run --release --` builds the binary this test runs.
    let [line] = &crate::support::docs::blocks("README.md", "demo")[..] else {
        panic!("one demo block in README.md");
    };
    let args = line
        .strip_prefix("cargo run --release -- ")
        .expect("README.md's demo runs the binary through cargo run --release");
    let demo = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(args.split_whitespace())
        .env("USERSYNC__HTTP__LISTEN", format!("0.0.0.0:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        Some(r)
    };
    let started = Instant::now();
    let mut repaired = false;
    while started.elapsed() < Duration::from_secs(60) {
        if metrics()
            .is_some_and(|m| m.contains("usersync_profiles_created_total{source=\"sweep\"} 2000"))
        {
            repaired = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    nothing_of_the_demo_is_on_the_network(port, demo.id());
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let out = demo.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for chatter in ["Uninited", "Job creator created", "tokio_cron_scheduler"] {
        assert!(
            !stderr.contains(chatter),
            "{chatter} in the logs:\n{stderr}"
        );
    }
    assert!(
        repaired,
        "the demo's sweep created the 2000 missing profiles:\n{stdout}"
    );
    assert!(out.status.success(), "{}", out.status);
    for line in [
        &format!("http://localhost:{port}/readyz"),
        "curl -s -H 'Authorization: Bearer",
        "2000 of them without a profile",
        "private unix socket",
    ] {
        assert!(stdout.contains(line), "{line} not in:\n{stdout}");
    }
    let dir = stdout
        .split("(data in ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the data directory is printed");
    assert!(!Path::new(dir).exists(), "{dir} removed");
}

/// The daemon is on loopback whatever http.listen says, and PostgreSQL has no TCP port at all.
fn nothing_of_the_demo_is_on_the_network(port: u16, demo: u32) {
    let outside = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|()| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip());
    if let Ok(ip) = outside
        && !ip.is_loopback()
    {
        assert!(
            std::net::TcpStream::connect((ip, port)).is_err(),
            "the demo's daemon answers on {ip}"
        );
    }
    let pid_file = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("data/postmaster.pid"))
        .find(|p| {
            p.parent()
                .and_then(|d| d.parent())
                .and_then(|d| d.file_name())
                .is_some_and(|n| n.to_string_lossy() == format!("usersync-demo-{demo}"))
        });
    if let Some(pid_file) = pid_file {
        let pg_port: u16 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .lines()
            .nth(3)
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster.pid names the port");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
            "the demo's PostgreSQL listens on TCP"
        );
    }
}

mod observability;
