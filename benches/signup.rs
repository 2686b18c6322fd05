//! What the sign-up trigger costs a sign-up: GoTrue-shaped single-row inserts into
//! `auth.users` with no trigger, with the classic hand-written `handle_new_user` trigger (no
//! error handling, so a failing insert fails the sign-up), and with usersync's trigger (an
//! exception block, a pinned search_path, the shared profile builder), side by side in one run.
//! Then what usersync's update trigger costs GoTrue's sign-in (`UpdateLastSignInAt`: an UPDATE
//! of `last_sign_in_at` and `updated_at`), with the trigger disabled and enabled: the trigger
//! fires only on a change of e-mail, `is_anonymous` or `deleted_at`, so a sign-in should cost
//! nothing measurable.
//!
//! `cargo bench --bench signup` against `USERSYNC_BENCH_DATABASE_URL`, else `DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/postgres` (a superuser: the bench creates and drops
//! its own database). `USERSYNC_BENCH_SIGNUPS` sets sign-ups per round (default 2000).

mod common;

use std::time::{Duration, Instant};

use common::BenchDb;
use tokio_postgres::Client;
use uuid::Uuid;
const ROUNDS: usize = 5;
const SIGN_IN_ROUNDS: usize = 11;

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
    db.batch_execute(NAIVE_TRIGGER).await.unwrap();
    let signups = sign_up_rounds(&db, per_round).await;
    let ids: Vec<Uuid> = db
        .query("SELECT id FROM auth.users LIMIT $1", &[&(per_round as i64)])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let [off, on] = sign_in_rounds(&db, &ids).await;
    drop(db);
    bench.drop_db().await;

    println!(
        "sign-up (single-row INSERT into auth.users, autocommit), {ROUNDS} rounds of {per_round}, median per sign-up:"
    );
    let per = |d: Duration| micros(d / per_round as u32);
    let base = per(signups[0]);
    for ((label, _), d) in VARIANTS.iter().zip(signups) {
        let us = per(d);
        println!(
            "  {label:<17} {us:>7.1} µs   +{:>6.1} µs   {:.2}x",
            us - base,
            us / base
        );
    }
    let n = ids.len() as u32;
    let (off, on) = (micros(off / n), micros(on / n));
    println!(
        "sign-in (GoTrue's UPDATE of last_sign_in_at, autocommit), {SIGN_IN_ROUNDS} rounds of {n}, median per sign-in:"
    );
    println!("  update trigger off {off:>7.1} µs");
    println!(
        "  update trigger on  {on:>7.1} µs   {:+6.2} µs per sign-in (goal: under 5 µs)",
        on - off
    );
}

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

/// Sign-ins of `ids` with usersync's update trigger off and on: the median round of each. More
/// rounds than the sign-ups, in alternating order: the difference is small.
async fn sign_in_rounds(db: &Client, ids: &[Uuid]) -> [Duration; 2] {
    let sign_in = db
        .prepare("UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = $1")
        .await
        .unwrap();
    let mut samples = [Vec::new(), Vec::new()];
    sign_ins(db, &sign_in, ids).await;
    for round in 0..SIGN_IN_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let verb = ["DISABLE", "ENABLE"][i];
            db.batch_execute(&format!(
                "ALTER TABLE auth.users {verb} TRIGGER usersync_on_auth_user_updated"
            ))
            .await
            .unwrap();
            samples[i].push(sign_ins(db, &sign_in, ids).await);
        }
    }
    samples.map(median)
}

async fn sign_ins(db: &Client, update: &tokio_postgres::Statement, ids: &[Uuid]) -> Duration {
    let started = Instant::now();
    for id in ids {
        db.execute(update, &[id]).await.unwrap();
    }
    started.elapsed()
}

/// The trigger most projects start with: no exception handler, no pinned search_path.
const NAIVE_TRIGGER: &str = "
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
