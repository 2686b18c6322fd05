//! PostgreSQL's advisory locks, the two-key form (namespace, key): how sync ranges and the
//! daemon's jobs are claimed across workers and replicas. A session lock goes with its
//! connection, so a connection whose release failed is closed rather than pooled.

use deadpool_postgres::Object;

use super::RowExt;
use crate::error::{DbContext, Result};

/// The namespace of the daemon's locks, one key each, all of them here (1 and 2 are unused:
/// an older daemon may still hold them).
pub const JOB_NAMESPACE: i32 = 0x7573_796a; // "usyj"
/// The integrity check's data counts: one replica counts.
pub const INTEGRITY_KEY: i32 = 3;
/// The full scan: one replica scans.
pub const FULL_SCAN_KEY: i32 = 4;
/// The findings' history writers (a transaction-scoped lock).
pub const HISTORY_KEY: i32 = 5;

/// Takes a session-level advisory lock (the two-key form) if it is free: how sync ranges and
/// daemon jobs are claimed across workers and replicas.
pub async fn try_advisory_lock(
    client: &tokio_postgres::Client,
    namespace: i32,
    key: i32,
) -> Result<bool> {
    client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[&namespace, &key],
        )
        .await
        .context("claiming an advisory lock")?
        .value(0)
}

/// Releases it, handing the connection back for reuse; None when the release failed: then
/// only closing the connection releases the lock, so it is discarded rather than returned to
/// the pool.
pub async fn release_advisory_lock(client: Object, namespace: i32, key: i32) -> Option<Object> {
    let released = client
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
            &[&namespace, &key],
        )
        .await
        .is_ok();
    if released {
        Some(client)
    } else {
        drop(Object::take(client));
        None
    }
}

/// A held advisory lock on a pooled connection: [`Held::release`] gives it back; dropped
/// without, the connection is closed, which releases the lock.
pub struct Held {
    client: Option<Object>,
    namespace: i32,
    key: i32,
}

impl Held {
    /// Takes the lock on `client` if it is free.
    pub async fn try_take(client: Object, namespace: i32, key: i32) -> Result<Option<Held>> {
        Ok(try_advisory_lock(&client, namespace, key)
            .await?
            .then_some(Held {
                client: Some(client),
                namespace,
                key,
            }))
    }

    pub async fn release(mut self) {
        if let Some(client) = self.client.take() {
            drop(release_advisory_lock(client, self.namespace, self.key).await);
        }
    }
}

impl std::ops::Deref for Held {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.client.as_ref().expect("held until released")
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Object {
        self.client.as_mut().expect("held until released")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}
