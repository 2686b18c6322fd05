//! Who may do what: the API roles on `public.user_profiles`, and the runtime role's grants.
//!
//! One list, [`RUNTIME_PRIVILEGES`], says what `usersync run`, `sync`, `check` and the API
//! need; `usersync migrate grant ROLE` grants exactly it and `migrate verify` checks that the
//! role it runs as holds it.

use crate::db::RowExt;
use tokio_postgres::Client;

use super::{Fix, Level, Report};
use crate::error::{DbContext, Result};

/// One privilege the runtime role needs.
#[derive(Clone, Copy, Debug)]
pub struct Privilege {
    pub kind: Kind,
    /// Schema, `schema.table` or the function's signature; constants only.
    pub object: &'static str,
    /// For column privileges.
    pub column: Option<&'static str>,
    pub privilege: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Schema,
    Table,
    Column,
    Function,
}

const fn p(kind: Kind, object: &'static str, privilege: &'static str) -> Privilege {
    Privilege {
        kind,
        object,
        column: None,
        privilege,
    }
}

const fn col(column: &'static str) -> Privilege {
    Privilege {
        kind: Kind::Column,
        object: "auth.users",
        column: Some(column),
        privilege: "SELECT",
    }
}

/// What the runtime role needs, and nothing more: a few columns of auth.users (not the
/// password hashes or tokens; `ctid` because batches fetch rows by address), profiles to read,
/// create and keep through the lifecycle, usersync's queue, history and policies, and the
/// profile builder.
pub const RUNTIME_PRIVILEGES: &[Privilege] = &[
    p(Kind::Schema, "auth", "USAGE"),
    p(Kind::Schema, "public", "USAGE"),
    p(Kind::Schema, "usersync", "USAGE"),
    col("id"),
    col("email"),
    col("phone"),
    col("raw_user_meta_data"),
    col("created_at"),
    col("last_sign_in_at"),
    col("confirmed_at"),
    col("is_anonymous"),
    col("banned_until"),
    col("deleted_at"),
    col("ctid"),
    p(Kind::Table, "public.user_profiles", "SELECT"),
    p(Kind::Table, "public.user_profiles", "INSERT"),
    // The lifecycle: e-mails filled and followed, soft-deleted users scrubbed or deleted.
    p(Kind::Table, "public.user_profiles", "UPDATE"),
    p(Kind::Table, "public.user_profiles", "DELETE"),
    p(Kind::Table, "usersync.policy", "SELECT"),
    p(Kind::Table, "usersync.repair_queue", "SELECT"),
    p(Kind::Table, "usersync.repair_queue", "INSERT"),
    p(Kind::Table, "usersync.repair_queue", "UPDATE"),
    p(Kind::Table, "usersync.repair_queue", "DELETE"),
    p(Kind::Table, "usersync.schema_migrations", "SELECT"),
    // The cheap path: the journal emptied each cycle, the last full scan's baseline.
    p(Kind::Table, "usersync.journal", "SELECT"),
    p(Kind::Table, "usersync.journal", "DELETE"),
    p(Kind::Table, "usersync.scan_state", "SELECT"),
    p(Kind::Table, "usersync.scan_state", "INSERT"),
    p(Kind::Table, "usersync.scan_state", "UPDATE"),
    p(
        Kind::Function,
        "usersync.build_profile(uuid, text, jsonb, timestamp with time zone)",
        "EXECUTE",
    ),
    p(Kind::Function, "usersync.meta_text(jsonb, text)", "EXECUTE"),
    p(Kind::Function, "usersync.analyze_profiles()", "EXECUTE"),
];

impl Privilege {
    /// How it reads in a message: `SELECT (email) ON auth.users`.
    pub fn describe(&self) -> String {
        let on = match self.kind {
            Kind::Schema => "SCHEMA ",
            Kind::Function => "FUNCTION ",
            Kind::Table | Kind::Column => "",
        };
        match self.column {
            Some(c) => format!("{} ({c}) ON {on}{}", self.privilege, self.object),
            None => format!("{} ON {on}{}", self.privilege, self.object),
        }
    }
}

