//! `migrate verify`: every object the migrations promise, read back from the catalog.
//!
//! Each broken promise is one [`Finding`] with a stable check name, what was expected, what was
//! found, and the SQL that fixes it. The checks read only the catalog, so `/readyz` can run them.

use crate::db::RowExt;
use serde::Serialize;
use tokio_postgres::Client;

#[cfg(test)]
use crate::db::migrate::MIGRATIONS;
use crate::db::migrate::{self, State};
use crate::error::{DbContext, Result};
pub use crate::integrity::Level;

pub mod access;

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name: `trigger`, `foreign_key`, `column.email`, ...
    pub check: String,
    /// Errors fail verify (and readiness); warnings are reported and pass.
    pub level: Level,
    pub expected: String,
    pub found: String,
    /// What restores the promise: SQL that runs as printed, or a step to take.
    pub fix: String,
    pub fix_kind: FixKind,
}

/// Whether a fix is SQL, to run as printed (schema-qualified, identifiers quoted by
/// PostgreSQL), or a command or step for a person, never to be pasted into psql.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FixKind {
    Sql,
    Command,
}

/// A fix and its kind; plain strings are SQL.
pub struct Fix(pub FixKind, pub String);

impl Fix {
    pub fn command(text: impl Into<String>) -> Fix {
        Fix(FixKind::Command, text.into())
    }
}

impl From<String> for Fix {
    fn from(sql: String) -> Fix {
        Fix(FixKind::Sql, sql)
    }
}

impl From<&str> for Fix {
    fn from(sql: &str) -> Fix {
        Fix(FixKind::Sql, sql.to_string())
    }
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
    fn push(&mut self, check: &str, expected: &str, found: impl Into<String>, fix: impl Into<Fix>) {
        self.push_at(Level::Error, check, expected, found, fix);
    }

    fn push_at(
        &mut self,
        level: Level,
        check: &str,
        expected: &str,
        found: impl Into<String>,
        fix: impl Into<Fix>,
    ) {
        let Fix(fix_kind, fix) = fix.into();
        self.findings.push(Finding {
            check: check.to_string(),
            level,
            expected: expected.to_string(),
            found: found.into(),
            fix,
            fix_kind,
        });
    }

