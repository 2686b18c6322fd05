//! What `migrate up` refuses before it changes anything: a database without `auth.users`, a
//! profile table or a profile trigger of someone else's.

use serde::Serialize;
use tokio_postgres::Client;

use crate::db::RowExt;
use crate::error::{DbContext, Error, Result};

/// Fails with the Supabase hint when the database has no `auth.users`.
pub async fn require_auth_users(client: &Client) -> Result<()> {
    let present: bool = client
        .query_one(
            concat!("SELECT ", crate::auth_users_oid!(), " IS NOT NULL"),
            &[],
        )
        .await
        .context("looking for auth.users")?
        .value(0)?;
    if present {
        Ok(())
    } else {
        Err(Error::NotSupabase)
    }
}

/// A trigger on `auth.users` that is not ours but looks like a profile trigger.
#[derive(Clone, Debug, Serialize)]
pub struct ForeignTrigger {
    pub trigger: String,
    pub function: String,
}

/// Triggers someone else installed to create profiles: the classic `on_auth_user_created`
/// calling `handle_new_user()`, or any trigger function that writes `user_profiles`.
pub async fn foreign_profile_triggers(client: &Client) -> Result<Vec<ForeignTrigger>> {
    let rows = client
        .query(
            concat!(
                "SELECT t.tgname::text, p.oid::regprocedure::text
             FROM pg_catalog.pg_trigger t
             JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE t.tgrelid = ",
                crate::auth_users_oid!(),
                "
               AND NOT t.tgisinternal
               AND n.nspname <> 'usersync'
               AND (t.tgname = 'on_auth_user_created'
                    OR p.proname = 'handle_new_user'
                    OR p.prosrc ILIKE '%profile%')
             ORDER BY 1"
            ),
            &[],
        )
        .await
        .context("looking for existing profile triggers")?;
    rows.iter()
        .map(|r| {
            Ok(ForeignTrigger {
                trigger: r.value(0)?,
                function: r.value(1)?,
            })
        })
        .collect()
}

/// Before the first install: no profile table of someone else's, no doubled trigger.
pub(super) async fn preflight_first_install(
    client: &Client,
    allow_existing_trigger: bool,
) -> Result<()> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('public.user_profiles') IS NOT NULL",
            &[],
        )
        .await
        .context("looking for public.user_profiles")?
        .value(0)?;
    if exists {
        return Err(Error::Migration(
            "public.user_profiles already exists and was not created by usersync; \
             rename or drop it before `usersync migrate up`"
                .into(),
        ));
    }
    let foreign = foreign_profile_triggers(client).await?;
    if !foreign.is_empty() && !allow_existing_trigger {
        let list = foreign
            .iter()
            .map(|f| format!("{} calling {}", f.trigger, f.function))
            .collect::<Vec<_>>()
            .join(", ");
        let first = &foreign[0].trigger;
        return Err(Error::Migration(format!(
            "auth.users already has a profile trigger ({list}); usersync installs its own: \
             drop yours (DROP TRIGGER \"{first}\" ON auth.users;, which hosted Supabase's \
             postgres may run through supautils) or keep both with --allow-existing-trigger"
        )));
    }
    for f in &foreign {
        tracing::warn!(trigger = %f.trigger, function = %f.function,
            "keeping an existing profile trigger on auth.users beside usersync's");
    }
    Ok(())
}
