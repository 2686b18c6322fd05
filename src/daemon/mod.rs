//! `usersync run`: the schedules, the repair listener, the HTTP server, until shutdown.
//!
//! [`run`] takes the listener and the shutdown signal from its caller, so a test binds port 0
//! and drives the real daemon. On shutdown it stops accepting HTTP, tells running passes to
//! stop between batches, stops the scheduler, waits for in-flight work up to the grace period
//! and closes the pool. The database going away never ends it: jobs fail and are retried on
//! their next tick, the health monitor and the listener back off and reconnect.

pub mod board;
mod jobs;
mod listener;
mod systemd;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::Settings;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::http;
use crate::metrics::{self, Metrics};

pub use jobs::JobKind;

/// What every task of the daemon shares.
pub struct Shared {
    pub settings: Settings,
    pub db: Db,
    pub metrics: Metrics,
    /// The last run of each job and the last findings, for the status page.
    pub board: board::Board,
    /// Whether the next sweep applies the lifecycle policies to every profile: true at start,
    /// then as the integrity check last counted (it reads what that takes anyway).
    pub lifecycle_due: std::sync::atomic::AtomicBool,
    /// The users API's share of the pool: one permit per connection it may hold.
    pub api_permits: tokio::sync::Semaphore,
    /// Turns true on shutdown: passes stop between batches.
    pub stop: watch::Receiver<bool>,
    /// Unix time of the scheduler's last heartbeat: liveness.
    heartbeat: AtomicU64,
    jobs: jobs::Jobs,
}

impl Shared {
    /// Whether the process and its scheduler are alive: the heartbeat job ran lately.
    pub fn alive(&self) -> bool {
        let last = self.heartbeat.load(Ordering::Relaxed) as f64;
        metrics::now() - last < 30.0
    }

    fn beat(&self) {
        self.heartbeat
            .store(metrics::now() as u64, Ordering::Relaxed);
    }

    /// Records a failed contact with PostgreSQL.
    pub fn database_down(&self) {
        self.metrics.database_up.set(0);
    }
}

/// Runs the daemon until `shutdown` resolves; returns once everything has stopped.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let db = db::pool(&settings.database)?;
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        db,
        metrics: Metrics::new(),
        api_permits: tokio::sync::Semaphore::new(settings.api.max_db_connections),
        board: board::Board::default(),
        lifecycle_due: std::sync::atomic::AtomicBool::new(true),
        stop,
        heartbeat: AtomicU64::new(metrics::now() as u64),
        jobs: jobs::Jobs::default(),
        settings,
    });
    let grace = shared.settings.daemon.shutdown_grace;
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| Error::Io { context: "reading the listen address".into(), source: e })?,
        database = %shared.db.target(),
        "usersync daemon starting"
    );

    let (http_stop_tx, http_stop) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, shared.clone(), http_stop));
    let monitor = tokio::spawn(monitor_database(shared.clone()));
    let repair_listener = tokio::spawn(listener::run(shared.clone()));
    let mut scheduler = schedule(&shared).await?;
    let watchdog = tokio::spawn(systemd::watchdog(shared.clone()));
    systemd::notify("READY=1");

    shutdown.await;
    systemd::notify("STOPPING=1");
    watchdog.abort();
    let started = Instant::now();
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    let _ = http_stop_tx.send(true);
    let _ = stop_tx.send(true);
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "stopping the scheduler");
    }
    monitor.abort();
    repair_listener.abort();
    // In-flight passes stop after their current batch; give them the grace period.
    while shared.jobs.any_running() && started.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if shared.jobs.any_running() {
        tracing::warn!(
            "grace period over with a pass still running; its current batch is abandoned"
        );
    }
    let _ = tokio::time::timeout(grace.saturating_sub(started.elapsed()), server).await;
    shared.db.pool.close();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "usersync daemon stopped"
    );
    Ok(())
}

async fn schedule(shared: &Arc<Shared>) -> Result<JobScheduler> {
    let fail =
        |e: tokio_cron_scheduler::JobSchedulerError| Error::Internal(format!("scheduler: {e}"));
    let scheduler = JobScheduler::new().await.map_err(fail)?;
    let s = &shared.settings;
    let mut schedules = vec![
        (JobKind::Sweep, s.sync.schedule.clone()),
        (JobKind::Repair, s.sync.repair_schedule.clone()),
        (JobKind::Integrity, s.integrity.schedule.clone()),
    ];
    if let Some(probe) = &s.integrity.probe_schedule {
        schedules.push((JobKind::IntegrityProbe, probe.clone()));
    }
    for (kind, expr) in schedules {
        let shared = shared.clone();
        let job = Job::new_async(expr.as_str(), move |_, _| {
            let shared = shared.clone();
            Box::pin(async move {
                // The job runs on its own task: a long sweep never delays the scheduler.
                tokio::spawn(jobs::run(shared, kind));
            })
        })
        .map_err(fail)?;
        scheduler.add(job).await.map_err(fail)?;
    }
    let beat = shared.clone();
    let heartbeat = Job::new_async("*/5 * * * * *", move |_, _| {
        let beat = beat.clone();
        Box::pin(async move { beat.beat() })
    })
    .map_err(fail)?;
    scheduler.add(heartbeat).await.map_err(fail)?;
    scheduler.start().await.map_err(fail)?;
    Ok(scheduler)
}

/// Pings PostgreSQL on a connection of its own: every 5 s while it answers; when it does not,
/// reconnects after a backoff that doubles from 1 s up to 30 s. Keeps `usersync_database_up`
/// true. Its own connection, not the pool's: a pool held by the jobs, the API or a lock says
/// nothing about whether the database is up.
async fn monitor_database(shared: Arc<Shared>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let connected = tokio::time::timeout(
            shared.settings.database.connect_timeout + Duration::from_secs(1),
            shared.db.connect_dedicated("usersync-monitor"),
        )
        .await;
        if let Ok(Ok((client, connection))) = connected {
            let driver = tokio::spawn(connection);
            if db::pin_session(&client, shared.db.timeouts()).await.is_ok() {
                if shared.metrics.database_up.get() == 0 {
                    tracing::info!("database reachable");
                }
                backoff = Duration::from_secs(1);
                loop {
                    shared.metrics.database_up.set(1);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let ping = tokio::time::timeout(
                        Duration::from_secs(5),
                        client.simple_query("SELECT 1"),
                    )
                    .await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
                driver.abort();
                // A lost session is reconnected at once; the backoff is for failing connects.
                continue;
            }
            driver.abort();
        }
        if shared.metrics.database_up.get() == 1 {
            tracing::warn!(database = %shared.db.target(), "database unreachable; retrying with backoff");
        }
        shared.database_down();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
