//! `usersync explain <user-id | e-mail>` and `GET /v1/users/{id}/explain`: why this user has
//! the profile it has (or none), from what the database already holds — the user's row, the
//! profile, the repair queue, the policies, the triggers, the last full scan — and what
//! `usersync sync` would do for it now. It reads; nothing is written, and nothing is added to
//! the sign-up path.
//!
//! What `sync` would do is decided by the same rules as the sweep's statements: the
//! predicates of [`crate::sql`] and the builder, evaluated for this one user in SQL.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::config::{Policy, SoftDeleted};
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// Who to explain.
#[derive(Clone, Debug)]
pub enum Key {
    Id(Uuid),
    Email(String),
}

impl Key {
    /// A uuid is an id; anything else is taken for an e-mail.
    pub fn parse(text: &str) -> Key {
        match text.trim().parse::<Uuid>() {
            Ok(id) => Key::Id(id),
            Err(_) => Key::Email(text.trim().to_string()),
        }
    }
}

/// Why the user should, or should not, have a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Live (and not an anonymous user the policy leaves out): it should have one.
    Live,
    /// Anonymous, and `sync.include_anonymous` is off.
    AnonymousExcluded,
    /// Soft-deleted by GoTrue after signing up.
    SoftDeleted,
    /// Inserted already deleted (an import; deleted within a second of its sign-up time):
    /// never given a profile.
    BornDeleted,
}

impl Why {
    pub fn should_have_profile(self) -> bool {
        self == Why::Live
    }
}

/// One thing `usersync sync` would do for the user now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Create the profile (a queued failure is retried now, whatever its backoff).
    CreateProfile,
    /// Fill the profile's NULL e-mail from auth.users.
    FillEmail,
    /// Follow the user's new e-mail (`sync.follow_email`).
    FollowEmail,
    /// Fill these NULL fields from the metadata (`sync.fill_from_metadata`).
    FillFromMetadata { fields: Vec<&'static str> },
    /// Clear the soft-deleted user's personal data (`sync.soft_deleted = scrub`).
    Scrub,
    /// Delete the soft-deleted user's profile (`sync.soft_deleted = delete`).
    DeleteProfile,
    /// Take the user out of the repair queue: nothing is left to repair.
    Dequeue,
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub is_anonymous: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// `active`, `inactive` (is_active false, data kept) or `scrubbed` (no personal data).
    pub state: &'static str,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub avatar_url: Option<String>,
    pub role: String,
    pub is_active: bool,
    /// A live user's profile whose e-mail is not the user's.
    pub email_behind: bool,
    /// NULL fields the user's metadata could fill.
    pub fillable: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Queued {
    pub failures: i32,
    pub attempts: i32,
    pub last_sqlstate: String,
    /// The database's message; it can quote the row.
    pub last_error: String,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

/// A trigger of usersync's on auth.users: `enabled`, `disabled`, `replica only` or `missing`.
#[derive(Clone, Debug, Serialize)]
pub struct Triggers {
    pub sign_up: &'static str,
    pub update: &'static str,
    pub metadata: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub user: User,
    pub why: Why,
    pub should_have_profile: bool,
    pub profile: Option<Profile>,
    pub repair_queue: Option<Queued>,
    pub policy: Policy,
    pub triggers: Triggers,
    /// When the last full scan (the sweep of every user) ended.
    pub last_full_scan: Option<DateTime<Utc>>,
    /// What `usersync sync` would do now; empty: nothing.
    pub actions: Vec<Action>,
}

impl Explanation {
    /// The exit code of `usersync explain`: 0 nothing to do, 1 something to do.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.actions.is_empty())
    }
}

// The user (by $1 id, or by $2 e-mail), its profile, its repair queue entry and what the
// builder would take from its metadata. GoTrue keeps e-mails in lower case; an SSO user
// shares its e-mail with others, and is found too.
const USER: &str = concat!(
    "
    SELECT u.id, u.email::pg_catalog.text, u.phone::pg_catalog.text, u.is_anonymous,
           u.created_at, u.last_sign_in_at, u.deleted_at,
           u.deleted_at IS NOT NULL AND u.created_at IS NOT NULL
               AND u.deleted_at OPERATOR(pg_catalog.<=) (u.created_at OPERATOR(pg_catalog.+) '1 second'::pg_catalog.interval),
           p.id IS NOT NULL, p.email, p.full_name, p.avatar_url, p.role, p.is_active,
           b.full_name, b.avatar_url,
           q.failures, q.attempts, q.last_sqlstate, q.last_error, q.first_failed_at,
           q.last_failed_at, q.next_attempt_at, ",
    crate::holds_personal_data!("p"),
    "
    FROM usersync.auth_users u
    LEFT JOIN public.user_profiles p ON p.id OPERATOR(pg_catalog.=) u.id
    LEFT JOIN usersync.repair_queue q ON q.user_id OPERATOR(pg_catalog.=) u.id
    CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text,
                                              u.raw_user_meta_data, u.created_at) b
    WHERE u.id OPERATOR(pg_catalog.=) $1
       OR ($2::pg_catalog.text IS NOT NULL
           AND pg_catalog.lower(u.email::pg_catalog.text) OPERATOR(pg_catalog.=) pg_catalog.lower($2))
    LIMIT 2"
);

