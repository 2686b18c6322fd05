//! Layered configuration: raw keys from defaults, file and environment, validated into
//! [`Settings`] before anything connects.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod policy;
mod raw;
mod sections;
mod url;

pub use policy::{Policy, SoftDeleted};

use raw::Raw;
pub use raw::Sources;

pub use url::{Secret, SslMode, render as render_url};

/// `config/usersync.toml`, built in: every key with its default.
pub const DEFAULTS: &str = include_str!("../../config/usersync.toml");

/// What usersync runs with, every value checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub sync: SyncSettings,
    pub integrity: IntegritySettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub daemon: DaemonSettings,
    pub log: LogSettings,
    raw: Raw,
}

#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub listen: std::net::SocketAddr,
    /// What `/readyz` waits for the database before it answers 503.
    pub readiness_timeout: Duration,
    /// Most connections served at once (more are kept for health checks: `http::conn`).
    pub max_connections: usize,
    /// Time a client has to send its request head.
    pub header_read_timeout: Duration,
    /// Time a response write may make no progress before the connection is closed.
    pub write_timeout: Duration,
}

/// The users API; off without a token.
#[derive(Clone)]
pub struct ApiSettings {
    pub token: Option<Secret>,
    /// Most pooled connections API requests hold at once: the rest stay for the jobs and
    /// readiness, however many clients call.
    pub max_db_connections: usize,
    /// What one API request may take in the database, waiting for a connection included.
    pub timeout: Duration,
}

impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("token", &self.token)
            .field("max_db_connections", &self.max_db_connections)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug)]
pub struct IntegritySettings {
    pub schedule: String,
    /// The rolled-back sign-up and delete probe, when set: it writes to auth.users, so the
    /// application's own triggers there fire with it. Empty: never.
    pub probe_schedule: Option<String>,
    /// Users younger than this are not reported as missing a profile.
    pub grace_period: Duration,
    /// A repair queue item waiting longer than this is a warning.
    pub queue_stale_after: Duration,
    /// An item that failed this many repair attempts is an error.
    pub queue_max_attempts: i32,
    /// Columns holding a user id with no foreign key.
    pub user_id_columns: Vec<UserIdColumn>,
    /// Days each check's history is kept (its latest value always is).
    pub history_days: u32,
    /// Most rows of history kept.
    pub history_max_rows: i64,
}

/// `schema.table.column` of a column that holds user ids without a foreign key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIdColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl std::fmt::Display for UserIdColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

#[derive(Clone)]
pub struct DatabaseSettings {
    /// Parsed connection parameters; holds the password, so it is never printed.
    pub pg: tokio_postgres::Config,
    pub sslmode: SslMode,
    /// CA certificate (PEM) that verify-full checks the server against.
    pub ca_cert: Option<std::path::PathBuf>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
}

/// Server-side limits of every usersync session ([`crate::db::pin_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Any statement: a batch, a catalog read, an API query (which has its own, shorter one).
    pub statement: Duration,
    /// Waiting for a lock, e.g. behind a `LOCK TABLE` or a long migration.
    pub lock: Duration,
    /// A statement that reads a whole table: detection, integrity counts.
    pub scan: Duration,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("target", &target(&self.pg))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct SyncSettings {
    pub schedule: String,
    pub repair_schedule: String,
    /// The full scan that runs whatever the statistics say (crate::sync::watch).
    pub full_scan_schedule: String,
    pub batch_size: u32,
    pub workers: u32,
    pub include_anonymous: bool,
    /// Profiles follow e-mail changes in auth.users.
    pub follow_email: bool,
    /// What a soft-deleted user's profile becomes.
    pub soft_deleted: SoftDeleted,
    /// Empty names and pictures filled when the metadata gains them.
    pub fill_from_metadata: bool,
    /// How long unseen changes must stay counted before they are due for a full scan
    /// (`sync::settle`): not a key, PostgreSQL's flush interval; tests shorten it.
    pub statistics_horizon: std::time::Duration,
}

impl SyncSettings {
    /// The lifecycle policies this configuration asks for (`migrate up` writes them).
    pub fn policy(&self) -> Policy {
        Policy {
            include_anonymous: self.include_anonymous,
            follow_email: self.follow_email,
            soft_deleted: self.soft_deleted,
            fill_from_metadata: self.fill_from_metadata,
        }
    }
}

/// How long a backend may keep statistics it could not flush (PostgreSQL's
/// `PGSTAT_IDLE_INTERVAL`, ten seconds), and a second more: unseen changes must stay counted
/// this long before they are due for a full scan (`sync::settle`). Not a configuration key, as
/// it is PostgreSQL's; tests whose writers flush and leave before a cycle set
/// `SyncSettings::statistics_horizon` to zero.
pub const STATISTICS_HORIZON: std::time::Duration = std::time::Duration::from_secs(11);

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Defaults, then the file, then `DATABASE_URL`, then `USERSYNC__SECTION__KEY`.
    pub fn load(sources: &Sources<'_>) -> Result<Settings> {
        Settings::validate(raw::load(sources)?)
    }

    /// Each section checked on its own (`TryFrom` in `sections`), then what spans sections.
    fn validate(raw: Raw) -> Result<Settings> {
        let database = DatabaseSettings::try_from(&raw.database)?;
        let sync = SyncSettings::try_from(&raw.sync)?;
        if sync.workers as usize > database.pool_size {
            return Err(Error::config(
                "sync.workers",
                format!(
                    "{} workers need as many connections, but database.pool_size is {}",
                    sync.workers, database.pool_size
                ),
            ));
        }
        let api = ApiSettings::try_from((&raw.api, database.pool_size))?;
        Ok(Settings {
            integrity: IntegritySettings::try_from(&raw.integrity)?,
            http: HttpSettings::try_from(&raw.http)?,
            daemon: DaemonSettings::try_from(&raw.daemon)?,
            log: LogSettings::try_from(&raw.log)?,
            database,
            sync,
            api,
            raw,
        })
    }

    /// These settings pointed at the demo's database: plain TCP, a sweep every 10 seconds,
    /// the users API on with `token`.
    pub fn for_demo(&self, url: &str, token: &str) -> Result<Settings> {
        let mut raw = self.raw.clone();
        raw.database.url = Secret::new(url);
        raw.database.sslmode = "disable".into();
        raw.database.ca_cert = String::new();
        raw.sync.schedule = "*/10 * * * * *".into();
        raw.api.token = Secret::new(token);
        Settings::validate(raw)
    }

    /// The effective configuration as TOML: the database URL shown from the parsed
    /// connection settings with the password as `***` (never by editing the string), the
    /// token as `***`. Secrets serialize as `***` whatever happens here.
    pub fn to_redacted_toml(&self) -> String {
        let mut table = toml::Table::try_from(&self.raw).expect("configuration serializes");
        if let Some(toml::Value::Table(database)) = table.get_mut("database") {
            database.insert(
                "url".into(),
                render_url(&self.database.pg, self.database.sslmode).into(),
            );
        }
        toml::to_string_pretty(&table).expect("configuration serializes")
    }
}

/// host:port list of a connection config, for messages. Never includes the password.
pub fn target(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
