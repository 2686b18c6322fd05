//! Random drift of every kind between daemon cycles, each job of each cycle in a random order,
//! on one replica or two: what each cycle reports is checked against exact counts.

use std::sync::Arc;

use futures_util::SinkExt;
use proptest::prelude::*;
use tokio_postgres::Client;
use usersync::daemon::run_job;
use usersync::job::JobKind;
use usersync::state::Shared;

use super::{finding, full_scans, oracle};
use crate::property;
use crate::support::TestDb;

/// One kind of drift, with how many rows it touches.
#[derive(Clone, Debug)]
enum Drift {
    /// Sign-ups through the trigger: no drift at all.
    SignUps(u8),
    /// `ALTER TABLE … DISABLE TRIGGER`, inserts, enabled again (pg_restore --disable-triggers).
    InsertTriggerOff(u8),
    /// Inserts under `session_replication_role = replica` (Supabase's data-only restore).
    InsertReplica(u8),
    /// COPY under `replica`.
    CopyReplica(u8),
    /// An application deleting live users' profiles (the delete trigger queues them).
    DeleteProfiles(u8),
    /// The same under `replica`: no trigger.
    DeleteProfilesReplica(u8),
    TruncateProfiles,
    /// Users deleted under `replica`: no cascade, orphan profiles.
    DeleteUsersReplica(u8),
    /// Inserts under `replica`, then `pg_stat_reset()`: the evidence is gone.
    InsertThenStatsReset(u8),
    /// Soft-deleted users restored while the update trigger is disabled, then enabled again:
    /// only the catalog shows it.
    RestoreTriggerOff(u8),
    /// Soft-deleted users restored under `replica` (the policy is `delete`: they have no
    /// profile): an UPDATE, which waits for the scheduled full scan.
    RestoreReplica(u8),
    /// Users soft-deleted under `replica`: their profiles stay, also for the full scan.
    SoftDeleteReplica(u8),
    /// Orders for live users (an application's table whose `user_id` has no foreign key).
    Orders(u8),
    /// Users with orders deleted through the triggers: their orders now name no user.
    DeleteUsersWithOrders(u8),
    /// The application deletes the orders whose user is gone.
    DeleteOrphanOrders,
}

impl Drift {
    /// Whether the cheap path cannot see it: it waits for the scheduled full scan.
    fn waits_for_full_scan(&self) -> bool {
        matches!(self, Drift::RestoreReplica(_) | Drift::SoftDeleteReplica(_))
    }

    /// Whether it is no drift at all: a cycle after it must not scan.
    fn through_triggers(&self) -> bool {
        matches!(
            self,
            Drift::SignUps(_)
                | Drift::DeleteProfiles(_)
                | Drift::Orders(_)
                | Drift::DeleteUsersWithOrders(_)
                | Drift::DeleteOrphanOrders
        )
    }
}

fn drift() -> impl Strategy<Value = Drift> {
    let n = 1u8..12;
    prop_oneof![
        2 => n.clone().prop_map(Drift::SignUps),
        1 => n.clone().prop_map(Drift::InsertTriggerOff),
        1 => n.clone().prop_map(Drift::InsertReplica),
        1 => n.clone().prop_map(Drift::CopyReplica),
        2 => n.clone().prop_map(Drift::DeleteProfiles),
        1 => n.clone().prop_map(Drift::DeleteProfilesReplica),
        1 => Just(Drift::TruncateProfiles),
        1 => n.clone().prop_map(Drift::DeleteUsersReplica),
        1 => n.clone().prop_map(Drift::InsertThenStatsReset),
        1 => n.clone().prop_map(Drift::RestoreTriggerOff),
        1 => n.clone().prop_map(Drift::RestoreReplica),
        1 => n.clone().prop_map(Drift::SoftDeleteReplica),
        2 => n.clone().prop_map(Drift::Orders),
        4 => n.prop_map(Drift::DeleteUsersWithOrders),
        3 => Just(Drift::DeleteOrphanOrders),
    ]
}

const SIGN_UP: &str = "
    INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data, created_at,
                            updated_at)
    SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
           'authenticated', 'w' || gen_random_uuid() || '@example.test', '{}', now(), now()
    FROM generate_series(1, $1::int)";

/// Applies one drift on a connection of its own, with `signups` sign-ups through the trigger
/// on another at the same time; both flush their statistics before returning, as a writer's
/// backend does within seconds of going idle.
async fn apply(db: &TestDb, drift: &Drift, signups: u8) {
    let (writer, other) = (db.admin().await, db.admin().await);
    let concurrent = async {
        if signups > 0 {
            other
                .execute(SIGN_UP, &[&i32::from(signups)])
                .await
                .unwrap();
        }
        flush(&other).await;
    };
    let drifted = async {
        write(&writer, drift).await;
        flush(&writer).await;
    };
    tokio::join!(concurrent, drifted);
}

