//! Detection: which live auth users have no profile, and how the work is split.
//!
//! One statement joins `auth.users` to `public.user_profiles` as the bare anti-join does and
//! counts the pass; only when users are missing does a second one list them. The same SQL
//! serves the sweep, the dry-run and the integrity check's count, so they never disagree.
//!
//! The work is split into ranges of `auth.users`'s heap, [`RANGE_BLOCKS`] pages each, and a
//! range's users are created in heap order. Ranges of the uuid space would scatter every batch
//! over the whole table: with a table larger than shared buffers each batch then reads and
//! dirties pages all over it, and a backfill gets 35-50% slower (measured by benches/sync.rs).
//! A user whose row moves between pages while two replicas sweep is at worst in two ranges at
//! once, and `ON CONFLICT DO NOTHING` makes one of them a race, never a duplicate.

use bytes::BytesMut;
use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::error::{DbContext, Result};

/// Pages of `auth.users` per range (8 MiB, some 25,000 users). A constant, so that every
/// worker of every replica means the same users by the same range lock.
pub const RANGE_BLOCKS: u32 = 1024;

/// Most users one detection hands to the client (24 bytes each): a backfill larger than this
/// runs in rounds, each detecting again, so memory stays bounded whatever the table size.
pub const ROUND_LIMIT: i32 = 1_000_000;

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
    /// The missing users of each non-empty range, with the range's number, in heap order.
    pub fn by_range(&self) -> Vec<(u32, &[Missing])> {
        self.missing
            .chunk_by(|a, b| a.range() == b.range())
            .map(|users| (users[0].range(), users))
            .collect()
    }

    /// The missing ids in id order.
    pub fn ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.missing.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    }
}

// The counts of a pass: one join of the two tables, run in parallel by PostgreSQL. Not a
// cached prepared statement: a fresh statement is planned with its parameters (a custom
// plan); a cached one turns generic after five runs and gets slower (DESIGN.md).
const COUNT: &str = "
    SELECT count(*),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NOT NULL),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NULL AND u.is_anonymous AND NOT $1),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NULL AND ($1 OR NOT u.is_anonymous))
    FROM auth.users u
    LEFT JOIN public.user_profiles p ON p.id = u.id";

// The missing users, only when there are some: the bare anti-join, stopped at the limit,
// with the page each row is on.
const MISSING: &str = "
    SELECT u.ctid, u.id FROM auth.users u
    WHERE u.deleted_at IS NULL AND ($1 OR NOT u.is_anonymous)
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)
    LIMIT $2";

/// Detects the missing users, handing over at most `limit`. With nothing missing (the steady
/// state) this is one statement, as cheap as the bare anti-join.
pub async fn detect(client: &Client, include_anonymous: bool, limit: i32) -> Result<Plan> {
    let row = client
        .query_one(COUNT, &[&include_anonymous])
        .await
        .context("counting users without a profile")?;
    let mut plan = Plan {
        scanned: row.get::<_, i64>(0) as u64,
        skipped_deleted: row.get::<_, i64>(1) as u64,
        skipped_anonymous: row.get::<_, i64>(2) as u64,
        missing_total: row.get::<_, i64>(3) as u64,
        missing: Vec::new(),
    };
    if plan.missing_total > 0 {
        plan.missing = missing(client, include_anonymous, limit, plan.missing_total).await?;
    }
    Ok(plan)
}

/// Up to `limit` live users without a profile, in heap order. Streamed row by row into a
/// vector sized once, so a round costs its 24 bytes per user and little more.
pub async fn missing(
    client: &Client,
    include_anonymous: bool,
    limit: i32,
    expected: u64,
) -> Result<Vec<Missing>> {
    use futures_util::TryStreamExt;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [&include_anonymous, &i64::from(limit)];
    let rows = client
        .query_raw(MISSING, params)
        .await
        .context("listing users without a profile")?;
    let mut rows = std::pin::pin!(rows);
    let mut users = Vec::with_capacity(expected.min(limit as u64) as usize);
    while let Some(row) = rows
        .try_next()
        .await
        .context("listing users without a profile")?
    {
        users.push(Missing {
            tid: row.get(0),
            id: row.get(1),
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

/// Live users without a profile in the whole table: the integrity check's count.
pub async fn count_missing(client: &Client, include_anonymous: bool) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM auth.users u
             WHERE u.deleted_at IS NULL AND ($1 OR NOT u.is_anonymous)
               AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)",
            &[&include_anonymous],
        )
        .await
        .context("counting users without a profile")?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_splits_its_users_into_ranges_of_pages_in_heap_order() {
        let mut missing: Vec<Missing> = (0..500u32)
            .map(|i| Missing {
                tid: Tid {
                    block: i * 37 % 5000,
                    offset: 1,
                },
                id: Uuid::new_v4(),
            })
            .collect();
        missing.sort_unstable();
        let plan = Plan {
            missing: missing.clone(),
            ..Plan::default()
        };
        let ranges = plan.by_range();
        let numbers: Vec<u32> = ranges.iter().map(|(r, _)| *r).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4]);
        let flat: Vec<Missing> = ranges
            .iter()
            .flat_map(|(_, users)| users.iter().copied())
            .collect();
        assert_eq!(flat, missing);
        for (r, users) in ranges {
            assert!(users.iter().all(|m| m.tid.block / RANGE_BLOCKS == r));
            assert!(users.windows(2).all(|w| w[0].tid <= w[1].tid));
        }
        let ids = plan.ids();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids.len(), 500);
    }
}
