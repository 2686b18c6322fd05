//! `migrate verify`: every object the migrations promise, read back from the catalog.
//!
//! Each broken promise is one [`Finding`] with a stable check name, what was expected, what was
//! found, and the SQL that fixes it. The checks read only the catalog, so `/readyz` can run them.

use serde::Serialize;
use tokio_postgres::Client;

#[cfg(test)]
use crate::db::migrate::MIGRATIONS;
use crate::db::migrate::{self, State};
use crate::error::Result;
pub use crate::finding::{Fix, FixKind, Level};

pub mod access;
mod functions;
pub mod runtime;
mod table;

use functions::*;
use table::*;

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
    let missing = crate::db::gotrue::missing_auth_columns(client).await?;
    if !missing.is_empty() {
        report.push(
            "auth_schema",
            &format!(
                "auth.users with every column usersync reads (GoTrue's schema from migration {} or newer)",
                crate::db::gotrue::OLDEST_GOTRUE_SCHEMA
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
    report.checks += 3;
    check_companion_triggers(client, &mut report).await?;
    report.checks += 1;
    check_repair_queue(client, &mut report).await?;

    report.checks += 3;
    check_cascade(client, &mut report).await?;
    report.checks += 2;
    access::api_roles(client, &mut report).await?;
    report.checks += 1;
    runtime::runtime_grants(client, &mut report).await?;

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
