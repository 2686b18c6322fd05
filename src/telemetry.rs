//! Logs go to stderr through tracing: text for a terminal, JSON for journald and Kubernetes.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(settings: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(filter(&settings.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Text => builder.with_ansi(stderr_is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests calling commands in one process) keeps the first subscriber.
    let _ = result;
}

/// `log.level` as a filter: a bare level is usersync's, with its dependencies (the scheduler,
/// the pool, the HTTP server) kept to warnings and errors; directives are taken as written.
fn filter(level: &str) -> String {
    let level = level.trim();
    match level.to_ascii_lowercase().as_str() {
        "error" => "error".into(),
        "warn" | "info" | "debug" | "trace" => format!("warn,usersync={level}"),
        _ => level.into(),
    }
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_level_keeps_dependencies_at_warn() {
        assert_eq!(super::filter("info"), "warn,usersync=info");
        assert_eq!(super::filter("error"), "error");
        assert_eq!(
            super::filter("usersync=debug,hyper=info"),
            "usersync=debug,hyper=info"
        );
    }
}