async fn flush(client: &Client) {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

async fn write(c: &Client, drift: &Drift) {
    match drift {
        Drift::SignUps(n) => {
            c.execute(SIGN_UP, &[&i32::from(*n)]).await.unwrap();
        }
        Drift::CopyReplica(n) => {
            c.batch_execute(REPLICA).await.unwrap();
            let sink = c
                .copy_in("COPY auth.users (id, email, created_at) FROM STDIN")
                .await
                .unwrap();
            let mut sink = std::pin::pin!(sink);
            for _ in 0..*n {
                let id = uuid::Uuid::new_v4();
                let line = format!("{id}\tcopy.{id}@example.test\t2026-01-01 00:00:00+00\n");
                sink.send(bytes::Bytes::from(line)).await.unwrap();
            }
            sink.finish().await.unwrap();
        }
        Drift::InsertThenStatsReset(_) => {
            c.batch_execute(&sql(drift)).await.unwrap();
            // After the inserts' counts reached the shared statistics, on another session.
            c.batch_execute("RESET session_replication_role; SELECT pg_stat_reset();")
                .await
                .unwrap();
        }
        _ => c.batch_execute(&sql(drift)).await.unwrap(),
    }
}

const REPLICA: &str = "SET session_replication_role = replica;";

/// The statements of a drift that is plain SQL.
fn sql(drift: &Drift) -> String {
    let replica = REPLICA;
    let live = "SELECT u.id FROM auth.users u JOIN public.user_profiles p ON p.id = u.id
                WHERE u.deleted_at IS NULL ORDER BY random()";
    match drift {
        Drift::InsertTriggerOff(n) => format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 'off' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;"
        ),
        Drift::InsertReplica(n) => format!(
            "{replica} INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 'r' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});"
        ),
        Drift::DeleteProfiles(n) => format!(
            "DELETE FROM public.user_profiles WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::DeleteProfilesReplica(n) => format!(
            "{replica} DELETE FROM public.user_profiles WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::TruncateProfiles => "TRUNCATE public.user_profiles;".into(),
        Drift::DeleteUsersReplica(n) => format!(
            "{replica} DELETE FROM auth.users WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::InsertThenStatsReset(n) => format!(
            "{replica} INSERT INTO auth.users (id, email, created_at)
                 SELECT gen_random_uuid(), 's' || gen_random_uuid() || '@example.test', now()
                 FROM generate_series(1, {n});
             SELECT pg_stat_force_next_flush();
             SELECT pg_sleep(0.05);"
        ),
        Drift::RestoreTriggerOff(n) => format!(
            "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_updated;
             UPDATE auth.users SET deleted_at = NULL WHERE id IN
                 (SELECT id FROM auth.users WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT {n});
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_updated;"
        ),
        Drift::RestoreReplica(n) => format!(
            "{replica} UPDATE auth.users SET deleted_at = NULL WHERE id IN
                 (SELECT id FROM auth.users WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT {n});"
        ),
        Drift::SoftDeleteReplica(n) => format!(
            "{replica} UPDATE auth.users SET deleted_at = now(), email = NULL WHERE id IN ({live} LIMIT {n});"
        ),
        Drift::Orders(n) => format!(
            "INSERT INTO public.orders (user_id) SELECT id FROM ({live} LIMIT {n}) AS u;"
        ),
        Drift::DeleteUsersWithOrders(n) => format!(
            "DELETE FROM auth.users WHERE id IN
                 (SELECT DISTINCT o.user_id FROM public.orders o JOIN auth.users u ON u.id = o.user_id
                  LIMIT {n});"
        ),
        Drift::DeleteOrphanOrders => crate::findings::DELETE_ORPHAN_ORDERS.into(),
        Drift::SignUps(_) | Drift::CopyReplica(_) => unreachable!("not plain SQL: {drift:?}"),
    }
}

/// Rows of the orders table (a user-id column without a foreign key) whose user is gone.
async fn orphan_orders(c: &Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM public.orders o
         WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = o.user_id)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// One cycle's jobs: the sweep and the integrity check of each replica, in a random order.
fn order(replicas: usize) -> impl Strategy<Value = Vec<(usize, JobKind)>> {
    let jobs: Vec<(usize, JobKind)> = (0..replicas)
        .flat_map(|r| [(r, JobKind::Sweep), (r, JobKind::Integrity)])
        .collect();
    Just(jobs).prop_shuffle()
}

/// One step of a case: a drift, how many sign-ups come with it, and the jobs' order.
type Step = (Drift, u8, Vec<(usize, JobKind)>);

fn case() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (1usize..=2).prop_flat_map(|replicas| {
        let step = (drift(), 0u8..4, order(replicas));
        (Just(replicas), prop::collection::vec(step, 2..6))
    })
}

