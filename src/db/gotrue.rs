//! Which GoTrue schemas usersync serves: the columns of `auth.users` it reads.

use tokio_postgres::Client;

use crate::db::RowExt;
use crate::error::{DbContext, Error, Result};

/// Every column of auth.users that usersync reads. The newest, `is_anonymous`, came with
/// GoTrue's migration [`OLDEST_GOTRUE_SCHEMA`].
pub const AUTH_COLUMNS: &[&str] = &[
    "id",
    "email",
    "phone",
    "raw_user_meta_data",
    "created_at",
    "last_sign_in_at",
    "confirmed_at",
    "banned_until",
    "deleted_at",
    "is_anonymous",
];

/// The oldest GoTrue schema usersync serves: the migration that added
/// `auth.users.is_anonymous` (GoTrue v2.145, February 2024).
pub const OLDEST_GOTRUE_SCHEMA: &str = "20240214120130";

/// The columns of [`AUTH_COLUMNS`] this database's auth.users lacks.
pub async fn missing_auth_columns(client: &Client) -> Result<Vec<String>> {
    let columns: Vec<&str> = AUTH_COLUMNS.to_vec();
    client
        .query(
            concat!(
                "SELECT c FROM pg_catalog.unnest($1::pg_catalog.text[]) AS c
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                   WHERE a.attrelid = ",
                crate::auth_users_oid!(),
                "
                                     AND a.attname = c AND NOT a.attisdropped)"
            ),
            &[&columns],
        )
        .await
        .context("reading the columns of auth.users")?
        .iter()
        .map(|r| r.value(0))
        .collect()
}

/// Refuses a GoTrue schema older than usersync serves, naming the first missing column.
pub async fn require_schema(client: &Client) -> Result<()> {
    match missing_auth_columns(client).await?.first() {
        None => Ok(()),
        Some(column) => Err(Error::Migration(format!(
            "auth.users has no column {column}: usersync needs GoTrue's schema from its \
             migration {OLDEST_GOTRUE_SCHEMA} (v2.145, February 2024) or newer; upgrade GoTrue first"
        ))),
    }
}