    /// Whether nothing at error level was found.
    pub fn passes(&self) -> bool {
        !self.findings.iter().any(|f| f.level == Level::Error)
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
const PINNED_SEARCH_PATH: &str = "search_path=pg_catalog, pg_temp";
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
    let missing = migrate::missing_auth_columns(client).await?;
    if !missing.is_empty() {
        report.push(
            "auth_schema",
            &format!(
                "auth.users with every column usersync reads (GoTrue's schema from migration {} or newer)",
                migrate::OLDEST_GOTRUE_SCHEMA
            ),
            format!("no column {}", missing.join(", ")),
            Fix::command("upgrade GoTrue (the auth server) to v2.145 or newer"),
        );
    }
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

    report.checks += 3;
    check_cascade(client, &mut report).await?;
    report.checks += 2;
    access::api_roles(client, &mut report).await?;
    report.checks += 1;
    access::runtime_grants(client, &mut report).await?;

    report.ok = report.passes();
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
                Fix::command("usersync migrate up"),
            ),
            State::Drifted { applied_checksum } => report.push(
                "migrations",
                &format!("{file} applied with checksum {}", s.checksum),
                format!("applied with checksum {applied_checksum}: the file has changed since"),
                Fix::command(format!(
                    "restore migrations/{file}.up.sql as it was applied"
                )),
            ),
            State::Unknown => report.push(
                "migrations",
                &format!("only migrations up to {:04}", migrate::latest()),
                format!("{file}, unknown to this usersync"),
                Fix::command("run the usersync version that applied it"),
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

fn recreate_hint(object: &str) -> Fix {
    Fix::command(format!(
        "re-run the statement that creates {object} in {UP_FILE}, then usersync migrate verify"
    ))
}

async fn check_columns(client: &Client, report: &mut Report) -> Result<()> {
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

async fn check_foreign_key(client: &Client, report: &mut Report) -> Result<()> {
    const EXPECTED: &str =
        "FOREIGN KEY (id) REFERENCES auth.users(id) ON DELETE CASCADE, validated";
    let rows = client
        .query(
            "SELECT pg_catalog.quote_ident(c.conname), c.convalidated, c.confdeltype::pg_catalog.text,
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

async fn check_functions(client: &Client, report: &mut Report) -> Result<()> {
    let builder: bool = client
        .query_one(
            "SELECT pg_catalog.to_regprocedure('usersync.build_profile(auth.users)') IS NOT NULL
                AND pg_catalog.to_regprocedure(
                    'usersync.build_profile(uuid, text, jsonb, timestamp with time zone)') IS NOT NULL",
            &[],
        )
        .await
        .context("verifying usersync.build_profile")?
        .value(0)?;
    if !builder {
        report.push(
            "profile_function",
            "functions usersync.build_profile(auth.users) and (uuid, text, jsonb, timestamptz)",
            "missing",
            Fix::command(
                "usersync migrate down --to 1, then usersync migrate up: migration 0002 \
                 recreates both",
            ),
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
            Fix::command(format!(
                "re-run the statement that creates {FUNCTION} in \
                 migrations/0002_hardening.up.sql, then usersync migrate verify"
            )),
        );
        return Ok(());
    };
    let security_definer: bool = row.value(0)?;
    let config: Option<Vec<String>> = row.value(1)?;
    let config = config.unwrap_or_default();
    if !security_definer {
        report.push(
            "trigger_function.security_definer",
            "SECURITY DEFINER (inserts profiles whoever signs up)",
            "SECURITY INVOKER",
            format!("ALTER FUNCTION {FUNCTION} SECURITY DEFINER;"),
        );
    }
    // PostgreSQL stores `SET search_path = pg_catalog, pg_temp` as written, in one entry.
    if !config.iter().any(|c| c == PINNED_SEARCH_PATH) {
        let found = match config.iter().find(|c| c.starts_with("search_path=")) {
            Some(c) if c == "search_path=\"\"" => {
                "search_path = '': pg_temp is still searched first for types, so a session can \
                 shadow one with its own domain"
                    .to_string()
            }
            Some(c) => c.clone(),
            None => "search_path not set: names are resolved on the caller's path".into(),
        };
        report.push(
            "trigger_function.search_path",
            "SET search_path = pg_catalog, pg_temp",
            found,
            format!("ALTER FUNCTION {FUNCTION} SET search_path = pg_catalog, pg_temp;"),
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
    let grants: Vec<(String, String)> = rows
        .iter()
        .map(|r| Ok((r.value(0)?, r.value(1)?)))
        .collect::<Result<_>>()?;
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
    let def: String = row.value(0)?;
    let enabled: String = row.value(1)?;
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

/// Deleting a user takes its profile and its repair queue row along, read from the catalog:
/// both foreign keys present, validated and ON DELETE CASCADE, and the triggers PostgreSQL
/// enforces them with not disabled (`ALTER TABLE … DISABLE TRIGGER ALL`, which restores use).
/// The profile's key is the `foreign_key` check; this one is the queue's and the triggers.
async fn check_cascade(client: &Client, report: &mut Report) -> Result<()> {
    let queue_key: Option<(bool, String, String)> = client
        .query_opt(
            "SELECT c.convalidated, c.confdeltype::pg_catalog.text, pg_catalog.quote_ident(c.conname)
             FROM pg_catalog.pg_constraint c
             WHERE c.conrelid = pg_catalog.to_regclass('usersync.repair_queue')
               AND c.contype = 'f' AND c.confrelid = 'auth.users'::pg_catalog.regclass
             ORDER BY c.convalidated DESC, c.confdeltype = 'c' DESC
             LIMIT 1",
            &[],
        )
        .await
        .context("verifying the foreign key of usersync.repair_queue")?
        .map(|r| Ok::<_, crate::Error>((r.value(0)?, r.value(1)?, r.value(2)?)))
        .transpose()?;
    let add = "ALTER TABLE usersync.repair_queue ADD CONSTRAINT repair_queue_user_id_fkey \
               FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;";
    const EXPECTED: &str =
        "usersync.repair_queue FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE";
    match queue_key {
        Some((true, rule, _)) if rule == "c" => {}
        Some((_, _, name)) => report.push(
            "cascade.repair_queue",
            EXPECTED,
            "not ON DELETE CASCADE, or NOT VALID",
            format!(
                "DELETE FROM usersync.repair_queue q WHERE NOT EXISTS \
                 (SELECT 1 FROM auth.users u WHERE u.id = q.user_id); \
                 ALTER TABLE usersync.repair_queue DROP CONSTRAINT {name}; {add}"
            ),
        ),
        None if pg_exists(client, "usersync.repair_queue").await? => {
            report.push("cascade.repair_queue", EXPECTED, "missing", add)
        }
        None => {}
    }
    let disabled: Vec<String> = client
        .query(
            "SELECT DISTINCT t.tgrelid::pg_catalog.regclass::pg_catalog.text
             FROM pg_catalog.pg_constraint c
             JOIN pg_catalog.pg_trigger t ON t.tgconstraint = c.oid
             WHERE c.contype = 'f' AND c.confrelid = 'auth.users'::pg_catalog.regclass
               AND c.conrelid IN (pg_catalog.to_regclass('public.user_profiles'),
                                  pg_catalog.to_regclass('usersync.repair_queue'))
               AND t.tgenabled = 'D'
             ORDER BY 1",
            &[],
        )
        .await
        .context("verifying the triggers of the foreign keys into auth.users")?
        .iter()
        .map(|r| r.value(0))
        .collect::<Result<_>>()?;
    if !disabled.is_empty() {
        report.push(
            "cascade.triggers",
            "the foreign keys' triggers enabled: deleting a user deletes its profile",
            format!("disabled on {}", disabled.join(", ")),
            disabled
                .iter()
                .map(|t| format!("ALTER TABLE {t} ENABLE TRIGGER ALL;"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    Ok(())
}

async fn pg_exists(client: &Client, relation: &str) -> Result<bool> {
    client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&relation],
        )
        .await
        .context("looking up a relation")?
        .value(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
