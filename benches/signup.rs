//! What the sign-up trigger costs a sign-up: GoTrue-shaped single-row inserts into
//! `auth.users` with no trigger, with the classic hand-written `handle_new_user` trigger (no
//! error handling, so a failing insert fails the sign-up), and with usersync's trigger (an
//! exception block, a pinned search_path, the shared profile builder, the journal row), side
//! by side in one run, with usersync's added cost as a multiple of the naive trigger's.
//! Then what usersync's update triggers (the lifecycle's and the metadata's) cost GoTrue's
//! UPDATEs, disabled and enabled: a sign-in (`UpdateLastSignInAt`, which fires neither),
//! metadata that changes keys the profile does not read, and metadata that changes the name of
//! a user whose metadata had one (nothing to fill): the metadata trigger returns before its
//! protected block for both.
//!
//! Commits do not wait for the disk (`synchronous_commit = off` in the bench's session): the
//! flush is the same for every variant and would drown the differences.
//!
//! `cargo bench --bench signup` against `USERSYNC_BENCH_DATABASE_URL`, else `DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/postgres` (a superuser: the bench creates and drops
//! its own database). `USERSYNC_BENCH_SIGNUPS` sets sign-ups per round (default 2000).

mod common;

use std::time::{Duration, Instant};

use common::BenchDb;
use tokio_postgres::Client;
use uuid::Uuid;
const ROUNDS: usize = 9;
const UPDATE_ROUNDS: usize = 11;

