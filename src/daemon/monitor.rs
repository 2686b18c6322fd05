//! The health monitor: a connection of its own pings PostgreSQL and keeps
//! `usersync_database_up` true; at the first contact it refuses a transaction-mode pooler.

use std::sync::Arc;
use std::time::Duration;

use crate::db;
use crate::error::Error;
use crate::state::Shared;

/// Pings PostgreSQL on a connection of its own: every 5 s while it answers; when it does not,
/// reconnects after a backoff that doubles from 1 s up to 30 s. Keeps `usersync_database_up`
/// true. Its own connection, not the pool's: a pool held by the jobs, the API or a lock says
/// nothing about whether the database is up.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_secs(1);
    let mut pooling_checked = false;
    loop {
        let connected = tokio::time::timeout(
            shared.settings.database.connect_timeout + Duration::from_secs(1),
            shared.db.connect_dedicated("usersync-monitor"),
        )
        .await;
        if let Ok(Ok((client, connection))) = connected {
            let driver = tokio::spawn(connection);
            if db::pin_session(&client, shared.db.timeouts()).await.is_ok() {
                if shared.metrics.database_up.get() == 0 {
                    tracing::info!("database reachable");
                }
                // Once, at the first contact: a transaction-mode pooler ends the daemon (exit
                // 78) before its jobs lose their session state to it.
                if !pooling_checked {
                    match shared.check_pooling().await {
                        Ok(()) => pooling_checked = true,
                        Err(e @ Error::Config { .. }) => {
                            driver.abort();
                            shared.fail(e);
                            return;
                        }
                        Err(e) => tracing::debug!(error = %crate::error::Chain(&e),
                            "checking how the connection is pooled; again at the next contact"),
                    }
                }
                backoff = Duration::from_secs(1);
                loop {
                    shared.metrics.database_up.set(1);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let ping = tokio::time::timeout(
                        Duration::from_secs(5),
                        client.simple_query("SELECT 1"),
                    )
                    .await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
                driver.abort();
                // A lost session is reconnected at once; the backoff is for failing connects.
                continue;
            }
            driver.abort();
        }
        if shared.metrics.database_up.get() == 1 {
            tracing::warn!(database = %shared.db.target(), "database unreachable; retrying with backoff");
        }
        shared.database_down();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
