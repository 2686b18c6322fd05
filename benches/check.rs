//! What `usersync check` costs against the bare queries it needs, in one run on data the bench
//! builds itself.
//!
//!     cargo bench --bench check                   # 1,000,000 users
//!     cargo bench --bench check -- --users 100000
//!
//! The population: users with profiles but for a few hundred, a few hundred orphan profiles,
//! and an application table with a foreign key into `auth.users`. Timed, median of 5: the bare
//! anti-join of users without a profile, the bare anti-join of profiles without a user, the
//! bare catalog query of foreign keys into the two tables, and the whole `usersync check`.

mod common;

use std::time::Duration;

use common::{BenchDb, arg_value, median_of, populate, row, timed};

const MISSING: &str = "
    SELECT count(*) FROM auth.users u
    WHERE u.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)";
const ORPHANS: &str = "
    SELECT count(*) FROM public.user_profiles p
    WHERE NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = p.id)";
const CATALOG: &str = "
    SELECT c.conrelid::regclass, c.conname, c.convalidated, c.confdeltype
    FROM pg_catalog.pg_constraint c
    WHERE c.contype = 'f'
      AND c.confrelid IN ('auth.users'::regclass, 'public.user_profiles'::regclass)";

/// What one run measured.
struct Measured {
    missing: Duration,
    orphans: Duration,
    catalog: Duration,
    check: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let users = arg_value("--users").unwrap_or(1_000_000);
    let (bench, db) = BenchDb::create().await;
    populate(&db, users).await;
    drift(&db).await;
    let settings = bench.settings(&[("USERSYNC__INTEGRITY__GRACE_PERIOD_SECS", "0")]);
    let measured = measure(&settings).await;
    drop(db);
    bench.drop_db().await;
    print(users, &measured);
}

/// Profiles for every live user but 300, 300 orphan profiles, an application table with a
/// foreign key into auth.users.
async fn drift(db: &tokio_postgres::Client) {
    db.batch_execute(
        "INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
         SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
         FROM auth.users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
         WHERE u.deleted_at IS NULL;
         DELETE FROM public.user_profiles WHERE id IN (SELECT id FROM public.user_profiles LIMIT 300);
         SET session_replication_role = replica;
         INSERT INTO public.user_profiles (id) SELECT gen_random_uuid() FROM generate_series(1, 300);
         RESET session_replication_role;
         CREATE TABLE public.orders (id bigserial PRIMARY KEY,
             buyer uuid REFERENCES auth.users (id) ON DELETE CASCADE);
         INSERT INTO public.orders (buyer) SELECT id FROM auth.users LIMIT 10000;
         VACUUM ANALYZE;",
    )
    .await
    .unwrap();
}

/// The bare queries and the whole check, median of 5 each, on one usersync connection (so
/// both run with the same settings).
async fn measure(settings: &usersync::config::Settings) -> Measured {
    let pool = usersync::db::connect(&settings.database).await.unwrap();
    let mut client = pool.get().await.unwrap();
    let missing = median_of(5, || async {
        timed(client.query_one(MISSING, &[])).await.0
    })
    .await;
    let orphans = median_of(5, || async {
        timed(client.query_one(ORPHANS, &[])).await.0
    })
    .await;
    let catalog = median_of(5, || async { timed(client.query(CATALOG, &[])).await.0 }).await;
    let policies = usersync::integrity::Policies {
        database: Default::default(),
        configured: Default::default(),
    };
    let mut checks = Vec::new();
    for _ in 0..5 {
        let (elapsed, report) = timed(usersync::integrity::run(
            &mut client,
            &settings.integrity,
            policies,
            usersync::integrity::Counts::ALL,
            false,
        ))
        .await;
        let report = report.unwrap();
        assert_eq!(report.values()["missing_profile"], 300);
        assert_eq!(report.values()["orphan_profile"], 300);
        checks.push(elapsed);
    }
    checks.sort();
    Measured {
        missing,
        orphans,
        catalog,
        check: checks[2],
    }
}

fn print(users: u64, m: &Measured) {
    let bare = m.missing + m.orphans + m.catalog;
    let ratio = |d: Duration| d.as_secs_f64() / bare.as_secs_f64();
    println!("\nusersync check at {users} users (median of 5):");
    let queries = [
        ("bare anti-join, users without a profile", m.missing),
        ("bare anti-join, profiles without a user", m.orphans),
        ("bare catalog query of foreign keys", m.catalog),
    ];
    for (name, took) in queries {
        row(name, took, ratio(took), "");
    }
    row("sum of the bare queries", bare, 1.0, "");
    row(
        "usersync check, every check",
        m.check,
        ratio(m.check),
        "target ≤ 1.5",
    );
}
