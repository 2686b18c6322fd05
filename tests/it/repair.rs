//! Every drain of the repair queue takes one lock: the repair job and the sweep on the same queue
//! at once repair each user once, and `usersync_leader{job="repair"}` is 1 whenever a drain is
//! writing a profile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use usersync::daemon::run_job;
use usersync::job::JobKind;
use usersync::state::Shared;

use crate::daemon::{FAIL_IN_SIGNUP_SESSION, profiles_of, sign_up_failing};
use crate::support::TestDb;

// Each profile insert sleeps, so that a drain is caught in the middle of one.
const SLOW_PROFILES: &str = "
    CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_sleep(0.15);
        RETURN NEW;
    END $$;
    CREATE TRIGGER slow BEFORE INSERT ON public.user_profiles
        FOR EACH ROW EXECUTE FUNCTION public.slow();";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_job_and_a_sweep_at_once_repair_each_user_once_under_one_leader() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin.batch_execute(FAIL_IN_SIGNUP_SESSION).await.unwrap();
    admin.batch_execute(SLOW_PROFILES).await.unwrap();
    let shared = Shared::new(db.runtime_settings_with(&[])).unwrap();
    // A baseline, so that the sweep takes the cheap path: its drain of the queue.
    assert!(run_job(&shared, JobKind::FullScan).await.outcome.ran());
    let ids = sign_up_failing(&db, 6, "queued").await;

    // While a drain writes a profile (its backend asleep in the trigger), the gauge is 1.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, shared, watch) = (done.clone(), shared.clone(), db.admin().await);
        tokio::spawn(async move {
            let (mut seen, mut wrong) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let writing: i64 = watch
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event = 'PgSleep'
                           AND query LIKE '%INSERT INTO public.user_profiles%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if writing > 0 {
                    seen += 1;
                    if shared.metrics.leader.with_label_values(&["repair"]).get() != 1 {
                        wrong += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (seen, wrong)
        })
    };
    let (repair, sweep) = tokio::join!(
        run_job(&shared, JobKind::Repair),
        run_job(&shared, JobKind::Sweep)
    );
    done.store(true, Ordering::Relaxed);
    let (seen, wrong) = watcher.await.unwrap();
    assert!(
        repair.outcome.ran() || sweep.outcome.ran(),
        "{repair:?} {sweep:?}"
    );
    assert!(seen > 0, "no drain was caught writing");
    assert_eq!(
        wrong, 0,
        "the leader gauge read 0 while a drain wrote, {wrong} of {seen} times"
    );
    assert_eq!(profiles_of(&admin, &ids).await, 6);
    let created = shared
        .metrics
        .profiles_created
        .with_label_values(&["repair"])
        .get();
    assert_eq!(created, 6, "each user repaired once");
    assert_eq!(
        shared.metrics.leader.with_label_values(&["repair"]).get(),
        0
    );
}
