//! The data checks' findings between counts, in `usersync.scan_state.data_findings` (migration
//! 0006): what each group found when it was last counted, shown until a later count of that
//! group replaces it. Replicas share them; a restart keeps them.

use tokio_postgres::GenericClient;

use super::{Counted, DataFindings};
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// The findings as last counted; none before the first full scan.
pub async fn load(client: &impl GenericClient) -> Result<DataFindings> {
    let row = client
        .query_opt("SELECT s.data_findings FROM usersync.scan_state s", &[])
        .await
        .context("reading the findings kept in usersync.scan_state")?;
    Ok(match row {
        // Findings an older or newer usersync wrote differently are counted again.
        Some(row) => serde_json::from_value(row.value(0)?).unwrap_or_default(),
        None => DataFindings::default(),
    })
}

/// Keeps the groups `counted` counted, each replacing what was kept of it (and only it: a
/// replica's newer count of another group stays). `users` and `profiles`: the deletions of
/// users and of profiles the counts of the user-id columns and of the orphans have seen.
pub async fn save(
    client: &impl GenericClient,
    counted: &Counted,
    users: Option<i64>,
    profiles: Option<i64>,
) -> Result<()> {
    let mut groups = serde_json::Map::new();
    let entries = [
        ("census", &counted.census),
        ("orphans", &counted.orphans),
        ("user_id_columns", &counted.user_id_columns),
    ];
    for (name, found) in entries {
        if let Some(found) = found {
            let json = serde_json::to_value(found).expect("findings serialize");
            groups.insert(name.into(), json);
        }
    }
    client
        .execute(
            "UPDATE usersync.scan_state s
             SET data_findings = s.data_findings || $1,
                 users_deleted_counted = GREATEST(s.users_deleted_counted, COALESCE($2::pg_catalog.int8, 0)),
                 profiles_deleted_counted = GREATEST(s.profiles_deleted_counted, COALESCE($3::pg_catalog.int8, 0))",
            &[&serde_json::Value::Object(groups), &users, &profiles],
        )
        .await
        .context("keeping the findings in usersync.scan_state")?;
    Ok(())
}
