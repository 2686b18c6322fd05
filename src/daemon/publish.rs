//! A run's typed result, published once: its metrics, its line on the board, its findings, one
//! log line. Whatever job ran a full scan, the full scan's own metrics and board row follow.

use std::time::Duration;

use super::cycle::{Done, FullScan};
use crate::error::Result;
use crate::integrity;
use crate::job::{JobKind, Outcome};
use crate::metrics::{self, Source};
use crate::state::Shared;
use crate::state::board::LastRun;
use crate::sync::repair::RepairReport;

/// Publishes how `job`'s run ended; returns its board row.
pub fn run(shared: &Shared, job: JobKind, done: Result<Done>, took: Duration) -> LastRun {
    let m = &shared.metrics;
    m.run_duration
        .with_label_values(&[job.name()])
        .observe(took.as_secs_f64());
    // The log line has the findings' count; the board's row leaves it to the findings panel.
    let (outcome, line, summary) = match &done {
        Ok(done) => (done.outcome(), done.to_string(), format!("{done:#}")),
        Err(e) => {
            if e.is_unreachable() {
                shared.database_down();
            }
            let chain = crate::error::Chain(e).to_string();
            (Outcome::Error, chain.clone(), chain)
        }
    };
    if let Ok(done) = &done {
        effects(shared, done, took);
    }
    if outcome.ran() {
        m.database_up.set(1);
        stamp(shared, job);
    }
    m.runs
        .with_label_values(&[job.name(), outcome.as_str()])
        .inc();
    let last = LastRun {
        outcome,
        finished_at: metrics::now(),
        duration_ms: took.as_secs_f64() * 1e3,
        summary,
    };
    match outcome {
        Outcome::Error => {
            tracing::warn!(error = %line, "job run failed; retried on its next tick")
        }
        Outcome::Skipped | Outcome::Busy => {
            tracing::debug!(summary = %line, "job run not needed")
        }
        _ => tracing::info!(outcome = outcome.as_str(), duration_ms = took.as_millis() as u64,
            summary = %line, "job run ended"),
    }
    if outcome != Outcome::Skipped {
        shared.board.record(job, last.clone());
    }
    last
}

fn stamp(shared: &Shared, job: JobKind) {
    shared
        .metrics
        .last_success
        .with_label_values(&[job.name()])
        .set(metrics::now());
}

/// What a finished run changes beyond its own row: counters, gauges, findings.
fn effects(shared: &Shared, done: &Done, took: Duration) {
    let m = &shared.metrics;
    match done {
        Done::Quiet {
            handled, repair, ..
        } => {
            m.changes_seen.inc_by(*handled);
            repaired(shared, repair);
        }
        Done::Repaired(repair) => repaired(shared, repair),
        Done::Checked {
            handled, report, ..
        } => {
            m.changes_seen.inc_by(*handled);
            findings(shared, report);
        }
        Done::FullScan(scan) => full_scan(shared, scan, done, took),
        Done::Skipped | Done::Busy(_) => {}
    }
}

fn repaired(shared: &Shared, repair: &RepairReport) {
    shared.metrics.created(Source::Repair, repair.created);
    shared
        .metrics
        .repair_queue_depth
        .set(repair.remaining as i64);
}

/// The full scan's own metrics and board row, whichever job ran it: its staleness alert watches
/// them, and the status page shows them as the full scan's last run.
fn full_scan(shared: &Shared, scan: &FullScan, done: &Done, took: Duration) {
    let m = &shared.metrics;
    m.changes_seen.inc_by(scan.handled);
    repaired(shared, &scan.repair);
    m.created(Source::Sweep, scan.sync.created);
    if let Some(repair) = &scan.sync.repair {
        m.created(Source::Repair, repair.created);
    }
    m.full_scans
        .with_label_values(&[scan.due.reason.as_str()])
        .inc();
    findings(shared, &scan.checks);
    if done.outcome().ran() {
        stamp(shared, JobKind::FullScan);
    }
    shared.board.record(
        JobKind::FullScan,
        LastRun {
            outcome: done.outcome(),
            finished_at: metrics::now(),
            duration_ms: took.as_secs_f64() * 1e3,
            summary: format!("{done:#}"),
        },
    );
}

/// An integrity report's findings on the metrics and the board: one value per check.
fn findings(shared: &Shared, report: &integrity::Report) {
    let m = &shared.metrics;
    let values = report.values();
    for (check, value) in &values {
        m.integrity_findings.with_label_values(&[check]).set(*value);
    }
    m.users_missing_profile.set(values["missing_profile"]);
    shared
        .board
        .findings(report.findings.clone(), metrics::now());
}
