//! When a count the statistics show and the journal does not is a write around the triggers,
//! and when it is only a late flush.
//!
//! A backend flushes its counters at most once a second, table by table, and without waiting
//! for a table's lock: a flush can write `auth.users`'s counts and leave the journal's for
//! later. What it left it retries on its next flush: a busy backend's next transaction a second
//! on, an idle backend's only after PostgreSQL's `PGSTAT_IDLE_INTERVAL`, ten seconds. So for up
//! to ten seconds (longer only under a minute's unbroken lock contention) the statistics may
//! show a sign-up that went through the trigger as a write around it.
//!
//! Hence two steps. A look re-reads after [`SETTLE`] (a reader that caught a flush halfway).
//! What is still unseen then is a [`Suspicion`]: the changes are due for a full scan only when
//! every look for at least the horizon ([`crate::config::STATISTICS_HORIZON`]: PostgreSQL's ten seconds and one more) has
//! counted some; a look that counts none clears it. A real write around the
//! triggers stays counted and waits one more look for its full scan; a late flush clears
//! within the horizon and costs none.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The re-reads within one look, in steps.
pub const SETTLE: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1000)];

/// Since when every look has counted unseen changes, if the last one did.
#[derive(Debug, Default)]
pub struct Suspicion(Mutex<Option<Instant>>);

impl Suspicion {
    /// A look at `now` counted unseen changes: whether every look has for at least `horizon`.
    pub fn confirmed(&self, now: Instant, horizon: Duration) -> bool {
        let mut since = self.0.lock().expect("not poisoned");
        let first = *since.get_or_insert(now);
        now.saturating_duration_since(first) >= horizon
    }

    /// A look counted none, or a full scan recorded a new baseline.
    pub fn clear(&self) {
        *self.0.lock().expect("not poisoned") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_changes_are_confirmed_only_after_the_horizon_and_a_quiet_look_clears_them() {
        let horizon = Duration::from_secs(11);
        let s = Suspicion::default();
        let t0 = Instant::now();
        assert!(!s.confirmed(t0, horizon));
        assert!(!s.confirmed(t0 + Duration::from_secs(10), horizon));
        assert!(s.confirmed(t0 + horizon, horizon));
        // Still confirmed while it lasts: a full scan that could not start retries at once.
        assert!(s.confirmed(t0 + Duration::from_secs(12), horizon));
        s.clear();
        // Counted again from the look after the clearing one.
        assert!(!s.confirmed(t0 + Duration::from_secs(13), horizon));
        assert!(!s.confirmed(t0 + Duration::from_secs(23), horizon));
        assert!(s.confirmed(t0 + Duration::from_secs(24), horizon));
        assert!(Suspicion::default().confirmed(t0, Duration::ZERO));
    }
}