/// Whether the session's role holds each privilege; one that names an object this database
/// lacks counts as held (the object's own check reports it).
pub async fn missing_privileges(client: &Client) -> Result<Vec<Privilege>> {
    let kinds: Vec<&str> = RUNTIME_PRIVILEGES
        .iter()
        .map(|p| match p.kind {
            Kind::Schema => "schema",
            Kind::Table => "table",
            Kind::Column => "column",
            Kind::Function => "function",
        })
        .collect();
    let objects: Vec<&str> = RUNTIME_PRIVILEGES.iter().map(|p| p.object).collect();
    let columns: Vec<Option<&str>> = RUNTIME_PRIVILEGES.iter().map(|p| p.column).collect();
    let privileges: Vec<&str> = RUNTIME_PRIVILEGES.iter().map(|p| p.privilege).collect();
    let held: Vec<bool> = client
        .query(
            "SELECT CASE
                 WHEN n.kind = 'schema' THEN
                     CASE WHEN pg_catalog.to_regnamespace(n.object) IS NULL THEN true
                          ELSE pg_catalog.has_schema_privilege(n.object, n.privilege) END
                 WHEN n.kind = 'table' THEN
                     CASE WHEN pg_catalog.to_regclass(n.object) IS NULL THEN true
                          ELSE pg_catalog.has_table_privilege(n.object, n.privilege) END
                 WHEN n.kind = 'column' THEN
                     CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                       WHERE a.attrelid = pg_catalog.to_regclass(n.object)
                                         AND a.attname = n.col AND NOT a.attisdropped)
                          THEN pg_catalog.has_column_privilege(n.object, n.col, n.privilege)
                          ELSE true END
                 ELSE
                     CASE WHEN pg_catalog.to_regprocedure(n.object) IS NULL THEN true
                          ELSE pg_catalog.has_function_privilege(n.object, n.privilege) END
                 END
             FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),
                             pg_catalog.unnest($2::pg_catalog.text[]),
                             pg_catalog.unnest($3::pg_catalog.text[]),
                             pg_catalog.unnest($4::pg_catalog.text[]))
                  WITH ORDINALITY AS n(kind, object, col, privilege, i)
             ORDER BY n.i",
            &[&kinds, &objects, &columns, &privileges],
        )
        .await
        .context("verifying the privileges of usersync's role")?
        .iter()
        .map(|r| r.value(0))
        .collect::<Result<_>>()?;
    Ok(RUNTIME_PRIVILEGES
        .iter()
        .zip(held)
        .filter(|(_, held)| !held)
        .map(|(p, _)| *p)
        .collect())
}

