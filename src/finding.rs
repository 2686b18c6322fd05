//! What is wrong, how bad, and what fixes it: the vocabulary `migrate verify`, the integrity
//! checks, the metrics, the status page and `check` share. The ground floor: it imports nothing
//! of the crate.

use serde::{Deserialize, Serialize};

/// How bad a finding is: `check` exits 1 on any error; warnings are reported and pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }
}

/// Whether a fix is SQL, to run as printed (schema-qualified, identifiers quoted by
/// PostgreSQL), or a command or step for a person, never to be pasted into psql.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixKind {
    Sql,
    Command,
}

impl FixKind {
    /// How the status page and `check` label it.
    pub fn label(self) -> &'static str {
        match self {
            FixKind::Sql => "SQL",
            FixKind::Command => "run",
        }
    }
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

/// One thing that is wrong, with what remedies it: a finding of `usersync check` and of the
/// daemon's integrity check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable name: `missing_profile`, `orphan_profile`, `foreign_key_not_valid`, ...
    pub check: String,
    pub level: Level,
    /// The table, constraint or column concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub object: Option<String>,
    pub title: String,
    pub detail: String,
    /// How many rows (or objects) are affected.
    pub count: i64,
    /// Up to ten user ids, never e-mails.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub samples: Vec<String>,
    /// The SQL or the step that remedies it.
    pub fix: String,
    /// `sql`: runs as printed; `command`: a step for a person.
    pub fix_kind: FixKind,
}
