//! The cheap path: whether anything reached `auth.users` or `public.user_profiles` around
//! usersync's triggers since the last full scan, read from PostgreSQL's statistics and catalog
//! without reading either table.
//!
//! The statistics count every row inserted into or deleted from a table, whoever wrote it and
//! however: COPY, aborted transactions, disabled triggers, `session_replication_role = replica`.
//! usersync's triggers (migration 0004) add a row to `usersync.journal` for each user inserted
//! or deleted and each profile deleted that they see, and the statistics count those rows too,
//! flushed by the writing backend together with the others. So since the last full scan
//!
//! ```text
//!     users inserted + users deleted + profiles deleted  =  rows journaled
//! ```
//!
//! holds exactly when every such change went through a trigger, which made, queued or released
//! its profile. More counted than journaled is a write the triggers did not see: a full scan,
//! once the count has outlasted the statistics' own delay (a backend may flush the table's
//! counts ten seconds before the journal's; `sync::settle`).
//!
//! What the counters cannot vouch for hands to the full scan too: no baseline yet (a new
//! install, a restore of the `usersync` schema into another database), a server restart or a
//! failover (the statistics of a crash are lost, a promoted replica's count from its own start),
//! a statistics reset, a counter that went backwards, either table rewritten (TRUNCATE, VACUUM
//! FULL, a restore), a trigger or foreign key of either table altered (disabled and enabled
//! again leaves the catalog row's version changed), the policies changed, `track_counts` off.
//! Updates are not counted (a sign-in would pay for it): an UPDATE under `replica` that
//! soft-deletes, restores or re-addresses a user waits for the scheduled full scan.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::settle::{SETTLE, Suspicion};

use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// What the statistics and the catalog say now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// `pg_postmaster_start_time()`: a restart, a crash or a failover changes it.
    pub server_started: String,
    pub database: u32,
    /// The two tables and their files: a TRUNCATE, a rewrite or a restore changes them.
    pub users_table: u32,
    pub users_file: u32,
    pub profiles_table: u32,
    pub profiles_file: u32,
    /// When this database's statistics were last reset, if ever.
    pub stats_reset: Option<String>,
    /// The version of every trigger and constraint on the two tables and of the policies.
    pub catalog: String,
    pub users_inserted: i64,
    pub users_deleted: i64,
    pub profiles_deleted: i64,
    pub journaled: i64,
    /// `track_counts`: without it the counters stand still.
    pub track_counts: bool,
}

impl Reading {
    /// Changes counted by the statistics that no trigger journaled, since `base`.
    fn unseen_since(&self, base: &Reading) -> i64 {
        (self.users_inserted - base.users_inserted)
            + (self.users_deleted - base.users_deleted)
            + (self.profiles_deleted - base.profiles_deleted)
            - (self.journaled - base.journaled)
    }

    fn went_backwards(&self, base: &Reading) -> bool {
        self.users_inserted < base.users_inserted
            || self.users_deleted < base.users_deleted
            || self.profiles_deleted < base.profiles_deleted
            || self.journaled < base.journaled
    }
}

/// Why a full scan is due: the `reason` label of `usersync_full_scans_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No full scan recorded before (a new install, a restore of the schema elsewhere).
    NoBaseline,
    /// The server restarted, crashed or failed over since the last full scan.
    ServerRestarted,
    /// Statistics were reset, or a counter went backwards.
    StatisticsReset,
    /// A table's file changed: TRUNCATE, VACUUM FULL, a restore.
    TableRewritten,
    /// A trigger, a constraint or the policies changed.
    CatalogChanged,
    /// Rows written around the triggers.
    UnseenChanges,
    /// `track_counts` is off: the statistics cannot vouch for anything.
    NoStatistics,
    /// The full scan's own schedule.
    Scheduled,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoBaseline,
        Reason::ServerRestarted,
        Reason::StatisticsReset,
        Reason::TableRewritten,
        Reason::CatalogChanged,
        Reason::UnseenChanges,
        Reason::NoStatistics,
        Reason::Scheduled,
    ];

    /// The metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoBaseline => "no_baseline",
            Reason::ServerRestarted => "server_restarted",
            Reason::StatisticsReset => "statistics_reset",
            Reason::TableRewritten => "table_rewritten",
            Reason::CatalogChanged => "catalog_changed",
            Reason::UnseenChanges => "unseen_changes",
            Reason::NoStatistics => "no_statistics",
            Reason::Scheduled => "scheduled",
        }
    }
}

/// A full scan that is due, and why; for unseen changes, how many rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    pub reason: Reason,
    pub unseen: i64,
}

impl Due {
    pub fn because(reason: Reason) -> Due {
        Due { reason, unseen: 0 }
    }
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            Reason::NoBaseline => f.write_str("no full scan was recorded before"),
            Reason::ServerRestarted => f.write_str("the server restarted or failed over"),
            Reason::StatisticsReset => f.write_str("the statistics were reset"),
            Reason::TableRewritten => f.write_str("auth.users or the profiles were rewritten"),
            Reason::CatalogChanged => {
                f.write_str("a trigger, a constraint or the policies changed")
            }
            Reason::UnseenChanges => write!(
                f,
                "{} changed around usersync's triggers",
                crate::plural(self.unseen, "row")
            ),
            Reason::NoStatistics => f.write_str("track_counts is off"),
            Reason::Scheduled => f.write_str("its schedule"),
        }
    }
}

