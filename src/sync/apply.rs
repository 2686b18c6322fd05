//! Creation: profiles for a batch of user ids, through the one builder the trigger uses.
//!
//! A batch is one short transaction: `INSERT … ON CONFLICT (id) DO NOTHING` of what
//! `usersync.build_profile` returns. A user whose profile appeared meanwhile (the
//! trigger, the application, another replica) is raced, not an error; an existing profile is
//! never updated. When the batch fails as a whole, its users are retried one by one so that one
//! bad row fails alone; each failure goes to the repair queue with a backoff.

use crate::db::RowExt;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::error::{DbContext, Result, is_connection_error};
use crate::sync::plan::Tid;

/// What one batch did.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    pub created: u64,
    /// Had a profile, or no longer needed one, by the time the batch ran.
    pub raced: u64,
    /// In the repair queue and waiting out its backoff.
    pub deferred: u64,
    pub failures: Vec<Failure>,
    /// Deferred and failed users: still without a profile, on purpose.
    pub left_missing: Vec<Uuid>,
    pub elapsed: Duration,
}

/// Whose profiles a batch creates.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// `sync.include_anonymous`.
    pub include_anonymous: bool,
    /// True for the repair pass, which picked due users from the queue; false for the sweep,
    /// which leaves users in a repair backoff alone.
    pub repairing: bool,
}

/// A user whose profile could not be created, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub user_id: Uuid,
    pub sqlstate: String,
    pub reason: String,
}

// The batch: users still live and not waiting out a repair backoff, inserted as the builder
// makes them; a plain INSERT, whose row count is the number created. With row addresses ($4)
// the users are fetched by address (a TID scan, no index descent per user); without, by id.
// The builder is inlined on the table's own row. Not cached: a fresh statement keeps a custom
// plan, in which `$4 IS NULL` folds away (see plan.rs).
const CREATE: &str = concat!("
    INSERT INTO public.user_profiles
        (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
    SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
    FROM usersync.auth_users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
    WHERE u.id = ANY($1) AND ($4::tid[] IS NULL OR u.row_address = ANY($4))
      AND ", crate::should_have_profile!("$3"), "
      AND ($2 OR NOT EXISTS (SELECT 1 FROM usersync.repair_queue q
                             WHERE q.user_id = u.id AND q.next_attempt_at > now()))
    ON CONFLICT (id) DO NOTHING");

// Of a batch's users still without a profile, those waiting out a repair backoff.
const DEFERRED: &str = "
    SELECT q.user_id FROM usersync.repair_queue q
    WHERE q.user_id = ANY($1) AND q.next_attempt_at > now()
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = q.user_id)";

/// Records a failure: a new queue entry, or one more attempt with a longer backoff
/// (10 s doubling per attempt, at most an hour).
const RECORD_FAILURE: &str = "
    INSERT INTO usersync.repair_queue AS q (user_id, last_error, last_sqlstate, failures, attempts,
                                            next_attempt_at)
    SELECT $1, $2, $3, 0, 1, now() + interval '10 seconds'
    WHERE EXISTS (SELECT 1 FROM usersync.auth_users WHERE id = $1)
    ON CONFLICT (user_id) DO UPDATE
        SET last_error = EXCLUDED.last_error,
            last_sqlstate = EXCLUDED.last_sqlstate,
            attempts = q.attempts + 1,
            next_attempt_at = now() + least(interval '10 seconds' * power(2, least(q.attempts, 20)),
                                            interval '1 hour')";

/// Creates the profiles of one batch of users. `tids`, when given, are where their rows were
/// when detected: users still there are fetched by address, and only when some are not (the
/// row moved, or needs no profile any more) is the batch run again by id. `repairing` is false
/// for the sweep, which leaves users in a repair backoff alone, and true for the repair pass,
/// which picked due ones.
pub async fn create(
    client: &mut Client,
    ids: &[Uuid],
    tids: Option<&[Tid]>,
    mode: Mode,
) -> Result<BatchOutcome> {
    let started = Instant::now();
    let mut result = create_batch(client, ids, tids, mode).await;
    if tids.is_some()
        && let Ok((created, deferred)) = &result
        && (*created + deferred.len() as u64) < ids.len() as u64
    {
        let created = *created;
        result = create_batch(client, ids, None, mode)
            .await
            .map(|(again, deferred)| (created + again, deferred));
    }
    let mut outcome = match result {
        Ok((created, deferred)) => BatchOutcome {
            created,
            deferred: deferred.len() as u64,
            raced: ids.len() as u64 - created - deferred.len() as u64,
            left_missing: deferred,
            ..BatchOutcome::default()
        },
        Err(e) if is_connection_error(&e) => {
            return Err(e).context("creating a batch of profiles");
        }
        Err(_) => one_by_one(client, ids, mode).await?,
    };
    outcome.elapsed = started.elapsed();
    tracing::debug!(
        users = ids.len(),
        created = outcome.created,
        elapsed_ms = outcome.elapsed.as_millis() as u64,
        "batch"
    );
    Ok(outcome)
}

/// One batch, one transaction. Its commit need not wait for the disk: a batch lost in a crash
/// is detected and created again by the next pass, so `synchronous_commit` is off for it.
/// Returns how many profiles it created and which users wait out a repair backoff.
async fn create_batch(
    client: &mut Client,
    ids: &[Uuid],
    tids: Option<&[Tid]>,
    mode: Mode,
) -> std::result::Result<(u64, Vec<Uuid>), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let created = tx
        .execute(
            CREATE,
            &[&ids, &mode.repairing, &mode.include_anonymous, &tids],
        )
        .await?;
    let deferred = if mode.repairing || created == ids.len() as u64 {
        Vec::new()
    } else {
        deferred(&tx, ids).await?
    };
    tx.commit().await?;
    Ok((created, deferred))
}

