//! Database access: the connection pool, and the SQL usersync runs, one module per concern.

pub mod export;
pub mod gotrue;
pub mod grant;
mod locks;
pub mod migrate;
pub mod pooler;
pub mod probe;
pub mod tls;
pub mod users;
pub mod verify;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::config::{DatabaseSettings, Timeouts, target};
use crate::error::{Error, Result, db_message};

use deadpool_postgres::Object;

pub use locks::{
    FULL_SCAN_KEY, HISTORY_KEY, Held, INTEGRITY_KEY, JOB_NAMESPACE, release_advisory_lock,
    try_advisory_lock,
};

/// The pool, with what its errors need to name: host and port, never the password.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    target: String,
    connect_timeout: Duration,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pg: tokio_postgres::Config,
    timeouts: Timeouts,
}

impl Db {
    /// A pooled connection; failing to open one is `Unreachable` (exit 69), waiting too long
    /// for one that is in use is `Busy`.
    pub async fn get(&self) -> Result<Object> {
        self.get_within(self.connect_timeout * 6).await
    }

    /// A pooled connection, waiting at most `wait` for one to be free.
    pub async fn get_within(&self, wait: Duration) -> Result<Object> {
        use deadpool_postgres::{PoolError, TimeoutType};
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(wait),
            create: Some(self.connect_timeout + Duration::from_secs(1)),
            recycle: None,
        };
        self.pool.timeout_get(&timeouts).await.map_err(|e| {
            let reason = match e {
                PoolError::Timeout(TimeoutType::Wait) => {
                    return Error::Busy {
                        target: self.target.clone(),
                        waited_secs: wait.as_secs(),
                    };
                }
                PoolError::Backend(pg) => db_message(&pg),
                // The session's first statement (its search_path and timeouts) failed without
                // the connection failing: not a database that is down.
                PoolError::PostCreateHook(HookError::Backend(pg))
                    if !crate::error::is_connection_error(&pg) =>
                {
                    return Error::Db {
                        context: "starting a usersync session (search_path, timeouts)".into(),
                        source: crate::error::DbError(pg),
                    };
                }
                PoolError::PostCreateHook(HookError::Backend(pg)) => db_message(&pg),
                PoolError::Timeout(_) => {
                    format!("timed out after {}s", self.connect_timeout.as_secs())
                }
                other => other.to_string(),
            };
            Error::Unreachable {
                target: self.target.clone(),
                reason,
            }
        })
    }

    /// A connection of its own, outside the pool (the repair listener's, the health monitor's),
    /// with the pool's TLS. Not yet pinned: the caller drives the connection, then calls
    /// [`pin_session`] before anything else.
    pub async fn connect_dedicated(
        &self,
        application_name: &str,
    ) -> std::result::Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        let mut pg = self.pg.clone();
        pg.application_name(application_name);
        pg.connect(self.tls.clone()).await
    }

    /// What [`pin_session`] sets on a dedicated connection, once its caller drives it.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// host:port of the database, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Builds the pool and opens one connection, so an unreachable database is reported at once;
/// a transaction-mode pooler is refused first ([`pooler`]), exit 78.
pub async fn connect(settings: &DatabaseSettings) -> Result<Db> {
    let db = pool(settings)?;
    pooler::refuse_transaction_pooler(&db).await?;
    drop(db.get().await?);
    Ok(db)
}

/// Builds the pool without connecting.
pub fn pool(settings: &DatabaseSettings) -> Result<Db> {
    let (tls, mut pg) = tls::connector(settings)?;
    pg.connect_timeout(settings.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("usersync");
    }
    let timeouts = settings.timeouts;
    let manager = Manager::from_config(
        pg.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size)
        // usersync's statements are short batches: JIT compilation costs each 10-15 ms and
        // saves nothing (measured by benches/sync.rs).
        .post_create(Hook::async_fn(move |client, _| {
            Box::pin(async move {
                pin_session(client, &timeouts)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(settings.connect_timeout + Duration::from_secs(1)))
        .wait_timeout(Some(settings.connect_timeout * 6))
        .build()
        .map_err(|e| Error::ConfigSource(format!("database pool: {e}")))?;
    Ok(Db {
        pool,
        target: target(&settings.pg),
        connect_timeout: settings.connect_timeout,
        tls,
        pg,
        timeouts,
    })
}

/// Every usersync session starts here, before its first statement: the search path holds
/// only the catalog (then pg_temp, explicitly last, which PostgreSQL never searches for
/// functions and operators), so nothing in `public`, in a schema named like the role, or in
/// pg_temp can stand in for a function or type usersync names; the timeouts of
/// `database.*_timeout_secs` bound what any statement or lock wait can hold. The scan timeout
/// is kept in `usersync.scan_timeout` for whole-table statements to raise the limit to.
pub async fn pin_session(
    client: &tokio_postgres::Client,
    timeouts: &Timeouts,
) -> std::result::Result<(), tokio_postgres::Error> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    client
        .query(
            "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),
                    pg_catalog.set_config('jit', 'off', false),
                    pg_catalog.set_config('statement_timeout', $1, false),
                    pg_catalog.set_config('usersync.statement_timeout', $1, false),
                    pg_catalog.set_config('lock_timeout', $2, false),
                    pg_catalog.set_config('usersync.scan_timeout', $3, false),
                    pg_catalog.set_config('idle_in_transaction_session_timeout', $4, false)",
            &[
                &ms(timeouts.statement),
                &ms(timeouts.lock),
                &ms(timeouts.scan),
                &ms(timeouts.scan.max(Duration::from_secs(60))),
            ],
        )
        .await
        .map(drop)
}

/// Raises the session's statement timeout to the scan timeout, for a series of statements
/// that read whole tables (the integrity checks); [`end_scan`] puts the short one back.
pub async fn begin_scan(client: &tokio_postgres::Client) -> Result<()> {
    set_timeout_from(client, "usersync.scan_timeout").await
}

pub async fn end_scan(client: &tokio_postgres::Client) -> Result<()> {
    set_timeout_from(client, "usersync.statement_timeout").await
}

async fn set_timeout_from(client: &tokio_postgres::Client, setting: &str) -> Result<()> {
    use crate::error::DbContext;
    client
        .execute(
            "SELECT pg_catalog.set_config('statement_timeout',
                 COALESCE(pg_catalog.current_setting($1, true),
                          pg_catalog.current_setting('statement_timeout')), false)",
            &[&setting],
        )
        .await
        .map(drop)
        .context("setting the statement timeout")
}

/// Reading a column without a panic: a value of an unexpected type or an unexpected NULL is an
/// error naming the column, never a crash of the daemon or the CLI.
pub trait RowExt {
    fn value<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, idx: usize) -> Result<T>;
}

impl RowExt for tokio_postgres::Row {
    fn value<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, idx: usize) -> Result<T> {
        self.try_get(idx).map_err(|source| Error::Db {
            context: format!(
                "reading column {:?} of a result",
                self.columns().get(idx).map_or("?", |c| c.name())
            ),
            source: crate::error::DbError(source),
        })
    }
}
