//! The lifecycle policies as configured (`sync.include_anonymous`, `sync.follow_email`,
//! `sync.soft_deleted`, `sync.fill_from_metadata`): plain values. `migrate up` writes them to `usersync.policy`, where the
//! triggers and the daemon read them (`crate::sync::policy`).

use serde::Serialize;

/// What happens to the profile of a soft-deleted user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftDeleted {
    /// E-mail, name and picture set NULL, `is_active` false: the person is gone, the row stays
    /// for what references it.
    Scrub,
    Delete,
    Keep,
}

impl SoftDeleted {
    pub fn parse(text: &str) -> Option<SoftDeleted> {
        match text {
            "scrub" => Some(SoftDeleted::Scrub),
            "delete" => Some(SoftDeleted::Delete),
            "keep" => Some(SoftDeleted::Keep),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SoftDeleted::Scrub => "scrub",
            SoftDeleted::Delete => "delete",
            SoftDeleted::Keep => "keep",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub include_anonymous: bool,
    pub follow_email: bool,
    pub soft_deleted: SoftDeleted,
    /// A profile's NULL full_name and avatar_url filled from metadata that arrives later.
    pub fill_from_metadata: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            include_anonymous: true,
            follow_email: false,
            soft_deleted: SoftDeleted::Scrub,
            fill_from_metadata: true,
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "include_anonymous={} follow_email={} soft_deleted={} fill_from_metadata={}",
            self.include_anonymous,
            self.follow_email,
            self.soft_deleted.as_str(),
            self.fill_from_metadata
        )
    }
}
