//! Every metric the daemon exports, registered in one place (prefix `usersync_`, base units,
//! counters end in `_total`, no user ids in labels).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// How a job run ended: the only values of the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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

pub struct Metrics {
    registry: Registry,
    /// Profiles created, by `source`: sweep or repair.
    pub profiles_created: IntCounterVec,
    /// Job runs by `job` and `outcome`: success, failed (a user failed), error (the run
    /// failed), skipped (the previous run was still going), busy (another replica ran it).
    pub runs: IntCounterVec,
    pub run_duration: HistogramVec,
    /// Users without a profile as last observed by a sweep or the integrity check.
    pub users_missing_profile: IntGauge,
    /// Affected count per integrity check, as last observed.
    pub integrity_findings: IntGaugeVec,
    /// Unix time of the last successful run per job.
    pub last_success: GaugeVec,
    /// 1 while this process is the one running the job.
    pub leader: IntGaugeVec,
    /// 1 when the last contact with PostgreSQL succeeded.
    pub database_up: IntGauge,
    pub repair_queue_depth: IntGauge,
    /// 1 while the repair listener holds LISTEN on its own connection.
    pub listener_up: IntGauge,
    pub start_time: Gauge,
    /// HTTP requests by `route` (a fixed set) and status `code`.
    pub http_requests: IntCounterVec,
    /// Connections the daemon closed to stay within `http.max_connections`, by `reason`:
    /// evicted (waited for a request head while a newcomer needed room) or refused.
    pub http_connections_closed: IntCounterVec,
    /// Full scans of auth.users by `reason` (crate::sync::watch::Reason).
    pub full_scans: IntCounterVec,
    /// Changes usersync's triggers handled, as the cycles counted them in usersync.journal.
    pub changes_seen: prometheus::IntCounter,
}

impl Metrics {
    // Long on purpose: the registration list of every metric: one place, so nothing is exported
    // twice or forgotten.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            registry: registry.clone(),
            profiles_created: IntCounterVec::new(
                Opts::new(
                    "usersync_profiles_created_total",
                    "Profiles created by usersync",
                ),
                &["source"],
            )
            .unwrap(),
            runs: IntCounterVec::new(
                Opts::new("usersync_job_runs_total", "Scheduled job runs by outcome"),
                &["job", "outcome"],
            )
            .unwrap(),
            run_duration: HistogramVec::new(
                HistogramOpts::new("usersync_job_run_duration_seconds", "Duration of job runs")
                    .buckets(vec![
                        0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
                    ]),
                &["job"],
            )
            .unwrap(),
            users_missing_profile: IntGauge::new(
                "usersync_users_missing_profile",
                "Live users without a profile, as last observed",
            )
            .unwrap(),
            integrity_findings: IntGaugeVec::new(
                Opts::new(
                    "usersync_integrity_findings",
                    "Affected count per integrity check",
                ),
                &["check"],
            )
            .unwrap(),
            last_success: GaugeVec::new(
                Opts::new(
                    "usersync_last_success_timestamp_seconds",
                    "Unix time of the last successful run per job",
                ),
                &["job"],
            )
            .unwrap(),
            leader: IntGaugeVec::new(
                Opts::new("usersync_leader", "1 while this process is running the job"),
                &["job"],
            )
            .unwrap(),
            database_up: IntGauge::new("usersync_database_up", "1 when PostgreSQL answers")
                .unwrap(),
            repair_queue_depth: IntGauge::new(
                "usersync_repair_queue_depth",
                "Items in usersync.repair_queue after the last repair pass",
            )
            .unwrap(),
            listener_up: IntGauge::new(
                "usersync_repair_listener_up",
                "1 while the repair listener is listening for failed sign-ups",
            )
            .unwrap(),
            start_time: Gauge::new(
                "usersync_start_time_seconds",
                "Unix time the daemon started",
            )
            .unwrap(),
            http_requests: IntCounterVec::new(
                Opts::new(
                    "usersync_http_requests_total",
                    "HTTP requests by route and status code",
                ),
                &["route", "code"],
            )
            .unwrap(),
            http_connections_closed: IntCounterVec::new(
                Opts::new(
                    "usersync_http_connections_closed_total",
                    "HTTP connections closed to stay within http.max_connections, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            full_scans: IntCounterVec::new(
                Opts::new(
                    "usersync_full_scans_total",
                    "Full scans of auth.users and the profiles, by what made one due",
                ),
                &["reason"],
            )
            .unwrap(),
            changes_seen: prometheus::IntCounter::new(
                "usersync_trigger_changes_total",
                "Users inserted or deleted and profiles deleted that usersync's triggers handled",
            )
            .unwrap(),
        };
        let build_info = IntGaugeVec::new(
            Opts::new("usersync_build_info", "Build information, always 1"),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info)).unwrap();
        for c in [
            Box::new(m.profiles_created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.runs.clone()),
            Box::new(m.run_duration.clone()),
            Box::new(m.users_missing_profile.clone()),
            Box::new(m.integrity_findings.clone()),
            Box::new(m.last_success.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.database_up.clone()),
            Box::new(m.repair_queue_depth.clone()),
            Box::new(m.listener_up.clone()),
            Box::new(m.start_time.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_connections_closed.clone()),
            Box::new(m.full_scans.clone()),
            Box::new(m.changes_seen.clone()),
        ] {
            registry.register(c).unwrap();
        }
        // Every label value known up front, so a series exists from the first scrape.
        for source in ["sweep", "repair"] {
            m.profiles_created.with_label_values(&[source]);
        }
        for job in crate::daemon::JobKind::LABELLED.map(crate::daemon::JobKind::name) {
            m.leader.with_label_values(&[job]).set(0);
            m.run_duration.with_label_values(&[job]);
            for outcome in Outcome::ALL {
                m.runs.with_label_values(&[job, outcome.as_str()]);
            }
        }
        for reason in ["evicted", "refused"] {
            m.http_connections_closed.with_label_values(&[reason]);
        }
        for reason in crate::sync::watch::Reason::LABELS {
            m.full_scans.with_label_values(&[reason]);
        }
        for check in crate::integrity::CHECKS {
            m.integrity_findings.with_label_values(&[check]).set(0);
        }
        m.start_time.set(now());
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `usersync_leader{job}` at 1 while it lives, back at 0 however the run ends.
pub struct Leading(IntGauge);

impl Metrics {
    /// This process runs `job` until the guard drops.
    pub fn leading(&self, job: &str) -> Leading {
        let gauge = self.leader.with_label_values(&[job]);
        gauge.set(1);
        Leading(gauge)
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
