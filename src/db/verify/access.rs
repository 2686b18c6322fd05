//! What the API roles may do: `anon` and `authenticated` on `public.user_profiles`.

use tokio_postgres::Client;

use super::{Level, Report};
use crate::db::RowExt;
use crate::error::{DbContext, Result};

/// The API roles (`anon`, `authenticated`) and `public.user_profiles`: no TRUNCATE, INSERT or
/// DELETE, no UPDATE of `id`, `email`, `role` or `is_active`, row level security on; and, as a
/// warning, a policy that lets them read rows other than their own.
pub(super) async fn api_roles(client: &Client, report: &mut Report) -> Result<()> {
    grants(client, report).await?;
    policies(client, report).await
}

/// What the API roles' grants let them do, a finding per kind of access with its fix.
async fn grants(client: &Client, report: &mut Report) -> Result<()> {
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
    Ok(())
}

/// Permissive read policies that apply to an API role holding SELECT, other than own-row.
async fn policies(client: &Client, report: &mut Report) -> Result<()> {
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
