//! `migrate verify`: every object the migrations promise, read back from the catalog.
//!
//! Each broken promise is one [`Finding`] with a stable check name, what was expected, what was
//! found, and the SQL that fixes it. The checks read only the catalog, so `/readyz` can run them.

use serde::Serialize;
use tokio_postgres::Client;

#[cfg(test)]
use crate::db::migrate::MIGRATIONS;
use crate::db::migrate::{self, State};
use crate::error::{DbContext, Result};

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name: `trigger`, `foreign_key`, `column.email`, ...
    pub check: String,
    pub expected: String,
    pub found: String,
    /// SQL (or a usersync command) that restores the promise.
    pub fix: String,
}

/// The outcome of a verify run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    /// How many checks ran.
    pub checks: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(
        &mut self,
        check: &str,
        expected: &str,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check: check.to_string(),
            expected: expected.to_string(),
            found: found.into(),
            fix: fix.into(),
        });
    }

    /// Names of the failed checks, sorted: what tests and metrics compare.
    pub fn failed_checks(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.findings.iter().map(|f| f.check.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

pub const TRIGGER: &str = "usersync_on_auth_user_created";
const TRIGGER_DEF: &str = "CREATE TRIGGER usersync_on_auth_user_created AFTER INSERT ON auth.users \
     FOR EACH ROW EXECUTE FUNCTION usersync.on_auth_user_created()";
const FUNCTION: &str = "usersync.on_auth_user_created()";
const UP_FILE: &str = "migrations/0001_user_profiles.up.sql";

/// A column of `public.user_profiles` as migration 0001 creates it.
struct Column {
    name: &'static str,
    sql_type: &'static str,
    not_null: bool,
    default: Option<&'static str>,
}

const COLUMNS: &[Column] = &[
    Column {
        name: "id",
        sql_type: "uuid",
        not_null: true,
        default: None,
    },
    Column {
        name: "email",
        sql_type: "text",
        not_null: false,
        default: None,
    },
    Column {
        name: "full_name",
        sql_type: "text",
        not_null: false,
        default: None,
    },
    Column {
        name: "avatar_url",
        sql_type: "text",
        not_null: false,
        default: None,
    },
    Column {
        name: "role",
        sql_type: "text",
        not_null: true,
        default: Some("'user'::text"),
    },
    Column {
        name: "is_active",
        sql_type: "boolean",
        not_null: true,
        default: Some("true"),
    },
    Column {
        name: "created_at",
        sql_type: "timestamp with time zone",
        not_null: true,
        default: Some("now()"),
    },
    Column {
        name: "updated_at",
        sql_type: "timestamp with time zone",
        not_null: true,
        default: Some("now()"),
    },
];

const REPAIR_QUEUE_COLUMNS: &[&str] = &[
    "user_id",
    "last_error",
    "last_sqlstate",
    "failures",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "next_attempt_at",
];

/// Runs every catalog check. Never writes.
pub async fn verify(client: &Client) -> Result<Report> {
    let mut report = Report::default();
    migrate::require_auth_users(client).await?;

    report.checks += 1;
    check_migrations(client, &mut report).await?;

    report.checks += 1;
    let table_present = check_table(client, &mut report).await?;
    if table_present {
        report.checks += COLUMNS.len() + 3;
        check_columns(client, &mut report).await?;
        check_primary_key(client, &mut report).await?;
        check_foreign_key(client, &mut report).await?;
    }

    report.checks += 3;
    check_functions(client, &mut report).await?;
    report.checks += 1;
    check_execute_grants(client, &mut report).await?;
    report.checks += 1;
    check_trigger(client, &mut report).await?;
    report.checks += 1;
    check_repair_queue(client, &mut report).await?;

    report.ok = report.findings.is_empty();
    Ok(report)
}

async fn check_migrations(client: &Client, report: &mut Report) -> Result<()> {
    for s in migrate::status(client).await? {
        let file = format!("{:04}_{}", s.version, s.name);
        match s.state {
            State::Applied { .. } => {}
            State::Pending => report.push(
                "migrations",
                &format!("{file} applied"),
                format!("{file} pending"),
                "usersync migrate up",
            ),
            State::Drifted { applied_checksum } => report.push(
                "migrations",
                &format!("{file} applied with checksum {}", s.checksum),
                format!("applied with checksum {applied_checksum}: the file has changed since"),
                format!("restore migrations/{file}.up.sql as it was applied"),
            ),
            State::Unknown => report.push(
                "migrations",
                &format!("only migrations up to {:04}", migrate::latest()),
                format!("{file}, unknown to this usersync"),
                "run the usersync version that applied it",
            ),
        }
    }
    Ok(())
}

async fn check_table(client: &Client, report: &mut Report) -> Result<bool> {
    let present: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('public.user_profiles') IS NOT NULL",
            &[],
        )
        .await
        .context("verifying public.user_profiles")?
        .get(0);
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

fn recreate_hint(object: &str) -> String {
    format!("re-run the statement that creates {object} in {UP_FILE}")
}

async fn check_columns(client: &Client, report: &mut Report) -> Result<()> {
    let rows = client
        .query(
            "SELECT a.attname::text,
                    pg_catalog.format_type(a.atttypid, a.atttypmod),
                    a.attnotnull,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid)
             FROM pg_catalog.pg_attribute a
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = 'public.user_profiles'::regclass
               AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[],
        )
        .await
        .context("verifying the columns of public.user_profiles")?;
    let found: Vec<(String, String, bool, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();

    for c in COLUMNS {
        let check = format!("column.{}", c.name);
        let expected = describe(c.sql_type, c.not_null, c.default);
        let Some((_, ty, not_null, default)) = found.iter().find(|f| f.0 == c.name) else {
            report.push(&check, &expected, "missing", add_column_sql(c));
            continue;
        };
        let mut fixes = Vec::new();
        if ty != c.sql_type {
            fixes.push(format!(
                "ALTER TABLE public.user_profiles ALTER COLUMN {} TYPE {} USING {}::{};",
                c.name, c.sql_type, c.name, c.sql_type
            ));
        }
        if *not_null != c.not_null {
            let verb = if c.not_null { "SET" } else { "DROP" };
            fixes.push(format!(
                "ALTER TABLE public.user_profiles ALTER COLUMN {} {verb} NOT NULL;",
                c.name
            ));
        }
        if default.as_deref() != c.default {
            fixes.push(match c.default {
                Some(d) => format!(
                    "ALTER TABLE public.user_profiles ALTER COLUMN {} SET DEFAULT {d};",
                    c.name
                ),
                None => format!(
                    "ALTER TABLE public.user_profiles ALTER COLUMN {} DROP DEFAULT;",
                    c.name
                ),
            });
        }
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
    for (name, ty, not_null, default) in &found {
        if COLUMNS.iter().any(|c| c.name == name) || !*not_null || default.is_some() {
            continue;
        }
        report.checks += 1;
        report.push(
            &format!("column.{name}"),
            "added columns are nullable or have a default",
            format!("{ty} NOT NULL without a default: every profile insert fails"),
            format!(
                "ALTER TABLE public.user_profiles ALTER COLUMN {} DROP NOT NULL;",
                quote_ident(name)
            ),
        );
    }
    Ok(())
}

fn describe(ty: &str, not_null: bool, default: Option<&str>) -> String {
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

fn add_column_sql(c: &Column) -> String {
    format!(
        "ALTER TABLE public.user_profiles ADD COLUMN {} {};",
        c.name,
        describe(c.sql_type, c.not_null, c.default)
    )
}

/// Quotes an identifier read from the catalog for a fix line, as `quote_ident` would.
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

async fn check_primary_key(client: &Client, report: &mut Report) -> Result<()> {
    let pk: Option<String> = client
        .query_opt(
            "SELECT pg_catalog.pg_get_constraintdef(c.oid)
             FROM pg_catalog.pg_constraint c
             WHERE c.conrelid = 'public.user_profiles'::regclass AND c.contype = 'p'",
            &[],
        )
        .await
        .context("verifying the primary key of public.user_profiles")?
        .map(|r| r.get(0));
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

async fn check_foreign_key(client: &Client, report: &mut Report) -> Result<()> {
    const EXPECTED: &str =
        "FOREIGN KEY (id) REFERENCES auth.users(id) ON DELETE CASCADE, validated";
    let rows = client
        .query(
            "SELECT c.conname::text, c.convalidated, c.confdeltype::text,
                    pg_catalog.pg_get_constraintdef(c.oid)
             FROM pg_catalog.pg_constraint c
             WHERE c.conrelid = 'public.user_profiles'::regclass
               AND c.contype = 'f'
               AND c.confrelid = 'auth.users'::regclass
               AND c.conkey = ARRAY[(SELECT attnum FROM pg_catalog.pg_attribute
                                     WHERE attrelid = 'public.user_profiles'::regclass
                                       AND attname = 'id')]",
            &[],
        )
        .await
        .context("verifying the foreign key of public.user_profiles")?;
    let keys: Vec<(String, bool, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
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
                 ALTER TABLE public.user_profiles VALIDATE CONSTRAINT {};",
                quote_ident(name)
            ),
        ),
        Some((name, _, _, def)) => report.push(
            "foreign_key",
            EXPECTED,
            def.clone(),
            format!(
                "ALTER TABLE public.user_profiles DROP CONSTRAINT {}; {add}",
                quote_ident(name)
            ),
        ),
    }
    Ok(())
}

async fn check_functions(client: &Client, report: &mut Report) -> Result<()> {
    let builder: bool = client
        .query_one(
            "SELECT pg_catalog.to_regprocedure('usersync.build_profile(auth.users)') IS NOT NULL",
            &[],
        )
        .await
        .context("verifying usersync.build_profile")?
        .get(0);
    if !builder {
        report.push(
            "profile_function",
            "function usersync.build_profile(auth.users)",
            "missing",
            recreate_hint("usersync.build_profile"),
        );
    }

    let row = client
        .query_opt(
            "SELECT p.prosecdef, p.proconfig
             FROM pg_catalog.pg_proc p
             WHERE p.oid = pg_catalog.to_regprocedure('usersync.on_auth_user_created()')",
            &[],
        )
        .await
        .context("verifying usersync.on_auth_user_created")?;
    let Some(row) = row else {
        report.push(
            "trigger_function",
            &format!("function {FUNCTION}"),
            "missing",
            recreate_hint(FUNCTION),
        );
        return Ok(());
    };
    let security_definer: bool = row.get(0);
    let config: Option<Vec<String>> = row.get(1);
    let config = config.unwrap_or_default();
    if !security_definer {
        report.push(
            "trigger_function.security_definer",
            "SECURITY DEFINER (inserts profiles whoever signs up)",
            "SECURITY INVOKER",
            format!("ALTER FUNCTION {FUNCTION} SECURITY DEFINER;"),
        );
    }
    // PostgreSQL stores SET search_path = '' as `search_path=""`.
    if !config.iter().any(|c| c == "search_path=\"\"") {
        let found = config
            .iter()
            .find(|c| c.starts_with("search_path="))
            .cloned()
            .unwrap_or_else(|| "search_path not set: resolved from the caller".into());
        report.push(
            "trigger_function.search_path",
            "SET search_path = ''",
            found,
            format!("ALTER FUNCTION {FUNCTION} SET search_path = '';"),
        );
    }
    Ok(())
}

async fn check_execute_grants(client: &Client, report: &mut Report) -> Result<()> {
    // Who may EXECUTE our functions, from the ACL; PUBLIC is grantee 0.
    let rows = client
        .query(
            "SELECT f.fn, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END
             FROM (VALUES ('usersync.on_auth_user_created()'), ('usersync.build_profile(auth.users)'))
                  AS f(fn)
             JOIN pg_catalog.pg_proc p ON p.oid = pg_catalog.to_regprocedure(f.fn)
             CROSS JOIN LATERAL pg_catalog.aclexplode(
                 COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) AS a
             LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
             WHERE a.privilege_type = 'EXECUTE'
               AND (a.grantee = 0 OR r.rolname IN ('anon', 'authenticated'))
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("verifying EXECUTE grants")?;
    if rows.is_empty() {
        return Ok(());
    }
    let grants: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let found = grants
        .iter()
        .map(|(f, g)| format!("{g} may execute {f}"))
        .collect::<Vec<_>>()
        .join(", ");
    let fix = grants
        .iter()
        .map(|(f, g)| format!("REVOKE EXECUTE ON FUNCTION {f} FROM {g};"))
        .collect::<Vec<_>>()
        .join(" ");
    report.push(
        "trigger_function.execute_grants",
        "no EXECUTE for PUBLIC, anon or authenticated",
        found,
        fix,
    );
    Ok(())
}

async fn check_trigger(client: &Client, report: &mut Report) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled::text
             FROM pg_catalog.pg_trigger t
             WHERE t.tgrelid = 'auth.users'::regclass AND t.tgname = $1",
            &[&TRIGGER],
        )
        .await
        .context("verifying the trigger on auth.users")?;
    let create = format!("{TRIGGER_DEF};");
    let Some(row) = row else {
        report.push(
            "trigger",
            "AFTER INSERT trigger on auth.users, enabled",
            "missing",
            create,
        );
        return Ok(());
    };
    let def: String = row.get(0);
    let enabled: String = row.get(1);
    if def != TRIGGER_DEF {
        report.push(
            "trigger",
            TRIGGER_DEF,
            def,
            format!("DROP TRIGGER {TRIGGER} ON auth.users; {create}"),
        );
    } else if enabled == "D" || enabled == "R" {
        // 'O' fires in origin and local mode, 'A' always; 'D' never; 'R' only on replicas.
        let found = if enabled == "D" {
            "disabled"
        } else {
            "fires only in replica mode"
        };
        report.push(
            "trigger",
            "enabled",
            found,
            format!("ALTER TABLE auth.users ENABLE TRIGGER {TRIGGER};"),
        );
    }
    Ok(())
}

async fn check_repair_queue(client: &Client, report: &mut Report) -> Result<()> {
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
        .map(|r| r.get(0))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_in_fixes_are_quoted_when_needed() {
        assert_eq!(quote_ident("nickname"), "nickname");
        assert_eq!(quote_ident("Nick Name"), "\"Nick Name\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_expected_trigger_is_the_one_migration_0001_creates() {
        let up = MIGRATIONS[0]
            .up
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            up.contains(TRIGGER_DEF),
            "0001 no longer creates: {TRIGGER_DEF}"
        );
        for c in COLUMNS {
            assert!(
                up.contains(&format!(" {} ", c.name)),
                "0001 lacks column {}",
                c.name
            );
        }
    }
}
