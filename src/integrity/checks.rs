//! The SQL of the integrity checks, one function per concern.

use crate::db::RowExt;
use tokio_postgres::Client;

use super::{Finding, Level};
use crate::config::IntegritySettings;
use crate::db::verify::FixKind;
use crate::error::{DbContext, Result};
use crate::sync::plan;
use crate::sync::policy::{Policy, SoftDeleted};

const SAMPLES: i32 = 10;

/// Users without a profile (the sync's detection, past the grace period), the lifecycle's
/// findings, and profiles without a user: one join of the two tables for the first two, one
/// anti-join for the last. Returns how many profiles the sweep's lifecycle statements would
/// change.
pub async fn one_to_one(
    client: &Client,
    settings: &IntegritySettings,
    policy: &Policy,
    findings: &mut Vec<Finding>,
) -> Result<i64> {
    let census = plan::census(client, policy, settings.grace_period, SAMPLES).await?;
    lifecycle(&census, policy, findings);
    let (count, samples) = census.missing;
    if count > 0 {
        findings.push(Finding {
            check: "missing_profile".into(),
            level: Level::Error,
            object: Some("public.user_profiles".into()),
            title: format!("{count} live users have no profile"),
            detail: format!(
                "live auth users older than {}s without a row in public.user_profiles: the \
                 trigger is off or failing, or they predate it",
                settings.grace_period.as_secs()
            ),
            count,
            samples,
            fix: "usersync sync (then check why the trigger missed them: usersync migrate verify)"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    orphans(client, findings).await?;
    Ok(census.lifecycle_pending)
}

/// Profiles without a user: one anti-join of the profiles against auth.users's key.
pub async fn orphans(client: &Client, findings: &mut Vec<Finding>) -> Result<()> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE((array_agg(p.id::text))[1:$1], '{}')
             FROM public.user_profiles p
             WHERE NOT EXISTS (SELECT 1 FROM usersync.auth_users u WHERE u.id = p.id)",
            &[&SAMPLES],
        )
        .await
        .context("counting profiles without a user")?;
    let (count, samples): (i64, Vec<String>) = (row.value(0)?, row.value(1)?);
    if count > 0 {
        findings.push(Finding {
            check: "orphan_profile".into(),
            level: Level::Error,
            object: Some("public.user_profiles".into()),
            title: format!("{count} profiles belong to no user"),
            detail: "rows of public.user_profiles whose id is in no auth.users row: written while \
                     the foreign key was NOT VALID or its trigger off (a restore in replica mode)"
                .into(),
            count,
            samples,
            fix: "DELETE FROM public.user_profiles p WHERE NOT EXISTS \
                  (SELECT 1 FROM auth.users u WHERE u.id = p.id);"
                .into(),
            fix_kind: FixKind::Sql,
        });
    }
    Ok(())
}

/// Items waiting too long, and items that keep failing.
pub async fn repair_queue(
    client: &Client,
    settings: &IntegritySettings,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let stale = settings.queue_stale_after.as_secs_f64();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE first_failed_at < now() - make_interval(secs => $1)),
                    COALESCE((array_agg(user_id::text) FILTER (
                        WHERE first_failed_at < now() - make_interval(secs => $1)))[1:$3], '{}'),
                    count(*) FILTER (WHERE attempts >= $2),
                    COALESCE((array_agg(user_id::text) FILTER (WHERE attempts >= $2))[1:$3], '{}'),
                    (SELECT last_error FROM usersync.repair_queue WHERE attempts >= $2
                     ORDER BY last_failed_at DESC LIMIT 1)
             FROM usersync.repair_queue",
            &[&stale, &settings.queue_max_attempts, &SAMPLES],
        )
        .await
        .context("reading the repair queue")?;
    let (stale_count, stale_samples): (i64, Vec<String>) = (row.value(0)?, row.value(1)?);
    let (failing, failing_samples): (i64, Vec<String>) = (row.value(2)?, row.value(3)?);
    let last_error: Option<String> = row.value(4)?;
    if stale_count > 0 {
        findings.push(Finding {
            check: "repair_queue_stale".into(),
            level: Level::Warning,
            object: Some("usersync.repair_queue".into()),
            title: format!(
                "{stale_count} repair queue items are older than {}s",
                stale as u64
            ),
            detail: "sign-ups whose profile the trigger could not create are still waiting: the \
                     daemon is not draining the queue, or their repair keeps failing"
                .into(),
            count: stale_count,
            samples: stale_samples,
            fix: "usersync sync (it retries every queued user at once); the queue's errors: \
                  SELECT user_id, attempts, last_error FROM usersync.repair_queue \
                  ORDER BY first_failed_at;"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    if failing > 0 {
        findings.push(Finding {
            check: "repair_queue_failing".into(),
            level: Level::Error,
            object: Some("usersync.repair_queue".into()),
            title: format!(
                "{failing} users failed {} or more repair attempts",
                settings.queue_max_attempts
            ),
            detail: format!(
                "their profile cannot be created; latest error: {}",
                last_error.unwrap_or_default()
            ),
            count: failing,
            samples: failing_samples,
            fix: "fix the cause in the error (a constraint or NOT NULL column added to \
                  public.user_profiles), then usersync sync"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    Ok(())
}

// Every single-column foreign key into auth.users(id) or public.user_profiles(id) but the
// profile's own, with the statement that counts its orphans (reading auth.users through
// usersync.auth_users, which the runtime role may read) and the fixes. Every name is quoted by
// PostgreSQL (%I) and schema-qualified, so each fix runs as printed whatever the search_path.
const FOREIGN_KEYS: &str = concat!(
    "WITH k AS (
         SELECT c.oid, c.conname, c.convalidated, c.confdeltype, a.attname,
                pg_catalog.format('%I.%I', tn.nspname, t.relname) AS tbl,
                pg_catalog.format('%I.%I', rn.nspname, r.relname) AS target,
                CASE WHEN c.confrelid = a_u.oid THEN 'usersync.auth_users'
                     ELSE pg_catalog.format('%I.%I', rn.nspname, r.relname) END AS source,
                tn.nspname AS schema
         FROM pg_catalog.pg_constraint c
         JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
         JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
         JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
         JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         JOIN pg_catalog.pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
         CROSS JOIN (SELECT ",
    crate::auth_users_oid!(),
    " AS oid) a_u
         WHERE c.contype = 'f'
           AND (c.confrelid = a_u.oid
                OR c.confrelid = 'public.user_profiles'::pg_catalog.regclass)
           AND pg_catalog.cardinality(c.conkey) = 1 AND ra.attname = 'id'
           AND NOT (c.conrelid = 'public.user_profiles'::pg_catalog.regclass
                    AND c.confrelid = a_u.oid)
     )
     SELECT k.tbl, k.conname::pg_catalog.text, k.target, k.convalidated,
            k.confdeltype::pg_catalog.text, pg_catalog.pg_get_constraintdef(k.oid),
            pg_catalog.format('SELECT pg_catalog.count(*), COALESCE((pg_catalog.array_agg(t.%1$I::pg_catalog.text))[1:10], ''{}'')
                    FROM %2$s t WHERE t.%1$I IS NOT NULL AND NOT EXISTS
                    (SELECT 1 FROM %3$s r WHERE r.id OPERATOR(pg_catalog.=) t.%1$I)',
                   k.attname, k.tbl, k.source),
            pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I FOREIGN KEY (%I) \
                    REFERENCES %s(id) ON DELETE CASCADE%s;',
                   k.tbl, k.conname, k.conname, k.attname, k.target,
                   CASE WHEN k.convalidated THEN '' ELSE ' NOT VALID' END),
            pg_catalog.format('DELETE FROM %s t WHERE t.%I IS NOT NULL AND NOT EXISTS \
                    (SELECT 1 FROM %s r WHERE r.id = t.%I); ALTER TABLE %s VALIDATE CONSTRAINT %I;',
                   k.tbl, k.attname, k.target, k.attname, k.tbl, k.conname),
            pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I; GRANT SELECT (%I) ON TABLE %s TO %I;',
                   k.schema, current_user, k.attname, k.tbl, current_user)
     FROM k
     ORDER BY 1, 2"
);

/// Every single-column foreign key into `auth.users(id)` or `public.user_profiles(id)` but the
/// profile's own (which `migrate verify` checks): NOT VALID ones with their orphans, and ones
/// whose ON DELETE rule would block deleting a user.
// Long on purpose: one statement builds, for every key, the counting query and the fixes (names
// quoted by PostgreSQL); then one finding per kind.
pub async fn foreign_keys(client: &Client, findings: &mut Vec<Finding>) -> Result<()> {
    let rows = client
        .query(FOREIGN_KEYS, &[])
        .await
        .context("reading the foreign keys into auth.users and public.user_profiles")?;
    for row in rows {
        let table: String = row.value(0)?;
        let name: String = row.value(1)?;
        let target: String = row.value(2)?;
        let validated: bool = row.value(3)?;
        let on_delete: String = row.value(4)?;
        let definition: String = row.value(5)?;
        let orphans_sql: String = row.value(6)?;
        let cascade_sql: String = row.value(7)?;
        let validate_sql: String = row.value(8)?;
        let grant_sql: String = row.value(9)?;
        let object = format!("{table}.{name}");
        if !validated {
            // The statement is PostgreSQL's own format() of catalog names, quoted with %I.
            let counted = readable(
                client.query_one(orphans_sql.as_str(), &[]).await,
                format!("counting the rows of {table} that reference no {target}"),
            )?;
            findings.push(match counted {
                None => unreadable(&object, &table, grant_sql),
                Some(counted) => {
                    let (count, samples): (i64, Vec<String>) =
                        (counted.value(0)?, counted.value(1)?);
                    Finding {
                        check: "foreign_key_not_valid".into(),
                        level: if count > 0 {
                            Level::Error
                        } else {
                            Level::Warning
                        },
                        object: Some(object.clone()),
                        title: format!(
                            "{table}: foreign key {name} is NOT VALID, {count} rows reference \
                             no {target}"
                        ),
                        detail: format!(
                            "{definition}: rows written before it, or under replica mode, are \
                             not checked"
                        ),
                        count,
                        samples,
                        fix: validate_sql,
                        fix_kind: FixKind::Sql,
                    }
                }
            });
        }
        if matches!(on_delete.as_str(), "a" | "r") {
            let rule = if on_delete == "a" {
                "NO ACTION"
            } else {
                "RESTRICT"
            };
            findings.push(Finding {
                check: "foreign_key_blocks_delete".into(),
                level: Level::Warning,
                object: Some(object),
                title: format!(
                    "{table}: foreign key {name} blocks deleting a user (ON DELETE {rule})"
                ),
                detail: format!(
                    "{definition}: deleting a user with rows in {table} fails (\"Database error \
                     deleting user\"); make it cascade, or SET NULL if the rows must stay"
                ),
                count: 1,
                samples: Vec::new(),
                fix: cascade_sql,
                fix_kind: FixKind::Sql,
            });
        }
    }
    Ok(())
}

/// Configured columns that hold user ids without a foreign key: rows whose user is gone.
/// Counted by `usersync.user_id_column_orphans()` (migration 0005), which reads them with the
/// migration role's privileges (the runtime role may not even name schema auth, where GoTrue's
/// such columns live), and only those `usersync migrate grant` registered.
pub async fn user_id_columns(
    client: &Client,
    settings: &IntegritySettings,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    if settings.user_id_columns.is_empty() {
        return Ok(());
    }
    let counted = client
        .query(
            "SELECT o.schema_name, o.table_name, o.column_name, o.present, o.readable, o.orphans,
                    o.sample,
                    pg_catalog.format('DELETE FROM %I.%I t WHERE t.%I IS NOT NULL AND NOT EXISTS \
                        (SELECT 1 FROM auth.users u WHERE u.id::pg_catalog.text = t.%I::pg_catalog.text);',
                        o.schema_name, o.table_name, o.column_name, o.column_name),
                    pg_catalog.format('GRANT SELECT (%I) ON TABLE %I.%I TO %I;',
                        o.column_name, o.schema_name, o.table_name,
                        (SELECT r.rolname FROM pg_catalog.pg_proc f
                         JOIN pg_catalog.pg_roles r ON r.oid = f.proowner
                         WHERE f.oid = 'usersync.user_id_column_orphans(integer)'::pg_catalog.regprocedure))
             FROM usersync.user_id_column_orphans($1) o",
            &[&SAMPLES],
        )
        .await
        .context("counting the rows of integrity.user_id_columns whose user is gone")?;
    let mut rows = Vec::with_capacity(counted.len());
    for row in &counted {
        let key: (String, String, String) = (row.value(0)?, row.value(1)?, row.value(2)?);
        rows.push((key, row));
    }
    for column in &settings.user_id_columns {
        let name = column.to_string();
        let key = (
            column.schema.clone(),
            column.table.clone(),
            column.column.clone(),
        );
        let Some((_, row)) = rows.iter().find(|(k, _)| *k == key) else {
            findings.push(unregistered(client, column).await?);
            continue;
        };
        let (present, readable): (bool, bool) = (row.value(3)?, row.value(4)?);
        let (count, samples): (i64, Vec<String>) = (row.value(5)?, row.value(6)?);
        if !present {
            findings.push(Finding {
                check: "user_id_column_orphans".into(),
                level: Level::Warning,
                object: Some(name),
                title: format!("{column} does not exist"),
                detail: "integrity.user_id_columns names a column this database does not have"
                    .into(),
                count: 0,
                samples: Vec::new(),
                fix: "correct integrity.user_id_columns".into(),
                fix_kind: FixKind::Command,
            });
        } else if !readable {
            findings.push(unreadable(
                &name,
                &format!("{}.{}", column.schema, column.table),
                row.value(8)?,
            ));
        } else if count > 0 {
            findings.push(Finding {
                check: "user_id_column_orphans".into(),
                level: Level::Warning,
                object: Some(name),
                title: format!("{count} rows of {column} name a user that does not exist"),
                detail: "the column carries user ids without a foreign key, so nothing removes \
                         its rows when a user is deleted"
                    .into(),
                count,
                samples,
                fix: row.value(7)?,
                fix_kind: FixKind::Sql,
            });
        }
    }
    Ok(())
}

/// A configured column `usersync migrate grant` has not registered: the fix registers it, run
/// by the migration role (as `migrate grant` would with this configuration).
async fn unregistered(client: &Client, column: &crate::config::UserIdColumn) -> Result<Finding> {
    let fix: String = client
        .query_one(
            "SELECT pg_catalog.format('INSERT INTO usersync.user_id_columns \
                 (schema_name, table_name, column_name) VALUES (%L, %L, %L) ON CONFLICT DO NOTHING;',
                 $1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text)",
            &[&column.schema, &column.table, &column.column],
        )
        .await
        .context("quoting a column's name")?
        .value(0)?;
    Ok(Finding {
        check: "unreadable_table".into(),
        level: Level::Warning,
        object: Some(column.to_string()),
        title: format!("{column} is not registered for counting"),
        detail: "integrity.user_id_columns names it, but usersync migrate grant did not register \
                 it in usersync.user_id_columns, so its orphan rows are not counted; the fix runs \
                 as the migration role"
            .into(),
        count: 1,
        samples: Vec::new(),
        fix,
        fix_kind: FixKind::Sql,
    })
}

/// A query result, or None when usersync's role may not read the table: that is a finding of
/// its own, not a reason to stop checking everything else.
fn readable(
    result: std::result::Result<tokio_postgres::Row, tokio_postgres::Error>,
    context: String,
) -> Result<Option<tokio_postgres::Row>> {
    match result {
        Ok(row) => Ok(Some(row)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(None)
        }
        Err(e) => Err(e).context(context),
    }
}

fn unreadable(object: &str, table: &str, grant_sql: String) -> Finding {
    Finding {
        check: "unreadable_table".into(),
        level: Level::Warning,
        object: Some(object.to_string()),
        title: format!("{table} cannot be read by usersync's role"),
        detail: "its orphan rows could not be counted".into(),
        count: 1,
        samples: Vec::new(),
        fix: grant_sql,
        fix_kind: FixKind::Sql,
    }
}

/// This process's configured policies against the database's, which the triggers apply.
pub fn policy(configured: &Policy, database: &Policy, findings: &mut Vec<Finding>) {
    if configured == database {
        return;
    }
    findings.push(Finding {
        check: "policy".into(),
        level: Level::Warning,
        object: Some("usersync.policy".into()),
        title: "the configuration's lifecycle policies differ from the database's".into(),
        detail: format!(
            "the database (what the triggers and the sweep apply): {database}; this \
             configuration: {configured}"
        ),
        count: 1,
        samples: Vec::new(),
        fix: "usersync migrate up, with this configuration (it writes the policies)".into(),
        fix_kind: FixKind::Command,
    });
}

/// The profile's lifecycle: e-mails that no longer match auth.users, and personal data left
/// in the profiles of soft-deleted users (and of users inserted already deleted).
fn lifecycle(census: &plan::Census, policy: &Policy, findings: &mut Vec<Finding>) {
    let (stale, stale_samples) = census.stale_email.clone();
    let (left, left_samples) = census.soft_deleted_left.clone();
    if stale > 0 {
        let (level, detail, fix, fix_kind) = if policy.follow_email {
            (
                Level::Error,
                "sync.follow_email is on, and these were not followed: the update trigger is off \
                 or failing",
                "usersync sync".to_string(),
                FixKind::Command,
            )
        } else {
            (
                Level::Warning,
                "sync.follow_email is off: profiles keep the e-mail they were created with",
                "set sync.follow_email = true and run usersync migrate up (profiles then follow \
                 auth.users), or leave them"
                    .to_string(),
                FixKind::Command,
            )
        };
        findings.push(Finding {
            check: "stale_email".into(),
            level,
            object: Some("public.user_profiles".into()),
            title: format!("{stale} profiles have an e-mail other than their user's"),
            detail: detail.into(),
            count: stale,
            samples: stale_samples,
            fix,
            fix_kind,
        });
    }
    if left > 0 && policy.soft_deleted != SoftDeleted::Keep {
        let what = if policy.soft_deleted == SoftDeleted::Delete {
            "still have a profile (sync.soft_deleted = delete)"
        } else {
            "still have personal data in their profile (sync.soft_deleted = scrub)"
        };
        findings.push(Finding {
            check: "soft_deleted_personal_data".into(),
            level: Level::Error,
            object: Some("public.user_profiles".into()),
            title: format!("{left} soft-deleted users {what}"),
            detail: "GoTrue blanked these users, their profiles did not follow: the update \
                     trigger is off or failing, or they were inserted already deleted"
                .into(),
            count: left,
            samples: left_samples,
            fix: "usersync sync".into(),
            fix_kind: FixKind::Command,
        });
    }
}