/// The users and profiles deleted through usersync's triggers, as the cycles that emptied the
/// journal added them up in `usersync.scan_state` (every job and every replica sees the sum),
/// and how many of them the last count of the user-id columns and of the orphans had seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deletions {
    pub users: i64,
    pub users_counted: i64,
    pub profiles: i64,
    pub profiles_counted: i64,
}

impl Deletions {
    /// Users were deleted since the user-id columns were last counted: rows of them may now
    /// name no user.
    pub fn users_pending(&self) -> bool {
        self.users > self.users_counted
    }

    /// Profiles were deleted since the orphans were last counted: an orphan may be gone.
    pub fn profiles_pending(&self) -> bool {
        self.profiles > self.profiles_counted
    }
}

/// What one look found.
#[derive(Clone, Debug)]
pub struct Look {
    /// None: nothing changed around the triggers since the last full scan, or what the
    /// statistics count around them is still `settling`.
    pub due: Option<Due>,
    /// Unseen changes counted, not yet for the statistics' horizon (`sync::settle`).
    pub settling: Option<Due>,
    /// Journal rows this look emptied: the changes the triggers handled since the last look.
    pub handled: u64,
    /// Where a full scan that starts now records it started from.
    pub reading: Reading,
    /// The deletions added up, this look's included.
    pub deletions: Deletions,
}

const READ: &str = concat!(
    "
    SELECT pg_catalog.pg_postmaster_start_time()::pg_catalog.text,
           d.oid, u.oid, u.relfilenode, p.oid, p.relfilenode,
           pg_catalog.pg_stat_get_db_stat_reset_time(d.oid)::pg_catalog.text,
           pg_catalog.md5(concat_ws('/',
               (SELECT pg_catalog.string_agg(t.oid::pg_catalog.text || ':' || t.xmin::pg_catalog.text
                                             || t.tgenabled::pg_catalog.text, ',' ORDER BY t.oid)
                FROM pg_catalog.pg_trigger t WHERE t.tgrelid IN (u.oid, p.oid)),
               (SELECT pg_catalog.string_agg(c.oid::pg_catalog.text || ':' || c.xmin::pg_catalog.text,
                                             ',' ORDER BY c.oid)
                FROM pg_catalog.pg_constraint c WHERE c.conrelid IN (u.oid, p.oid)),
               (SELECT pg_catalog.to_jsonb(x)::pg_catalog.text FROM usersync.policy x))),
           pg_catalog.pg_stat_get_tuples_inserted(u.oid),
           pg_catalog.pg_stat_get_tuples_deleted(u.oid),
           pg_catalog.pg_stat_get_tuples_deleted(p.oid),
           pg_catalog.pg_stat_get_tuples_inserted(j.oid),
           pg_catalog.current_setting('track_counts')::pg_catalog.bool
    FROM pg_catalog.pg_database d, pg_catalog.pg_class u, pg_catalog.pg_class p,
         pg_catalog.pg_class j
    WHERE d.datname = pg_catalog.current_database()
      AND u.oid = ",
    crate::auth_users_oid!(),
    "
      AND p.oid = 'public.user_profiles'::pg_catalog.regclass
      AND j.oid = 'usersync.journal'::pg_catalog.regclass"
);

/// Reads the statistics and the catalog: a few rows of catalogs, no table.
pub async fn read(client: &Client) -> Result<Reading> {
    // A fresh view of the statistics, not one cached earlier in this session.
    client
        .batch_execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        .await
        .context("reading the statistics")?;
    let row = client
        .query_one(READ, &[])
        .await
        .context("reading the statistics")?;
    let oid = |i: usize| -> Result<u32> { row.value(i) };
    Ok(Reading {
        server_started: row.value(0)?,
        database: oid(1)?,
        users_table: oid(2)?,
        users_file: oid(3)?,
        profiles_table: oid(4)?,
        profiles_file: oid(5)?,
        stats_reset: row.value(6)?,
        catalog: row.value(7)?,
        users_inserted: row.value(8)?,
        users_deleted: row.value(9)?,
        profiles_deleted: row.value(10)?,
        journaled: row.value(11)?,
        track_counts: row.value(12)?,
    })
}

/// Where the last full scan started from, if one is recorded.
async fn baseline(client: &Client) -> Result<Option<Reading>> {
    let row = client
        .query_opt("SELECT s.baseline FROM usersync.scan_state s", &[])
        .await
        .context("reading usersync.scan_state")?;
    Ok(match row {
        // A baseline an older or newer usersync wrote differently is no baseline.
        Some(row) => serde_json::from_value(row.value(0)?).ok(),
        None => None,
    })
}

