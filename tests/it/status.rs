//! The status page, rendered by a real browser (headless Chromium): what on-call looks for is on
//! it, no user id is without the token, and a screenshot is kept as an artifact.

use std::process::Command;
use std::time::Duration;

use crate::daemon::{Daemon, eventually, users_without_trigger};
use crate::support::{TestDb, tool};

const TOKEN: &str = "status-token-0123456789abcdef";

/// Runs headless Chromium with `args` and the page's URL; its stdout.
pub fn chromium(args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("usersync-it-{}-chromium", std::process::id()));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_on_call_what_drifted_and_how_to_fix_it() {
    if !tool(
        "the status page in a browser",
        "chromium",
        &["--version"],
        "Debian package chromium",
    ) {
        return;
    }
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let daemon = drifted(&db).await;
    let ids: Vec<String> = admin
        .query("SELECT id::text FROM auth.users", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // What the browser shows.
    let url = format!("http://127.0.0.1:{}/", daemon.addr.port());
    let dom = chromium(&["--dump-dom"], &url);
    for seen in [
        "usersync ",
        "Users missing a profile",
        "Jobs",
        "sweep",
        "repair",
        "integrity",
        "Integrity findings",
        "missing_profile",
        "foreign_key_not_valid",
        "VALIDATE CONSTRAINT",
        "Repair queue",
        "23514",
        "/metrics",
        "/readyz",
        "RUNBOOK.md",
    ] {
        assert!(dom.contains(seen), "{seen} is not on the page:\n{dom}");
    }
    for id in &ids {
        assert!(
            !dom.contains(id.as_str()),
            "a user id without the token: {id}"
        );
    }
    assert!(!dom.contains("@example.test"), "an e-mail on the page");
    wording_agrees(&dom);
    screenshot(&url);
    json_twin(&daemon, &ids).await;
    daemon.stop().await.unwrap();
}

/// A daemon over drift to show, once every job ran: profiles that cannot be created (a CHECK
/// the application added), a NOT VALID foreign key with an orphan.
async fn drifted(db: &TestDb) -> Daemon {
    let admin = db.admin().await;
    admin
        .batch_execute(
            "ALTER TABLE public.user_profiles ADD CONSTRAINT no_example_names
                 CHECK (email NOT LIKE 'd%') NOT VALID;
             CREATE TABLE public.notes (owner uuid);
             INSERT INTO public.notes VALUES (gen_random_uuid());
             ALTER TABLE public.notes ADD FOREIGN KEY (owner) REFERENCES auth.users (id)
                 ON DELETE CASCADE NOT VALID;
             GRANT SELECT ON public.notes TO usersync_runtime;",
        )
        .await
        .unwrap();
    users_without_trigger(&admin, 7).await;
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__SYNC__SCHEDULE", "*/2 * * * * *"),
        ("USERSYNC__SYNC__REPAIR_SCHEDULE", "*/2 * * * * *"),
        ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
        ("USERSYNC__INTEGRITY__GRACE_PERIOD_SECS", "0"),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let (_, body) = daemon.get("/status").await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            status["jobs"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().all(|j| !j["last_run"].is_null()))
                && status["findings"].as_array().is_some_and(|f| !f.is_empty())
                && status["repair_queue"]["depth"].as_i64() == Some(7)
        })
        .await,
        "every job ran: {}",
        daemon.get("/status").await.1
    );
    daemon
}

/// Words that cannot contradict each other: a full scan ran, so its row says so; the rows
/// leave the findings' count to their panel; each job says when it runs next; no "1 findings".
fn wording_agrees(dom: &str) {
    assert!(!dom.contains("no full scan recorded"), "{dom}");
    assert!(
        dom.contains("full scan, because"),
        "the full scan's row: {dom}"
    );
    assert!(!dom.contains("No findings"), "findings are shown: {dom}");
    assert_eq!(
        dom.matches("<small>next in ").count(),
        4,
        "each job's next run: {dom}"
    );
    let words: Vec<&str> = dom.split(|c: char| !c.is_alphanumeric()).collect();
    for pair in words.windows(2) {
        if pair[0] == "1" {
            assert!(
                !["findings", "users", "changes", "days", "errors"].contains(&pair[1]),
                "\"1 {}\" on the page",
                pair[1]
            );
        }
    }
}

/// A phone-sized screenshot, kept for the README and the CI artifacts.
fn screenshot(url: &str) {
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=412,1500",
        ],
        url,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "status page screenshot: {}",
        shot.display()
    );
}

/// The JSON twin: ids only with the token.
async fn json_twin(daemon: &Daemon, ids: &[String]) {
    let (_, plain) = daemon.get("/status").await;
    assert!(ids.iter().all(|id| !plain.contains(id.as_str())), "{plain}");
    let auth = format!("Bearer {TOKEN}");
    let (status, _, detailed) = daemon
        .request("GET", "/status", &[("Authorization", &auth)])
        .await;
    assert_eq!(status, 200);
    assert!(
        ids.iter().any(|id| detailed.contains(id.as_str())),
        "{detailed}"
    );
    assert!(
        detailed.contains("no_example_names"),
        "the errors, with the token"
    );
}
