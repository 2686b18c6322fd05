//! The lifecycle policies in the database, and the sweep's half of applying them.
//!
//! The policies live in `usersync.policy` (migration 0003), where the triggers read them;
//! `usersync migrate up` writes them from its configuration (`sync.include_anonymous`,
//! `sync.follow_email`, `sync.soft_deleted`), so the release step is the one writer. The daemon
//! and the CLI read them from there too, so triggers and sweep always agree; a configuration
//! that differs from the database is reported by `check` (finding `policy`) until the next
//! `migrate up`. Two replicas configured differently therefore cannot flap the policy: only a
//! release changes it.
//!
//! [`apply`] does for the users the triggers missed (triggers off during a restore, a failure
//! in the queue) what the update trigger does: fills a NULL e-mail, follows e-mail changes
//! when asked, fills a NULL name or picture from metadata that arrived later, scrubs or
//! deletes the profiles of soft-deleted users. Idempotent, in batches of short transactions.

use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

pub use crate::config::{Policy, SoftDeleted};
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// The policy in the database; None before migration 0003.
pub async fn load(client: &Client) -> Result<Option<Policy>> {
    load_in(client).await
}

/// [`load`], in a transaction too.
pub async fn load_in(client: &impl tokio_postgres::GenericClient) -> Result<Option<Policy>> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('usersync.policy') IS NOT NULL",
            &[],
        )
        .await
        .context("looking for usersync.policy")?
        .value(0)?;
    if !exists {
        return Ok(None);
    }
    // fill_from_metadata arrived with migration 0007: absent before it (the triggers then
    // fill nothing, and so does the sweep).
    let Some(row) = client
        .query_opt(
            "SELECT p.include_anonymous, p.follow_email, p.soft_deleted,
                    COALESCE((pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'fill_from_metadata')::boolean, false)
             FROM usersync.policy p",
            &[],
        )
        .await
        .context("reading usersync.policy")?
    else {
        return Ok(Some(Policy::default()));
    };
    let soft: String = row.value(2)?;
    Ok(Some(Policy {
        include_anonymous: row.value(0)?,
        follow_email: row.value(1)?,
        soft_deleted: SoftDeleted::parse(&soft).unwrap_or(SoftDeleted::Scrub),
        fill_from_metadata: row.value(3)?,
    }))
}

/// Writes it (what `migrate up` does); true when it changed. Before migration 0007 the
/// database has no `fill_from_metadata`, and it is left out.
pub async fn store(policy: &Policy, client: &Client) -> Result<bool> {
    let fill_stored: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid OPERATOR(pg_catalog.=) 'usersync.policy'::pg_catalog.regclass
                              AND a.attname OPERATOR(pg_catalog.=) 'fill_from_metadata'
                              AND NOT a.attisdropped)",
            &[],
        )
        .await
        .context("reading usersync.policy's columns")?
        .value(0)?;
    let sql = if fill_stored {
        STORE
    } else {
        STORE_BEFORE_0007
    };
    let fill = fill_stored.then_some(policy.fill_from_metadata);
    let changed = client
        .execute(
            sql,
            &[
                &policy.include_anonymous,
                &policy.follow_email,
                &policy.soft_deleted.as_str(),
                &fill,
            ],
        )
        .await
        .context("writing usersync.policy")?;
    Ok(changed > 0)
}

const STORE: &str = "
    INSERT INTO usersync.policy AS p (id, include_anonymous, follow_email, soft_deleted, fill_from_metadata)
    VALUES (true, $1, $2, $3, $4)
    ON CONFLICT (id) DO UPDATE
        SET include_anonymous = EXCLUDED.include_anonymous,
            follow_email = EXCLUDED.follow_email,
            soft_deleted = EXCLUDED.soft_deleted,
            fill_from_metadata = EXCLUDED.fill_from_metadata,
            updated_at = pg_catalog.now()
        WHERE (p.include_anonymous, p.follow_email, p.soft_deleted, p.fill_from_metadata)
              IS DISTINCT FROM (EXCLUDED.include_anonymous, EXCLUDED.follow_email,
                                EXCLUDED.soft_deleted, EXCLUDED.fill_from_metadata)";

