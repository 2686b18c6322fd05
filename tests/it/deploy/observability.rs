//! What Prometheus and Grafana see: a real Prometheus scraping the daemon, the dashboard's queries.

use super::*;

/// A real Prometheus scrapes the daemon; its own query API shows the series arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_daemon_and_loads_the_rules() {
    if !tool(
        "a real Prometheus scrapes the daemon",
        "prometheus",
        &["--version"],
        "Debian package prometheus",
    ) {
        return;
    }
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email) SELECT gen_random_uuid(), 'prom' || g || '@example.test'
                 FROM generate_series(1, 25) g;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;",
        )
        .await
        .unwrap();
    let daemon = Daemon::start(test_db.settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", NEVER),
    ]))
    .await;
    let dir = std::env::temp_dir().join(format!("usersync-it-{}-prometheus", std::process::id()));
    let (mut prometheus, web) = start_prometheus(&dir, daemon.addr);
    let query = |q: &'static str| prometheus_query(web, q);
    let started = Instant::now();
    let mut created = None;
    while started.elapsed() < Duration::from_secs(60) {
        created = query("usersync_profiles_created_total{job=\"usersync\",source=\"sweep\"}").await;
        if created == Some(25.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = query("up{job=\"usersync\"}").await;
    let database_up = query("usersync_database_up").await;
    let rules_loaded = query("count(ALERTS) or vector(0)").await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    daemon.stop().await.unwrap();
    assert_eq!(
        created,
        Some(25.0),
        "the created counter as Prometheus stored it"
    );
    assert_eq!(count(&admin, "public.user_profiles").await, 25);
    assert_eq!(up, Some(1.0));
    assert_eq!(database_up, Some(1.0));
    assert!(rules_loaded.is_some(), "Prometheus evaluates the rule file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_covers_every_metric_family_with_queries_that_parse() {
    let exprs = dashboard_queries();
    let families = exported_families().await;
    let named: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("usersync_"))
                .map(|w| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| w.strip_suffix(s).filter(|f| families.contains(*f)))
                        .unwrap_or(w)
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for family in &families {
        assert!(named.contains(family), "no panel shows {family}");
    }
    for name in &named {
        assert!(families.contains(name), "{name} is not exported");
    }
    queries_parse(&exprs);
}

/// Each panel's query, after checking that every panel takes the datasource variable.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/usersync.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a datasource variable"
    );
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            p["targets"].as_array().unwrap().clone()
        })
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// The families a daemon exports, from a real scrape once each job has run (families with
/// labels have series once something happened: a request, each job's run).
async fn exported_families() -> std::collections::BTreeSet<String> {
    let test_db = TestDb::migrated().await;
    let daemon = Daemon::start(test_db.runtime_settings_with(&[
        ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
    ]))
    .await;
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let started = Instant::now();
    let scrape = loop {
        let (_, scrape) = daemon.get("/metrics").await;
        let successes = scrape
            .lines()
            .filter(|l| l.starts_with("usersync_last_success_timestamp_seconds{"))
            .count();
        if successes == 3 || started.elapsed() > Duration::from_secs(20) {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    daemon.stop().await.unwrap();
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every query parses: promtool checks them as recording rules.
fn queries_parse(exprs: &[String]) {
    if !tool(
        "the dashboard's queries parse",
        "promtool",
        &["--version"],
        "Debian package prometheus",
    ) {
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: usersync:dashboard_panel_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file =
        std::env::temp_dir().join(format!("usersync-it-{}-dashboard.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run("promtool", &["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
}

/// A Prometheus that scrapes `target` every second and evaluates the alert rules, its files
/// under `dir`; with the address of its web API.
fn start_prometheus(
    dir: &Path,
    target: std::net::SocketAddr,
) -> (std::process::Child, std::net::SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let rules = Path::new(ROOT).join("deploy/prometheus/usersync.rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: usersync\n    static_configs:\n      - targets: ['{target}']\n",
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (the prometheus package)");
    (prometheus, web)
}

/// The first value of an instant query, if Prometheus answers one.
async fn prometheus_query(web: std::net::SocketAddr, q: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let q = q
        .replace('"', "%22")
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace(' ', "%20");
    let path = format!("/api/v1/query?query={q}");
    let mut s = tokio::net::TcpStream::connect(web).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).await.ok()?;
    let body = r.split_once("\r\n\r\n")?.1.to_string();
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|x| x.parse::<f64>().ok())
}
