//! The repair queue drain: users the sign-up trigger failed on, retried first and quickly.
//!
//! Due items (`next_attempt_at <= now()`) are claimed with `FOR UPDATE SKIP LOCKED` and a
//! short lease, so two replicas draining at once never take the same user. Each is retried through the same batch
//! creation as the sweep; an item that fails again gets one more attempt recorded, its error,
//! and a longer backoff, and never blocks the others.

use crate::db::RowExt;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{DbContext, Result};
use crate::sync::{apply, policy};

/// What a repair pass did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Items whose backoff had expired.
    pub due: u64,
    pub created: u64,
    /// Resolved meanwhile: the user has a profile, was deleted, or is not eligible.
    pub resolved: u64,
    pub failed: u64,
    /// Items still in the queue after the pass, due or not.
    pub remaining: u64,
    /// Every item was retried now, whatever its backoff (a manual sync).
    pub retried_now: bool,
    /// What the lifecycle policies changed for the claimed users.
    pub applied: policy::Applied,
}

fn add(a: &policy::Applied, b: &policy::Applied) -> policy::Applied {
    policy::Applied {
        emails_filled: a.emails_filled + b.emails_filled,
        emails_followed: a.emails_followed + b.emails_followed,
        scrubbed: a.scrubbed + b.scrubbed,
        deleted: a.deleted + b.deleted,
        filled_from_metadata: a.filled_from_metadata + b.filled_from_metadata,
    }
}

/// Items taken per round; a pass keeps going until no due item is left.
const ROUND: i64 = 1000;

/// Drains every due item, or with `now` every item whatever its backoff (a manual `usersync
/// sync` after the cause was fixed). Each claimed user gets the lifecycle policies applied
/// too (an update trigger's failure is queued like a sign-up's).
pub async fn drain(
    client: &mut Client,
    policy: &policy::Policy,
    now: bool,
    failures: &mut Vec<apply::Failure>,
) -> Result<RepairReport> {
    let mut report = RepairReport {
        retried_now: now,
        ..RepairReport::default()
    };
    let mut claim_all = now;
    loop {
        let (ids, resolved) = claim(client, policy.include_anonymous, claim_all).await?;
        if ids.is_empty() {
            break;
        }
        // Everything was claimed once; what fails again waits for its new backoff.
        claim_all = false;
        report.applied = add(
            &report.applied,
            &policy::apply(client, policy, Some(&ids)).await?,
        );
        report.due += ids.len() as u64;
        report.resolved += resolved.len() as u64;
        let retry: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| !resolved.contains(id))
            .collect();
        if !retry.is_empty() {
            let outcome = retry_users(client, &retry, policy.include_anonymous).await?;
            report.created += outcome.created;
            report.resolved += outcome.raced;
            report.failed += outcome.failures.len() as u64;
            failures.extend(outcome.failures);
        }
    }
    report.remaining = client
        .query_one("SELECT count(*) FROM usersync.repair_queue", &[])
        .await
        .context("counting the repair queue")?
        .value::<i64>(0)? as u64;
    Ok(report)
}

/// Claims a round of due items (or, with `all`, any items), with a lease of a minute that keeps
/// other replicas off them while this one works on them (success removes an item, failure sets
/// its real backoff); the claimed users that no longer need a profile leave the queue without an
/// attempt. Returns the claimed ids and those resolved.
async fn claim(
    client: &mut Client,
    include_anonymous: bool,
    all: bool,
) -> Result<(Vec<Uuid>, Vec<Uuid>)> {
    let tx = client
        .transaction()
        .await
        .context("starting a repair round")?;
    let ids: Vec<Uuid> = tx
        .query(
            "UPDATE usersync.repair_queue q SET next_attempt_at = now() + interval '1 minute'
             WHERE q.user_id IN (SELECT user_id FROM usersync.repair_queue
                                 WHERE next_attempt_at <= now() OR $2
                                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING q.user_id",
            &[&ROUND, &all],
        )
        .await
        .context("claiming repair queue items")?
        .iter()
        .map(|r| r.value(0))
        .collect::<Result<_>>()?;
    let resolved: Vec<Uuid> = if ids.is_empty() {
        Vec::new()
    } else {
        tx.query(RESOLVED, &[&ids, &include_anonymous])
            .await
            .context("removing resolved repair queue items")?
            .iter()
            .map(|r| r.value(0))
            .collect::<Result<_>>()?
    };
    tx.commit().await.context("ending a repair round")?;
    Ok((ids, resolved))
}

// Of the claimed users ($1), those that no longer need a profile ($2 include_anonymous) or have
// one, removed from the queue.
const RESOLVED: &str = concat!(
    "DELETE FROM usersync.repair_queue q USING usersync.auth_users u
     WHERE q.user_id = ANY($1) AND u.id = q.user_id
       AND (NOT ",
    crate::should_have_profile!("$2"),
    " OR EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id))
     RETURNING q.user_id"
);

/// The claimed users' profiles, through the sweep's batch creation; those that got one leave
/// the queue, failures stay with a new backoff.
async fn retry_users(
    client: &mut Client,
    retry: &[Uuid],
    include_anonymous: bool,
) -> Result<apply::BatchOutcome> {
    let mode = apply::Mode {
        include_anonymous,
        repairing: true,
    };
    let outcome = apply::create(client, retry, None, mode).await?;
    client
        .execute(
            "DELETE FROM usersync.repair_queue q WHERE q.user_id = ANY($1)
             AND EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = q.user_id)",
            &[&retry],
        )
        .await
        .context("removing repaired items from the queue")?;
    Ok(outcome)
}
