//! Database access: the connection pool, and the SQL usersync runs, one module per concern.

pub mod migrate;
pub mod probe;
pub mod tls;
pub mod users;
pub mod verify;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::config::{DatabaseSettings, target};
use crate::error::{Error, Result, db_message};

pub use deadpool_postgres::{Client, Object};

/// The pool, with what its errors need to name: host and port, never the password.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    target: String,
    connect_timeout: Duration,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pg: tokio_postgres::Config,
}

impl Db {
    /// A pooled connection; failing to open one is `Unreachable` (exit 69).
    pub async fn get(&self) -> Result<Object> {
        use deadpool_postgres::PoolError;
        self.pool.get().await.map_err(|e| {
            let reason = match &e {
                PoolError::Backend(pg) => db_message(pg),
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

    /// A connection of its own, outside the pool (the repair listener's), with the pool's TLS.
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

    /// host:port of the database, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Builds the pool and opens one connection, so an unreachable database is reported at once.
pub async fn connect(settings: &DatabaseSettings) -> Result<Db> {
    let db = pool(settings)?;
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
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute("SET jit = off")
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
    })
}

/// Takes a session-level advisory lock (the two-key form) if it is free: how sync ranges and
/// daemon jobs are claimed across workers and replicas.
pub async fn try_advisory_lock(
    client: &tokio_postgres::Client,
    namespace: i32,
    key: i32,
) -> Result<bool> {
    use crate::error::DbContext;
    Ok(client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[&namespace, &key],
        )
        .await
        .context("claiming an advisory lock")?
        .get(0))
}

/// Releases it. False when the release failed: then only closing the connection releases
/// the lock, so the caller must not return it to the pool.
pub async fn advisory_unlock(client: &tokio_postgres::Client, namespace: i32, key: i32) -> bool {
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
            &[&namespace, &key],
        )
        .await
        .is_ok()
}