/// Of these users still without a profile, those waiting out a repair backoff.
async fn deferred(
    tx: &impl GenericClient,
    ids: &[Uuid],
) -> std::result::Result<Vec<Uuid>, tokio_postgres::Error> {
    tx.query(DEFERRED, &[&ids])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

/// The batch failed: each user in its own savepoint, failures recorded, in one transaction.
async fn one_by_one(client: &mut Client, ids: &[Uuid], mode: Mode) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut tx = client.transaction().await.context("starting a batch")?;
    for id in ids {
        let sp = tx
            .savepoint("usersync_one")
            .await
            .context("creating a savepoint")?;
        let one = std::slice::from_ref(id);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &one,
            &mode.repairing,
            &mode.include_anonymous,
            &None::<&[Tid]>,
        ];
        match sp.execute(CREATE, &params).await {
            Ok(created) => {
                let deferred: Vec<Uuid> = if mode.repairing || created == 1 {
                    Vec::new()
                } else {
                    deferred(&sp, one)
                        .await
                        .context("reading the repair queue")?
                };
                outcome.created += created;
                outcome.deferred += deferred.len() as u64;
                outcome.raced += 1 - created - deferred.len() as u64;
                outcome.left_missing.extend(deferred);
                sp.commit().await.context("releasing a savepoint")?;
            }
            Err(e) if is_connection_error(&e) => return Err(e).context("creating a profile"),
            Err(e) => {
                sp.rollback().await.context("rolling back a savepoint")?;
                let failure = failure(*id, &e);
                record_failure(&tx, &failure).await?;
                outcome.left_missing.push(*id);
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
            "SELECT pg_catalog.to_jsonb(p) FROM usersync.auth_users u
             CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
             WHERE u.id = ANY($1) ORDER BY u.id",
            &[&ids],
        )
        .await
        .context("previewing profiles")?;
    rows.iter().map(|r| r.value(0)).collect()
}
