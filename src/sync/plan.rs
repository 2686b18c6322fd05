//! Detection: which live auth users in a range of the id space have no profile.
//!
//! One statement per range joins `auth.users` to `public.user_profiles` and returns the counts
//! of the range and the sorted ids that are missing. The same statement serves the sweep, the
//! dry-run and the integrity check's count, so they can never disagree.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{DbContext, Result};

/// How many ranges the id space is split into. A constant, so that every worker of every
/// replica means the same ids by the same range lock.
pub const RANGES: u32 = 16;

/// The inclusive id bounds of range `r`: ids are random v4 UUIDs, so ranges of equal width
/// hold about equally many users. PostgreSQL orders uuid bytewise, as u128 big-endian.
pub fn bounds(r: u32) -> (Uuid, Uuid) {
    assert!(r < RANGES, "range {r} of {RANGES}");
    let width = u128::MAX / u128::from(RANGES) + 1;
    let lo = width * u128::from(r);
    let hi = lo.wrapping_add(width).wrapping_sub(1);
    (Uuid::from_u128(lo), Uuid::from_u128(hi))
}

/// What one range holds.
#[derive(Clone, Debug, Default)]
pub struct RangePlan {
    /// Auth users in the range.
    pub scanned: u64,
    /// Soft-deleted users without a profile: never given one.
    pub skipped_deleted: u64,
    /// Anonymous users without a profile, when `sync.include_anonymous` is false.
    pub skipped_anonymous: u64,
    /// Live users that should have a profile and have none, sorted.
    pub missing: Vec<Uuid>,
}

// Not a cached prepared statement: a fresh statement is planned with its parameters (a
// custom plan); a cached one turns generic after five runs and gets slower (DESIGN.md).
const DETECT: &str = "
    SELECT count(*),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NOT NULL),
           count(*) FILTER (WHERE p.id IS NULL AND u.deleted_at IS NULL AND u.is_anonymous AND NOT $3),
           COALESCE(array_agg(u.id ORDER BY u.id) FILTER (
               WHERE p.id IS NULL AND u.deleted_at IS NULL AND ($3 OR NOT u.is_anonymous)), '{}')
    FROM auth.users u
    LEFT JOIN public.user_profiles p ON p.id = u.id
    WHERE u.id BETWEEN $1 AND $2";

/// Detects the missing users of range `r`.
pub async fn detect(client: &Client, r: u32, include_anonymous: bool) -> Result<RangePlan> {
    let (lo, hi) = bounds(r);
    let row = client
        .query_one(DETECT, &[&lo, &hi, &include_anonymous])
        .await
        .context(format!("detecting missing profiles in range {r}"))?;
    Ok(RangePlan {
        scanned: row.get::<_, i64>(0) as u64,
        skipped_deleted: row.get::<_, i64>(1) as u64,
        skipped_anonymous: row.get::<_, i64>(2) as u64,
        missing: row.get(3),
    })
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
    fn ranges_cover_the_id_space_without_gaps_or_overlaps() {
        assert_eq!(bounds(0).0, Uuid::nil());
        assert_eq!(bounds(RANGES - 1).1, Uuid::max());
        for r in 1..RANGES {
            assert_eq!(bounds(r - 1).1.as_u128() + 1, bounds(r).0.as_u128());
        }
    }
}