/// The role usersync connects as holds [`RUNTIME_PRIVILEGES`] and can see auth.users rows
/// under their row level security.
pub(super) async fn runtime_grants(client: &Client, report: &mut Report) -> Result<()> {
    let row = client
        .query_one(
            "SELECT pg_catalog.quote_ident(current_user::pg_catalog.text), r.rolsuper OR r.rolbypassrls
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .context("reading usersync's role")?;
    let (role, bypass): (String, bool) = (row.value(0)?, row.value(1)?);
    let missing = missing_privileges(client).await?;
    if !missing.is_empty() {
        report.push(
            "runtime_grants",
            "the role usersync runs as holds what it needs",
            format!(
                "{role} lacks {}",
                missing
                    .iter()
                    .map(Privilege::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Fix::command(format!(
                "usersync migrate grant {role} (as the migration role)"
            )),
        );
    }
    if !bypass {
        report.push(
            "runtime_grants.bypassrls",
            "BYPASSRLS: auth.users has row level security and no policy for usersync",
            format!("{role} sees no auth.users rows"),
            format!("ALTER ROLE {role} BYPASSRLS;"),
        );
    }
    Ok(())
}

/// The API roles (`anon`, `authenticated`) and `public.user_profiles`: no TRUNCATE, INSERT or
/// DELETE, no UPDATE of `id`, `email`, `role` or `is_active`, row level security on; and, as a
/// warning, a policy that lets them read rows other than their own.
// Long on purpose: one statement for the grants and one for the policies, and a finding per kind
// of access, each with its fix.
pub(super) async fn api_roles(client: &Client, report: &mut Report) -> Result<()> {
    let rows = client
        .query(
            "SELECT r.rolname::pg_catalog.text,
                    pg_catalog.has_table_privilege(r.oid, t.oid, 'TRUNCATE'),
                    pg_catalog.has_any_column_privilege(r.oid, t.oid, 'INSERT'),
                    pg_catalog.has_table_privilege(r.oid, t.oid, 'DELETE'),
                    ARRAY(SELECT c FROM pg_catalog.unnest(ARRAY['id', 'email', 'role', 'is_active']) AS c
                          WHERE CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                                  WHERE a.attrelid = t.oid AND a.attname = c
                                                    AND NOT a.attisdropped)
                                     THEN pg_catalog.has_column_privilege(r.oid, t.oid, c, 'UPDATE')
                                     ELSE false END),
                    pg_catalog.has_any_column_privilege(r.oid, t.oid, 'SELECT'),
                    t.relrowsecurity
             FROM pg_catalog.pg_roles r,
                  pg_catalog.pg_class t
             WHERE r.rolname IN ('anon', 'authenticated')
               AND t.oid = pg_catalog.to_regclass('public.user_profiles')
             ORDER BY 1",
            &[],
        )
        .await
        .context("verifying what the API roles may do on public.user_profiles")?;
    for row in &rows {
        let role: String = row.value(0)?;
        let (truncate, insert, delete): (bool, bool, bool) =
            (row.value(1)?, row.value(2)?, row.value(3)?);
        let update: Vec<String> = row.value(4)?;
        let (select, rls): (bool, bool) = (row.value(5)?, row.value(6)?);
        let mut verbs: Vec<&str> = Vec::new();
        for (held, verb) in [
            (truncate, "TRUNCATE"),
            (insert, "INSERT"),
            (delete, "DELETE"),
        ] {
            if held {
                verbs.push(verb);
            }
        }
        if !verbs.is_empty() {
            report.push(
                "api_roles.write",
                "anon and authenticated never TRUNCATE, INSERT or DELETE profiles",
                format!("{role} may {}", verbs.join(", ")),
                format!(
                    "REVOKE {} ON TABLE public.user_profiles FROM PUBLIC, {role};",
                    verbs.join(", ")
                ),
            );
        }
        if !update.is_empty() {
            let regrant = if role == "authenticated" {
                " GRANT UPDATE (full_name, avatar_url) ON TABLE public.user_profiles TO authenticated;"
            } else {
                ""
            };
            report.push(
                "api_roles.update",
                "anon and authenticated never write id, email, role or is_active",
                format!("{role} may update {}", update.join(", ")),
                format!(
                    "REVOKE UPDATE ON TABLE public.user_profiles FROM PUBLIC, {role};{regrant}"
                ),
            );
        }
        if select && !rls {
            report.push(
                "api_roles.rls",
                "row level security on public.user_profiles",
                format!("off, and {role} may read the table: every profile is readable"),
                "ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;",
            );
        }
    }
    // Permissive read policies that apply to an API role holding SELECT, other than own-row.
    let policies = client
        .query(
            "SELECT pg_catalog.quote_ident(pol.polname),
                    COALESCE(pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), 'true'),
                    ARRAY(SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_roles r
                          WHERE r.rolname IN ('anon', 'authenticated')
                            AND (0::pg_catalog.oid = ANY (pol.polroles) OR r.oid = ANY (pol.polroles))
                            AND pg_catalog.has_any_column_privilege(r.oid, pol.polrelid, 'SELECT')
                          ORDER BY 1)
             FROM pg_catalog.pg_policy pol
             WHERE pol.polrelid = pg_catalog.to_regclass('public.user_profiles')
               AND pol.polcmd IN ('r', '*') AND pol.polpermissive
             ORDER BY 1",
            &[],
        )
        .await
        .context("reading the policies of public.user_profiles")?;
    for row in &policies {
        let (name, qual, roles): (String, String, Vec<String>) =
            (row.value(0)?, row.value(1)?, row.value(2)?);
        if roles.is_empty() || own_row(&qual) {
            continue;
        }
        report.push_at(
            Level::Warning,
            "api_roles.read",
            "anon and authenticated read only their own profile",
            format!(
                "policy {name} lets {} read every row where {qual}",
                roles.join(", ")
            ),
            format!("DROP POLICY {name} ON public.user_profiles;"),
        );
    }
    Ok(())
}

/// Whether a policy's condition is "the row's id is the caller's", in the forms PostgreSQL
/// prints `auth.uid() = id` and `(SELECT auth.uid()) = id` as.
fn own_row(qual: &str) -> bool {
    let bare: String = qual
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')')
        .collect();
    matches!(
        bare.as_str(),
        "auth.uid=id" | "id=auth.uid" | "SELECTauth.uidASuid=id" | "id=SELECTauth.uidASuid"
    )
}

#[cfg(test)]
mod tests {
    use super::own_row;

    #[test]
    fn own_row_policies_are_told_from_wider_ones() {
        assert!(own_row("(( SELECT auth.uid() AS uid) = id)"));
        assert!(own_row("(auth.uid() = id)"));
        assert!(own_row("(id = auth.uid())"));
        assert!(!own_row("true"));
        assert!(!own_row("((auth.uid() = id) OR is_active)"));
        assert!(!own_row("(auth.uid() IS NOT NULL)"));
    }
}