// Empties the journal and adds its deletions to usersync.scan_state (when a full scan is
// recorded: before the first there is nothing to recount), in one statement: the journal's one
// reader per cycle, whose findings reach every job of every replica.
const EMPTY_JOURNAL: &str = "
    WITH gone AS (DELETE FROM usersync.journal RETURNING kind),
         n AS (SELECT count(*) AS handled, count(*) FILTER (WHERE kind = 'd') AS users,
                      count(*) FILTER (WHERE kind = 'p') AS profiles
               FROM gone),
         s AS (UPDATE usersync.scan_state s
               SET users_deleted = s.users_deleted + n.users,
                   profiles_deleted = s.profiles_deleted + n.profiles
               FROM n
               RETURNING s.users_deleted, s.users_deleted_counted, s.profiles_deleted,
                         s.profiles_deleted_counted)
    SELECT n.handled, COALESCE(s.users_deleted, 0), COALESCE(s.users_deleted_counted, 0),
           COALESCE(s.profiles_deleted, 0), COALESCE(s.profiles_deleted_counted, 0)
    FROM n LEFT JOIN s ON true";

/// Empties the journal: the changes it held, and the deletions added up.
pub async fn empty_journal(client: &Client) -> Result<(u64, Deletions)> {
    let row = client
        .query_one(EMPTY_JOURNAL, &[])
        .await
        .context("emptying usersync.journal")?;
    Ok((
        row.value::<i64>(0)? as u64,
        Deletions {
            users: row.value(1)?,
            users_counted: row.value(2)?,
            profiles: row.value(3)?,
            profiles_counted: row.value(4)?,
        },
    ))
}

/// Records that a full scan which started from `reading` at `started`, when the deletions
/// added up were `deletions`, has finished: its baseline, and every deletion until then counted.
pub async fn record(
    client: &impl tokio_postgres::GenericClient,
    reading: &Reading,
    started: std::time::SystemTime,
    deletions: &Deletions,
) -> Result<()> {
    let baseline = serde_json::to_value(reading).expect("a reading serializes");
    client
        .execute(
            "INSERT INTO usersync.scan_state AS s (id, baseline, started_at, finished_at,
                 users_deleted_counted, profiles_deleted_counted)
             VALUES (true, $1, $2, pg_catalog.now(), $3, $4)
             ON CONFLICT (id) DO UPDATE
                 SET baseline = EXCLUDED.baseline, started_at = EXCLUDED.started_at,
                     finished_at = EXCLUDED.finished_at,
                     users_deleted_counted = GREATEST(s.users_deleted_counted, $3),
                     profiles_deleted_counted = GREATEST(s.profiles_deleted_counted, $4)",
            &[&baseline, &started, &deletions.users, &deletions.profiles],
        )
        .await
        .context("recording the full scan in usersync.scan_state")?;
    Ok(())
}

/// Compares now with the last full scan's baseline, and empties the journal. Unseen changes are
/// due only once `suspicion` has counted them for `horizon` (`sync::settle`); until then the
/// look says they are settling.
pub async fn look(client: &Client, suspicion: &Suspicion, horizon: Duration) -> Result<Look> {
    let base = baseline(client).await?;
    let mut reading = read(client).await?;
    let mut due = verdict(base.as_ref(), &reading);
    for wait in SETTLE {
        if !due.is_some_and(|d| d.reason == Reason::UnseenChanges) {
            break;
        }
        tokio::time::sleep(wait).await;
        reading = read(client).await?;
        due = verdict(base.as_ref(), &reading);
    }
    let unseen = due.filter(|d| d.reason == Reason::UnseenChanges);
    if unseen.is_none() {
        suspicion.clear();
    }
    let settling = unseen.filter(|_| !suspicion.confirmed(Instant::now(), horizon));
    let due = if settling.is_some() { None } else { due };
    let (handled, deletions) = empty_journal(client).await?;
    Ok(Look {
        due,
        settling,
        handled,
        reading,
        deletions,
    })
}

/// Why `now` needs a full scan after `base`, if it does.
pub fn verdict(base: Option<&Reading>, now: &Reading) -> Option<Due> {
    let Some(base) = base else {
        return Some(Due::because(Reason::NoBaseline));
    };
    let reason = if !now.track_counts {
        Reason::NoStatistics
    } else if now.server_started != base.server_started || now.database != base.database {
        Reason::ServerRestarted
    } else if now.users_table != base.users_table
        || now.users_file != base.users_file
        || now.profiles_table != base.profiles_table
        || now.profiles_file != base.profiles_file
    {
        Reason::TableRewritten
    } else if now.stats_reset != base.stats_reset || now.went_backwards(base) {
        Reason::StatisticsReset
    } else if now.catalog != base.catalog {
        Reason::CatalogChanged
    } else {
        let unseen = now.unseen_since(base);
        return (unseen > 0).then_some(Due {
            reason: Reason::UnseenChanges,
            unseen,
        });
    };
    Some(Due::because(reason))
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
