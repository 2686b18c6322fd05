//! Creation: profiles for a batch of user ids, through the one builder the trigger uses.
//!
//! A batch is one statement, so one short transaction: `INSERT … ON CONFLICT (id) DO NOTHING`
//! of what `usersync.build_profile` returns. A user whose profile appeared meanwhile (the
//! trigger, the application, another replica) is raced, not an error; an existing profile is
//! never updated. When the batch fails as a whole, its users are retried one by one so that one
//! bad row fails alone; each failure goes to the repair queue with a backoff.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::error::{DbContext, Result, is_connection_error};

/// What one batch did.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    pub created: u64,
    /// Had a profile, or no longer needed one, by the time the batch ran.
    pub raced: u64,
    /// In the repair queue and waiting out its backoff.
    pub deferred: u64,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

/// A user whose profile could not be created, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub user_id: Uuid,
    pub sqlstate: String,
    pub reason: String,
}

// The batch: users still live, not waiting out a repair backoff, inserted as the builder
// makes them; a queued user who got a profile leaves the queue. Not cached: a fresh statement
// keeps a custom plan (see plan.rs).
const CREATE: &str = "
    WITH due AS (
        SELECT u FROM auth.users u
        WHERE u.id = ANY($1) AND u.deleted_at IS NULL AND ($3 OR NOT u.is_anonymous)
          AND ($2 OR NOT EXISTS (SELECT 1 FROM usersync.repair_queue q
                                 WHERE q.user_id = u.id AND q.next_attempt_at > now()))
    ), created AS (
        INSERT INTO public.user_profiles AS t
            (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
        SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
        FROM due CROSS JOIN LATERAL usersync.build_profile(due.u) AS p
        ON CONFLICT (id) DO NOTHING
        RETURNING t.id
    ), repaired AS (
        DELETE FROM usersync.repair_queue q USING created c WHERE q.user_id = c.id
    )
    SELECT (SELECT count(*) FROM created),
           (SELECT count(*) FROM usersync.repair_queue q
            WHERE NOT $2 AND q.user_id = ANY($1) AND q.next_attempt_at > now()
              AND NOT EXISTS (SELECT 1 FROM created c WHERE c.id = q.user_id))";

/// Records a failure: a new queue entry, or one more attempt with a longer backoff
/// (10 s doubling per attempt, at most an hour).
const RECORD_FAILURE: &str = "
    INSERT INTO usersync.repair_queue AS q (user_id, last_error, last_sqlstate, failures, attempts,
                                            next_attempt_at)
    SELECT $1, $2, $3, 0, 1, now() + interval '10 seconds'
    WHERE EXISTS (SELECT 1 FROM auth.users WHERE id = $1)
    ON CONFLICT (user_id) DO UPDATE
        SET last_error = EXCLUDED.last_error,
            last_sqlstate = EXCLUDED.last_sqlstate,
            attempts = q.attempts + 1,
            next_attempt_at = now() + least(interval '10 seconds' * power(2, least(q.attempts, 20)),
                                            interval '1 hour')";

/// Creates the profiles of `ids` (sorted, one batch). `repairing` is false for the sweep, which
/// leaves users in a repair backoff alone, and true for the repair pass, which picked due ones.
pub async fn create(
    client: &mut Client,
    ids: &[Uuid],
    include_anonymous: bool,
    repairing: bool,
) -> Result<BatchOutcome> {
    let started = Instant::now();
    let result = client
        .query_one(CREATE, &[&ids, &repairing, &include_anonymous])
        .await;
    let mut outcome = match result {
        Ok(row) => {
            let created = row.get::<_, i64>(0) as u64;
            let deferred = row.get::<_, i64>(1) as u64;
            BatchOutcome {
                created,
                deferred,
                raced: ids.len() as u64 - created - deferred,
                ..BatchOutcome::default()
            }
        }
        Err(e) if is_connection_error(&e) => {
            return Err(e).context("creating a batch of profiles");
        }
        Err(_) => one_by_one(client, ids, include_anonymous, repairing).await?,
    };
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// The batch failed: each user in its own savepoint, failures recorded, in one transaction.
async fn one_by_one(
    client: &mut Client,
    ids: &[Uuid],
    include_anonymous: bool,
    repairing: bool,
) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut tx = client.transaction().await.context("starting a batch")?;
    for id in ids {
        let sp = tx
            .savepoint("usersync_one")
            .await
            .context("creating a savepoint")?;
        match sp
            .query_one(
                CREATE,
                &[&std::slice::from_ref(id), &repairing, &include_anonymous],
            )
            .await
        {
            Ok(row) => {
                let created = row.get::<_, i64>(0) as u64;
                let deferred = row.get::<_, i64>(1) as u64;
                outcome.created += created;
                outcome.deferred += deferred;
                outcome.raced += 1 - created - deferred;
                sp.commit().await.context("releasing a savepoint")?;
            }
            Err(e) if is_connection_error(&e) => return Err(e).context("creating a profile"),
            Err(e) => {
                sp.rollback().await.context("rolling back a savepoint")?;
                let failure = failure(*id, &e);
                record_failure(&tx, &failure).await?;
                outcome.failures.push(failure);
            }
        }
    }
    tx.commit().await.context("committing a batch")?;
    Ok(outcome)
}

fn failure(user_id: Uuid, e: &tokio_postgres::Error) -> Failure {
    match e.as_db_error() {
        Some(db) => Failure {
            user_id,
            sqlstate: db.code().code().to_string(),
            reason: db.message().to_string(),
        },
        None => Failure {
            user_id,
            sqlstate: String::new(),
            reason: e.to_string(),
        },
    }
}

async fn record_failure(client: &impl GenericClient, f: &Failure) -> Result<()> {
    client
        .execute(RECORD_FAILURE, &[&f.user_id, &f.reason, &f.sqlstate])
        .await
        .context("recording a failure in usersync.repair_queue")?;
    Ok(())
}

/// What a profile created now for each of `ids` would hold, without creating it (dry-run -v).
pub async fn preview(client: &Client, ids: &[Uuid]) -> Result<Vec<serde_json::Value>> {
    let rows = client
        .query(
            "SELECT pg_catalog.to_jsonb(p) FROM auth.users u
             CROSS JOIN LATERAL usersync.build_profile(u) AS p
             WHERE u.id = ANY($1) ORDER BY u.id",
            &[&ids],
        )
        .await
        .context("previewing profiles")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