const STORE_BEFORE_0007: &str = "
    INSERT INTO usersync.policy AS p (id, include_anonymous, follow_email, soft_deleted)
    VALUES (true, $1, $2, $3)
    ON CONFLICT (id) DO UPDATE
        SET include_anonymous = EXCLUDED.include_anonymous,
            follow_email = EXCLUDED.follow_email,
            soft_deleted = EXCLUDED.soft_deleted,
            updated_at = pg_catalog.now()
        WHERE $4::boolean IS NULL
          AND (p.include_anonymous, p.follow_email, p.soft_deleted)
              IS DISTINCT FROM (EXCLUDED.include_anonymous, EXCLUDED.follow_email,
                                EXCLUDED.soft_deleted)";

/// What [`apply`] changed, in users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// A NULL e-mail (an anonymous user who converted) filled from auth.users.
    pub emails_filled: u64,
    /// An e-mail changed in auth.users, followed (`sync.follow_email`).
    pub emails_followed: u64,
    /// Soft-deleted users' profiles scrubbed (`sync.soft_deleted = scrub`).
    pub scrubbed: u64,
    /// Soft-deleted users' profiles deleted (`sync.soft_deleted = delete`).
    pub deleted: u64,
    /// A NULL full_name or avatar_url filled from the user's metadata
    /// (`sync.fill_from_metadata`).
    pub filled_from_metadata: u64,
}

/// Rows per statement: each is a short transaction of its own.
const BATCH: i64 = 10_000;

// Each statement finds up to $1 profiles needing its change (restricted to $2 when given),
// and changes them. `$2::uuid[] IS NULL` folds away in a custom plan.
const FILL_EMAIL: &str = "
    UPDATE public.user_profiles p SET email = u.email::pg_catalog.text, updated_at = pg_catalog.now()
    FROM (SELECT u.id, u.email FROM usersync.auth_users u JOIN public.user_profiles q ON q.id = u.id
          WHERE ($2::uuid[] IS NULL OR u.id = ANY ($2))
            AND u.deleted_at IS NULL AND NOT u.is_anonymous AND u.email IS NOT NULL
            AND q.email IS NULL
          LIMIT $1) AS u
    WHERE p.id = u.id";

const FOLLOW_EMAIL: &str = "
    UPDATE public.user_profiles p SET email = u.email::pg_catalog.text, updated_at = pg_catalog.now()
    FROM (SELECT u.id, u.email FROM usersync.auth_users u JOIN public.user_profiles q ON q.id = u.id
          WHERE ($2::uuid[] IS NULL OR u.id = ANY ($2))
            AND u.deleted_at IS NULL AND u.email IS NOT NULL
            AND q.email IS DISTINCT FROM u.email::pg_catalog.text
          LIMIT $1) AS u
    WHERE p.id = u.id";

const SCRUB: &str = concat!(
    "
    UPDATE public.user_profiles p
    SET email = NULL, full_name = NULL, avatar_url = NULL, is_active = false,
        updated_at = pg_catalog.now()
    FROM (SELECT q.id FROM usersync.auth_users u JOIN public.user_profiles q ON q.id = u.id
          WHERE ($2::uuid[] IS NULL OR u.id = ANY ($2))
            AND u.deleted_at IS NOT NULL
            AND ",
    crate::holds_personal_data!("q"),
    "
          LIMIT $1) AS u
    WHERE p.id = u.id"
);

const FILL_FROM_METADATA: &str = concat!(
    "
    UPDATE public.user_profiles p
    SET full_name = COALESCE(p.full_name, u.full_name),
        avatar_url = COALESCE(p.avatar_url, u.avatar_url),
        updated_at = pg_catalog.now()
    FROM (SELECT q.id, b.full_name, b.avatar_url
          FROM usersync.auth_users u JOIN public.user_profiles q ON q.id = u.id
          CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text,
                                                    u.raw_user_meta_data, u.created_at) b
          WHERE ($2::uuid[] IS NULL OR u.id = ANY ($2)) AND ",
    crate::fillable!("q", "b"),
    "
          LIMIT $1) AS u
    WHERE p.id = u.id"
);

