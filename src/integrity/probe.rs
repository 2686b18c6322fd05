//! Cascade deletion, proven rather than read from the catalog: only when asked (`check --e2e`,
//! `integrity.probe_schedule`), since it writes to auth.users and fires its triggers.
//!
//! Inside a transaction that is always rolled back: a user, its profile, and a row of a table
//! that references the user (the repair queue, usersync's own, so no application table is
//! touched) are created; deleting the user must take both along.

use tokio_postgres::Client;
use uuid::Uuid;

use super::{Finding, Level};
use crate::db::probe;
use crate::error::{DbContext, Result};
use crate::finding::FixKind;

/// The probe, rolled back whatever happens: its findings.
pub async fn cascade_delete(client: &mut Client, findings: &mut Vec<Finding>) -> Result<()> {
    let id = Uuid::new_v4();
    let tx = client
        .transaction()
        .await
        .context("starting the cascade probe")?;
    let left = probe(&tx, id).await;
    tx.rollback()
        .await
        .context("rolling back the cascade probe")?;
    match left {
        Ok((profiles, queued)) if profiles + queued > 0 => {
            findings.push(left_behind(profiles, queued));
        }
        Ok(_) => {}
        Err(e) if crate::error::is_connection_error(&e) => {
            return Err(e).context("running the cascade probe");
        }
        Err(e) => findings.push(delete_fails(&e)),
    }
    Ok(())
}

/// A probe user with a profile and a queue row, deleted: what of them is left.
async fn probe(
    tx: &tokio_postgres::Transaction<'_>,
    id: Uuid,
) -> std::result::Result<(i64, i64), tokio_postgres::Error> {
    tx.batch_execute("SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'")
        .await?;
    tx.execute(
        probe::SIGN_UP,
        &[&id, &probe::probe_email(id), &probe::PROBE_NAME],
    )
    .await?;
    // The trigger made the profile, unless it is off; then the probe makes it.
    tx.execute(
        "INSERT INTO public.user_profiles (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO usersync.repair_queue (user_id, last_error, last_sqlstate)
         VALUES ($1, 'usersync cascade probe', '00000') ON CONFLICT (user_id) DO NOTHING",
        &[&id],
    )
    .await?;
    tx.execute("DELETE FROM auth.users WHERE id = $1", &[&id])
        .await?;
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM public.user_profiles WHERE id = $1),
                    (SELECT count(*) FROM usersync.repair_queue WHERE user_id = $1)",
            &[&id],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

fn delete_fails(e: &tokio_postgres::Error) -> Finding {
    Finding {
        check: "cascade_delete".into(),
        level: Level::Error,
        object: Some("auth.users".into()),
        title: "deleting a user fails".into(),
        detail: format!(
            "a probe user with a profile could not be created and deleted: {}",
            crate::error::db_message(e)
        ),
        count: 1,
        samples: Vec::new(),
        fix: "see the foreign_key_blocks_delete findings and usersync migrate verify".into(),
        fix_kind: FixKind::Command,
    }
}

fn left_behind(profiles: i64, queued: i64) -> Finding {
    Finding {
        check: "cascade_delete".into(),
        level: Level::Error,
        object: Some("public.user_profiles".into()),
        title: "deleting a user leaves rows behind".into(),
        detail: format!(
            "after deleting a probe user, {profiles} profile and {queued} repair queue rows \
             remained: a foreign key lost its ON DELETE CASCADE"
        ),
        count: profiles + queued,
        samples: Vec::new(),
        fix: "ALTER TABLE public.user_profiles DROP CONSTRAINT IF EXISTS user_profiles_id_fkey, \
              ADD CONSTRAINT user_profiles_id_fkey FOREIGN KEY (id) REFERENCES auth.users(id) \
              ON DELETE CASCADE;"
            .into(),
        fix_kind: FixKind::Sql,
    }
}
