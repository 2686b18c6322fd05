//! Every metric the daemon exports, registered in one place (prefix `usersync_`, base units,
//! counters end in `_total`, no user ids in labels). Every label value comes from one `ALL` of
//! its enum, so each series exists from the first scrape.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::job::{JobKind, Outcome};
use crate::sync::watch::Reason;

/// Where a profile usersync created came from: the `source` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Sweep,
    Repair,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Sweep, Source::Repair];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sweep => "sweep",
            Source::Repair => "repair",
        }
    }
}

/// Why the daemon closed an HTTP connection: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// It had sent no request while a newcomer needed its place.
    Evicted,
    /// Every place, the reserved ones too, was taken.
    Refused,
}

impl Closed {
    pub const ALL: [Closed; 2] = [Closed::Evicted, Closed::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Profiles created, by `source`.
    pub profiles_created: IntCounterVec,
    /// Job runs by `job` and `outcome`.
    pub runs: IntCounterVec,
    pub run_duration: HistogramVec,
    /// Users without a profile as last counted.
    pub users_missing_profile: IntGauge,
    /// Affected count per integrity check, as last counted.
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
    /// Connections the daemon closed to stay within `http.max_connections`, by `reason`.
    pub http_connections_closed: IntCounterVec,
    /// Full scans of auth.users by `reason`.
    pub full_scans: IntCounterVec,
    /// Changes usersync's triggers handled, as the cycles counted them in usersync.journal.
    pub changes_seen: IntCounter,
}

/// A metric's name, help and labels: the table below, one line each.
struct Def(&'static str, &'static str, &'static [&'static str]);

const PROFILES_CREATED: Def = Def(
    "usersync_profiles_created_total",
    "Profiles created by usersync",
    &["source"],
);
const RUNS: Def = Def(
    "usersync_job_runs_total",
    "Scheduled job runs by outcome",
    &["job", "outcome"],
);
const RUN_DURATION: Def = Def(
    "usersync_job_run_duration_seconds",
    "Duration of job runs",
    &["job"],
);
const MISSING: Def = Def(
    "usersync_users_missing_profile",
    "Live users without a profile, as last counted",
    &[],
);
const FINDINGS: Def = Def(
    "usersync_integrity_findings",
    "Affected count per integrity check",
    &["check"],
);
const LAST_SUCCESS: Def = Def(
    "usersync_last_success_timestamp_seconds",
    "Unix time of the last successful run per job",
    &["job"],
);
const LEADER: Def = Def(
    "usersync_leader",
    "1 while this process is running the job",
    &["job"],
);
const DATABASE_UP: Def = Def("usersync_database_up", "1 when PostgreSQL answers", &[]);
const QUEUE_DEPTH: Def = Def(
    "usersync_repair_queue_depth",
    "Items in usersync.repair_queue after the last repair pass",
    &[],
);
const LISTENER_UP: Def = Def(
    "usersync_repair_listener_up",
    "1 while the repair listener is listening for failed sign-ups",
    &[],
);
const START_TIME: Def = Def(
    "usersync_start_time_seconds",
    "Unix time the daemon started",
    &[],
);
const HTTP_REQUESTS: Def = Def(
    "usersync_http_requests_total",
    "HTTP requests by route and status code",
    &["route", "code"],
);
const HTTP_CLOSED: Def = Def(
    "usersync_http_connections_closed_total",
    "HTTP connections closed to stay within http.max_connections, by reason",
    &["reason"],
);
const FULL_SCANS: Def = Def(
    "usersync_full_scans_total",
    "Full scans of auth.users and the profiles, by what made one due",
    &["reason"],
);
const CHANGES_SEEN: Def = Def(
    "usersync_trigger_changes_total",
    "Users inserted or deleted and profiles deleted that usersync's triggers handled",
    &[],
);
const BUILD_INFO: Def = Def(
    "usersync_build_info",
    "Build information, always 1",
    &["version"],
);

const BUCKETS: [f64; 11] = [
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Makes the metric `d` defines and registers it.
struct Maker(Registry);

impl Maker {
    fn add<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        self.0
            .register(Box::new(collector.clone()))
            .expect("each metric is registered once");
        collector
    }

    fn counters(&self, d: Def) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(d.0, d.1), d.2).expect("valid"))
    }

    fn gauges(&self, d: Def) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(d.0, d.1), d.2).expect("valid"))
    }

    fn gauge(&self, d: Def) -> IntGauge {
        self.add(IntGauge::new(d.0, d.1).expect("valid"))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let make = Maker(Registry::new());
        let histogram = HistogramOpts::new(RUN_DURATION.0, RUN_DURATION.1).buckets(BUCKETS.into());
        let last_success = Opts::new(LAST_SUCCESS.0, LAST_SUCCESS.1);
        let m = Metrics {
            profiles_created: make.counters(PROFILES_CREATED),
            runs: make.counters(RUNS),
            run_duration: make.add(HistogramVec::new(histogram, RUN_DURATION.2).expect("valid")),
            users_missing_profile: make.gauge(MISSING),
            integrity_findings: make.gauges(FINDINGS),
            last_success: make.add(GaugeVec::new(last_success, LAST_SUCCESS.2).expect("valid")),
            leader: make.gauges(LEADER),
            database_up: make.gauge(DATABASE_UP),
            repair_queue_depth: make.gauge(QUEUE_DEPTH),
            listener_up: make.gauge(LISTENER_UP),
            start_time: make.add(Gauge::new(START_TIME.0, START_TIME.1).expect("valid")),
            http_requests: make.counters(HTTP_REQUESTS),
            http_connections_closed: make.counters(HTTP_CLOSED),
            full_scans: make.counters(FULL_SCANS),
            changes_seen: make.add(IntCounter::new(CHANGES_SEEN.0, CHANGES_SEEN.1).expect("valid")),
            registry: make.0.clone(),
        };
        let build = make.gauges(BUILD_INFO);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.label_every_series();
        m.start_time.set(now());
        m
    }

    /// Every label value known up front, so a series exists from the first scrape.
    fn label_every_series(&self) {
        for source in Source::ALL {
            self.profiles_created.with_label_values(&[source.as_str()]);
        }
        for job in JobKind::ALL.map(JobKind::name) {
            self.leader.with_label_values(&[job]).set(0);
            self.run_duration.with_label_values(&[job]);
            for outcome in Outcome::ALL {
                self.runs.with_label_values(&[job, outcome.as_str()]);
            }
        }
        for reason in Closed::ALL {
            self.http_connections_closed
                .with_label_values(&[reason.as_str()]);
        }
        for reason in Reason::ALL {
            self.full_scans.with_label_values(&[reason.as_str()]);
        }
        for check in crate::integrity::CHECKS {
            self.integrity_findings.with_label_values(&[check]).set(0);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("metrics are UTF-8")
    }

    /// This process runs `job` until the guard drops.
    pub fn leading(&self, job: JobKind) -> Leading {
        let gauge = self.leader.with_label_values(&[job.name()]);
        gauge.set(1);
        Leading(gauge)
    }

    pub fn created(&self, source: Source, n: u64) {
        self.profiles_created
            .with_label_values(&[source.as_str()])
            .inc_by(n);
    }

    pub fn closed(&self, reason: Closed) {
        self.http_connections_closed
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `usersync_leader{job}` at 1 while it lives, back at 0 however the run ends.
pub struct Leading(IntGauge);

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