/// The sign-up variants: a label and the trigger left enabled.
const VARIANTS: [(&str, Option<&str>); 3] = [
    ("no trigger", None),
    ("naive trigger", Some("bench_naive")),
    ("usersync trigger", Some("usersync_on_auth_user_created")),
];

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let per_round: usize = std::env::var("USERSYNC_BENCH_SIGNUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (bench, db) = BenchDb::create().await;
    // The commit's WAL flush is the same for every variant and, on this machine's disk, ten
    // times what a trigger costs: left out, so that the differences are the triggers'.
    db.batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    db.batch_execute(REFERENCE_TRIGGERS).await.unwrap();
    let signups = sign_up_rounds(&db, per_round).await;
    // Users whose profile has a name: a new name in their metadata leaves nothing to fill.
    let ids: Vec<Uuid> = db
        .query(
            "SELECT p.id FROM public.user_profiles p WHERE p.full_name IS NOT NULL LIMIT $1",
            &[&(per_round as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let updates: Vec<(&str, [Duration; 2])> = {
        let mut measured = Vec::new();
        for (label, sql, triggers) in UPDATES {
            measured.push((label, update_rounds(&db, &ids, sql, triggers).await));
        }
        measured
    };
    drop(db);
    bench.drop_db().await;

    println!(
        "sign-up (single-row INSERT into auth.users, autocommit), {ROUNDS} rounds of {per_round}, median per sign-up:"
    );
    let per = |d: Duration| micros(d / per_round as u32);
    let base = per(signups[0]);
    let naive_added = per(signups[1]) - base;
    for ((label, _), d) in VARIANTS.iter().zip(signups) {
        let us = per(d);
        println!(
            "  {label:<17} {us:>7.1} µs   +{:>6.1} µs   {:.2}x the naive trigger's added cost",
            us - base,
            (us - base) / naive_added
        );
    }
    let n = ids.len() as u32;
    println!(
        "GoTrue's UPDATEs of auth.users (autocommit), {UPDATE_ROUNDS} rounds of {n}, median per UPDATE, update triggers off / on:"
    );
    for (label, [off, on]) in updates {
        let (off, on) = (micros(off / n), micros(on / n));
        println!(
            "  {label:<46} {off:>7.1} / {on:>7.1} µs   {:+6.2} µs",
            on - off
        );
    }
}

/// usersync's two update triggers.
const USERSYNC_UPDATE: &[&str] = &[
    "usersync_on_auth_user_updated",
    "usersync_on_auth_user_metadata",
];

/// GoTrue's UPDATEs ($1 the user, $2 the round, so that metadata really changes each time), and
/// the triggers toggled: usersync's, and for reference a no-op plpgsql trigger on the metadata,
/// what any trigger that fires costs such an UPDATE.
const UPDATES: [(&str, &str, &[&str]); 4] = [
    (
        "sign-in (last_sign_in_at)",
        "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now()
         WHERE id = $1 AND $2::int IS NOT NULL",
        USERSYNC_UPDATE,
    ),
    ("metadata, keys the profile does not read", META_OTHER, USERSYNC_UPDATE),
    (
        "metadata, a new name (the profile has one)",
        "UPDATE auth.users SET raw_user_meta_data = raw_user_meta_data || jsonb_build_object('full_name', 'Bench ' || $2::int),
             updated_at = now()
         WHERE id = $1",
        USERSYNC_UPDATE,
    ),
    ("  the same as the first, a no-op trigger instead", META_OTHER, &["bench_noop"]),
];

const META_OTHER: &str = "UPDATE auth.users SET raw_user_meta_data = raw_user_meta_data || jsonb_build_object('bio', $2::int),
         updated_at = now()
     WHERE id = $1";

/// GoTrue-shaped sign-ups under each variant, alternating so that drift in the machine hits
/// every variant alike: the median round of each.
async fn sign_up_rounds(db: &Client, per_round: usize) -> Vec<Duration> {
    let insert = db
        .prepare(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password,
                 confirmation_token, recovery_token, email_change_token_new, email_change,
                 raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
             VALUES ('00000000-0000-0000-0000-000000000000', $1, 'authenticated',
                 'authenticated', $2, '', '', '', '', '', '{\"provider\": \"email\"}',
                 jsonb_build_object('full_name', 'Bench User'), now(), now())",
        )
        .await
        .unwrap();
    let mut samples = vec![Vec::new(); VARIANTS.len()];
    sign_ups(db, &insert, per_round / 4).await; // warm-up
    for _ in 0..ROUNDS {
        for (i, (_, trigger)) in VARIANTS.iter().enumerate() {
            db.batch_execute("ALTER TABLE auth.users DISABLE TRIGGER USER")
                .await
                .unwrap();
            if let Some(t) = trigger {
                db.batch_execute(&format!("ALTER TABLE auth.users ENABLE TRIGGER {t}"))
                    .await
                    .unwrap();
            }
            samples[i].push(sign_ups(db, &insert, per_round).await);
        }
    }
    samples.into_iter().map(median).collect()
}

/// `sql` for each of `ids` with usersync's update triggers (the lifecycle's and the
/// metadata's) off and on, alternating: the median
/// round of each. More rounds than the sign-ups: the differences are small.
async fn update_rounds(db: &Client, ids: &[Uuid], sql: &str, triggers: &[&str]) -> [Duration; 2] {
    let update = db.prepare(sql).await.unwrap();
    db.batch_execute("ALTER TABLE auth.users DISABLE TRIGGER USER")
        .await
        .unwrap();
    let mut samples = [Vec::new(), Vec::new()];
    updates(db, &update, ids, -1).await;
    for round in 0..UPDATE_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let verb = ["DISABLE", "ENABLE"][i];
            for trigger in triggers {
                db.batch_execute(&format!("ALTER TABLE auth.users {verb} TRIGGER {trigger}"))
                    .await
                    .unwrap();
            }
            let tag = (round * 2 + i) as i32;
            samples[i].push(updates(db, &update, ids, tag).await);
        }
    }
    samples.map(median)
}

async fn updates(
    db: &Client,
    update: &tokio_postgres::Statement,
    ids: &[Uuid],
    tag: i32,
) -> Duration {
    let started = Instant::now();
    for id in ids {
        db.execute(update, &[id, &tag]).await.unwrap();
    }
    started.elapsed()
}

/// The references: a no-op trigger on the metadata, and the sign-up trigger most projects
/// start with (no exception handler, no pinned search_path).
const REFERENCE_TRIGGERS: &str = "
    CREATE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RETURN NULL;
    END $$;
    CREATE TRIGGER bench_noop AFTER UPDATE OF raw_user_meta_data ON auth.users
        FOR EACH ROW WHEN (OLD.raw_user_meta_data IS DISTINCT FROM NEW.raw_user_meta_data)
        EXECUTE FUNCTION public.bench_noop();
    CREATE FUNCTION public.bench_naive() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        INSERT INTO public.user_profiles (id, email, full_name)
        VALUES (NEW.id, NEW.email, NEW.raw_user_meta_data ->> 'full_name');
        RETURN NEW;
    END $$;
    CREATE TRIGGER bench_naive AFTER INSERT ON auth.users
        FOR EACH ROW EXECUTE FUNCTION public.bench_naive();";

async fn sign_ups(db: &Client, insert: &tokio_postgres::Statement, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let id = Uuid::new_v4();
        let email = format!("{}@bench.invalid", id.simple());
        db.execute(insert, &[&id, &email]).await.unwrap();
    }
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
