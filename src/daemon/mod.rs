//! `usersync run`: the schedules, the repair listener, the HTTP server, until shutdown.
//!
//! [`run`] takes the listener and the shutdown signal from its caller, so a test binds port 0
//! and drives the real daemon. Every task it starts (HTTP, the health monitor, the repair
//! listener, the watchdog, each job run) is on one `TaskTracker` and watches one
//! `CancellationToken`: on shutdown the token is cancelled (HTTP stops accepting, passes stop
//! between batches, the rest end), the scheduler stops, and the tracker is awaited up to the
//! grace period before the pool closes. The database going away never ends it: jobs fail and are retried on
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
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db::{self, Db};
use crate::error::IoContext;
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
    /// The users API's share of the pool: one permit per connection it may hold.
    pub api_permits: tokio::sync::Semaphore,
    /// Cancelled on shutdown: passes stop between batches, every task ends.
    pub shutdown: CancellationToken,
    /// Every task of the daemon, its job runs included: shutdown waits for them.
    pub tasks: TaskTracker,
    /// Unix time of the scheduler's last heartbeat: liveness.
    heartbeat: AtomicU64,
    jobs: jobs::Jobs,
    /// What ended the daemon from inside (a transaction-mode pooler behind `database.url`):
    /// `run` returns it once everything has stopped.
    fatal: std::sync::Mutex<Option<Error>>,
    /// Set once the health monitor found `database.url` is not a transaction-mode pooler: no job
    /// writes before that.
    pooling_checked: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The daemon's state, its pool not yet connected.
    pub fn new(settings: Settings) -> Result<Arc<Shared>> {
        let db = db::pool(&settings.database)?;
        Ok(Arc::new(Shared {
            db,
            metrics: Metrics::new(),
            api_permits: tokio::sync::Semaphore::new(settings.api.max_db_connections),
            board: board::Board::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            heartbeat: AtomicU64::new(metrics::now() as u64),
            jobs: jobs::Jobs::default(),
            fatal: std::sync::Mutex::new(None),
            pooling_checked: std::sync::atomic::AtomicBool::new(false),
            settings,
        }))
    }

    /// Runs one job now, as its schedule would, and returns how it went (what the status page
    /// shows): for tests and benchmarks that step the daemon cycle by cycle.
    pub async fn run_job(self: &Arc<Shared>, kind: JobKind) -> board::LastRun {
        if !self.may_write()
            && let Err(e) = self.check_pooling().await
        {
            panic!("run_job: {}", crate::error::Chain(&e));
        }
        jobs::run(self.clone(), kind).await;
        self.board
            .snapshot()
            .jobs
            .get(kind.name())
            .cloned()
            .expect("the job recorded its run")
    }

    /// Whether the process and its scheduler are alive: the heartbeat job ran lately.
    pub fn alive(&self) -> bool {
        let last = self.heartbeat.load(Ordering::Relaxed) as f64;
        metrics::now() - last < 30.0
    }

    fn beat(&self) {
        self.heartbeat
            .store(metrics::now() as u64, Ordering::Relaxed);
    }

    /// Runs `task` on the tracker until it ends or shutdown comes.
    fn until_shutdown(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Records a failed contact with PostgreSQL.
    pub fn database_down(&self) {
        self.metrics.database_up.set(0);
    }

    /// Refuses a transaction-mode pooler behind `database.url`; once it has passed, jobs run.
    async fn check_pooling(&self) -> Result<()> {
        db::pooler::refuse_transaction_pooler(&self.db).await?;
        self.pooling_checked.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether jobs may run: the connection is known not to be a transaction-mode pooler.
    fn may_write(&self) -> bool {
        self.pooling_checked.load(Ordering::Acquire)
    }

    /// Ends the daemon with `error` (exit code and all), as a signal would end it.
    fn fail(&self, error: Error) {
        tracing::error!(error = %crate::error::Chain(&error), "stopping");
        *self.fatal.lock().expect("not poisoned") = Some(error);
        self.shutdown.cancel();
    }
}

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
    shared.until_shutdown(monitor_database(shared.clone()));
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
    match shared.fatal.lock().expect("not poisoned").take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn schedule(shared: &Arc<Shared>) -> Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let s = &shared.settings;
    let mut schedules = vec![
        (JobKind::Sweep, s.sync.schedule.clone()),
        (JobKind::Repair, s.sync.repair_schedule.clone()),
        (JobKind::Integrity, s.integrity.schedule.clone()),
        (JobKind::FullScan, s.sync.full_scan_schedule.clone()),
    ];
    if let Some(probe) = &s.integrity.probe_schedule {
        schedules.push((JobKind::IntegrityProbe, probe.clone()));
    }
    for (kind, expr) in schedules {
        let shared = shared.clone();
        let job = Job::new_async(expr.as_str(), move |_, _| {
            let shared = shared.clone();
            Box::pin(async move {
                // The job runs on its own task, tracked: a long sweep never delays the
                // scheduler, and shutdown waits for it.
                let tasks = shared.tasks.clone();
                tasks.spawn(jobs::run(shared, kind));
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

/// Pings PostgreSQL on a connection of its own: every 5 s while it answers; when it does not,
/// reconnects after a backoff that doubles from 1 s up to 30 s. Keeps `usersync_database_up`
/// true. Its own connection, not the pool's: a pool held by the jobs, the API or a lock says
/// nothing about whether the database is up.
async fn monitor_database(shared: Arc<Shared>) {
    let mut backoff = Duration::from_secs(1);
    let mut pooling_checked = false;
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
                // Once, at the first contact: a transaction-mode pooler ends the daemon (exit
                // 78) before its jobs lose their session state to it.
                if !pooling_checked {
                    match shared.check_pooling().await {
                        Ok(()) => pooling_checked = true,
                        Err(e @ Error::Config { .. }) => {
                            driver.abort();
                            shared.fail(e);
                            return;
                        }
                        Err(e) => tracing::debug!(error = %crate::error::Chain(&e),
                            "checking how the connection is pooled; again at the next contact"),
                    }
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
