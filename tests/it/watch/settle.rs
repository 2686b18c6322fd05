//! What the statistics count around the triggers is due for a full scan only once it has lasted
//! the statistics' horizon (`sync::settle`): a backend may flush `auth.users`'s counts seconds
//! before the journal's.

use std::time::Duration;

use usersync::daemon::run_job;
use usersync::job::JobKind;
use usersync::state::Shared;

use super::{full_scans, oracle};
use crate::support::TestDb;

/// Runs `sql` on a connection of its own, its statistics flushed before it returns.
async fn written(db: &TestDb, sql: &str) {
    let c = db.admin().await;
    c.batch_execute(sql).await.unwrap();
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

/// `n` users inserted around the triggers.
fn around(n: u32, tag: &str) -> String {
    format!(
        "SET session_replication_role = replica;
         INSERT INTO auth.users (id, email, created_at)
         SELECT gen_random_uuid(), '{tag}' || g || '@example.test', now()
         FROM generate_series(1, {n}) g;"
    )
}

/// Runs `job`: it ran, its summary starts with `says`, and no full scan ran.
async fn quiet(shared: &std::sync::Arc<Shared>, job: JobKind, says: &str) {
    let before = full_scans(shared);
    let run = run_job(shared, job).await;
    assert!(run.outcome.ran(), "{}", run.summary);
    assert!(run.summary.starts_with(says), "{}", run.summary);
    assert_eq!(full_scans(shared), before, "{}", run.summary);
}

const NOTHING: &str = "nothing changed around the triggers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_journal_count_settles_without_a_scan_and_a_lasting_one_is_scanned() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let horizon = Duration::from_secs(4);
    let mut settings = db.runtime_settings_with(&[]);
    settings.sync.statistics_horizon = horizon;
    let shared = Shared::new(settings).unwrap();
    let run = run_job(&shared, JobKind::FullScan).await;
    assert!(run.outcome.ran(), "{}", run.summary);

    // Five users counted and no journal rows yet: what a reader sees between a backend's flush
    // of auth.users's counts and its flush of the journal's.
    written(&db, &around(5, "late")).await;
    let settling = "5 rows changed around usersync's triggers, unless the statistics";
    quiet(&shared, JobKind::Sweep, settling).await;
    // The journal's count arrives: quiet again, and the suspicion is gone.
    let journal = "INSERT INTO usersync.journal (kind) SELECT 'i' FROM generate_series(1, 5)";
    written(&db, journal).await;
    quiet(&shared, JobKind::Sweep, NOTHING).await;
    tokio::time::sleep(horizon).await;
    quiet(&shared, JobKind::Sweep, NOTHING).await;

    // Three users around the triggers: counted by every look until the horizon, then scanned.
    written(&db, &around(3, "lasting")).await;
    quiet(&shared, JobKind::Sweep, "3 rows changed").await;
    tokio::time::sleep(horizon).await;
    let run = run_job(&shared, JobKind::Integrity).await;
    assert!(run.outcome.ran(), "{}", run.summary);
    assert_eq!(
        shared
            .metrics
            .full_scans
            .with_label_values(&["unseen_changes"])
            .get(),
        1,
        "{}",
        run.summary
    );
    // The full scan made every profile, the five the journal's count had hidden too.
    assert_eq!(oracle(&admin).await, (0, 0, 0));
    quiet(&shared, JobKind::Sweep, NOTHING).await;
}
