//! The daemon's jobs and how a run of one ends: the vocabulary the metrics' labels, the status
//! page's rows and the schedules share. It knows nothing of the daemon itself.

use serde::Serialize;

use crate::config::Settings;

/// A job with a schedule of its own (and a `job` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The cheap look at the statistics, then the repair queue; the full scan when due.
    Sweep,
    /// The repair queue of failed sign-ups.
    Repair,
    /// The catalog checks and whichever data checks are due; the full scan when due.
    Integrity,
    /// The sweep and every integrity check over the two whole tables.
    FullScan,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::Sweep,
        JobKind::Repair,
        JobKind::Integrity,
        JobKind::FullScan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::Sweep => "sweep",
            JobKind::Repair => "repair",
            JobKind::Integrity => "integrity",
            JobKind::FullScan => "full_scan",
        }
    }

    /// Its cron expression in `settings`.
    pub fn schedule(self, settings: &Settings) -> &str {
        match self {
            JobKind::Sweep => &settings.sync.schedule,
            JobKind::Repair => &settings.sync.repair_schedule,
            JobKind::Integrity => &settings.integrity.schedule,
            JobKind::FullScan => &settings.sync.full_scan_schedule,
        }
    }
}

/// How a job run ended: the only values of the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran, and every user it handled is done.
    Success,
    /// It ran, and some user's profile could not be made.
    Failed,
    /// It did not run through (the database went away, a statement failed).
    Error,
    /// The previous run was still going.
    Skipped,
    /// Another replica ran it.
    Busy,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::Error,
        Outcome::Skipped,
        Outcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::Busy => "busy",
        }
    }

    /// Whether the run went through (`last_success` counts it).
    pub fn ran(self) -> bool {
        matches!(self, Outcome::Success | Outcome::Failed)
    }
}

/// Unix time of the next tick of a cron expression (seconds first, UTC, as the scheduler reads
/// it), None for one that never comes.
pub fn next_tick(expr: &str) -> Option<f64> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .ok()?;
    let next = cron.find_next_occurrence(&chrono::Utc::now(), false).ok()?;
    Some(next.timestamp_millis() as f64 / 1e3)
}
