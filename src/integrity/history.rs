//! Each check's value over time (`usersync.findings_history`, migration 0007): a row when a
//! check's value changes, written by the daemon's cycle that counted it, kept
//! `integrity.history_days` (the latest row of each check whatever its age) and at most
//! `integrity.history_max_rows` rows. `usersync check --history` prints it; the status page
//! draws the last seven days of each check and says when each current finding first appeared.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use super::CHECKS;
use crate::config::IntegritySettings;
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// One change of a check's value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub check: String,
    /// Unix time it was counted.
    pub at: f64,
    pub value: i64,
    /// The value before (0 before the first row).
    pub previous: i64,
}

// $1 the checks, $2 their values: a row for each value that differs from the check's latest
// (a first row only for a value that is not zero).
const RECORD: &str = "
    WITH written AS (
        INSERT INTO usersync.findings_history (check_name, value)
        SELECT v.check_name, v.value
        FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),
                        pg_catalog.unnest($2::pg_catalog.int8[])) AS v(check_name, value)
        LEFT JOIN LATERAL (SELECT h.value FROM usersync.findings_history h
                           WHERE h.check_name OPERATOR(pg_catalog.=) v.check_name
                           ORDER BY h.at DESC LIMIT 1) AS l ON true
        WHERE COALESCE(l.value, 0) OPERATOR(pg_catalog.<>) v.value
        ON CONFLICT DO NOTHING
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM written";

// $1 days kept, $2 rows kept: older rows and rows past the newest $2 go, except each check's
// latest.
const PRUNE: &str = "
    DELETE FROM usersync.findings_history h
    WHERE (h.at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $1))
           OR h.at OPERATOR(pg_catalog.<) (SELECT x.at FROM usersync.findings_history x
                                            ORDER BY x.at DESC OFFSET $2 LIMIT 1))
      AND h.at OPERATOR(pg_catalog.<) (SELECT pg_catalog.max(y.at) FROM usersync.findings_history y
                                        WHERE y.check_name OPERATOR(pg_catalog.=) h.check_name)";

/// Records what changed in `values` (one per check, as on the metric); prunes when it wrote.
/// Returns the rows written.
pub async fn record(
    client: &mut Client,
    values: &BTreeMap<&'static str, i64>,
    settings: &IntegritySettings,
) -> Result<u64> {
    let checks: Vec<&str> = values.keys().copied().collect();
    let counts: Vec<i64> = values.values().copied().collect();
    let tx = client
        .transaction()
        .await
        .context("recording the findings' history")?;
    // Writers serialise on a transaction-scoped advisory lock, so that two replicas that
    // counted the same change write it once.
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)",
        &[&crate::db::JOB_NAMESPACE, &crate::db::HISTORY_KEY],
    )
    .await
    .context("recording the findings' history")?;
    let written: i64 = tx
        .query_one(RECORD, &[&checks, &counts])
        .await
        .context("recording the findings' history")?
        .value(0)?;
    if written > 0 {
        let days = settings.history_days as i32;
        tx.execute(PRUNE, &[&days, &settings.history_max_rows])
            .await
            .context("pruning the findings' history")?;
    }
    tx.commit()
        .await
        .context("recording the findings' history")?;
    Ok(written as u64)
}

/// Every change since `since` (unix time), oldest first, each with the value before it.
pub async fn since(client: &Client, since: f64) -> Result<Vec<Change>> {
    let rows = client
        .query(
            "SELECT s.check_name, s.at, s.value, s.previous
             FROM (SELECT h.check_name, EXTRACT(EPOCH FROM h.at)::pg_catalog.float8 AS at, h.value,
                          COALESCE(pg_catalog.lag(h.value) OVER (PARTITION BY h.check_name
                                                                 ORDER BY h.at), 0) AS previous
                   FROM usersync.findings_history h) AS s
             WHERE s.at OPERATOR(pg_catalog.>=) $1
             ORDER BY s.at, s.check_name",
            &[&since],
        )
        .await
        .context("reading the findings' history")?;
    rows.iter()
        .map(|r| {
            Ok(Change {
                check: r.value(0)?,
                at: r.value(1)?,
                value: r.value(2)?,
                previous: r.value(3)?,
            })
        })
        .collect()
}

/// One check's line over a window: its value when the window opened, then each change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    pub check: &'static str,
    /// (unix time, value), the first at the window's start.
    pub points: Vec<(f64, i64)>,
    /// When the current run of non-zero values began (as far back as the history goes); None
    /// while the check's value is zero.
    pub first_seen: Option<f64>,
}

/// Each check's line since `since`, for the checks that were not zero at some time in it.
pub async fn lines(client: &Client, since: f64) -> Result<Vec<Line>> {
    let rows = client
        .query(
            "SELECT c.check_name, l.at, l.value, f.first_seen
             FROM pg_catalog.unnest($1::pg_catalog.text[]) AS c(check_name)
             CROSS JOIN LATERAL (
                 SELECT EXTRACT(EPOCH FROM h.at)::pg_catalog.float8 AS at, h.value
                 FROM usersync.findings_history h
                 WHERE h.check_name OPERATOR(pg_catalog.=) c.check_name
                   AND h.at OPERATOR(pg_catalog.>=) pg_catalog.to_timestamp($2)
                 UNION ALL
                 (SELECT $2, h.value FROM usersync.findings_history h
                  WHERE h.check_name OPERATOR(pg_catalog.=) c.check_name
                    AND h.at OPERATOR(pg_catalog.<) pg_catalog.to_timestamp($2)
                  ORDER BY h.at DESC LIMIT 1)) AS l
             CROSS JOIN LATERAL (
                 SELECT EXTRACT(EPOCH FROM pg_catalog.min(h.at))::pg_catalog.float8 AS first_seen
                 FROM usersync.findings_history h
                 WHERE h.check_name OPERATOR(pg_catalog.=) c.check_name
                   AND h.at OPERATOR(pg_catalog.>) COALESCE(
                       (SELECT pg_catalog.max(z.at) FROM usersync.findings_history z
                        WHERE z.check_name OPERATOR(pg_catalog.=) c.check_name
                          AND z.value OPERATOR(pg_catalog.=) 0), '-infinity')) AS f
             ORDER BY c.check_name, l.at",
            &[&CHECKS, &since],
        )
        .await
        .context("reading the findings' history")?;
    let mut lines: Vec<Line> = Vec::new();
    for r in &rows {
        let name: String = r.value(0)?;
        let Some(check) = CHECKS.iter().copied().find(|c| *c == name) else {
            continue;
        };
        let point = (r.value::<f64>(1)?, r.value::<i64>(2)?);
        match lines.last_mut() {
            Some(line) if line.check == check => line.points.push(point),
            _ => lines.push(Line {
                check,
                points: vec![point],
                first_seen: r.value(3)?,
            }),
        }
    }
    for line in &mut lines {
        if line.points.last().is_some_and(|p| p.1 == 0) {
            line.first_seen = None;
        }
    }
    lines.retain(|l| l.points.iter().any(|p| p.1 != 0));
    Ok(lines)
}
