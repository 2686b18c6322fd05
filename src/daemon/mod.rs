//! `usersync run`: the schedules, the repair listener, the health monitor, the HTTP server,
//! until shutdown.
//!
//! [`run`] takes the listener and the shutdown signal from its caller, so a test binds port 0
//! and drives the real daemon. Every task it starts (HTTP, the health monitor, the repair
//! listener, the watchdog, each job run) is on one `TaskTracker` and watches one
//! `CancellationToken`: on shutdown the token is cancelled (HTTP stops accepting, passes stop
//! between batches, the rest end), the scheduler stops, and the tracker is awaited up to the
//! grace period before the pool closes. The database going away never ends it: jobs fail and
//! are retried on their next tick, the health monitor and the listener back off and reconnect.
//!
//! A scheduled tick runs its job through [`cycle`] (one look, one decision, one typed result),
//! and [`publish`] puts the result on the metrics, the board and the log.

pub mod cycle;
mod listener;
mod monitor;
mod publish;
mod systemd;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::Instrument;

use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
use crate::http;
use crate::job::JobKind;
use crate::state::Shared;
use crate::state::board::LastRun;

/// Runs the daemon until `shutdown` resolves; returns once everything has stopped.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Shared::new(settings)?;
    let grace = shared.settings.daemon.shutdown_grace;
    tracing::info!(
        listen = %listener.local_addr().io_context("reading the listen address")?,
        database = %shared.db.target(),
        "usersync daemon starting"
    );

    shared.tasks.spawn(http::serve(listener, shared.clone()));
    shared.until_shutdown(monitor::run(shared.clone()));
    shared.until_shutdown(listener::run(shared.clone()));
    let mut scheduler = schedule(&shared).await?;
    shared.until_shutdown(systemd::watchdog(shared.clone()));
    systemd::notify("READY=1");

    tokio::select! {
        () = shutdown => {}
        () = shared.shutdown.cancelled() => {}
    }
    systemd::notify("STOPPING=1");
    let started = Instant::now();
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    // HTTP stops accepting, passes stop after their current batch, the other tasks end.
    shared.shutdown.cancel();
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %crate::error::Chain(&Error::from(e)), "stopping the scheduler");
    }
    shared.tasks.close();
    if tokio::time::timeout(grace, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over with a task still running; its current batch is abandoned"
        );
    }
    shared.db.pool.close();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "usersync daemon stopped"
    );
    match shared.take_failure() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// A job on a schedule: the integrity check's probe schedule runs the integrity job with the
/// rolled-back delete probe.
#[derive(Clone, Copy)]
struct Scheduled {
    job: JobKind,
    probe: bool,
}

async fn schedule(shared: &Arc<Shared>) -> Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let s = &shared.settings;
    let mut schedules: Vec<(Scheduled, String)> = JobKind::ALL
        .iter()
        .map(|&job| (Scheduled { job, probe: false }, job.schedule(s).to_string()))
        .collect();
    if let Some(probe) = &s.integrity.probe_schedule {
        let job = JobKind::Integrity;
        schedules.push((Scheduled { job, probe: true }, probe.clone()));
    }
    for (scheduled, expr) in schedules {
        let shared = shared.clone();
        let job = Job::new_async(expr.as_str(), move |_, _| {
            let shared = shared.clone();
            Box::pin(async move {
                // The run is a task of its own, tracked: a long sweep never delays the
                // scheduler, and shutdown waits for it.
                let tasks = shared.tasks.clone();
                tasks.spawn(tick(shared, scheduled));
            })
        })?;
        scheduler.add(job).await?;
    }
    let beat = shared.clone();
    let heartbeat = Job::new_async("*/5 * * * * *", move |_, _| {
        let beat = beat.clone();
        Box::pin(async move { beat.beat() })
    })?;
    scheduler.add(heartbeat).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// A scheduled tick: runs the job unless its previous run in this process is still going.
async fn tick(shared: Arc<Shared>, scheduled: Scheduled) {
    let job = scheduled.job;
    let Ok(_running) = shared.locks.job(job).try_lock() else {
        publish::run(&shared, job, Ok(cycle::Done::Skipped), Duration::ZERO);
        return;
    };
    execute(&shared, scheduled).await;
}

/// One run, in a span of its own, published once.
async fn execute(shared: &Arc<Shared>, scheduled: Scheduled) -> Option<LastRun> {
    let job = scheduled.job;
    if shared.shutdown.is_cancelled() {
        return None;
    }
    if !shared.may_write() {
        tracing::debug!(
            job = job.name(),
            "the database has not been reached yet; tick skipped"
        );
        return None;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let span = tracing::info_span!("job", job = job.name(), run_id = %run_id);
    async {
        let started = Instant::now();
        let done = cycle::tick(shared, job, scheduled.probe).await;
        Some(publish::run(shared, job, done, started.elapsed()))
    }
    .instrument(span)
    .await
}

/// Runs one job now, as its schedule would (skipped if its previous run is still going), and
/// returns its board row: for tests and benchmarks that step the daemon run by run.
pub async fn run_job(shared: &Arc<Shared>, job: JobKind) -> LastRun {
    if !shared.may_write()
        && let Err(e) = shared.check_pooling().await
    {
        panic!("run_job: {}", crate::error::Chain(&e));
    }
    let scheduled = Scheduled { job, probe: false };
    let Ok(_running) = shared.locks.job(job).try_lock() else {
        return publish::run(shared, job, Ok(cycle::Done::Skipped), Duration::ZERO);
    };
    execute(shared, scheduled)
        .await
        .unwrap_or_else(|| panic!("run_job: {} did not run (shutting down)", job.name()))
}

/// A repair the listener asks for: waits for a drain that is running (never lost to a skip),
/// then runs one as the repair job.
async fn repair_now(shared: &Arc<Shared>) {
    let _drain = shared.locks.drain.lock().await;
    execute(
        shared,
        Scheduled {
            job: JobKind::Repair,
            probe: false,
        },
    )
    .await;
}
