//! The repair listener: a connection of its own LISTENs on `usersync_repair`, which the sign-up
//! trigger notifies when it could not create a profile, and runs a repair pass within
//! milliseconds, debounced so that a burst of failures becomes one pass.
//!
//! A lost connection is reconnected with a backoff doubling from 100 ms to 30 s, and each new
//! session starts with a repair pass, so nothing notified while it was away is lost (the queue
//! is durable; the notification only makes the repair prompt). Where LISTEN is refused (a
//! transaction-mode pooler) it says so once and leaves repairs to the schedule.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::AsyncMessage;

use crate::state::Shared;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "usersync_repair";

/// How long a notification waits for others of the same burst.
const DEBOUNCE: Duration = Duration::from_millis(20);

enum Ended {
    /// Shutdown.
    Stopped,
    /// The connection failed or was closed.
    Lost(String),
    /// The server refused LISTEN.
    Refused(String),
}

pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let mut refused_before = false;
    loop {
        let ended = session(&shared).await;
        shared.metrics.listener_up.set(0);
        match ended {
            Ended::Stopped => return,
            Ended::Refused(reason) => {
                if !refused_before {
                    tracing::warn!(
                        reason = %reason,
                        "LISTEN {CHANNEL} refused (a transaction-mode pooler cannot LISTEN; use a \
                         direct or session-mode connection): failed sign-ups are repaired by \
                         the repair schedule only"
                    );
                    refused_before = true;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ended::Lost(reason) => {
                tracing::warn!(reason = %reason, retry_ms = backoff.as_millis() as u64,
                    "repair listener lost its connection; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        backoff = Duration::from_millis(100);
    }
}

async fn session(shared: &Arc<Shared>) -> Ended {
    let (client, mut connection) = match shared.db.connect_dedicated("usersync-listener").await {
        Ok(pair) => pair,
        Err(e) => return Ended::Lost(crate::error::db_message(&e)),
    };
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<()>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = wake.send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return crate::error::db_message(&e),
                None => return "the server closed the connection".to_string(),
            }
        }
    });
    if let Err(e) = crate::db::pin_session(&client, shared.db.timeouts()).await {
        driver.abort();
        return Ended::Lost(crate::error::db_message(&e));
    }
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return match e.as_db_error() {
            Some(_) => Ended::Refused(crate::error::db_message(&e)),
            None => Ended::Lost(crate::error::db_message(&e)),
        };
    }
    shared.metrics.listener_up.set(1);
    tracing::info!("listening for failed sign-ups on {CHANNEL}");
    // Whatever failed while nobody listened.
    super::repair_now(shared).await;

    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    let ended = loop {
        tokio::select! {
            woke = woken.recv() => {
                if woke.is_none() {
                    break None;
                }
                tokio::time::sleep(DEBOUNCE).await;
                while woken.try_recv().is_ok() {}
                super::repair_now(shared).await;
            }
            () = shared.shutdown.cancelled() => break Some(Ended::Stopped),
            _ = ping.tick() => {
                // A silent network failure shows here, not on the idle connection.
                let alive = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    break Some(Ended::Lost("no answer to a keepalive query".into()));
                }
            }
        }
    };
    match ended {
        Some(ended) => {
            driver.abort();
            ended
        }
        None => Ended::Lost(driver.await.unwrap_or_else(|e| e.to_string())),
    }
}
