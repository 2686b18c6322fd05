//! The checks of other tables' user ids: every foreign key into `auth.users` or
//! `public.user_profiles`, and the configured columns that carry user ids without one.

use tokio_postgres::Client;

use super::{Finding, Level};
use crate::config::IntegritySettings;
use crate::db::RowExt;
use crate::error::{DbContext, Result};
use crate::finding::FixKind;

const SAMPLES: i32 = 10;

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

/// One foreign key of [`FOREIGN_KEYS`], as the statement reads it.
struct Key {
    table: String,
    name: String,
    target: String,
    validated: bool,
    on_delete: String,
    definition: String,
    orphans_sql: String,
    cascade_sql: String,
    validate_sql: String,
    grant_sql: String,
}

impl Key {
    fn from_row(row: &tokio_postgres::Row) -> Result<Key> {
        Ok(Key {
            table: row.value(0)?,
            name: row.value(1)?,
            target: row.value(2)?,
            validated: row.value(3)?,
            on_delete: row.value(4)?,
            definition: row.value(5)?,
            orphans_sql: row.value(6)?,
            cascade_sql: row.value(7)?,
            validate_sql: row.value(8)?,
            grant_sql: row.value(9)?,
        })
    }

    fn object(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }
}

/// Every single-column foreign key into `auth.users(id)` or `public.user_profiles(id)` but the
/// profile's own (which `migrate verify` checks): NOT VALID ones with their orphans, and ones
/// whose ON DELETE rule would block deleting a user.
pub async fn foreign_keys(client: &Client, findings: &mut Vec<Finding>) -> Result<()> {
    let rows = client
        .query(FOREIGN_KEYS, &[])
        .await
        .context("reading the foreign keys into auth.users and public.user_profiles")?;
    for row in rows {
        let key = Key::from_row(&row)?;
        if !key.validated {
            findings.push(not_valid(client, &key).await?);
        }
        if let Some(found) = blocks_delete(&key) {
            findings.push(found);
        }
    }
    Ok(())
}

/// A NOT VALID key, with its rows that reference nothing counted (a finding of its own when
/// usersync's role may not read them).
async fn not_valid(client: &Client, key: &Key) -> Result<Finding> {
    let Key {
        table,
        name,
        target,
        ..
    } = key;
    // The statement is PostgreSQL's own format() of catalog names, quoted with %I.
    let counted = readable(
        client.query_one(key.orphans_sql.as_str(), &[]).await,
        format!("counting the rows of {table} that reference no {target}"),
    )?;
    let Some(counted) = counted else {
        return Ok(unreadable(&key.object(), table, key.grant_sql.clone()));
    };
    let (count, samples): (i64, Vec<String>) = (counted.value(0)?, counted.value(1)?);
    Ok(Finding {
        check: "foreign_key_not_valid".into(),
        level: if count > 0 {
            Level::Error
        } else {
            Level::Warning
        },
        object: Some(key.object()),
        title: format!(
            "{table}: foreign key {name} is NOT VALID, {} reference no {target}",
            crate::plural(count, "row")
        ),
        detail: format!(
            "{}: rows written before it, or under replica mode, are not checked",
            key.definition
        ),
        count,
        samples,
        fix: key.validate_sql.clone(),
        fix_kind: FixKind::Sql,
    })
}

/// A key whose ON DELETE rule makes deleting a user fail.
fn blocks_delete(key: &Key) -> Option<Finding> {
    let rule = match key.on_delete.as_str() {
        "a" => "NO ACTION",
        "r" => "RESTRICT",
        _ => return None,
    };
    let Key {
        table,
        name,
        definition,
        ..
    } = key;
    Some(Finding {
        check: "foreign_key_blocks_delete".into(),
        level: Level::Warning,
        object: Some(key.object()),
        title: format!("{table}: foreign key {name} blocks deleting a user (ON DELETE {rule})"),
        detail: format!(
            "{definition}: deleting a user with rows in {table} fails (\"Database error deleting \
             user\"); make it cascade, or SET NULL if the rows must stay"
        ),
        count: 1,
        samples: Vec::new(),
        fix: key.cascade_sql.clone(),
        fix_kind: FixKind::Sql,
    })
}

/// Configured columns that hold user ids without a foreign key: rows whose user is gone.
/// Counted by `usersync.user_id_column_orphans()` (migration 0005), which reads them with the
/// migration role's privileges (the runtime role may not even name schema auth, where GoTrue's
/// such columns live), and only those `usersync migrate grant` registered.
pub async fn user_id_columns(
    client: &Client,
    settings: &IntegritySettings,
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    if settings.user_id_columns.is_empty() {
        return Ok(findings);
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
        let key = (
            column.schema.clone(),
            column.table.clone(),
            column.column.clone(),
        );
        let found = match rows.iter().find(|(k, _)| *k == key) {
            Some((_, row)) => column_finding(column, row)?,
            None => Some(unregistered(client, column).await?),
        };
        findings.extend(found);
    }
    Ok(findings)
}

/// What one registered column's count says, if anything: it does not exist, the migration role
/// may not read it, or some of its rows name no user.
fn column_finding(
    column: &crate::config::UserIdColumn,
    row: &tokio_postgres::Row,
) -> Result<Option<Finding>> {
    let name = column.to_string();
    let (present, readable): (bool, bool) = (row.value(3)?, row.value(4)?);
    let (count, samples): (i64, Vec<String>) = (row.value(5)?, row.value(6)?);
    Ok(if !present {
        Some(Finding {
            check: "user_id_column_orphans".into(),
            level: Level::Warning,
            object: Some(name),
            title: format!("{column} does not exist"),
            detail: "integrity.user_id_columns names a column this database does not have".into(),
            count: 0,
            samples: Vec::new(),
            fix: "correct integrity.user_id_columns".into(),
            fix_kind: FixKind::Command,
        })
    } else if !readable {
        Some(unreadable(
            &name,
            &format!("{}.{}", column.schema, column.table),
            row.value(8)?,
        ))
    } else if count > 0 {
        Some(Finding {
            check: "user_id_column_orphans".into(),
            level: Level::Warning,
            object: Some(name),
            title: format!(
                "{} of {column} name a user that does not exist",
                crate::plural(count, "row")
            ),
            detail: "the column carries user ids without a foreign key, so nothing removes its \
                     rows when a user is deleted"
                .into(),
            count,
            samples,
            fix: row.value(7)?,
            fix_kind: FixKind::Sql,
        })
    } else {
        None
    })
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
