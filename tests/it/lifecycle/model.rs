//! The policies, applied to a model of both tables: what the triggers do event by event, and
//! what one sweep does for whatever they missed.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tokio_postgres::Client;
use usersync::sync::policy::{Policy, SoftDeleted};
use uuid::Uuid;

/// The metadata keys the builder reads: a name from `full_name` or `name`, a picture from
/// `avatar_url` or `picture`.
pub const NAME_KEYS: [&str; 2] = ["full_name", "name"];
pub const PICTURE_KEYS: [&str; 2] = ["avatar_url", "picture"];

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub anonymous: bool,
    /// raw_user_meta_data, an object.
    pub meta: Map<String, Value>,
    pub deleted: bool,
}

impl User {
    /// The builder's rule: the first of `keys` that is a JSON string with something besides
    /// white space, trimmed.
    fn meta_text(&self, keys: [&str; 2]) -> Option<String> {
        keys.iter().find_map(|k| match self.meta.get(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        })
    }

    pub fn name(&self) -> Option<String> {
        self.meta_text(NAME_KEYS)
    }

    pub fn picture(&self) -> Option<String> {
        self.meta_text(PICTURE_KEYS)
    }

    /// Whether the update trigger fires on this change: its WHEN clause.
    pub fn fires_update(&self, new: &User) -> bool {
        self.email != new.email || self.anonymous != new.anonymous || self.deleted != new.deleted
    }

    /// Whether the metadata trigger fires on this change: its WHEN clause.
    pub fn fires_metadata(&self, new: &User) -> bool {
        self.meta != new.meta
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub avatar_url: Option<String>,
    pub role: String,
    pub is_active: bool,
}

impl Profile {
    fn scrub(&mut self) {
        self.email = None;
        self.full_name = None;
        self.avatar_url = None;
        self.is_active = false;
    }

    /// What the metadata has and the profile lacks: never a value the profile holds.
    fn fill(&mut self, u: &User) {
        if self.full_name.is_none() {
            self.full_name = u.name();
        }
        if self.avatar_url.is_none() {
            self.avatar_url = u.picture();
        }
    }

    /// The update trigger's fill: what the metadata gained (it had no name, or no picture,
    /// before), where the profile lacks it.
    fn fill_gained(&mut self, old: &User, new: &User) {
        if self.full_name.is_none() && old.name().is_none() {
            self.full_name = new.name();
        }
        if self.avatar_url.is_none() && old.picture().is_none() {
            self.avatar_url = new.picture();
        }
    }
}

pub struct Model {
    pub policy: Policy,
    pub users: Vec<User>,
    pub profiles: BTreeMap<Uuid, Profile>,
}

impl Model {
    fn eligible(&self, u: &User) -> bool {
        !u.deleted && (!u.anonymous || self.policy.include_anonymous)
    }

    pub fn create(&mut self, u: &User) {
        if self.eligible(u) {
            self.profiles.entry(u.id).or_insert(Profile {
                email: u.email.clone(),
                full_name: u.name(),
                avatar_url: u.picture(),
                role: "user".into(),
                is_active: true,
            });
        }
    }

    /// The update trigger, after a change its WHEN lets through.
    pub fn updated(&mut self, old: &User, new: &User) {
        if new.deleted {
            if !old.deleted {
                self.soft_deleted(new.id);
            }
            return;
        }
        self.create(new);
        if old.email != new.email
            && new.email.is_some()
            && let Some(p) = self.profiles.get_mut(&new.id)
            && (p.email.is_none() || self.policy.follow_email)
        {
            p.email = new.email.clone();
        }
    }

    /// The metadata trigger: what the metadata gained, where a live user's profile lacks it.
    pub fn metadata(&mut self, old: &User, new: &User) {
        if !new.deleted
            && self.policy.fill_from_metadata
            && let Some(p) = self.profiles.get_mut(&new.id)
        {
            p.fill_gained(old, new);
        }
    }

    fn soft_deleted(&mut self, id: Uuid) {
        match self.policy.soft_deleted {
            SoftDeleted::Scrub => {
                if let Some(p) = self.profiles.get_mut(&id) {
                    p.scrub();
                }
            }
            SoftDeleted::Delete => {
                self.profiles.remove(&id);
            }
            SoftDeleted::Keep => {}
        }
    }

    /// One sweep: what the triggers missed.
    pub fn sweep(&mut self) {
        for u in self.users.clone() {
            self.create(&u);
            if u.deleted {
                if self.profiles.contains_key(&u.id) {
                    self.soft_deleted(u.id);
                }
                continue;
            }
            let Some(p) = self.profiles.get_mut(&u.id) else {
                continue;
            };
            if u.email.is_some()
                && ((p.email.is_none() && !u.anonymous)
                    || (self.policy.follow_email && p.email != u.email))
            {
                p.email = u.email.clone();
            }
            if self.policy.fill_from_metadata {
                p.fill(&u);
            }
        }
    }
}

pub async fn profiles(admin: &Client) -> BTreeMap<Uuid, Profile> {
    admin
        .query(
            "SELECT id, email, full_name, avatar_url, role, is_active FROM public.user_profiles",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                Profile {
                    email: r.get(1),
                    full_name: r.get(2),
                    avatar_url: r.get(3),
                    role: r.get(4),
                    is_active: r.get(5),
                },
            )
        })
        .collect()
}