// usersync's triggers on auth.users by name, with their `tgenabled`, and the last full scan.
const STATE: &str = concat!(
    "
    SELECT (SELECT pg_catalog.jsonb_object_agg(t.tgname, t.tgenabled::pg_catalog.text)
            FROM pg_catalog.pg_trigger t
            WHERE t.tgrelid OPERATOR(pg_catalog.=) ",
    crate::auth_users_oid!(),
    "         AND t.tgname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)),
           (SELECT s.finished_at FROM usersync.scan_state s)"
);

/// The sign-up, update and metadata triggers, in [`Triggers`]' order.
const TRIGGERS: [&str; 3] = [
    "usersync_on_auth_user_created",
    "usersync_on_auth_user_updated",
    "usersync_on_auth_user_metadata",
];

/// What is known about one user; None when there is no such user. An e-mail that several
/// users share (SSO) is an error naming the count.
pub async fn explain(
    client: &impl GenericClient,
    key: &Key,
    policy: Policy,
) -> Result<Option<Explanation>> {
    let (id, email) = match key {
        Key::Id(id) => (Some(*id), None),
        Key::Email(email) => (None, Some(email.as_str())),
    };
    let rows = client
        .query(USER, &[&id, &email])
        .await
        .context("reading the user")?;
    let row = match rows.as_slice() {
        [] => return Ok(None),
        [row] => row,
        _ => {
            return Err(crate::Error::Usage(
                "that e-mail belongs to more than one user (SSO): explain one by its id".into(),
            ));
        }
    };
    let state = client
        .query_one(STATE, &[&&TRIGGERS[..]])
        .await
        .context("reading usersync's triggers")?;
    let enabled: Option<serde_json::Value> = state.value(0)?;
    let trigger = |name: &str| {
        trigger_state(
            enabled
                .as_ref()
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str()),
        )
    };
    let user = User {
        id: row.value(0)?,
        email: row.value(1)?,
        phone: row.value(2)?,
        is_anonymous: row.value(3)?,
        created_at: row.value(4)?,
        last_sign_in_at: row.value(5)?,
        deleted_at: row.value(6)?,
    };
    let born_deleted: bool = row.value(7)?;
    let why = match (&user.deleted_at, born_deleted) {
        (Some(_), true) => Why::BornDeleted,
        (Some(_), false) => Why::SoftDeleted,
        (None, _) if user.is_anonymous && !policy.include_anonymous => Why::AnonymousExcluded,
        (None, _) => Why::Live,
    };
    let profile = profile(row, &user)?;
    let repair_queue = queued(row)?;
    let actions = actions(
        why,
        &user,
        profile.as_ref(),
        repair_queue.is_some(),
        &policy,
    );
    Ok(Some(Explanation {
        should_have_profile: why.should_have_profile(),
        why,
        user,
        profile,
        repair_queue,
        policy,
        triggers: Triggers {
            sign_up: trigger(TRIGGERS[0]),
            update: trigger(TRIGGERS[1]),
            metadata: trigger(TRIGGERS[2]),
        },
        last_full_scan: state.value(1)?,
        actions,
    }))
}

