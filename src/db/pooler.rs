//! Refusing a transaction-mode pooler (Supavisor on port 6543, PgBouncer with
//! `pool_mode = transaction`): there a client's next transaction may run on another server
//! connection, so what usersync keeps per session is silently lost (the pinned `search_path`
//! and timeouts, the advisory locks that share ranges and jobs, LISTEN), and prepared
//! statements collide. A session-mode pooler and a direct connection keep one server session
//! per client for the client's lifetime.
//!
//! How it is told: a session opened through the URL records its backend and a value in its own
//! session; then further connections each open a transaction and look at their backend. Behind
//! a transaction pooler the first session's backend is idle between its statements and goes
//! to the next client that asks (PgBouncer hands out the most recently used idle server first),
//! so one of them finds that backend, or that value. Behind a session pooler or on a direct
//! connection the first session's backend is its own: the others get other backends, and a
//! newly started one means no idle backend was left to share. Every statement here uses the
//! simple protocol, which any pooler passes through.

use std::time::{Duration, SystemTime};

use tokio_postgres::SimpleQueryMessage;

use super::Db;
use crate::error::{Error, Result};

/// Connections opened to look for the first session's backend, at most.
const LOOKS: usize = 4;

/// The one-line refusal: names the URLs that work.
fn refusal(target: &str, how: &str) -> Error {
    Error::config(
        "database.url",
        format!(
            "{target} is a transaction-mode pooler ({how}): usersync keeps session state \
             (search_path, timeouts, advisory locks, LISTEN) that a transaction pooler drops; \
             use the session pooler (on Supabase: the pooler host's port 5432) or the direct \
             connection (db.<project>.supabase.co:5432)"
        ),
    )
}

/// Supabase's transaction pooler, from its address alone: port 6543 of a `pooler.supabase.com`
/// host.
fn supabase_transaction_port(pg: &tokio_postgres::Config) -> bool {
    let ports = pg.get_ports();
    pg.get_hosts().iter().enumerate().any(|(i, host)| {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        matches!(host, tokio_postgres::config::Host::Tcp(h)
            if port == 6543 && h.to_ascii_lowercase().ends_with("pooler.supabase.com"))
    })
}

/// Exit 78 when `db`'s URL reaches PostgreSQL through a transaction-mode pooler; Ok for a
/// direct connection or a session pooler. Connection failures are the caller's to report.
pub async fn refuse_transaction_pooler(db: &Db) -> Result<()> {
    if supabase_transaction_port(&db.pg) {
        return Err(refusal(
            db.target(),
            "Supabase's transaction pooler listens on 6543",
        ));
    }
    let first = Session::open(db).await?;
    let token = format!("{:x}", rand_token());
    let (pid, _) = first
        .ask(&format!(
            "SELECT pg_catalog.pg_backend_pid()::pg_catalog.text,
                    pg_catalog.set_config('usersync.pooler_probe', '{token}', false)"
        ))
        .await?;
    // The server's own clock as it prints it, kept to what a timestamp is made of: the only
    // value put into the statements below, none of it from outside.
    let started: String = first
        .ask("SELECT pg_catalog.clock_timestamp()::pg_catalog.text, ''")
        .await?
        .0
        .chars()
        .filter(|c| c.is_ascii_digit() || " -:.+".contains(*c))
        .collect();
    let mut others = Vec::new();
    for _ in 0..LOOKS {
        let other = Session::open(db).await?;
        other.ask("BEGIN; SELECT 1, 1").await?;
        let (their_pid, fresh) = other
            .ask(&format!(
                "SELECT pg_catalog.pg_backend_pid()::pg_catalog.text
                        || '/' || COALESCE(pg_catalog.current_setting('usersync.pooler_probe', true), ''),
                        (SELECT (a.backend_start >= '{started}'::pg_catalog.timestamptz)::pg_catalog.text
                         FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid())"
            ))
            .await?;
        others.push(other);
        let (their_pid, their_token) = their_pid.split_once('/').unwrap_or((&their_pid, ""));
        if their_pid == pid || their_token == token {
            return Err(refusal(
                db.target(),
                "another client's session answered on this connection",
            ));
        }
        if fresh == "true" {
            break;
        }
    }
    let (again, _) = first
        .ask(
            "SELECT pg_catalog.pg_backend_pid()::pg_catalog.text
                    || '/' || COALESCE(pg_catalog.current_setting('usersync.pooler_probe', true), ''), ''",
        )
        .await?;
    if again != format!("{pid}/{token}") {
        return Err(refusal(
            db.target(),
            "this session's state did not survive to its next transaction",
        ));
    }
    for other in others {
        let _ = other.client.simple_query("ROLLBACK").await;
    }
    Ok(())
}

fn rand_token() -> u128 {
    uuid::Uuid::new_v4().as_u128()
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
}

/// A connection of its own, driven on a task that ends with it.
struct Session {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(db: &Db) -> Result<Session> {
        let connected = tokio::time::timeout(
            db.connect_timeout + Duration::from_secs(1),
            db.connect_dedicated("usersync-pooler-check"),
        )
        .await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(Error::Unreachable {
                    target: db.target().to_string(),
                    reason: crate::error::db_message(&e),
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    target: db.target().to_string(),
                    reason: format!("timed out after {}s", db.connect_timeout.as_secs()),
                });
            }
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Session { client, driver })
    }

    /// The first two columns of the last row the statements return.
    async fn ask(&self, sql: &str) -> Result<(String, String)> {
        use crate::error::DbContext;
        let messages = self
            .client
            .simple_query(sql)
            .await
            .context("checking how the connection is pooled")?;
        let row = messages.iter().rev().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        let column = |i: usize| row.and_then(|r| r.get(i)).unwrap_or_default().to_string();
        Ok((column(0), column(1)))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn supabases_transaction_pooler_is_known_by_its_port() {
        let config = |url: &str| url.parse::<tokio_postgres::Config>().unwrap();
        assert!(super::supabase_transaction_port(&config(
            "postgres://postgres.abc@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
        )));
        assert!(!super::supabase_transaction_port(&config(
            "postgres://postgres.abc@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"
        )));
        assert!(!super::supabase_transaction_port(&config(
            "postgres://postgres@db.abc.supabase.co:6543/postgres"
        )));
    }
}
