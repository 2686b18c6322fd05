//! The profile table, its columns, keys and the repair queue, read back from the catalog.

use tokio_postgres::Client;

use super::*;
use crate::db::RowExt;
use crate::error::{DbContext, Result};

pub(super) async fn check_table(client: &Client, report: &mut Report) -> Result<bool> {
    let present: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('public.user_profiles') IS NOT NULL",
            &[],
        )
        .await
        .context("verifying public.user_profiles")?
        .value(0)?;
    if !present {
        report.push(
            "profile_table",
            "table public.user_profiles",
            "missing",
            recreate_hint("public.user_profiles"),
        );
    }
    Ok(present)
}

pub(super) fn recreate_hint(object: &str) -> Fix {
    Fix::command(format!(
        "re-run the statement that creates {object} in {UP_FILE}, then usersync migrate verify"
    ))
}

pub(super) async fn check_columns(client: &Client, report: &mut Report) -> Result<()> {
    let rows = client
        .query(
            "SELECT a.attname::pg_catalog.text,
                    pg_catalog.format_type(a.atttypid, a.atttypmod),
                    a.attnotnull,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                    pg_catalog.quote_ident(a.attname)
             FROM pg_catalog.pg_attribute a
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = 'public.user_profiles'::pg_catalog.regclass
               AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[],
        )
        .await
        .context("verifying the columns of public.user_profiles")?;
    let found: Vec<(String, String, bool, Option<String>, String)> = rows
        .iter()
        .map(|r| {
            Ok((
                r.value(0)?,
                r.value(1)?,
                r.value(2)?,
                r.value(3)?,
                r.value(4)?,
            ))
        })
        .collect::<Result<_>>()?;

    for c in COLUMNS {
        let check = format!("column.{}", c.name);
        let expected = describe(c.sql_type, c.not_null, c.default);
        let Some((_, ty, not_null, default, _)) = found.iter().find(|f| f.0 == c.name) else {
            report.push(&check, &expected, "missing", add_column_sql(c));
            continue;
        };
        let fixes = column_fixes(c, ty, *not_null, default.as_deref());
        if !fixes.is_empty() {
            report.push(
                &check,
                &expected,
                describe(ty, *not_null, default.as_deref()),
                fixes.join(" "),
            );
        }
    }

    // The application may add columns, but one that is NOT NULL without a default makes every
    // profile insert fail: the trigger would queue every sign-up for repair, forever.
    for (name, ty, not_null, default, quoted) in &found {
        if COLUMNS.iter().any(|c| c.name == name) || !*not_null || default.is_some() {
            continue;
        }
        report.checks += 1;
        report.push(
            &format!("column.{name}"),
            "added columns are nullable or have a default",
            format!("{ty} NOT NULL without a default: every profile insert fails"),
            format!("ALTER TABLE public.user_profiles ALTER COLUMN {quoted} DROP NOT NULL;"),
        );
    }
    Ok(())
}

/// What puts a column back as 0001 made it, one statement per way it differs.
fn column_fixes(c: &Column, ty: &str, not_null: bool, default: Option<&str>) -> Vec<String> {
    let alter = format!("ALTER TABLE public.user_profiles ALTER COLUMN {}", c.name);
    let mut fixes = Vec::new();
    if ty != c.sql_type {
        fixes.push(format!(
            "{alter} TYPE {} USING {}::{};",
            c.sql_type, c.name, c.sql_type
        ));
    }
    if not_null != c.not_null {
        let verb = if c.not_null { "SET" } else { "DROP" };
        fixes.push(format!("{alter} {verb} NOT NULL;"));
    }
    if default != c.default {
        fixes.push(match c.default {
            Some(d) => format!("{alter} SET DEFAULT {d};"),
            None => format!("{alter} DROP DEFAULT;"),
        });
    }
    fixes
}

pub(super) fn describe(ty: &str, not_null: bool, default: Option<&str>) -> String {
    let mut s = ty.to_string();
    if not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = default {
        s.push_str(" DEFAULT ");
        s.push_str(d);
    }
    s
}

pub(super) fn add_column_sql(c: &Column) -> String {
    format!(
        "ALTER TABLE public.user_profiles ADD COLUMN {} {};",
        c.name,
        describe(c.sql_type, c.not_null, c.default)
    )
}

