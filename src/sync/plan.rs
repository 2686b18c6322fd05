//! Detection: which live auth users have no profile, and how the work is split.
//!
//! One statement joins `auth.users` (through `usersync.auth_users`) to `public.user_profiles` as
//! the bare anti-join does and counts the pass; only when users are missing does a second one list them. The same SQL
//! serves the sweep, the dry-run and the integrity check's count, so they never disagree.
//!
//! The work is split into ranges of `auth.users`'s heap, [`RANGE_BLOCKS`] pages each, and a
//! range's users are created in heap order. Ranges of the uuid space would scatter every batch
//! over the whole table: with a table larger than shared buffers each batch then reads and
//! dirties pages all over it, and a backfill gets 35-50% slower (measured by benches/sync.rs).
//! A user whose row moves between pages while two replicas sweep is at worst in two ranges at
//! once, and `ON CONFLICT DO NOTHING` makes one of them a race, never a duplicate.

use crate::db::RowExt;
use bytes::BytesMut;
use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::error::{DbContext, Result};
use crate::sync::policy::Policy;

/// Pages of `auth.users` per range (8 MiB, some 25,000 users). A constant, so that every
/// worker of every replica means the same users by the same range lock.
pub const RANGE_BLOCKS: u32 = 1024;

/// Most missing users a pass lists (24 bytes each); with more, it sweeps the table by page
/// range ([`crate::sync::ranges`]), which holds one batch's counts at a time.
pub const LIST_LIMIT: u64 = 100_000;

/// A user without a profile, and where its row lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missing {
    /// Where the user's row was when detected; it moves when the row is updated.
    pub tid: Tid,
    pub id: Uuid,
}

impl Missing {
    /// The range this user's row falls in.
    pub fn range(&self) -> u32 {
        self.tid.block / RANGE_BLOCKS
    }
}

/// What a detection found.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Auth users examined.
    pub scanned: u64,
    /// Soft-deleted users without a profile: never given one.
    pub skipped_deleted: u64,
    /// Anonymous users without a profile, when `sync.include_anonymous` is false.
    pub skipped_anonymous: u64,
    /// Live users that should have a profile and have none: all of them, counted.
    pub missing_total: u64,
    /// Them, in heap order: all of them, or the first `limit`.
    pub missing: Vec<Missing>,
}

impl Plan {
    /// The missing ids in id order.
    pub fn ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.missing.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    }
}

// The counts of a pass: one join of the two tables, run in parallel by PostgreSQL. Not a
// cached prepared statement: a fresh statement is planned with its parameters (a custom
// plan); a cached one turns generic after five runs and gets slower (measured: 2.7x).
const COUNT: &str = concat!("
    SELECT count(*),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NOT NULL),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NULL AND u.is_anonymous AND NOT $1),
           count(*) FILTER (WHERE p.id IS NULL AND ", crate::should_have_profile!("$1"), ")
    FROM usersync.auth_users u
    LEFT JOIN public.user_profiles p ON p.id = u.id");

// The missing users, only when there are some: the bare anti-join, with the page each row is
// on.
const MISSING: &str = concat!(
    "
    SELECT u.row_address, u.id FROM usersync.auth_users u
    WHERE ",
    crate::should_have_profile!("$1"),
    "
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)"
);

/// Detects the missing users, all of them, in heap order: what the dry-run shows. With
/// nothing missing (the steady state) this is one statement, as cheap as the bare anti-join.
pub async fn detect(client: &mut Client, policy: &Policy) -> Result<Plan> {
    let mut plan = count(client, policy).await?;
    if plan.missing_total > 0 {
        plan.missing = list(client, policy, plan.missing_total).await?;
    }
    Ok(plan)
}

/// Settings for a statement over both whole tables. A nested loop is never right there, but
/// a freshly emptied `user_profiles` looks like one row to the planner, which then picks one
/// and rescans the table, growing under the sweep's inserts, for every user: quadratic
/// (measured: 40 s against 0.74 s at 100k users, docs/performance.md). Hash joins it is.
/// It also runs under the scan timeout, not the batch one.
const WHOLE_TABLE: &str = concat!(
    "SET LOCAL enable_nestloop = off; ",
    "SELECT pg_catalog.set_config('statement_timeout', ",
    "COALESCE(pg_catalog.current_setting('usersync.scan_timeout', true), ",
    "pg_catalog.current_setting('statement_timeout')), true)"
);