const DELETE: &str = "
    DELETE FROM public.user_profiles p
    USING (SELECT q.id FROM usersync.auth_users u JOIN public.user_profiles q ON q.id = u.id
           WHERE ($2::uuid[] IS NULL OR u.id = ANY ($2)) AND u.deleted_at IS NOT NULL
           LIMIT $1) AS u
    WHERE p.id = u.id";

/// Applies the policy to every user (`ids` None) or to these.
pub async fn apply(client: &Client, policy: &Policy, ids: Option<&[Uuid]>) -> Result<Applied> {
    // Over every user these read both tables whole: the scan timeout bounds them.
    if ids.is_none() {
        crate::db::begin_scan(client).await?;
    }
    let applied = apply_all(client, policy, ids).await;
    if ids.is_none() {
        crate::db::end_scan(client).await?;
    }
    applied
}

async fn apply_all(client: &Client, policy: &Policy, ids: Option<&[Uuid]>) -> Result<Applied> {
    // One join counts each kind (in parallel); only the kinds with work run their statements.
    let pending = client
        .query_one(
            PENDING,
            &[
                &ids,
                &policy.follow_email,
                &policy.soft_deleted.as_str(),
                &policy.fill_from_metadata,
            ],
        )
        .await
        .context("counting what the lifecycle policies would change")?;
    let (fill, follow, soft, meta): (i64, i64, i64, i64) = (
        pending.value(0)?,
        pending.value(1)?,
        pending.value(2)?,
        pending.value(3)?,
    );
    let mut applied = Applied::default();
    if meta > 0 {
        applied.filled_from_metadata = repeat(
            client,
            FILL_FROM_METADATA,
            ids,
            "filling names and pictures",
        )
        .await?;
    }
    if fill > 0 {
        applied.emails_filled = repeat(client, FILL_EMAIL, ids, "filling e-mails").await?;
    }
    if follow > 0 {
        applied.emails_followed = repeat(client, FOLLOW_EMAIL, ids, "following e-mails").await?;
    }
    match policy.soft_deleted {
        SoftDeleted::Scrub if soft > 0 => {
            applied.scrubbed = repeat(client, SCRUB, ids, "scrubbing soft-deleted users").await?
        }
        SoftDeleted::Delete if soft > 0 => {
            applied.deleted =
                repeat(client, DELETE, ids, "deleting soft-deleted users' profiles").await?
        }
        _ => {}
    }
    if applied != Applied::default() {
        tracing::info!(
            emails_filled = applied.emails_filled,
            emails_followed = applied.emails_followed,
            scrubbed = applied.scrubbed,
            deleted = applied.deleted,
            filled_from_metadata = applied.filled_from_metadata,
            "policies applied"
        );
    }
    Ok(applied)
}

// How many profiles each statement below would change: $1 the users (NULL: all), $2
// follow_email, $3 sync.soft_deleted, $4 fill_from_metadata.
const PENDING: &str = concat!(
    "
    SELECT count(*) FILTER (WHERE u.deleted_at IS NULL AND NOT u.is_anonymous
                              AND u.email IS NOT NULL AND p.email IS NULL),
           count(*) FILTER (WHERE $2 AND u.deleted_at IS NULL AND u.email IS NOT NULL
                              AND p.email IS DISTINCT FROM u.email::pg_catalog.text),
           count(*) FILTER (WHERE u.deleted_at IS NOT NULL
                              AND ($3 = 'delete' OR ($3 = 'scrub'
                                   AND ",
    crate::holds_personal_data!("p"),
    "))),
           count(*) FILTER (WHERE $4 AND ",
    crate::fillable!("p", "b"),
    ")
    FROM usersync.auth_users u JOIN public.user_profiles p ON p.id = u.id
    CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text,
                                              u.raw_user_meta_data, u.created_at) b
    WHERE $1::uuid[] IS NULL OR u.id = ANY ($1)"
);

async fn repeat(client: &Client, sql: &str, ids: Option<&[Uuid]>, what: &str) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = client
            .execute(sql, &[&BATCH, &ids])
            .await
            .context(what.to_string())?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}
