//! The embedded migrations, their history table and checksums, and `migrate up|down|status`.
//!
//! Each migration runs with its history row in one transaction, under an advisory lock so that
//! two deploys never migrate at once. History lives in `usersync.schema_migrations`, which
//! migration 0001 itself creates, so `down` to zero leaves no trace.

use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::error::{DbContext, Error, Result};

mod preflight;
mod status;

use preflight::preflight_first_install;
pub use preflight::{ForeignTrigger, foreign_profile_triggers, require_auth_users};
pub use status::{MigrationStatus, State, status};

/// One versioned schema change: plain SQL files under `migrations/`, built into the binary.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

impl Migration {
    /// SHA-256 of the up file: what `status` compares to detect a drifted migration.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.up.as_bytes()))
    }

    pub fn up_file(&self) -> String {
        format!("migrations/{:04}_{}.up.sql", self.version, self.name)
    }
}

macro_rules! migration {
    ($version:literal, $prefix:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            up: include_str!(concat!(
                "../../../migrations/",
                $prefix,
                "_",
                $name,
                ".up.sql"
            )),
            down: include_str!(concat!(
                "../../../migrations/",
                $prefix,
                "_",
                $name,
                ".down.sql"
            )),
        }
    };
}

/// Every migration, in order.
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "user_profiles"),
    migration!(2, "0002", "hardening"),
    migration!(3, "0003", "lifecycle"),
    migration!(4, "0004", "watch"),
    migration!(5, "0005", "runtime_access"),
    migration!(6, "0006", "findings_stay"),
    migration!(7, "0007", "metadata_and_history"),
];

/// The latest version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// `CREATE TRIGGER name …` as the newest migration up to `applied` that creates (or replaces)
/// the trigger wrote it, whitespace folded, without its semicolon: what `migrate verify` offers
/// to put a missing or disabled trigger back.
pub fn trigger_definition(name: &str, applied: i32) -> Option<String> {
    MIGRATIONS
        .iter()
        .rev()
        .filter(|m| m.version <= applied)
        .find_map(|m| {
            let sql = m.up.split_whitespace().collect::<Vec<_>>().join(" ");
            ["CREATE TRIGGER ", "CREATE OR REPLACE TRIGGER "]
                .iter()
                .find_map(|verb| {
                    let start = sql.find(&format!("{verb}{name} "))?;
                    let body = &sql[start + verb.len()..];
                    let end = body.find(';')?;
                    Some(format!("CREATE TRIGGER {}", &body[..end]))
                })
        })
}

/// Migrations run with nothing but the catalog on the path, whatever the session had: a
/// function or type in `public` or pg_temp cannot stand in for one the files name.
const PIN_SEARCH_PATH: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

// Any constant works as long as nothing else uses it; this one spells "usersync".
const MIGRATE_LOCK: i64 = 0x7573_6572_7379_6e63;

/// Which way a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

/// The result of `up` or `down`: which versions ran, and how long each took.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub version: i32,
    pub name: String,
    pub direction: Direction,
    pub duration_ms: i64,
}

/// Options of `migrate up`.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// Stop after this version (default: the latest).
    pub to: Option<i32>,
    /// Install our trigger even though another profile trigger exists on auth.users.
    pub allow_existing_trigger: bool,
}

/// Applies every pending migration up to `to`. Running it again is a no-op.
pub async fn up(client: &mut Client, options: UpOptions) -> Result<Vec<Step>> {
    let target = options.to.unwrap_or_else(latest);
    if MIGRATIONS.iter().all(|m| m.version != target) {
        return Err(Error::Migration(format!(
            "--to {target}: no such migration (known: {})",
            known_versions()
        )));
    }
    with_lock(client, async |client: &mut Client| {
        require_auth_users(client).await?;
        crate::db::gotrue::require_schema(client).await?;
        let status = status(client).await?;
        if let Some(d) = status
            .iter()
            .find(|s| matches!(s.state, State::Drifted { .. }))
        {
            let file = MIGRATIONS
                .iter()
                .find(|m| m.version == d.version)
                .map(Migration::up_file)
                .unwrap_or_default();
            return Err(Error::Migration(format!(
                "migration {:04} has drifted: {file} differs from what was applied; \
                 restore the file, or roll back with `usersync migrate down --to {}` first",
                d.version,
                d.version - 1
            )));
        }
        let pending: Vec<&Migration> = MIGRATIONS
            .iter()
            .filter(|m| m.version <= target)
            .filter(|m| {
                status
                    .iter()
                    .any(|s| s.version == m.version && s.state == State::Pending)
            })
            .collect();
        if pending.iter().any(|m| m.version == 1) {
            preflight_first_install(client, options.allow_existing_trigger).await?;
        }
        let mut steps = Vec::new();
        for m in pending {
            steps.push(apply(client, m).await?);
        }
        Ok(steps)
    })
    .await
}

