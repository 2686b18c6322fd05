//! Unit tests of the configuration.

use super::*;

#[test]
fn built_in_defaults_are_valid_settings() {
    let s = Settings::load(&Sources::default()).unwrap();
    assert_eq!(s.database.pool_size, 8);
    assert_eq!(s.sync.batch_size, 10_000);
    assert_eq!(s.log.format, LogFormat::Text);
}

#[test]
fn the_urls_sslmode_is_honoured_and_a_conflict_is_named() {
    let load = |env: &[(&str, &str)]| {
        Settings::load(&Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    };
    let url = "postgres://u:pw@db.example:5432/postgres?sslmode=require";
    let s = load(&[("DATABASE_URL", url)]).unwrap();
    assert_eq!(s.database.sslmode, SslMode::Require);
    let s = load(&[("DATABASE_URL", "host=h user=u sslmode=disable")]).unwrap();
    assert_eq!(s.database.sslmode, SslMode::Disable);
    let s = load(&[("DATABASE_URL", "postgres://u@h/db")]).unwrap();
    assert_eq!(s.database.sslmode, SslMode::Prefer);
    let err = load(&[
        ("DATABASE_URL", url),
        ("USERSYNC__DATABASE__SSLMODE", "disable"),
    ])
    .unwrap_err();
    assert_eq!(err.exit_code(), crate::error::exit::CONFIG);
    let message = err.to_string();
    assert!(
        message.contains("database.sslmode") && message.contains("sslmode=require"),
        "{message}"
    );
    let err = load(&[("DATABASE_URL", "postgres://u@h/db?sslmode=verify-ca")]).unwrap_err();
    assert!(err.to_string().contains("database.ca_cert"), "{err}");
}

#[test]
fn debug_of_the_settings_prints_no_secret() {
    let s = Settings::load(&Sources {
        file: None,
        env: vec![
            (
                "DATABASE_URL".into(),
                "postgres://u:hunter2-secret@h/db".into(),
            ),
            (
                "USERSYNC__API__TOKEN".into(),
                "token-0123456789-secret".into(),
            ),
        ],
    })
    .unwrap();
    let debug = format!("{s:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("token-0123"),
        "{debug}"
    );
    let shown = s.to_redacted_toml();
    assert!(
        !shown.contains("hunter2") && !shown.contains("token-0123"),
        "{shown}"
    );
    assert!(shown.contains("postgres://u:***@h:5432/db"), "{shown}");
}
