//! The findings' history through the real daemon: a finding appears, grows and clears; then
//! `usersync check --history`, `/status` and the status page in headless Chromium (the 7-day
//! line drawn inline, when the current finding first appeared) tell that story.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::Daemon;
use crate::findings::{DELETE_ORPHAN_ORDERS, five_users_with_an_order, reported};
use crate::status::chromium;
use crate::support::{TestDb, tool, usersync};

const CHECK: &str = "user_id_column_orphans";

/// Deletes, through the triggers, one user who has an order: one more order names no user.
async fn orphan_one_order(admin: &tokio_postgres::Client) {
    admin
        .batch_execute(
            "DELETE FROM auth.users WHERE id = (SELECT o.user_id FROM public.orders o
                 JOIN auth.users u ON u.id = o.user_id LIMIT 1)",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_that_appears_grows_and_clears_is_told_by_check_status_and_the_page() {
    let browser = tool(
        "the findings' history on the status page",
        "chromium",
        &["--version"],
        "Debian package chromium",
    );
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let settings = db
        .with_orders(&[
            ("USERSYNC__SYNC__SCHEDULE", "* * * * * *"),
            ("USERSYNC__INTEGRITY__SCHEDULE", "* * * * * *"),
        ])
        .await;
    five_users_with_an_order(&admin).await;
    let daemon = Daemon::start(settings).await;
    let daemons = std::slice::from_ref(&daemon);
    reported(daemons, CHECK, 0.0, Duration::ZERO).await;
    orphan_one_order(&admin).await;
    reported(daemons, CHECK, 1.0, Duration::from_secs(2)).await;
    orphan_one_order(&admin).await;
    reported(daemons, CHECK, 2.0, Duration::from_secs(2)).await;

    // While it stands: the page draws it and says since when.
    let line = line_of(&daemon).await;
    assert!(line["first_seen"].is_f64(), "{line}");
    let values: Vec<i64> = line["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_i64().unwrap())
        .collect();
    assert_eq!(values, [1, 2], "{line}");
    let url = format!("http://127.0.0.1:{}/", daemon.addr.port());
    if browser {
        let dom = chromium(&["--dump-dom"], &url);
        assert!(dom.contains("<svg"), "the line is drawn: {dom}");
        assert!(dom.contains("first seen"), "since when: {dom}");
        assert!(
            dom.contains(&format!("aria-label=\"{CHECK} over the last 7 days\"")),
            "{dom}"
        );
    }

    // It clears.
    admin.batch_execute(DELETE_ORPHAN_ORDERS).await.unwrap();
    reported(daemons, CHECK, 0.0, Duration::ZERO).await;
    // The status JSON: the line ends at zero, nothing current.
    let line = line_of(&daemon).await;
    assert!(line["first_seen"].is_null(), "{line}");
    assert_eq!(line["points"].as_array().unwrap().last().unwrap()[1], 0);
    if browser {
        let dom = chromium(&["--dump-dom"], &url);
        assert!(dom.contains("now clear"), "{dom}");
    }
    daemon.stop().await.unwrap();

    check_history_tells_it(&db);
}

/// The check's line in `/status`.
async fn line_of(daemon: &Daemon) -> Value {
    let (_, status) = daemon.get("/status").await;
    let status: Value = serde_json::from_str(&status).unwrap();
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["check"] == CHECK)
        .unwrap_or_else(|| panic!("{CHECK} in {status}"))
        .clone()
}

/// `check --history`: each change, in order, in text and JSON alike; a bad `--since` is a
/// usage error naming it.
fn check_history_tells_it(db: &TestDb) {
    let url = db.runtime_url();
    let env = [("DATABASE_URL", url.as_str())];
    let (code, json, stderr) = usersync(&["check", "--history", "--since", "1h", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let changes: Vec<Value> = serde_json::from_str(&json).unwrap();
    let steps: Vec<(i64, i64)> = changes
        .iter()
        .filter(|c| c["check"] == CHECK)
        .map(|c| {
            (
                c["previous"].as_i64().unwrap(),
                c["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, [(0, 1), (1, 2), (2, 0)], "{json}");
    let (code, text, _) = usersync(&["check", "--history"], &env);
    assert_eq!(code, 0);
    for (from, to) in steps {
        assert!(
            text.contains(&format!("{CHECK:<28} {from} -> {to}")),
            "{text}"
        );
    }
    let (code, _, stderr) = usersync(&["check", "--history", "--since", "yesterday"], &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--since"), "{stderr}");
}
