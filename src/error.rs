//! The crate-wide error and the exit code each kind of failure maps to.

use std::fmt;

/// Exit codes, as documented in docs/configuration.md (sysexits.h where one fits).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command ran and found a problem (verify failed, a user failed to sync, a migration failed).
    pub const FAILED: u8 = 1;
    /// Usage error on the command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The database cannot be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// Bad configuration (EX_CONFIG).
    pub const CONFIG: u8 = 78;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key is missing, of the wrong type, unknown, or impossible.
    #[error("configuration: {key}: {message}")]
    Config { key: String, message: String },

    /// The configuration could not be read at all (a missing file, a TOML syntax error).
    #[error("configuration: {0}")]
    ConfigSource(String),

    /// No connection could be opened. `target` is host:port, never the password.
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable { target: String, reason: String },

    /// Every pooled connection stayed in use for as long as the caller could wait: the
    /// database answers, usersync is busy (or something holds its connections).
    #[error("no free connection to PostgreSQL at {target} within {waited_secs}s: all in use")]
    Busy { target: String, waited_secs: u64 },

    /// The database is not shaped like a Supabase project.
    #[error("no auth.users table: is this a Supabase database?")]
    NotSupabase,

    /// A migration problem that the operator has to resolve.
    #[error("{0}")]
    Migration(String),

    /// A command-line value that clap could not check (exit 2).
    #[error("{0}")]
    Usage(String),

    /// What the command was asked for does not exist.
    #[error("{0}")]
    NotFound(String),

    /// No such user (`usersync explain`: exit 2).
    #[error("{0}")]
    NoSuchUser(String),

    /// Something usersync itself got wrong.
    #[error("internal error: {0}")]
    Internal(String),

    /// A sync worker's task ended without an answer (it panicked or was cancelled).
    #[error("a sync worker died")]
    Worker(#[source] tokio::task::JoinError),

    /// The daemon's scheduler failed to start or stop.
    #[error("the scheduler failed")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),

    /// A statement failed; `context` says what usersync was doing. Its message is the
    /// context; the server's words come as its source ([`Chain`] prints both).
    #[error("{context}")]
    Db {
        context: String,
        #[source]
        source: DbError,
    },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::ConfigSource(_) => exit::CONFIG,
            Error::Unreachable { .. } | Error::Busy { .. } => exit::UNAVAILABLE,
            Error::Usage(_) | Error::NoSuchUser(_) => exit::USAGE,
            Error::Db { source, .. } if is_connection_error(&source.0) => exit::UNAVAILABLE,
            _ => exit::FAILED,
        }
    }

    /// Whether it means the database is down, rather than busy or refusing one statement.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Db { source, .. } => is_connection_error(&source.0),
            _ => false,
        }
    }

    /// What a `permission denied` (SQLSTATE 42501) names, as `schema auth` or `table x`: the
    /// object only, never the rest of the server's message.
    pub fn permission_denied(&self) -> Option<String> {
        let Error::Db { source, .. } = self else {
            return None;
        };
        let db = source.0.as_db_error()?;
        if db.code() != &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
            return None;
        }
        let object = db.message().strip_prefix("permission denied for ")?;
        Some(
            object
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect(),
        )
    }

    /// Whether a statement or lock timeout ended it (SQLSTATE 57014 or 55P03).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Db { source, .. } if is_timeout(&source.0))
    }

    pub fn config(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Config {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// Adds what usersync was doing to a database error.
pub trait DbContext<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Db {
            context: context.into(),
            source: DbError(source),
        })
    }
}

/// A database error as usersync shows it: the server's message, SQLSTATE and detail
/// ([`db_message`]); the end of an error's chain.
#[derive(Debug)]
pub struct DbError(pub tokio_postgres::Error);

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&db_message(&self.0))
    }
}

impl std::error::Error for DbError {}

/// An error and every cause under it, in one line: `context: cause: cause`. What the CLI
/// prints and the logs record.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// Adds what usersync was doing to an I/O error.
pub trait IoContext<T> {
    fn io_context(self, context: impl Into<String>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn io_context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
    }
}

/// The server's own message and SQLSTATE when there is one, else the client's description.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        },
    }
}

/// True when a statement timeout (query_canceled) or lock timeout (lock_not_available) ended it.
pub fn is_timeout(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "57014" | "55P03"))
}

/// True when the error means the connection is gone rather than that a statement failed.
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        Some(db) => matches!(db.code().code(), "57P01" | "57P02" | "57P03" | "53300"),
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}