/// The counts of a pass; `missing` is left empty.
pub async fn count(client: &mut Client, policy: &Policy) -> Result<Plan> {
    let tx = client
        .transaction()
        .await
        .context("counting users without a profile")?;
    tx.batch_execute(WHOLE_TABLE)
        .await
        .context("counting users without a profile")?;
    let row = tx
        .query_one(COUNT, &[&policy.include_anonymous])
        .await
        .context("counting users without a profile")?;
    tx.commit()
        .await
        .context("counting users without a profile")?;
    Ok(Plan {
        scanned: row.value::<i64>(0)? as u64,
        skipped_deleted: row.value::<i64>(1)? as u64,
        skipped_anonymous: row.value::<i64>(2)? as u64,
        missing_total: row.value::<i64>(3)? as u64,
        missing: Vec::new(),
    })
}

/// Whether the planner's statistics say over a tenth of the users lack a profile: a backfill,
/// which goes straight to the page-range sweep. Some(how many, as estimated).
pub async fn looks_like_backfill(client: &Client) -> Result<Option<u64>> {
    let row = client
        .query_one(
            concat!(
                "SELECT greatest(u.reltuples, 0)::float8, greatest(p.reltuples, 0)::float8
                 FROM pg_catalog.pg_class u, pg_catalog.pg_class p
                 WHERE u.oid = ",
                crate::auth_users_oid!(),
                " AND p.oid = 'public.user_profiles'::pg_catalog.regclass"
            ),
            &[],
        )
        .await
        .context("reading table statistics")?;
    let (users, profiles): (f64, f64) = (row.value(0)?, row.value(1)?);
    let backfill = users >= 1000.0 && users - profiles > users / 10.0;
    Ok(backfill.then_some((users - profiles) as u64))
}

/// The live users without a profile, sorted in heap order (the anti-join hands them back in
/// hash-batch order once the profiles outgrow `work_mem`). `expected`: how many the count found.
pub async fn list(client: &mut Client, policy: &Policy, expected: u64) -> Result<Vec<Missing>> {
    let tx = client
        .transaction()
        .await
        .context("listing users without a profile")?;
    let users = missing(&tx, policy.include_anonymous, expected).await?;
    tx.commit()
        .await
        .context("listing users without a profile")?;
    Ok(users)
}

/// The live users without a profile, in heap order. Streamed row by row into a vector sized
/// once, so a pass costs its 24 bytes per user and little more.
async fn missing(
    tx: &tokio_postgres::Transaction<'_>,
    include_anonymous: bool,
    expected: u64,
) -> Result<Vec<Missing>> {
    use futures_util::TryStreamExt;
    tx.batch_execute(WHOLE_TABLE)
        .await
        .context("listing users without a profile")?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&include_anonymous];
    let rows = tx
        .query_raw(MISSING, params)
        .await
        .context("listing users without a profile")?;
    let mut stream = std::pin::pin!(rows);
    let mut users = Vec::with_capacity(expected.min(LIST_LIMIT) as usize);
    while let Some(row) = stream
        .try_next()
        .await
        .context("listing users without a profile")?
    {
        users.push(Missing {
            tid: row.try_get(0).context("reading a user's address")?,
            id: row.try_get(1).context("reading a user's id")?,
        });
    }
    users.sort_unstable();
    Ok(users)
}

/// A row's physical address (`tid`): its heap page and line pointer. Read and written in the
/// binary form: four bytes of block number, two of offset, big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl<'a> FromSql<'a> for Tid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        let raw: [u8; 6] = raw.try_into().map_err(|_| "a tid is six bytes")?;
        Ok(Tid {
            block: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            offset: u16::from_be_bytes([raw[4], raw[5]]),
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
}

impl ToSql for Tid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }

    to_sql_checked!();
}

/// What the integrity check counts of users and their profiles, from one join of the two
/// tables (the sweep's detection, with the same policies): each count with up to `samples`
/// profile or user ids.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// Live users who should have a profile, have none, and signed up over `grace` ago (a
    /// sign-up in flight is no alarm).
    pub missing: (i64, Vec<String>),
    /// Profiles of live users whose e-mail is not their user's.
    pub stale_email: (i64, Vec<String>),
    /// Profiles of soft-deleted users that the policy says should be scrubbed (still holding
    /// personal data) or gone.
    pub soft_deleted_left: (i64, Vec<String>),
    /// Profiles of live users with a NULL name or picture their metadata has, under
    /// `fill_from_metadata`.
    pub empty_from_metadata: (i64, Vec<String>),
    /// Profiles the sweep's lifecycle statements would change: an e-mail to fill (or follow,
    /// with `follow_email`), a name or picture to fill, a soft-deleted user's profile to scrub
    /// or delete.
    pub lifecycle_pending: i64,
}

