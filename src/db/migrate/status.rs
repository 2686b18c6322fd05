//! Where each migration stands: the history table against the migrations built in.

use serde::Serialize;
use tokio_postgres::Client;

use super::MIGRATIONS;
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// Where one migration stands in a database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    Applied {
        applied_at: String,
        duration_ms: i64,
    },
    Pending,
    /// Applied, but the file built into this binary has changed since.
    Drifted {
        applied_checksum: String,
    },
    /// In the history but unknown to this binary (applied by a newer usersync).
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct MigrationStatus {
    pub version: i32,
    pub name: String,
    pub checksum: String,
    #[serde(flatten)]
    pub state: State,
}

impl MigrationStatus {
    pub fn is_applied(&self) -> bool {
        matches!(
            self.state,
            State::Applied { .. } | State::Drifted { .. } | State::Unknown
        )
    }
}

struct HistoryRow {
    version: i32,
    name: String,
    checksum: String,
    applied_at: String,
    duration_ms: i64,
}

async fn history(client: &Client) -> Result<Vec<HistoryRow>> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('usersync.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .context("reading migration history")?
        .value(0)?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, name, checksum,
                    pg_catalog.to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    duration_ms
             FROM usersync.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .context("reading migration history")?;
    rows.iter()
        .map(|r| {
            Ok(HistoryRow {
                version: r.value(0)?,
                name: r.value(1)?,
                checksum: r.value(2)?,
                applied_at: r.value(3)?,
                duration_ms: r.value(4)?,
            })
        })
        .collect()
}

/// Every known and every recorded migration, in version order.
pub async fn status(client: &Client) -> Result<Vec<MigrationStatus>> {
    let history = history(client).await?;
    let mut out: Vec<MigrationStatus> = MIGRATIONS
        .iter()
        .map(|m| {
            let checksum = m.checksum();
            let state = match history.iter().find(|h| h.version == m.version) {
                None => State::Pending,
                Some(h) if h.checksum != checksum => State::Drifted {
                    applied_checksum: h.checksum.clone(),
                },
                Some(h) => State::Applied {
                    applied_at: h.applied_at.clone(),
                    duration_ms: h.duration_ms,
                },
            };
            MigrationStatus {
                version: m.version,
                name: m.name.to_string(),
                checksum,
                state,
            }
        })
        .collect();
    for h in history
        .iter()
        .filter(|h| MIGRATIONS.iter().all(|m| m.version != h.version))
    {
        out.push(MigrationStatus {
            version: h.version,
            name: h.name.clone(),
            checksum: h.checksum.clone(),
            state: State::Unknown,
        });
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}
