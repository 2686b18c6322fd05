//! The raw keys, exactly as in `config/usersync.toml`, from the layered sources: built-in
//! defaults, the file, `DATABASE_URL`, `USERSYNC__SECTION__KEY`. Unknown keys are rejected
//! here, naming the key; [`super::Settings`] validates what is left.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DEFAULTS, LogFormat, Secret};
use crate::error::{Error, Result};

// The raw keys, exactly as in config/usersync.toml. Unknown keys are rejected here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) database: RawDatabase,
    pub(super) sync: RawSync,
    pub(super) integrity: RawIntegrity,
    pub(super) http: RawHttp,
    pub(super) api: RawApi,
    pub(super) daemon: RawDaemon,
    pub(super) log: RawLog,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: String,
    pub(super) readiness_timeout_secs: u64,
    pub(super) max_connections: usize,
    pub(super) header_read_timeout_secs: u64,
    pub(super) write_timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) token: Secret,
    pub(super) max_db_connections: usize,
    pub(super) timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) shutdown_grace_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegrity {
    pub(super) schedule: String,
    pub(super) probe_schedule: String,
    pub(super) grace_period_secs: u64,
    pub(super) queue_stale_secs: u64,
    pub(super) queue_max_attempts: i32,
    pub(super) user_id_columns: Vec<String>,
    pub(super) history_days: u32,
    pub(super) history_max_rows: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: Secret,
    /// "" when the URL's `sslmode` (or libpq's default, prefer) applies.
    pub(super) sslmode: String,
    pub(super) ca_cert: String,
    pub(super) pool_size: usize,
    pub(super) connect_timeout_secs: u64,
    pub(super) statement_timeout_secs: u64,
    pub(super) lock_timeout_secs: u64,
    pub(super) scan_timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) schedule: String,
    pub(super) repair_schedule: String,
    pub(super) full_scan_schedule: String,
    pub(super) batch_size: u32,
    pub(super) workers: u32,
    pub(super) include_anonymous: bool,
    pub(super) follow_email: bool,
    pub(super) soft_deleted: String,
    pub(super) fill_from_metadata: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: String,
    pub(super) format: LogFormat,
}

/// Where configuration comes from besides the built-in defaults.
#[derive(Clone, Debug, Default)]
pub struct Sources<'a> {
    /// `--config FILE`.
    pub file: Option<&'a Path>,
    /// The process environment as (name, value) pairs; tests pass their own.
    pub env: Vec<(String, String)>,
}

impl Sources<'_> {
    pub fn from_process(file: Option<&Path>) -> Sources<'_> {
        Sources {
            file,
            env: std::env::vars().collect(),
        }
    }
}

const ENV_PREFIX: &str = "USERSYNC__";

/// Defaults, then the file, then `DATABASE_URL`, then `USERSYNC__SECTION__KEY`: the raw keys,
/// not yet validated.
pub(super) fn load(sources: &Sources<'_>) -> Result<Raw> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
    if let Some(path) = sources.file {
        if !path.is_file() {
            return Err(Error::ConfigSource(format!(
                "{}: no such file",
                path.display()
            )));
        }
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let env_url = sources.env.iter().rev().find(|(k, _)| k == "DATABASE_URL");
    if let Some((_, url)) = env_url {
        builder = builder
            .set_override("database.url", url.as_str())
            .map_err(map_config_error)?;
    }
    // Applied by hand rather than with config::Environment so that an unknown variable
    // is an error naming it, and a value is typed by the key it sets.
    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let typed = env_value(&key, value).map_err(|message| Error::Config {
            key: name.clone(),
            message,
        })?;
        builder = builder.set_override(key, typed).map_err(map_config_error)?;
    }
    let raw: Raw = builder
        .build()
        .map_err(map_config_error)?
        .try_deserialize()
        .map_err(map_config_error)?;
    Ok(raw)
}

/// Types an environment value by the key it sets, so "8" becomes a number for pool_size.
fn env_value(key: &str, value: &str) -> std::result::Result<config::Value, String> {
    let defaults: toml::Table = DEFAULTS.parse().expect("built-in defaults parse");
    let mut path = key.split('.');
    let (Some(section), Some(field), None) = (path.next(), path.next(), path.next()) else {
        return Err("unknown key: expected USERSYNC__SECTION__KEY".into());
    };
    let default = defaults
        .get(section)
        .and_then(|s| s.get(field))
        .ok_or_else(|| format!("unknown key {section}.{field}"))?;
    Ok(match default {
        toml::Value::Integer(_) => value
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{value:?} is not an integer"))?
            .into(),
        // A list from the environment is comma-separated.
        toml::Value::Array(_) => value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| config::Value::from(v.to_string()))
            .collect::<Vec<_>>()
            .into(),
        toml::Value::Boolean(_) => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true.into(),
            "false" | "0" | "no" | "off" => false.into(),
            _ => return Err(format!("{value:?} is not a boolean")),
        },
        _ => value.into(),
    })
}

fn map_config_error(e: config::ConfigError) -> Error {
    use config::ConfigError as C;
    match e {
        C::Type {
            unexpected,
            expected,
            key,
            ..
        } => Error::Config {
            key: key.unwrap_or_else(|| "?".into()),
            message: format!("expected {expected}, found {unexpected}"),
        },
        C::At {
            error,
            key: Some(key),
            ..
        } => match *error {
            C::Message(m) => Error::Config { key, message: m },
            other => Error::Config {
                key,
                message: other.to_string(),
            },
        },
        C::NotFound(key) => Error::Config {
            key,
            message: "missing".into(),
        },
        C::FileParse { uri, cause } => Error::ConfigSource(format!(
            "{}: {}",
            uri.unwrap_or_else(|| "built-in defaults".into()),
            cause.to_string().lines().next().unwrap_or_default()
        )),
        C::Message(m) => Error::ConfigSource(m),
        other => Error::ConfigSource(other.to_string()),
    }
}