pub(super) async fn check_primary_key(client: &Client, report: &mut Report) -> Result<()> {
    let pk: Option<String> = client
        .query_opt(
            "SELECT pg_catalog.pg_get_constraintdef(c.oid)
             FROM pg_catalog.pg_constraint c
             WHERE c.conrelid = 'public.user_profiles'::regclass AND c.contype = 'p'",
            &[],
        )
        .await
        .context("verifying the primary key of public.user_profiles")?
        .map(|r| r.value(0))
        .transpose()?;
    match pk.as_deref() {
        Some("PRIMARY KEY (id)") => {}
        Some(other) => report.push(
            "primary_key",
            "PRIMARY KEY (id)",
            other,
            "ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_pkey, ADD PRIMARY KEY (id);",
        ),
        None => report.push(
            "primary_key",
            "PRIMARY KEY (id)",
            "missing",
            "ALTER TABLE public.user_profiles ADD PRIMARY KEY (id);",
        ),
    }
    Ok(())
}

pub(super) async fn check_foreign_key(client: &Client, report: &mut Report) -> Result<()> {
    const EXPECTED: &str =
        "FOREIGN KEY (id) REFERENCES auth.users(id) ON DELETE CASCADE, validated";
    let rows = client
        .query(
            concat!(
                "SELECT pg_catalog.quote_ident(c.conname), c.convalidated, c.confdeltype::pg_catalog.text,
                    pg_catalog.pg_get_constraintdef(c.oid)
             FROM pg_catalog.pg_constraint c
             WHERE c.conrelid = 'public.user_profiles'::regclass
               AND c.contype = 'f'
               AND c.confrelid = ",
                crate::auth_users_oid!(),
                "
               AND c.conkey = ARRAY[(SELECT attnum FROM pg_catalog.pg_attribute
                                     WHERE attrelid = 'public.user_profiles'::regclass
                                       AND attname = 'id')]"
            ),
            &[],
        )
        .await
        .context("verifying the foreign key of public.user_profiles")?;
    let keys: Vec<(String, bool, String, String)> = rows
        .iter()
        .map(|r| Ok((r.value(0)?, r.value(1)?, r.value(2)?, r.value(3)?)))
        .collect::<Result<_>>()?;
    if keys.iter().any(|(_, valid, del, _)| *valid && del == "c") {
        return Ok(());
    }
    let add = "ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_id_fkey \
               FOREIGN KEY (id) REFERENCES auth.users(id) ON DELETE CASCADE;";
    match keys.first() {
        None => report.push("foreign_key", EXPECTED, "missing", add),
        Some((name, false, del, def)) if del == "c" => report.push(
            "foreign_key",
            EXPECTED,
            format!("{def} (NOT VALID: rows are not checked)"),
            format!(
                "DELETE FROM public.user_profiles p WHERE NOT EXISTS \
                 (SELECT 1 FROM auth.users u WHERE u.id = p.id); \
                 ALTER TABLE public.user_profiles VALIDATE CONSTRAINT {name};"
            ),
        ),
        Some((name, _, _, def)) => report.push(
            "foreign_key",
            EXPECTED,
            def.clone(),
            format!("ALTER TABLE public.user_profiles DROP CONSTRAINT {name}; {add}"),
        ),
    }
    Ok(())
}

pub(super) async fn check_repair_queue(client: &Client, report: &mut Report) -> Result<()> {
    let columns: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = pg_catalog.to_regclass('usersync.repair_queue')
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await
        .context("verifying usersync.repair_queue")?
        .iter()
        .map(|r| r.value(0))
        .collect::<Result<_>>()?;
    let missing: Vec<&str> = REPAIR_QUEUE_COLUMNS
        .iter()
        .copied()
        .filter(|c| !columns.iter().any(|f| f == c))
        .collect();
    if columns.is_empty() {
        report.push(
            "repair_queue",
            "table usersync.repair_queue",
            "missing",
            recreate_hint("usersync.repair_queue"),
        );
    } else if !missing.is_empty() {
        report.push(
            "repair_queue",
            "table usersync.repair_queue",
            format!("missing columns: {}", missing.join(", ")),
            recreate_hint("usersync.repair_queue"),
        );
    }
    Ok(())
}
