//! Users joined with their profiles, for the users API and `usersync users`.
//!
//! One statement joins `auth.users` to `public.user_profiles`; a user without a profile comes
//! back in the same shape, with the profile a new one would get (from the same builder the
//! trigger uses), timestamps null, and `profile_missing` true. Pages are keyset-paginated on
//! the user id: a total order that is never NULL and that the primary key serves, so a deep
//! page costs what the first does (`auth.users` has no index on `created_at`, and usersync
//! adds none to GoTrue's table).

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::error::{DbContext, Result};

/// One user as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub is_anonymous: bool,
    pub banned_until: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub profile_missing: bool,
    pub profile: Profile,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    pub full_name: Option<String>,
    pub avatar_url: Option<String>,
    pub role: String,
    pub is_active: bool,
    /// Null while the profile is missing.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A page of users and where the next one starts.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub users: Vec<User>,
    /// Opaque; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What to list.
#[derive(Clone, Debug)]
pub struct Query {
    pub limit: i64,
    pub after: Option<Uuid>,
    pub missing_profile: bool,
    pub include_deleted: bool,
}

pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 50;

const SELECT: &str = "
    SELECT u.id, u.email::text, u.phone, u.created_at, u.last_sign_in_at, u.confirmed_at,
           u.is_anonymous, u.banned_until, u.deleted_at, p.id IS NULL,
           CASE WHEN p.id IS NULL THEN b.full_name ELSE p.full_name END,
           CASE WHEN p.id IS NULL THEN b.avatar_url ELSE p.avatar_url END,
           CASE WHEN p.id IS NULL THEN b.role ELSE p.role END,
           CASE WHEN p.id IS NULL THEN b.is_active ELSE p.is_active END,
           p.created_at, p.updated_at
    FROM auth.users u
    LEFT JOIN public.user_profiles p ON p.id = u.id AND ($1::uuid IS NULL OR p.id > $1)
    CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS b";

/// One page. Not a cached statement: a custom plan folds the optional cursor away and walks
/// the primary key from it. The cursor is repeated on the profile side of the join, or a
/// merge join would read the profiles' index from its start on every deep page.
pub async fn list(client: &impl GenericClient, query: &Query) -> Result<Page> {
    let sql = format!(
        "{SELECT}
         WHERE ($1::uuid IS NULL OR u.id > $1)
           AND ($2 OR u.deleted_at IS NULL)
           AND (NOT $3 OR p.id IS NULL)
         ORDER BY u.id
         LIMIT $4"
    );
    let rows = client
        .query(
            &sql,
            &[
                &query.after,
                &query.include_deleted,
                &query.missing_profile,
                &(query.limit + 1),
            ],
        )
        .await
        .context("listing users")?;
    let mut users: Vec<User> = rows.iter().map(user).collect();
    let next_cursor = if users.len() as i64 > query.limit {
        users.truncate(query.limit as usize);
        users.last().map(|u| encode_cursor(u.id))
    } else {
        None
    };
    Ok(Page { users, next_cursor })
}

/// One user by id, soft-deleted or not.
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<User>> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE u.id = $2"), &[&None::<Uuid>, &id])
        .await
        .context("reading a user")?;
    Ok(row.as_ref().map(user))
}

fn user(r: &Row) -> User {
    User {
        id: r.get(0),
        email: r.get(1),
        phone: r.get(2),
        created_at: r.get(3),
        last_sign_in_at: r.get(4),
        confirmed_at: r.get(5),
        is_anonymous: r.get(6),
        banned_until: r.get(7),
        deleted_at: r.get(8),
        profile_missing: r.get(9),
        profile: Profile {
            full_name: r.get(10),
            avatar_url: r.get(11),
            role: r.get(12),
            is_active: r.get(13),
            created_at: r.get(14),
            updated_at: r.get(15),
        },
    }
}

const CURSOR_VERSION: u8 = 1;

/// The opaque cursor: a version byte and the last id, base64url.
pub fn encode_cursor(id: Uuid) -> String {
    let mut bytes = vec![CURSOR_VERSION];
    bytes.extend_from_slice(id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// None for anything that is not a cursor this version made.
pub fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    match bytes.split_first() {
        Some((&CURSOR_VERSION, id)) => Uuid::from_slice(id).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_rejected() {
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        for bad in [
            "",
            "x",
            "AAAA",
            &encode_cursor(id)[1..],
            "!!!!",
            &format!("{}A", encode_cursor(id)),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
