//! Each raw section checked into its settings: ranges, cron expressions, the URL and its TLS
//! mode, the token. An error names the key and what is wrong with it.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use super::raw::{RawApi, RawDaemon, RawDatabase, RawHttp, RawIntegrity, RawLog, RawSync};
use super::{
    ApiSettings, DaemonSettings, DatabaseSettings, HttpSettings, IntegritySettings, LogSettings,
    Secret, SslMode, SyncSettings, Timeouts, UserIdColumn, url,
};
use crate::error::{Error, Result};

/// `value` when it lies in `range`, else an error naming `key`.
fn ranged<T: PartialOrd + Display + Copy>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Error::config(
            key,
            format!(
                "{value} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Seconds in `range`, as a duration.
fn secs(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<Duration> {
    ranged(key, value, range).map(Duration::from_secs)
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

impl TryFrom<&RawDatabase> for DatabaseSettings {
    type Error = Error;

    fn try_from(raw: &RawDatabase) -> Result<Self> {
        // tokio-postgres knows sslmode only up to `require`: usersync reads it itself.
        let (url, url_mode) = url::take_sslmode(raw.url.expose());
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
        let sslmode = sslmode(url_mode, &raw.sslmode)?;
        let ca_cert = match raw.ca_cert.trim() {
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
        Ok(DatabaseSettings {
            pg,
            sslmode,
            ca_cert,
            pool_size: ranged("database.pool_size", raw.pool_size, 1..=1000)?,
            connect_timeout: secs(
                "database.connect_timeout_secs",
                raw.connect_timeout_secs,
                1..=300,
            )?,
            timeouts: Timeouts {
                statement: secs(
                    "database.statement_timeout_secs",
                    raw.statement_timeout_secs,
                    1..=3600,
                )?,
                lock: secs(
                    "database.lock_timeout_secs",
                    raw.lock_timeout_secs,
                    1..=3600,
                )?,
                scan: secs(
                    "database.scan_timeout_secs",
                    raw.scan_timeout_secs,
                    1..=86_400,
                )?,
            },
        })
    }
}

/// The URL's `sslmode` and `database.sslmode` must agree; when neither says, libpq's default.
fn sslmode(in_url: Option<String>, key: &str) -> Result<SslMode> {
    let modes = "disable, prefer, require, verify-ca or verify-full";
    let in_url = match in_url {
        None => None,
        Some(m) => Some(SslMode::parse(&m).ok_or_else(|| {
            Error::config("database.url", format!("sslmode={m:?} is not {modes}"))
        })?),
    };
    let in_key =
        match key.trim() {
            "" => None,
            m => Some(SslMode::parse(m).ok_or_else(|| {
                Error::config("database.sslmode", format!("{m:?} is not {modes}"))
            })?),
        };
    match (in_key, in_url) {
        (Some(key), Some(url)) if key != url => Err(Error::config(
            "database.sslmode",
            format!(
                "{:?} conflicts with sslmode={} in database.url; set one of them",
                key.as_str(),
                url.as_str()
            ),
        )),
        (Some(mode), _) | (None, Some(mode)) => Ok(mode),
        (None, None) => Ok(SslMode::Prefer),
    }
}

impl TryFrom<&RawSync> for SyncSettings {
    type Error = Error;

    fn try_from(raw: &RawSync) -> Result<Self> {
        Ok(SyncSettings {
            schedule: cron("sync.schedule", &raw.schedule)?,
            repair_schedule: cron("sync.repair_schedule", &raw.repair_schedule)?,
            full_scan_schedule: cron("sync.full_scan_schedule", &raw.full_scan_schedule)?,
            batch_size: ranged("sync.batch_size", raw.batch_size, 1..=100_000)?,
            workers: ranged("sync.workers", raw.workers, 1..=64)?,
            include_anonymous: raw.include_anonymous,
            follow_email: raw.follow_email,
            soft_deleted: super::SoftDeleted::parse(raw.soft_deleted.trim()).ok_or_else(|| {
                Error::config(
                    "sync.soft_deleted",
                    format!("{:?} is not scrub, delete or keep", raw.soft_deleted),
                )
            })?,
            fill_from_metadata: raw.fill_from_metadata,
            statistics_horizon: super::STATISTICS_HORIZON,
        })
    }
}

impl TryFrom<&RawIntegrity> for IntegritySettings {
    type Error = Error;

    fn try_from(raw: &RawIntegrity) -> Result<Self> {
        Ok(IntegritySettings {
            schedule: cron("integrity.schedule", &raw.schedule)?,
            probe_schedule: match raw.probe_schedule.trim() {
                "" => None,
                expr => Some(cron("integrity.probe_schedule", expr)?),
            },
            grace_period: secs(
                "integrity.grace_period_secs",
                raw.grace_period_secs,
                0..=86_400,
            )?,
            queue_stale_after: secs(
                "integrity.queue_stale_secs",
                raw.queue_stale_secs,
                1..=604_800,
            )?,
            queue_max_attempts: ranged(
                "integrity.queue_max_attempts",
                raw.queue_max_attempts,
                1..=1000,
            )?,
            user_id_columns: raw
                .user_id_columns
                .iter()
                .map(|c| user_id_column(c))
                .collect::<Result<_>>()?,
            history_days: ranged("integrity.history_days", raw.history_days, 1..=3650)?,
            history_max_rows: ranged(
                "integrity.history_max_rows",
                raw.history_max_rows,
                100..=10_000_000,
            )?,
        })
    }
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

impl TryFrom<&RawHttp> for HttpSettings {
    type Error = Error;

    fn try_from(raw: &RawHttp) -> Result<Self> {
        Ok(HttpSettings {
            listen: raw.listen.parse().map_err(|e| {
                Error::config(
                    "http.listen",
                    format!("{:?} is not an address:port: {e}", raw.listen),
                )
            })?,
            readiness_timeout: secs(
                "http.readiness_timeout_secs",
                raw.readiness_timeout_secs,
                1..=60,
            )?,
            max_connections: ranged("http.max_connections", raw.max_connections, 1..=100_000)?,
            header_read_timeout: secs(
                "http.header_read_timeout_secs",
                raw.header_read_timeout_secs,
                1..=300,
            )?,
            write_timeout: secs("http.write_timeout_secs", raw.write_timeout_secs, 1..=300)?,
        })
    }
}

/// The API section, with the pool it takes its share of.
impl TryFrom<(&RawApi, usize)> for ApiSettings {
    type Error = Error;

    fn try_from((raw, pool_size): (&RawApi, usize)) -> Result<Self> {
        let token = raw.token.expose().trim();
        if !token.is_empty() && token.len() < 16 {
            return Err(Error::config("api.token", "is shorter than 16 characters"));
        }
        let share = ranged("api.max_db_connections", raw.max_db_connections, 0..=1000)?;
        if share > 0 && share >= pool_size {
            return Err(Error::config(
                "api.max_db_connections",
                format!(
                    "{share} leaves none of database.pool_size ({pool_size}) for the jobs and \
                     readiness"
                ),
            ));
        }
        Ok(ApiSettings {
            token: (!token.is_empty()).then(|| Secret::new(token)),
            // 0: half the pool.
            max_db_connections: if share == 0 {
                (pool_size / 2).max(1)
            } else {
                share
            },
            timeout: secs("api.timeout_secs", raw.timeout_secs, 1..=300)?,
        })
    }
}

impl TryFrom<&RawDaemon> for DaemonSettings {
    type Error = Error;

    fn try_from(raw: &RawDaemon) -> Result<Self> {
        Ok(DaemonSettings {
            shutdown_grace: secs(
                "daemon.shutdown_grace_secs",
                raw.shutdown_grace_secs,
                1..=3600,
            )?,
        })
    }
}

impl TryFrom<&RawLog> for LogSettings {
    type Error = Error;

    fn try_from(raw: &RawLog) -> Result<Self> {
        tracing_subscriber::EnvFilter::try_new(&raw.level)
            .map_err(|e| Error::config("log.level", format!("not a level or filter: {e}")))?;
        Ok(LogSettings {
            level: raw.level.clone(),
            format: raw.format,
        })
    }
}