fn trigger_state(tgenabled: Option<&str>) -> &'static str {
    match tgenabled {
        None => "missing",
        Some("D") => "disabled",
        Some("R") => "replica only",
        Some(_) => "enabled",
    }
}

/// A profile that holds no personal data.
const SCRUBBED: &str = "scrubbed";

fn profile(row: &tokio_postgres::Row, user: &User) -> Result<Option<Profile>> {
    if !row.value::<bool>(8)? {
        return Ok(None);
    }
    let email: Option<String> = row.value(9)?;
    let full_name: Option<String> = row.value(10)?;
    let avatar_url: Option<String> = row.value(11)?;
    let is_active: bool = row.value(13)?;
    let (meta_name, meta_picture): (Option<String>, Option<String>) =
        (row.value(14)?, row.value(15)?);
    let live = user.deleted_at.is_none();
    let mut fillable = Vec::new();
    if live && full_name.is_none() && meta_name.is_some() {
        fillable.push("full_name");
    }
    if live && avatar_url.is_none() && meta_picture.is_some() {
        fillable.push("avatar_url");
    }
    // What the scrub policy clears, by the sweep's own predicate.
    let holds: bool = row.value(23)?;
    Ok(Some(Profile {
        state: match (holds, is_active) {
            (false, _) => SCRUBBED,
            (true, true) => "active",
            (true, false) => "inactive",
        },
        email_behind: live && user.email.is_some() && email != user.email,
        email,
        full_name,
        avatar_url,
        role: row.value(12)?,
        is_active,
        fillable,
    }))
}

fn queued(row: &tokio_postgres::Row) -> Result<Option<Queued>> {
    let Some(failures) = row.value::<Option<i32>>(16)? else {
        return Ok(None);
    };
    Ok(Some(Queued {
        failures,
        attempts: row.value(17)?,
        last_sqlstate: row.value(18)?,
        last_error: row.value(19)?,
        first_failed_at: row.value(20)?,
        last_failed_at: row.value(21)?,
        next_attempt_at: row.value(22)?,
    }))
}

/// What the sweep's statements would change for this user, by their rules: the profile made
/// (by the repair pass if queued), the lifecycle statements of `sync::policy`.
fn actions(
    why: Why,
    user: &User,
    profile: Option<&Profile>,
    queued: bool,
    policy: &Policy,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(p) = profile else {
        if why.should_have_profile() {
            actions.push(Action::CreateProfile);
        } else if queued {
            actions.push(Action::Dequeue);
        }
        return actions;
    };
    if queued {
        actions.push(Action::Dequeue);
    }
    if user.deleted_at.is_some() {
        match policy.soft_deleted {
            SoftDeleted::Scrub if p.state != SCRUBBED => actions.push(Action::Scrub),
            SoftDeleted::Delete => actions.push(Action::DeleteProfile),
            _ => {}
        }
        return actions;
    }
    if user.email.is_some() {
        if p.email.is_none() && !user.is_anonymous {
            actions.push(Action::FillEmail);
        } else if policy.follow_email && p.email_behind {
            actions.push(Action::FollowEmail);
        }
    }
    if policy.fill_from_metadata && !p.fillable.is_empty() {
        actions.push(Action::FillFromMetadata {
            fields: p.fillable.clone(),
        });
    }
    actions
}
