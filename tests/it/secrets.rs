//! Secrets that must never be printed: random passwords in every form the URL accepts.

use proptest::prelude::*;

use crate::daemon::NEVER;
use crate::property;
use crate::support::{RUNTIME_ROLE, TestDb, usersync};

/// Percent-encoding of everything but unreserved characters.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A libpq key=value value, quoted.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn password() -> impl Strategy<Value = String> {
    let specials = prop::sample::select(vec![
        '/', '?', '@', '\'', ' ', '%', '&', '=', '#', ':', '\\', '"', 'é', 'ß', '中', '🔑',
    ]);
    let letter = prop::sample::select(
        ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .collect::<Vec<_>>(),
    );
    (
        prop::collection::vec(prop_oneof![letter.clone(), specials], 6..16),
        prop::collection::vec(letter, 6..10),
    )
        .prop_map(|(mixed, core)| {
            // A distinctive core, so that finding the password is never a coincidence.
            let core: String = core.into_iter().collect();
            let mixed: String = mixed.into_iter().collect();
            format!("{mixed}{core}Zq")
        })
}

/// Random passwords, in every form the URL accepts, appear nowhere usersync writes: `config`,
/// an error message, a log line at any level, `/readyz`, `/metrics`.
#[test]
fn secrets_never_appear_in_output_logs_or_http() {
    let rt = property::runtime();
    let test_db = rt.block_on(TestDb::migrated());
    let (host, port, dbname) = {
        let url = test_db.runtime_url();
        let rest = url.split('@').nth(1).unwrap().to_string();
        let (hostport, db) = rest.split_once('/').unwrap();
        let (h, p) = hostport.split_once(':').unwrap();
        (h.to_string(), p.to_string(), db.to_string())
    };
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    property::check("secrets", (password(), 0..4usize), |(pw, form)| {
        let url = |port: &str| match form {
            0 => format!(
                "postgres://{RUNTIME_ROLE}:{}@{host}:{port}/{dbname}",
                percent(&pw)
            ),
            1 => format!(
                "postgres://{RUNTIME_ROLE}@{host}:{port}/{dbname}?password={}",
                percent(&pw)
            ),
            2 => format!(
                "host={host} port={port} user={RUNTIME_ROLE} dbname={dbname} password={}",
                quoted(&pw)
            ),
            _ => format!(
                "host={host} port={port} password = {} user={RUNTIME_ROLE} dbname={dbname}",
                quoted(&pw)
            ),
        };
        let leaks = |text: &str| text.contains(&pw) || text.contains(&percent(&pw));
        let good = url(&port);
        let trace = [
            ("DATABASE_URL", good.as_str()),
            ("USERSYNC__LOG__LEVEL", "trace"),
        ];
        let mut seen = Vec::new();
        let (code, stdout, stderr) = usersync(&["config"], &trace);
        prop_assert_eq!(code, 0, "{}", stderr);
        seen.push(("config", stdout + &stderr));
        let (_, stdout, stderr) = usersync(&["check", "--json"], &trace);
        seen.push(("check at trace", stdout + &stderr));
        let (_, stdout, stderr) = usersync(&["users", "list"], &trace);
        seen.push(("users list at trace", stdout + &stderr));
        let refused = url(&closed_port);
        let (code, stdout, stderr) = usersync(
            &["migrate", "status"],
            &[
                ("DATABASE_URL", refused.as_str()),
                ("USERSYNC__LOG__LEVEL", "trace"),
            ],
        );
        prop_assert_eq!(code, 69, "{}", stderr);
        seen.push(("an unreachable database", stdout + &stderr));
        let broken = good.replacen(&port, "not-a-port", 1);
        let (_, stdout, stderr) = usersync(&["config"], &[("DATABASE_URL", broken.as_str())]);
        seen.push(("a URL that does not parse", stdout + &stderr));
        seen.extend(rt.block_on(what_the_daemon_shows(&good)));
        for (place, text) in &seen {
            prop_assert!(!leaks(text), "the password is in {}:\n{}", place, text);
        }
        Ok(())
    });
}

/// The daemon's HTTP answers and its settings' Debug, in process, with `url`.
async fn what_the_daemon_shows(url: &str) -> Vec<(&'static str, String)> {
    let settings = usersync::config::Settings::load(&usersync::config::Sources {
        file: None,
        env: vec![
            ("DATABASE_URL".into(), url.to_string()),
            ("USERSYNC__INTEGRITY__SCHEDULE".into(), NEVER.into()),
            ("USERSYNC__SYNC__SCHEDULE".into(), NEVER.into()),
        ],
    })
    .unwrap();
    let debug = format!("{settings:?}");
    let daemon = crate::daemon::Daemon::start(settings).await;
    let seen = vec![
        ("settings' Debug", debug),
        ("/readyz", daemon.get("/readyz").await.1),
        ("/metrics", daemon.get("/metrics").await.1),
    ];
    daemon.stop().await.unwrap();
    seen
}