/// The database, two replicas' state, and what stays between cases.
struct World {
    db: TestDb,
    admin: Client,
    replicas: [Arc<Shared>; 2],
}

async fn world() -> World {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "UPDATE usersync.policy SET soft_deleted = 'delete';
             INSERT INTO auth.users (id, email, created_at, deleted_at)
             SELECT gen_random_uuid(), 'seed' || g || '@example.test', now(),
                    CASE WHEN g % 4 = 0 THEN now() END
             FROM generate_series(1, 80) g;",
        )
        .await
        .unwrap();
    let mut settings = db
        .with_orders(&[("USERSYNC__SYNC__SOFT_DELETED", "delete")])
        .await;
    // Every step's writers flush and leave before its jobs run: no count arrives late, and
    // what a look counts around the triggers is due at once.
    settings.sync.statistics_horizon = std::time::Duration::ZERO;
    let replicas = [
        Shared::new(settings.clone()).unwrap(),
        Shared::new(settings).unwrap(),
    ];
    World {
        db,
        admin,
        replicas,
    }
}

#[test]
fn every_drift_is_found_by_the_cheap_path_or_handed_to_the_full_scan_in_any_job_order() {
    let rt = property::runtime();
    let w = rt.block_on(world());
    property::check("watch", case(), |(replicas, steps)| {
        rt.block_on(async {
            let scans = |w: &World| w.replicas.iter().map(|s| full_scans(s)).sum::<u64>();
            // Each case starts from a full scan: a clean state and a baseline. Orphans of
            // earlier cases are the application's to delete.
            w.admin
                .batch_execute(
                    "DELETE FROM public.user_profiles p
                     WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = p.id);
                     DELETE FROM public.orders;
                     INSERT INTO public.orders (user_id)
                     SELECT u.id FROM auth.users u WHERE u.deleted_at IS NULL
                     ORDER BY random() LIMIT 10;",
                )
                .await
                .unwrap();
            let run = run_job(&w.replicas[0], JobKind::FullScan).await;
            prop_assert!(run.outcome.ran(), "full scan: {}", run.summary);
            let mut waiting = false;
            for (i, (drift, signups, jobs)) in steps.iter().enumerate() {
                apply(&w.db, drift, *signups).await;
                waiting |= drift.waits_for_full_scan();
                let before = scans(&w);
                for (r, job) in jobs {
                    let run = run_job(&w.replicas[*r], *job).await;
                    prop_assert!(
                        run.outcome.ran(),
                        "step {i} {drift:?}: {job:?} on {r}: {}",
                        run.summary
                    );
                }
                let scanned = scans(&w) > before;
                prop_assert!(
                    !(drift.through_triggers() && scanned),
                    "step {i} {drift:?}: changes through the triggers made a full scan"
                );
                let (missing, orphans, left) = oracle(&w.admin).await;
                if !waiting {
                    prop_assert_eq!(
                        (missing, left),
                        (0, 0),
                        "step {} {:?}: left behind",
                        i,
                        drift
                    );
                }
                let orders = orphan_orders(&w.admin).await;
                // Every replica's integrity check says what is: whichever job looked first,
                // whichever replica counted.
                for r in 0..replicas {
                    let shared = &w.replicas[r];
                    let what = format!("step {i} {drift:?}, replica {r}, jobs {jobs:?}");
                    prop_assert_eq!(finding(shared, "orphan_profile"), orphans, "{}", what);
                    prop_assert_eq!(
                        finding(shared, "user_id_column_orphans"),
                        orders,
                        "{}",
                        what
                    );
                    prop_assert_eq!(finding(shared, "missing_profile"), 0, "{}", what);
                }
            }
            // The scheduled full scan catches what waited for it.
            let run = run_job(&w.replicas[0], JobKind::FullScan).await;
            prop_assert!(run.outcome.ran(), "full scan: {}", run.summary);
            let (missing, orphans, left) = oracle(&w.admin).await;
            prop_assert_eq!((missing, left), (0, 0), "after the full scan");
            prop_assert_eq!(finding(&w.replicas[0], "orphan_profile"), orphans);
            Ok(())
        })
    });
}
