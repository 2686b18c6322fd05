//! What on-call looks at: the last run of each job and the last integrity findings, as the
//! jobs leave them; the status page (`GET /`, `GET /status`) shows it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::finding::Finding;
use crate::job::{JobKind, Outcome};

/// The last run of one job.
#[derive(Clone, Debug, Serialize)]
pub struct LastRun {
    pub outcome: Outcome,
    /// Unix time the run ended.
    pub finished_at: f64,
    pub duration_ms: f64,
    /// What it did, in a line: counts, never user ids.
    pub summary: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    /// By job.
    pub jobs: BTreeMap<JobKind, LastRun>,
    /// The findings of the last integrity check this process ran; None before the first.
    pub findings: Option<Vec<Finding>>,
    /// Unix time of that check.
    pub checked_at: Option<f64>,
}

#[derive(Default)]
pub struct Board {
    state: Mutex<State>,
}

impl Board {
    pub fn record(&self, job: JobKind, run: LastRun) {
        self.state
            .lock()
            .expect("not poisoned")
            .jobs
            .insert(job, run);
    }

    pub fn findings(&self, findings: Vec<Finding>, at: f64) {
        let mut state = self.state.lock().expect("not poisoned");
        state.findings = Some(findings);
        state.checked_at = Some(at);
    }

    pub fn snapshot(&self) -> State {
        self.state.lock().expect("not poisoned").clone()
    }
}
