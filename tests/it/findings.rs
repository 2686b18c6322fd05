//! Findings stay until the data changes, on the real daemon whatever its jobs' order: the sweep
//! scheduled before the integrity check, the check before the sweep, and two replicas. A row of
//! an `integrity.user_id_columns` table whose user was deleted through the triggers is reported
//! within a cycle, stays on `usersync_integrity_findings` until the row is deleted, then
//! clears; the same for an orphan profile.

use std::time::Duration;

use crate::daemon::{Daemon, NEVER, eventually};
use crate::support::{TestDb, count};

/// Every replica's value of one check's finding.
pub async fn everywhere(daemons: &[Daemon], check: &str) -> Vec<f64> {
    let mut values = Vec::new();
    for d in daemons {
        let series = format!("usersync_integrity_findings{{check=\"{check}\"}}");
        values.push(d.metric(&series).await);
    }
    values
}

/// Waits until every replica reports `value` for `check`, then that it keeps doing so for
/// `hold` (a few cycles).
pub async fn reported(daemons: &[Daemon], check: &str, value: f64, hold: Duration) {
    reported_within(daemons, check, value, hold, Duration::from_secs(8)).await
}

/// [`reported`], for a change that is found `within` this long.
async fn reported_within(
    daemons: &[Daemon],
    check: &str,
    value: f64,
    hold: Duration,
    within: Duration,
) {
    let all = |v: Vec<f64>| v.iter().all(|x| *x == value);
    assert!(
        eventually(within, || async { all(everywhere(daemons, check).await) }).await,
        "{check}: {:?}, expected {value} within {within:?}",
        everywhere(daemons, check).await
    );
    let deadline = std::time::Instant::now() + hold;
    while std::time::Instant::now() < deadline {
        let now = everywhere(daemons, check).await;
        assert!(
            all(now.clone()),
            "{check}: {now:?}, expected {value} to stay"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The application deletes the orders whose user is gone.
pub const DELETE_ORPHAN_ORDERS: &str = "DELETE FROM public.orders o
    WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = o.user_id)";

/// Five users through the triggers, each with a row in `public.orders`.
pub async fn five_users_with_an_order(admin: &tokio_postgres::Client) {
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, created_at)
             SELECT gen_random_uuid(), 'o' || g || '@example.test', now()
             FROM generate_series(1, 5) g;
             INSERT INTO public.orders (user_id) SELECT id FROM auth.users;",
        )
        .await
        .unwrap();
}

async fn stays_until_the_data_changes(sweep: &str, integrity: &str, replicas: usize) {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let settings = db
        .with_orders(&[
            ("USERSYNC__SYNC__SCHEDULE", sweep),
            ("USERSYNC__INTEGRITY__SCHEDULE", integrity),
            ("USERSYNC__SYNC__FULL_SCAN_SCHEDULE", NEVER),
        ])
        .await;
    five_users_with_an_order(&admin).await;
    let mut daemons = Vec::new();
    for _ in 0..replicas {
        daemons.push(Daemon::start(settings.clone()).await);
    }
    // The first cycle's full scan (no baseline yet) finds nothing.
    reported(&daemons, "user_id_column_orphans", 0.0, Duration::ZERO).await;

    // A user with an order deleted through the triggers, whichever job looks first.
    admin
        .batch_execute(
            "DELETE FROM auth.users WHERE id = (SELECT user_id FROM public.orders LIMIT 1)",
        )
        .await
        .unwrap();
    let hold = Duration::from_secs(5);
    reported(&daemons, "user_id_column_orphans", 1.0, hold).await;
    admin.batch_execute(DELETE_ORPHAN_ORDERS).await.unwrap();
    reported(&daemons, "user_id_column_orphans", 0.0, Duration::ZERO).await;

    // An orphan profile: its user deleted around the triggers (a restore in replica mode).
    admin
        .batch_execute(
            "SET session_replication_role = replica;
             DELETE FROM auth.users WHERE id = (SELECT id FROM public.user_profiles LIMIT 1);
             RESET session_replication_role;
             SELECT pg_stat_force_next_flush();",
        )
        .await
        .unwrap();
    // Counted by the statistics around the triggers: due once the count has lasted their
    // horizon, then found by the next cycle.
    let horizon = usersync::config::STATISTICS_HORIZON;
    reported_within(&daemons, "orphan_profile", 1.0, hold, horizon * 2).await;
    admin
        .batch_execute(
            "DELETE FROM public.user_profiles p WHERE NOT EXISTS
                 (SELECT 1 FROM auth.users u WHERE u.id = p.id)",
        )
        .await
        .unwrap();
    reported(&daemons, "orphan_profile", 0.0, Duration::ZERO).await;
    assert_eq!(count(&admin, "public.user_profiles").await, 3);
    for daemon in daemons {
        daemon.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sweep_scheduled_before_the_check_findings_stay_until_the_data_changes() {
    stays_until_the_data_changes("0/2 * * * * *", "1/2 * * * * *", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_check_scheduled_before_the_sweep_findings_stay_until_the_data_changes() {
    stays_until_the_data_changes("1/2 * * * * *", "0/2 * * * * *", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_replicas_findings_stay_until_the_data_changes_on_both() {
    stays_until_the_data_changes("0/2 * * * * *", "1/2 * * * * *", 2).await;
}
