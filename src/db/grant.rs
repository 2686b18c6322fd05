//! `usersync migrate grant ROLE`: gives the runtime role exactly [`RUNTIME_PRIVILEGES`], run
//! by the migration role after `migrate up`, then reads back what the role holds.
//!
//! Everything on the list can be granted by hosted Supabase's `postgres`, which owns what
//! `migrate up` created and holds nothing in schema `auth` it could pass on. A GRANT the
//! connecting role cannot make is only a WARNING in PostgreSQL ("no privileges were granted"),
//! so success is never read off the statements: [`runtime::gaps`] asks PostgreSQL what the role
//! holds afterwards, and each gap is named with its reason.
//!
//! The role's name reaches the statements only as PostgreSQL's own `quote_ident` of it; every
//! other word is a constant. The grants and the registration of the configured user-id columns
//! are one transaction: a failure changes nothing.

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::UserIdColumn;
use crate::db::RowExt;
use crate::db::verify::runtime::{self, Gap, Privilege};
use crate::error::{DbContext, Error, Result};

/// What `grant` did, and what the role still lacks (nothing, when it can run usersync).
#[derive(Clone, Debug, Serialize)]
pub struct Granted {
    pub role: String,
    pub statements: Vec<String>,
    /// The `integrity.user_id_columns` registered for counting.
    pub user_id_columns: Vec<String>,
    pub missing: Vec<Gap>,
}

impl Granted {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Grants `role` what the runtime needs that it does not hold yet, registers `columns` as the
/// user-id columns the integrity check counts, and reads back what the role holds.
pub async fn grant(client: &mut Client, role: &str, columns: &[UserIdColumn]) -> Result<Granted> {
    let quoted = runtime_role(client, role).await?;
    let may_register = registrable(client).await?;
    // Only what this role may grant: a GRANT of a privilege held without grant option is a
    // mere WARNING, of one not held an error that would undo the rest; both are named by the
    // read-back instead.
    let grantable: Vec<Privilege> = runtime::standings(client, Some(role))
        .await?
        .into_iter()
        .filter(|s| s.present && !s.held && s.grantable)
        .map(|s| s.privilege)
        .collect();
    let mut statements = statements_for(&quoted, &grantable);
    let tx = client.transaction().await.context("starting the grants")?;
    for sql in &statements {
        tx.batch_execute(sql)
            .await
            .context(format!("granting: {sql}"))?;
    }
    statements.extend(profile_policy(&tx, role).await?);
    if may_register {
        register(&tx, columns).await?;
    }
    tx.commit().await.context("committing the grants")?;
    let mut missing = runtime::gaps(client, role).await?;
    if !may_register {
        missing.push(Gap {
            what: "integrity.user_id_columns registered in usersync.user_id_columns".into(),
            why: "the connecting role may not write usersync.user_id_columns (the migration \
                  role owns it)"
                .into(),
        });
    }
    tracing::info!(role = %quoted, statements = statements.len(), missing = missing.len(),
        "runtime role granted");
    let registered = if may_register { columns } else { &[] };
    Ok(Granted {
        role: quoted,
        statements,
        user_id_columns: registered.iter().map(ToString::to_string).collect(),
        missing,
    })
}

/// The role, quoted by PostgreSQL; it must exist and not be a superuser.
async fn runtime_role(client: &Client, role: &str) -> Result<String> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.quote_ident(r.rolname::pg_catalog.text), r.rolsuper
             FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await
        .context("looking up the runtime role")?;
    let Some(row) = row else {
        return Err(Error::NotFound(format!(
            "role {role:?} does not exist; create it first, as the migration role (on hosted \
             Supabase: postgres, in the SQL editor): CREATE ROLE usersync_runtime LOGIN PASSWORD '…';"
        )));
    };
    let (quoted, superuser): (String, bool) = (row.value(0)?, row.value(1)?);
    if superuser {
        return Err(Error::Migration(format!(
            "role {quoted} is a superuser: the runtime role should be an ordinary one"
        )));
    }
    Ok(quoted)
}

