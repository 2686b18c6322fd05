//! The status page for on-call: `GET /` (HTML, no external assets, readable on a phone, behind
//! `kubectl port-forward` or air-gapped) and `GET /status`, its JSON twin.
//!
//! It shows the last run of each job, the current integrity findings with their fix, the repair
//! queue, users missing a profile, version and uptime, and links to `/metrics`, `/readyz` and
//! the runbook. User ids, e-mails and the database's error messages (which can quote a row)
//! appear only with the API token, sent as for the users API.

mod page;

use std::time::Duration;

use serde::Serialize;

use crate::db::RowExt;
use crate::integrity::Finding;
use crate::job::{JobKind, Outcome};
use crate::state::Shared;
use crate::state::board::LastRun;

pub use page::html;

/// Where the runbook lives, as the alert rules link it.
pub const RUNBOOK: &str = "https://github.com/usersync/usersync/blob/main/deploy/RUNBOOK.md";

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub database_up: bool,
    /// What `/readyz` says: None when ready, else why not (for `permission`, what the role
    /// lacks).
    pub not_ready: Option<super::NotReady>,
    /// Live users without a profile, as last observed by a sweep or the integrity check.
    pub users_missing_profile: i64,
    pub jobs: Vec<Job>,
    /// None before this process ran its first integrity check.
    pub findings: Option<Vec<Finding>>,
    pub checked_at: Option<f64>,
    /// None when the database did not answer in time.
    pub repair_queue: Option<Queue>,
    /// Unix time the last full scan recorded in the database ended, whichever replica ran it;
    /// None when none is recorded or the database did not answer in time.
    pub last_full_scan: Option<f64>,
    /// The last seven days of each check that was not zero in them, with when its current
    /// findings first appeared (`usersync.findings_history`).
    pub history: Vec<crate::integrity::history::Line>,
    /// Whether ids and error messages are shown (the API token was sent).
    pub detailed: bool,
    pub runbook: &'static str,
}

#[derive(Serialize)]
pub struct Job {
    #[serde(skip)]
    pub kind: JobKind,
    pub job: &'static str,
    pub schedule: String,
    /// Unix time of its next tick, from the schedule; None for one that never comes.
    pub next_run: Option<f64>,
    pub last_run: Option<LastRun>,
}

#[derive(Serialize)]
pub struct Queue {
    pub depth: i64,
    /// Age of the oldest item, in seconds.
    pub oldest_secs: Option<f64>,
    /// The most common errors: SQLSTATE, how many, and (with the token) the latest message.
    pub errors: Vec<QueueError>,
}

#[derive(Serialize)]
pub struct QueueError {
    pub sqlstate: String,
    pub count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The page (`/`) or its JSON twin (`/status`).
pub async fn respond(
    shared: &Shared,
    readiness: &super::Readiness,
    detailed: bool,
    as_json: bool,
) -> hyper::Response<super::Body> {
    use hyper::{StatusCode, header};
    let status = collect(shared, readiness, detailed).await;
    if as_json {
        let body = serde_json::to_string(&status).expect("the status serializes");
        return super::json(StatusCode::OK, body);
    }
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'",
        )
        .body(http_body_util::Full::new(hyper::body::Bytes::from(html(
            &status,
        ))))
        .expect("a valid response")
}

/// Everything the page shows, now.
pub async fn collect(shared: &Shared, readiness: &super::Readiness, detailed: bool) -> Status {
    let board = shared.board.snapshot();
    let jobs = JobKind::ALL
        .iter()
        .map(|&job| {
            let schedule = job.schedule(&shared.settings).to_string();
            let mut last_run = board.jobs.get(&job).cloned();
            if let Some(run) = last_run.as_mut()
                && run.outcome == Outcome::Error
                && !detailed
            {
                run.summary = "the run failed; the daemon's log has the error".into();
            }
            Job {
                kind: job,
                job: job.name(),
                next_run: crate::job::next_tick(&schedule),
                schedule,
                last_run,
            }
        })
        .collect();
    let findings = board.findings.map(|findings| {
        findings
            .into_iter()
            .map(|mut f| {
                if !detailed {
                    f.samples.clear();
                    if f.check == "repair_queue_failing" {
                        f.detail =
                            "their profile cannot be created (the error: with the token)".into();
                    }
                }
                f
            })
            .collect()
    });
    let read = tokio::time::timeout(Duration::from_secs(2), from_database(shared, detailed))
        .await
        .ok()
        .flatten();
    let (repair_queue, last_full_scan, history) = match read {
        Some(read) => (Some(read.queue), read.last_full_scan, read.history),
        None => (None, None, Vec::new()),
    };
    let not_ready = readiness.check(shared).await.err();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: (crate::metrics::now() - shared.metrics.start_time.get()).max(0.0) as u64,
        database_up: shared.metrics.database_up.get() == 1,
        not_ready,
        users_missing_profile: shared.metrics.users_missing_profile.get(),
        jobs,
        findings,
        checked_at: board.checked_at,
        repair_queue,
        last_full_scan,
        history,
        detailed,
        runbook: RUNBOOK,
    }
}

/// What the page reads from the database itself.
struct FromDatabase {
    queue: Queue,
    last_full_scan: Option<f64>,
    history: Vec<crate::integrity::history::Line>,
}

/// The page's small queries (the repair queue, when the last full scan ended, the findings'
/// history) run within the API's share of the pool: however many clients ask for `/`, the
/// jobs and readiness keep their connections (no permit free: nothing from the database shown).
async fn from_database(shared: &Shared, detailed: bool) -> Option<FromDatabase> {
    let _permit = shared.api_permits.try_acquire().ok()?;
    let client = shared.db.get_within(Duration::from_secs(1)).await.ok()?;
    let head = client
        .query_one(
            "SELECT pg_catalog.count(*),
                    EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.min(q.first_failed_at))::float8
             FROM usersync.repair_queue q",
            &[],
        )
        .await
        .ok()?;
    let errors = client
        .query(
            "SELECT q.last_sqlstate, pg_catalog.count(*),
                    (pg_catalog.array_agg(q.last_error ORDER BY q.last_failed_at DESC))[1]
             FROM usersync.repair_queue q
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
            &[],
        )
        .await
        .ok()?;
    let errors = errors
        .iter()
        .map(|r| {
            Some(QueueError {
                sqlstate: r.value(0).ok()?,
                count: r.value(1).ok()?,
                message: if detailed { r.value(2).ok()? } else { None },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let scan = client
        .query_opt(
            "SELECT EXTRACT(EPOCH FROM s.finished_at)::float8 FROM usersync.scan_state s",
            &[],
        )
        .await
        .ok()?;
    let last_full_scan = match scan {
        Some(row) => Some(row.value(0).ok()?),
        None => None,
    };
    let week_ago = crate::metrics::now() - 7.0 * 86_400.0;
    // Before migration 0007 there is no history: none shown.
    let history = crate::integrity::history::lines(&client, week_ago)
        .await
        .unwrap_or_default();
    let queue = Queue {
        depth: head.value(0).ok()?,
        oldest_secs: head.value(1).ok()?,
        errors,
    };
    Some(FromDatabase {
        queue,
        last_full_scan,
        history,
    })
}
