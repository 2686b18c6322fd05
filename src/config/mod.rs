//! Layered configuration: raw keys from defaults, file and environment, validated into
//! [`Settings`] before anything connects.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod raw;
mod url;

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
    pub batch_size: u32,
    pub workers: u32,
    pub include_anonymous: bool,
    /// Profiles follow e-mail changes in auth.users.
    pub follow_email: bool,
    /// What a soft-deleted user's profile becomes.
    pub soft_deleted: crate::sync::policy::SoftDeleted,
}

impl SyncSettings {
    /// The lifecycle policies this configuration asks for (`migrate up` writes them).
    pub fn policy(&self) -> crate::sync::policy::Policy {
        crate::sync::policy::Policy {
            include_anonymous: self.include_anonymous,
            follow_email: self.follow_email,
            soft_deleted: self.soft_deleted,
        }
    }
}

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

    fn validate(raw: Raw) -> Result<Settings> {
        // tokio-postgres knows sslmode only up to `require`: usersync reads it itself.
        let (url, url_mode) = url::take_sslmode(raw.database.url.expose());
        // The parser's message is kept out: it could quote part of the URL.
        let pg = tokio_postgres::Config::from_str(&url).map_err(|_| {
            Error::config(
                "database.url",
                "not a PostgreSQL URL (postgres://user:password@host:port/dbname, \
                 special characters in the password percent-encoded) or key=value string",
            )
        })?;
        if pg.get_hosts().is_empty() {
            return Err(Error::config("database.url", "names no host"));
        }
        let modes = "disable, prefer, require, verify-ca or verify-full";
        let url_mode = match url_mode {
            None => None,
            Some(m) => Some(SslMode::parse(&m).ok_or_else(|| {
                Error::config("database.url", format!("sslmode={m:?} is not {modes}"))
            })?),
        };
        let key_mode = match raw.database.sslmode.trim() {
            "" => None,
            m => Some(SslMode::parse(m).ok_or_else(|| {
                Error::config("database.sslmode", format!("{m:?} is not {modes}"))
            })?),
        };
        let sslmode = match (key_mode, url_mode) {
            (Some(key), Some(in_url)) if key != in_url => {
                return Err(Error::config(
                    "database.sslmode",
                    format!(
                        "{:?} conflicts with sslmode={} in database.url; set one of them",
                        key.as_str(),
                        in_url.as_str()
                    ),
                ));
            }
            (Some(mode), _) | (None, Some(mode)) => mode,
            // libpq's default.
            (None, None) => SslMode::Prefer,
        };
        let ca_cert = match raw.database.ca_cert.trim() {
            "" => None,
            path => {
                let path = std::path::PathBuf::from(path);
                if !path.is_file() {
                    return Err(Error::config(
                        "database.ca_cert",
                        format!("{}: no such file", path.display()),
                    ));
                }
                Some(path)
            }
        };
        if matches!(sslmode, SslMode::VerifyFull | SslMode::VerifyCa) && ca_cert.is_none() {
            return Err(Error::config(
                "database.ca_cert",
                format!(
                    "sslmode {} needs the CA certificate file (hosted Supabase: the project's CA)",
                    sslmode.as_str()
                ),
            ));
        }
        let database = DatabaseSettings {
            pg,
            sslmode,
            ca_cert,
            pool_size: in_range("database.pool_size", raw.database.pool_size, 1, 1000)? as usize,
            connect_timeout: Duration::from_secs(in_range(
                "database.connect_timeout_secs",
                raw.database.connect_timeout_secs,
                1,
                300,
            )? as u64),
            timeouts: Timeouts {
                statement: secs(
                    "database.statement_timeout_secs",
                    raw.database.statement_timeout_secs,
                    1,
                    3600,
                )?,
                lock: secs(
                    "database.lock_timeout_secs",
                    raw.database.lock_timeout_secs,
                    1,
                    3600,
                )?,
                scan: secs(
                    "database.scan_timeout_secs",
                    raw.database.scan_timeout_secs,
                    1,
                    86_400,
                )?,
            },
        };
        let sync = SyncSettings {
            schedule: cron("sync.schedule", &raw.sync.schedule)?,
            repair_schedule: cron("sync.repair_schedule", &raw.sync.repair_schedule)?,
            batch_size: in_range("sync.batch_size", raw.sync.batch_size, 1, 100_000)? as u32,
            workers: in_range("sync.workers", raw.sync.workers, 1, 64)? as u32,
            include_anonymous: raw.sync.include_anonymous,
            follow_email: raw.sync.follow_email,
            soft_deleted: crate::sync::policy::SoftDeleted::parse(raw.sync.soft_deleted.trim())
                .ok_or_else(|| {
                    Error::config(
                        "sync.soft_deleted",
                        format!("{:?} is not scrub, delete or keep", raw.sync.soft_deleted),
                    )
                })?,
        };
        if sync.workers as usize > database.pool_size {
            return Err(Error::config(
                "sync.workers",
                format!(
                    "{} workers need as many connections, but database.pool_size is {}",
                    sync.workers, database.pool_size
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log.level)
            .map_err(|e| Error::config("log.level", format!("not a level or filter: {e}")))?;
        let integrity = IntegritySettings {
            schedule: cron("integrity.schedule", &raw.integrity.schedule)?,
            probe_schedule: match raw.integrity.probe_schedule.trim() {
                "" => None,
                expr => Some(cron("integrity.probe_schedule", expr)?),
            },
            grace_period: Duration::from_secs(in_range(
                "integrity.grace_period_secs",
                raw.integrity.grace_period_secs,
                0,
                86_400,
            )? as u64),
            queue_stale_after: Duration::from_secs(in_range(
                "integrity.queue_stale_secs",
                raw.integrity.queue_stale_secs,
                1,
                604_800,
            )? as u64),
            queue_max_attempts: in_range(
                "integrity.queue_max_attempts",
                raw.integrity.queue_max_attempts,
                1,
                1000,
            )? as i32,
            user_id_columns: raw
                .integrity
                .user_id_columns
                .iter()
                .map(|c| user_id_column(c))
                .collect::<Result<_>>()?,
        };
        let http = HttpSettings {
            listen: raw.http.listen.parse().map_err(|e| {
                Error::config(
                    "http.listen",
                    format!("{:?} is not an address:port: {e}", raw.http.listen),
                )
            })?,
            readiness_timeout: secs(
                "http.readiness_timeout_secs",
                raw.http.readiness_timeout_secs,
                1,
                60,
            )?,
            max_connections: in_range("http.max_connections", raw.http.max_connections, 1, 100_000)?
                as usize,
            header_read_timeout: secs(
                "http.header_read_timeout_secs",
                raw.http.header_read_timeout_secs,
                1,
                300,
            )?,
            write_timeout: secs(
                "http.write_timeout_secs",
                raw.http.write_timeout_secs,
                1,
                300,
            )?,
        };
        let token = raw.api.token.expose().trim();
        if !token.is_empty() && token.len() < 16 {
            return Err(Error::config("api.token", "is shorter than 16 characters"));
        }
        let api = ApiSettings {
            token: (!token.is_empty()).then(|| Secret::new(token)),
            // 0: half the pool.
            max_db_connections: match in_range(
                "api.max_db_connections",
                raw.api.max_db_connections,
                0,
                1000,
            )? {
                0 => (database.pool_size / 2).max(1),
                n => n as usize,
            },
            timeout: secs("api.timeout_secs", raw.api.timeout_secs, 1, 300)?,
        };
        if raw.api.max_db_connections > 0 && api.max_db_connections >= database.pool_size {
            return Err(Error::config(
                "api.max_db_connections",
                format!(
                    "{} leaves none of database.pool_size ({}) for the jobs and readiness",
                    api.max_db_connections, database.pool_size
                ),
            ));
        }
        let daemon = DaemonSettings {
            shutdown_grace: Duration::from_secs(in_range(
                "daemon.shutdown_grace_secs",
                raw.daemon.shutdown_grace_secs,
                1,
                3600,
            )? as u64),
        };
        let log = LogSettings {
            level: raw.log.level.clone(),
            format: raw.log.format,
        };
        Ok(Settings {
            database,
            sync,
            integrity,
            http,
            api,
            daemon,
            log,
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

fn user_id_column(text: &str) -> Result<UserIdColumn> {
    let parts: Vec<&str> = text.split('.').collect();
    match parts.as_slice() {
        [schema, table, column] if parts.iter().all(|p| !p.is_empty()) => Ok(UserIdColumn {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
        }),
        _ => Err(Error::config(
            "integrity.user_id_columns",
            format!("{text:?} is not schema.table.column"),
        )),
    }
}

fn secs(key: &str, value: i64, min: i64, max: i64) -> Result<Duration> {
    Ok(Duration::from_secs(in_range(key, value, min, max)? as u64))
}

fn in_range(key: &str, value: i64, min: i64, max: i64) -> Result<i64> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::config(
            key,
            format!("{value} is out of range {min}..={max}"),
        ))
    }
}

/// Checked with the parser and options tokio-cron-scheduler uses: six fields, seconds first.
fn cron(key: &str, expr: &str) -> Result<String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map(|_| expr.to_string())
        .map_err(|e| {
            Error::config(
                key,
                format!("{expr:?} is not a cron expression with seconds (sec min hour day month weekday): {e}"),
            )
        })
}

#[cfg(test)]
mod tests;
