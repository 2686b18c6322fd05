//! What every task of the daemon shares, and what its HTTP side reads: the settings, the pool,
//! the metrics, the board of last runs, the locks the jobs take, the shutdown token. A floor
//! below both `http` and `daemon`: it runs nothing of its own.

pub mod board;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::job::JobKind;
use crate::metrics::{self, Metrics};
use crate::sync::settle::Suspicion;

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
    pub locks: Locks,
    /// Unseen changes the looks have counted, and since when (`sync::settle`).
    pub suspicion: Suspicion,
    /// Unix time of the scheduler's last heartbeat: liveness.
    heartbeat: AtomicU64,
    /// What ended the daemon from inside (a transaction-mode pooler behind `database.url`): the
    /// daemon returns it once everything has stopped.
    fatal: std::sync::Mutex<Option<Error>>,
    /// Set once `database.url` is known not to be a transaction-mode pooler: no job writes
    /// before that.
    pooling_checked: AtomicBool,
}

/// The locks of one process; across replicas, PostgreSQL's advisory locks and `SKIP LOCKED`.
#[derive(Default)]
pub struct Locks {
    sweep: Mutex<()>,
    integrity: Mutex<()>,
    full_scan_job: Mutex<()>,
    /// Every drain of the repair queue takes it: the repair job's, the sweep's, the NOTIFY
    /// listener's and the full scan's; `usersync_leader{job="repair"}` is 1 while it is held.
    pub drain: Mutex<()>,
    /// Whichever job runs a full scan holds it.
    pub full_scan: Mutex<()>,
}

impl Locks {
    /// The lock a job's run holds, so that a run never overlaps the job's previous one (the
    /// repair job's is the drain's).
    pub fn job(&self, kind: JobKind) -> &Mutex<()> {
        match kind {
            JobKind::Sweep => &self.sweep,
            JobKind::Repair => &self.drain,
            JobKind::Integrity => &self.integrity,
            JobKind::FullScan => &self.full_scan_job,
        }
    }
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
            locks: Locks::default(),
            suspicion: Suspicion::default(),
            heartbeat: AtomicU64::new(metrics::now() as u64),
            fatal: std::sync::Mutex::new(None),
            pooling_checked: AtomicBool::new(false),
            settings,
        }))
    }

    /// Whether the process and its scheduler are alive: the heartbeat job ran lately.
    pub fn alive(&self) -> bool {
        let last = self.heartbeat.load(Ordering::Relaxed) as f64;
        metrics::now() - last < 30.0
    }

    pub fn beat(&self) {
        self.heartbeat
            .store(metrics::now() as u64, Ordering::Relaxed);
    }

    /// Runs `task` on the tracker until it ends or shutdown comes.
    pub fn until_shutdown(&self, task: impl Future<Output = ()> + Send + 'static) {
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

    /// Ends the daemon with `error` (its exit code and all), as a signal would end it.
    pub fn fail(&self, error: Error) {
        tracing::error!(error = %crate::error::Chain(&error), "stopping");
        *self.fatal.lock().expect("not poisoned") = Some(error);
        self.shutdown.cancel();
    }

    /// What ended the daemon from inside, if anything did.
    pub fn take_failure(&self) -> Option<Error> {
        self.fatal.lock().expect("not poisoned").take()
    }

    /// Refuses a transaction-mode pooler behind `database.url`; once it has passed, jobs run.
    pub async fn check_pooling(&self) -> Result<()> {
        db::pooler::refuse_transaction_pooler(&self.db).await?;
        self.pooling_checked.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether jobs may run: the connection is known not to be a transaction-mode pooler.
    pub fn may_write(&self) -> bool {
        self.pooling_checked.load(Ordering::Acquire)
    }
}
