//! `usersync migrate grant ROLE`: gives the runtime role exactly [`RUNTIME_PRIVILEGES`], run
//! by the migration role after `migrate up`.
//!
//! The role's name reaches the statements only as PostgreSQL's own `quote_ident` of it; every
//! other word is a constant. All of it is one transaction: a failure grants nothing.

use crate::db::RowExt;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::UserIdColumn;
use crate::db::verify::access::{Kind, RUNTIME_PRIVILEGES};
use crate::error::{DbContext, Error, Result};

/// What `grant` did.
#[derive(Clone, Debug, Serialize)]
pub struct Granted {
    pub role: String,
    pub statements: Vec<String>,
}

/// Grants `role` what the runtime needs, and SELECT on the configured user-id columns (so the
/// integrity check can count their orphans). The role must exist and bypass row level
/// security: auth.users has RLS on and no policy, so without it usersync sees no users.
pub async fn grant(client: &mut Client, role: &str, columns: &[UserIdColumn]) -> Result<Granted> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.quote_ident(r.rolname::pg_catalog.text), r.rolsuper, r.rolbypassrls
             FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await
        .context("looking up the runtime role")?;
    let Some(row) = row else {
        return Err(Error::NotFound(format!(
            "role {role:?} does not exist; create it first, e.g. CREATE ROLE usersync_runtime \
             LOGIN BYPASSRLS PASSWORD '…' (as a superuser)"
        )));
    };
    let (quoted, superuser, bypass): (String, bool, bool) =
        (row.value(0)?, row.value(1)?, row.value(2)?);
    if superuser {
        return Err(Error::Migration(format!(
            "role {quoted} is a superuser: the runtime role should be an ordinary one"
        )));
    }
    if !bypass {
        return Err(Error::Migration(format!(
            "role {quoted} lacks BYPASSRLS: auth.users has row level security and no policy, so \
             it would see no users; ALTER ROLE {quoted} BYPASSRLS; (as a superuser), then grant again"
        )));
    }
    let mut statements = statements_for(&quoted);
    for column in columns {
        // PostgreSQL quotes the configured names; a column that does not exist gives nothing.
        let row = client
            .query_opt(
                "SELECT pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %s', $1::pg_catalog.text, $4::pg_catalog.text),
                        pg_catalog.format('GRANT SELECT (%I) ON TABLE %I.%I TO %s',
                                          $3::pg_catalog.text, $1::pg_catalog.text,
                                          $2::pg_catalog.text, $4::pg_catalog.text)
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = pg_catalog.to_regclass(
                           pg_catalog.format('%I.%I', $1::pg_catalog.text, $2::pg_catalog.text))
                   AND a.attname = $3 AND NOT a.attisdropped",
                &[&column.schema, &column.table, &column.column, &quoted],
            )
            .await
            .context(format!("looking up {column}"))?;
        if let Some(row) = row {
            statements.push(row.value(0)?);
            statements.push(row.value(1)?);
        }
    }
    let tx = client.transaction().await.context("starting the grants")?;
    for sql in &statements {
        tx.batch_execute(sql)
            .await
            .context(format!("granting: {sql}"))?;
    }
    tx.commit().await.context("committing the grants")?;
    tracing::info!(role = %quoted, statements = statements.len(), "runtime role granted");
    Ok(Granted {
        role: quoted,
        statements,
    })
}

/// The GRANT statements of [`RUNTIME_PRIVILEGES`], one per object.
fn statements_for(role: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut objects: Vec<(Kind, &str)> = Vec::new();
    for p in RUNTIME_PRIVILEGES {
        if !objects.contains(&(p.kind, p.object)) {
            objects.push((p.kind, p.object));
        }
    }
    for (kind, object) in objects {
        let of_object = RUNTIME_PRIVILEGES
            .iter()
            .filter(|p| p.kind == kind && p.object == object);
        let (what, on) = match kind {
            Kind::Column => {
                let columns: Vec<&str> = of_object.filter_map(|p| p.column).collect();
                (format!("SELECT ({})", columns.join(", ")), "TABLE")
            }
            _ => {
                let privileges: Vec<&str> = of_object.map(|p| p.privilege).collect();
                let on = match kind {
                    Kind::Schema => "SCHEMA",
                    Kind::Function => "FUNCTION",
                    _ => "TABLE",
                };
                (privileges.join(", "), on)
            }
        };
        out.push(format!("GRANT {what} ON {on} {object} TO {role}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_statement_per_object_with_its_columns() {
        let statements = super::statements_for("\"Run Time\"");
        assert!(statements.contains(&"GRANT USAGE ON SCHEMA auth TO \"Run Time\"".to_string()));
        assert!(statements.iter().any(|s| {
            s.starts_with("GRANT SELECT (id, email, phone, raw_user_meta_data, created_at")
                && s.ends_with("ON TABLE auth.users TO \"Run Time\"")
        }));
        assert!(statements.contains(
            &"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.user_profiles TO \"Run Time\"".to_string()
        ));
        assert_eq!(
            statements
                .iter()
                .filter(|s| s.contains("auth.users"))
                .count(),
            1
        );
    }
}