/// One migration with its history row, in one transaction.
async fn apply(client: &mut Client, m: &Migration) -> Result<Step> {
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .context("starting a transaction")?;
    tx.batch_execute(PIN_SEARCH_PATH)
        .await
        .context("starting a transaction")?;
    tx.batch_execute(m.up)
        .await
        .context(format!("applying {}", m.up_file()))?;
    let duration_ms = started.elapsed().as_millis() as i64;
    tx.execute(
        "INSERT INTO usersync.schema_migrations (version, name, checksum, duration_ms)
         VALUES ($1, $2, $3, $4)",
        &[&m.version, &m.name, &m.checksum(), &duration_ms],
    )
    .await
    .context("recording migration history")?;
    tx.commit()
        .await
        .context(format!("committing {}", m.up_file()))?;
    tracing::info!(
        version = m.version,
        name = m.name,
        duration_ms,
        "migration applied"
    );
    Ok(Step {
        version: m.version,
        name: m.name.to_string(),
        direction: Direction::Up,
        duration_ms,
    })
}

/// Rolls back applied migrations above `to` (default: the latest one only), newest first.
pub async fn down(client: &mut Client, to: Option<i32>) -> Result<Vec<Step>> {
    if let Some(to) = to
        && to != 0
        && MIGRATIONS.iter().all(|m| m.version != to)
    {
        return Err(Error::Migration(format!(
            "--to {to}: no such migration (known: 0, {})",
            known_versions()
        )));
    }
    with_lock(client, async move |client: &mut Client| {
        let status = status(client).await?;
        if let Some(u) = status.iter().find(|s| s.state == State::Unknown) {
            return Err(Error::Migration(format!(
                "migration {:04} ({}) was applied by a newer usersync; roll it back with that version",
                u.version, u.name
            )));
        }
        let applied: Vec<i32> = status.iter().filter(|s| s.is_applied()).map(|s| s.version).collect();
        let Some(&newest) = applied.last() else { return Ok(Vec::new()) };
        let target = to.unwrap_or_else(|| applied.iter().rev().nth(1).copied().unwrap_or(0));
        let mut steps = Vec::new();
        // One transaction for every step: a rollback that fails halfway leaves the schema as
        // it was, not between two versions.
        let tx = client.transaction().await.context("starting a transaction")?;
        tx.batch_execute(PIN_SEARCH_PATH)
            .await
            .context("starting a transaction")?;
        for m in MIGRATIONS.iter().rev().filter(|m| m.version > target && m.version <= newest) {
            if !applied.contains(&m.version) {
                continue;
            }
            let started = Instant::now();
            // Delete the history row first: migration 0001's down drops the history table.
            tx.execute("DELETE FROM usersync.schema_migrations WHERE version = $1", &[&m.version])
                .await
                .context("updating migration history")?;
            tx.batch_execute(m.down)
                .await
                .map_err(|e| rollback_error(e, m))?;
            let duration_ms = started.elapsed().as_millis() as i64;
            tracing::info!(version = m.version, name = m.name, duration_ms, "migration rolled back");
            steps.push(Step {
                version: m.version,
                name: m.name.to_string(),
                direction: Direction::Down,
                duration_ms,
            });
        }
        tx.commit().await.context("committing the rollback")?;
        Ok(steps)
    })
    .await
}

/// A failed down file, with the way out when it failed on a trigger of auth.users: only the
/// table's owner may drop one in PostgreSQL; hosted Supabase lets `postgres` through supautils.
fn rollback_error(e: tokio_postgres::Error, m: &Migration) -> Error {
    let context = format!("rolling back {:04}_{}", m.version, m.name);
    let not_owner = e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        && e.as_db_error()
            .is_some_and(|d| d.message().starts_with("must be owner of"));
    if not_owner && m.down.contains("ON auth.users") {
        return Error::Migration(format!(
            "{context}: dropping a trigger on auth.users needs the table's owner \
             (supabase_auth_admin): {}; hosted Supabase lets postgres drop triggers on \
             auth.users through the supautils extension (supautils.drop_trigger_grants); \
             elsewhere run usersync migrate down as auth.users' owner or a superuser",
            crate::error::db_message(&e)
        ));
    }
    Error::Db {
        context,
        source: crate::error::DbError(e),
    }
}

fn known_versions() -> String {
    MIGRATIONS
        .iter()
        .map(|m| m.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `body` holding the migration advisory lock, and releases it whatever happens: the
/// connection may go back to a pool.
async fn with_lock<T>(
    client: &mut Client,
    body: impl AsyncFnOnce(&mut Client) -> Result<T>,
) -> Result<T> {
    client
        .execute("SELECT pg_catalog.pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .context("waiting for the migration lock")?;
    let result = body(client).await;
    let unlocked = client
        .execute("SELECT pg_catalog.pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(error = %e, "could not release the migration lock; it goes with the connection");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_built_in_and_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| {
                let base = format!("{:04}_{}", m.version, m.name);
                [format!("{base}.down.sql"), format!("{base}.up.sql")]
            })
            .collect();
        assert_eq!(files, expected);
        assert!(
            MIGRATIONS
                .windows(2)
                .all(|w| w[0].version + 1 == w[1].version)
        );
        assert_eq!(MIGRATIONS[0].version, 1);
    }
}