pub async fn census(
    client: &Client,
    policy: &Policy,
    grace: std::time::Duration,
    samples: i32,
) -> Result<Census> {
    // Counts only, so that PostgreSQL runs it in parallel (array_agg cannot be in 15); the
    // samples come from a second, LIMITed look only for a count that is not zero.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &policy.include_anonymous,
        &grace.as_secs_f64(),
        &policy.soft_deleted.as_str(),
        &policy.fill_from_metadata,
        &policy.follow_email,
    ];
    let row = client
        .query_one(&format!("SELECT {CENSUS_COUNTS} {CENSUS_FROM}"), &params)
        .await
        .context("counting users and their profiles")?;
    let mut census = Census {
        lifecycle_pending: row.value(4)?,
        ..Census::default()
    };
    for (i, (kind, slot)) in [
        ("missing", &mut census.missing),
        ("stale", &mut census.stale_email),
        ("left_behind", &mut census.soft_deleted_left),
        ("empty_meta", &mut census.empty_from_metadata),
    ]
    .into_iter()
    .enumerate()
    {
        let count: i64 = row.value(i)?;
        if count == 0 {
            continue;
        }
        // `kind` is one of the four constant column names above.
        let ids: Vec<String> = client
            .query(
                &format!("SELECT x.id::text {CENSUS_FROM} WHERE x.{kind} LIMIT {samples}"),
                &params[..4],
            )
            .await
            .context("sampling users and their profiles")?
            .iter()
            .map(|r| r.value(0))
            .collect::<Result<_>>()?;
        *slot = (count, ids);
    }
    Ok(census)
}

const CENSUS_COUNTS: &str = "count(*) FILTER (WHERE x.missing), count(*) FILTER (WHERE x.stale),
    count(*) FILTER (WHERE x.left_behind), count(*) FILTER (WHERE x.empty_meta),
    count(*) FILTER (WHERE x.left_behind OR x.to_fill OR (x.stale AND $5) OR x.empty_meta)";

// $1 include_anonymous, $2 the grace period in seconds, $3 sync.soft_deleted, $4
// fill_from_metadata ($5 follow_email, in the counts).
const CENSUS_FROM: &str = concat!(
    "
    FROM (SELECT u.id,
                 p.id IS NULL AND ",
    crate::should_have_profile!("$1"),
    "
                     AND (u.created_at IS NULL
                          OR u.created_at < now() - make_interval(secs => $2)) AS missing,
                 p.id IS NOT NULL AND u.deleted_at IS NULL AND u.email IS NOT NULL
                     AND p.email IS DISTINCT FROM u.email::text AS stale,
                 p.id IS NOT NULL AND u.deleted_at IS NULL AND u.email IS NOT NULL
                     AND p.email IS NULL AND NOT u.is_anonymous AS to_fill,
                 p.id IS NOT NULL AND u.deleted_at IS NOT NULL
                     AND ($3 = 'delete' OR ($3 = 'scrub'
                          AND ",
    crate::holds_personal_data!("p"),
    ")) AS left_behind,
                 p.id IS NOT NULL AND $4 AND ",
    crate::fillable!("p", "b"),
    " AS empty_meta
          FROM usersync.auth_users u LEFT JOIN public.user_profiles p ON p.id = u.id
          CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::text, u.raw_user_meta_data,
                                                    u.created_at) b) AS x"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_fall_in_ranges_of_pages_and_a_plan_lists_them_by_id() {
        let at = |block| Missing {
            tid: Tid { block, offset: 1 },
            id: Uuid::new_v4(),
        };
        assert_eq!(at(0).range(), 0);
        assert_eq!(at(RANGE_BLOCKS - 1).range(), 0);
        assert_eq!(at(RANGE_BLOCKS).range(), 1);
        assert_eq!(at(u32::MAX).range(), u32::MAX / RANGE_BLOCKS);
        let plan = Plan {
            missing: (0..500).map(|i| at(i * 37 % 5000)).collect(),
            ..Plan::default()
        };
        let ids = plan.ids();
        assert_eq!(ids.len(), 500);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
