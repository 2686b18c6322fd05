//! What a pass reports: every count of users, and how the ranges' reports add up.

use serde::Serialize;
use uuid::Uuid;

use super::{Failure, RangeReport, RepairReport, plan, policy};

/// What a pass found and did. Each count is of users.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Auth users examined.
    pub scanned: u64,
    /// Live users without a profile that this pass handled.
    pub missing: u64,
    /// Profiles this pass created (besides the repair pass's).
    pub created: u64,
    /// Missing when detected, but with a profile (or no longer live) when their batch ran.
    pub raced: u64,
    /// Missing, but in the repair queue waiting out a backoff after failing.
    pub deferred: u64,
    /// Soft-deleted users without a profile: they never get one.
    pub skipped_deleted: u64,
    /// Anonymous users without a profile, when `sync.include_anonymous` is false.
    pub skipped_anonymous: u64,
    /// Users whose profile could not be created, in the sweep and the repair pass.
    pub failed: u64,
    /// The first failures with their reasons.
    pub failures: Vec<Failure>,
    /// The repair queue drain that ran first (not in a dry run).
    pub repair: Option<RepairReport>,
    /// What the lifecycle policies changed (not in a dry run).
    #[serde(flatten)]
    pub applied: policy::Applied,
    pub batches: u64,
    /// Ranges of `auth.users` pages that had work, as claimed (or found busy).
    pub ranges: u32,
    /// Ranges skipped because another process held them.
    pub ranges_busy: u32,
    pub longest_batch_ms: f64,
    pub duration_ms: f64,
    /// Dry run: the users that would get a profile, in id order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_create: Vec<Uuid>,
    /// Dry run with preview: the profile each would get.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<serde_json::Value>,
}

impl Report {
    /// Profiles created by the sweep and the repair pass together.
    pub fn total_created(&self) -> u64 {
        self.created + self.repair.as_ref().map_or(0, |r| r.created)
    }

    pub(super) fn note_detection(&mut self, plan: &plan::Plan) {
        self.scanned = plan.scanned;
        self.skipped_deleted = plan.skipped_deleted;
        self.skipped_anonymous = plan.skipped_anonymous;
    }

    pub(super) fn absorb(&mut self, other: RangeReport) {
        self.ranges += 1;
        self.scanned += other.scanned;
        self.skipped_deleted += other.skipped_deleted;
        self.skipped_anonymous += other.skipped_anonymous;
        self.missing += other.users;
        self.created += other.created;
        self.raced += other.raced;
        self.deferred += other.deferred;
        self.batches += other.batches;
        self.ranges_busy += other.busy as u32;
        self.longest_batch_ms = self
            .longest_batch_ms
            .max(other.longest_batch.as_secs_f64() * 1e3);
        self.failed += other.failures.len() as u64;
        self.failures.extend(other.failures);
    }
}