/// Whether this role may register the user-id columns; an error before migration 0005.
async fn registrable(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass('usersync.user_id_columns') IS NOT NULL,
                    pg_catalog.to_regclass('usersync.user_id_columns') IS NOT NULL
                    AND pg_catalog.has_table_privilege('usersync.user_id_columns', 'INSERT')
                    AND pg_catalog.has_table_privilege('usersync.user_id_columns', 'DELETE')",
            &[],
        )
        .await
        .context("looking for usersync.user_id_columns")?;
    let (installed, may_register): (bool, bool) = (row.value(0)?, row.value(1)?);
    if !installed {
        return Err(Error::Migration(
            "usersync.user_id_columns does not exist: run usersync migrate up first".into(),
        ));
    }
    Ok(may_register)
}

/// The role's way through row level security on `public.user_profiles` (on for the API roles),
/// when it has none and this role owns the table: the statement it ran.
async fn profile_policy(
    tx: &tokio_postgres::Transaction<'_>,
    role: &str,
) -> Result<Option<String>> {
    if runtime::sees_every_profile(tx, Some(role)).await? || !owns_profiles(tx).await? {
        return Ok(None);
    }
    // PostgreSQL quotes both names.
    let create: String = tx
        .query_one(
            "SELECT pg_catalog.format('CREATE POLICY %I ON public.user_profiles AS PERMISSIVE \
                 FOR ALL TO %I USING (true) WITH CHECK (true)', $1::pg_catalog.text || $2, $2)",
            &[&runtime::PROFILE_POLICY_PREFIX, &role],
        )
        .await
        .context("naming the runtime role's policy")?
        .value(0)?;
    tx.batch_execute(&create)
        .await
        .context(format!("granting: {create}"))?;
    Ok(Some(create))
}

/// The configured user-id columns become the registered ones: the integrity check's count
/// reads those and no other.
async fn register(tx: &tokio_postgres::Transaction<'_>, columns: &[UserIdColumn]) -> Result<()> {
    tx.execute("DELETE FROM usersync.user_id_columns", &[])
        .await
        .context("registering integrity.user_id_columns")?;
    for c in columns {
        tx.execute(
            "INSERT INTO usersync.user_id_columns (schema_name, table_name, column_name)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&c.schema, &c.table, &c.column],
        )
        .await
        .context("registering integrity.user_id_columns")?;
    }
    Ok(())
}

/// Whether the session's role owns `public.user_profiles`, as creating a policy on it needs.
async fn owns_profiles(client: &impl tokio_postgres::GenericClient) -> Result<bool> {
    client
        .query_one(
            "SELECT COALESCE((SELECT pg_catalog.pg_has_role(t.relowner, 'USAGE')
                              FROM pg_catalog.pg_class t
                              WHERE t.oid = pg_catalog.to_regclass('public.user_profiles')), false)",
            &[],
        )
        .await
        .context("reading the owner of public.user_profiles")?
        .value(0)
}

/// The GRANT statements for `lacking`, one per object, in the list's order.
fn statements_for(role: &str, lacking: &[Privilege]) -> Vec<String> {
    let mut objects: Vec<&Privilege> = Vec::new();
    for p in lacking {
        if !objects
            .iter()
            .any(|o| o.kind == p.kind && o.object == p.object)
        {
            objects.push(p);
        }
    }
    objects
        .into_iter()
        .map(|o| {
            let privileges: Vec<&str> = lacking
                .iter()
                .filter(|p| p.kind == o.kind && p.object == o.object)
                .map(|p| p.privilege)
                .collect();
            format!(
                "GRANT {} ON {} {} TO {role}",
                privileges.join(", "),
                o.kind.keyword(),
                o.object
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::db::verify::runtime::RUNTIME_PRIVILEGES;

    #[test]
    fn one_statement_per_object_and_nothing_in_schema_auth() {
        let statements = super::statements_for("\"Run Time\"", RUNTIME_PRIVILEGES);
        assert!(statements.contains(&"GRANT USAGE ON SCHEMA usersync TO \"Run Time\"".to_string()));
        assert!(statements.contains(
            &"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.user_profiles TO \"Run Time\""
                .to_string()
        ));
        assert!(
            statements.iter().all(|s| !s.contains("auth.")),
            "{statements:?}"
        );
        assert!(
            statements.iter().all(|s| !s.contains("SCHEMA auth")),
            "{statements:?}"
        );
        let objects = RUNTIME_PRIVILEGES
            .iter()
            .map(|p| (p.kind, p.object))
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(statements.len(), objects.len());
    }
}
