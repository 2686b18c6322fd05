//! Users joined with their profiles, for the users API and `usersync users`.
//!
//! One statement joins `auth.users` to `public.user_profiles`; a user without a profile comes
//! back in the same shape, with the profile a new one would get (from the same builder the
//! trigger uses), timestamps null, and `profile_missing` true. A soft-deleted user's name and
//! picture are never shown, whatever the profile still holds; `missing_profile` lists the users
//! who should have a profile (live, and anonymous only when `usersync.policy` includes them). Pages are keyset-paginated on
//! the user id: a total order that is never NULL and that the primary key serves, so a deep
//! page costs what the first does (`auth.users` has no index on `created_at`, and usersync
//! adds none to GoTrue's table).

use crate::db::RowExt;
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

/// A page ends once its users' text passes this many bytes (the user that passes it is the
/// last one), so a page costs about this much memory whatever users put in their metadata.
pub const MAX_PAGE_BYTES: i64 = 1 << 20;

/// Text values (e-mail, phone, name, picture URL, role) are cut to this many characters
/// (at most 64 KiB) in what the API and `users` show: a 40 MB display name is someone's
/// attack, not their name.
pub const MAX_FIELD_CHARS: i32 = 16_384;

// The cuts are MAX_FIELD_CHARS (a unit test holds them equal).
const SELECT: &str = "
    SELECT u.id, pg_catalog.left(u.email::pg_catalog.text, 16384) AS email,
           pg_catalog.left(u.phone, 16384) AS phone, u.created_at, u.last_sign_in_at, u.confirmed_at,
           u.is_anonymous, u.banned_until, u.deleted_at, p.id IS NULL AS missing,
           pg_catalog.left(CASE WHEN u.deleted_at IS NOT NULL THEN NULL
                                WHEN p.id IS NULL THEN b.full_name ELSE p.full_name END, 16384) AS full_name,
           pg_catalog.left(CASE WHEN u.deleted_at IS NOT NULL THEN NULL
                                WHEN p.id IS NULL THEN b.avatar_url ELSE p.avatar_url END, 16384) AS avatar_url,
           pg_catalog.left(CASE WHEN p.id IS NULL THEN b.role ELSE p.role END, 16384) AS role,
           CASE WHEN p.id IS NULL THEN b.is_active ELSE p.is_active END AS is_active,
           p.created_at AS profile_created_at, p.updated_at AS profile_updated_at
    FROM usersync.auth_users u
    LEFT JOIN public.user_profiles p ON p.id = u.id AND ($1::uuid IS NULL OR p.id > $1)
    CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS b";

/// One page. Not a cached statement: a custom plan folds the optional cursor away and walks
/// the primary key from it. The cursor is repeated on the profile side of the join, or a
/// merge join would read the profiles' index from its start on every deep page.
///
/// The page is also cut by size on the server: users are returned while the text before them
/// stays under [`MAX_PAGE_BYTES`], with the number the page would have had, so a cut page
/// still gets its cursor.
pub async fn list(client: &impl GenericClient, query: &Query) -> Result<Page> {
    let rows = client
        .query(
            &list_statement(),
            &[
                &query.after,
                &query.include_deleted,
                &query.missing_profile,
                &(query.limit + 1),
                &MAX_PAGE_BYTES,
            ],
        )
        .await
        .context("listing users")?;
    let fetched: i64 = match rows.first() {
        Some(r) => r.try_get("fetched").context("counting a page")?,
        None => 0,
    };
    let mut users: Vec<User> = rows.iter().map(user).collect::<Result<_>>()?;
    let more = fetched > users.len() as i64 || users.len() as i64 > query.limit;
    users.truncate(query.limit as usize);
    let next_cursor = if more {
        users.last().map(|u| encode_cursor(u.id))
    } else {
        None
    };
    Ok(Page { users, next_cursor })
}

/// The page's statement: $1 the cursor, $2 include_deleted, $3 missing_profile, $4 the limit
/// plus one, $5 the page's size in bytes.
pub fn list_statement() -> String {
    // Eligibility follows the policy the triggers apply.
    let eligible = crate::should_have_profile!(
        "COALESCE((SELECT o.include_anonymous FROM usersync.policy o), true)"
    );
    format!(
        "WITH page AS MATERIALIZED (
             SELECT s.*, pg_catalog.sum(s.bytes) OVER (ORDER BY s.id) AS running
             FROM (SELECT l.*,
                          512 + COALESCE(pg_catalog.octet_length(l.email), 0)
                              + COALESCE(pg_catalog.octet_length(l.phone), 0)
                              + COALESCE(pg_catalog.octet_length(l.full_name), 0)
                              + COALESCE(pg_catalog.octet_length(l.avatar_url), 0)
                              + COALESCE(pg_catalog.octet_length(l.role), 0) AS bytes
                   FROM ({SELECT}
                         WHERE ($1::uuid IS NULL OR u.id > $1)
                           AND ($2 OR u.deleted_at IS NULL)
                           AND (NOT $3 OR (p.id IS NULL AND {eligible}))
                         ORDER BY u.id
                         LIMIT $4) AS l) AS s
         )
         SELECT page.*, (SELECT pg_catalog.count(*) FROM page) AS fetched
         FROM page WHERE page.running - page.bytes < $5
         ORDER BY page.id"
    )
}

/// One user by id, soft-deleted or not.
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<User>> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE u.id = $2"), &[&None::<Uuid>, &id])
        .await
        .context("reading a user")?;
    row.as_ref().map(user).transpose()
}

fn user(r: &Row) -> Result<User> {
    Ok(User {
        id: r.value(0)?,
        email: r.value(1)?,
        phone: r.value(2)?,
        created_at: r.value(3)?,
        last_sign_in_at: r.value(4)?,
        confirmed_at: r.value(5)?,
        is_anonymous: r.value(6)?,
        banned_until: r.value(7)?,
        deleted_at: r.value(8)?,
        profile_missing: r.value(9)?,
        profile: Profile {
            full_name: r.value(10)?,
            avatar_url: r.value(11)?,
            role: r.value(12)?,
            is_active: r.value(13)?,
            created_at: r.value(14)?,
            updated_at: r.value(15)?,
        },
    })
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
    fn every_text_value_is_cut_at_max_field_chars() {
        let cuts = SELECT.matches("pg_catalog.left(").count();
        assert_eq!(cuts, 5);
        assert_eq!(
            SELECT.matches(&format!(", {MAX_FIELD_CHARS}) AS")).count(),
            cuts
        );
    }

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
