//! What the runtime role may do.
//!
//! One list, [`RUNTIME_PRIVILEGES`], says what `usersync run`, `sync`, `check` and the API
//! need; `usersync migrate grant ROLE` grants exactly it and reads it back ([`gaps`]), and
//! `migrate verify` checks that the role it runs as (or `--runtime-role`) holds it. None of it
//! is in schema `auth`: hosted Supabase's `postgres` holds USAGE on auth without grant option,
//! so the runtime role reads auth.users through `usersync.auth_users` (migration 0005).

use crate::db::RowExt;
use serde::Serialize;
use tokio_postgres::Client;

use super::{Fix, Report};
use crate::error::{DbContext, Result};

/// One privilege the runtime role needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privilege {
    pub kind: Kind,
    /// Schema, `schema.table` or the function's signature; constants only.
    pub object: &'static str,
    pub privilege: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Schema,
    Table,
    Function,
}

impl Kind {
    /// The word GRANT puts before the object.
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::Schema => "SCHEMA",
            Kind::Table => "TABLE",
            Kind::Function => "FUNCTION",
        }
    }
}

const fn p(kind: Kind, object: &'static str, privilege: &'static str) -> Privilege {
    Privilege {
        kind,
        object,
        privilege,
    }
}

/// What the runtime role needs, and nothing more: the columns of auth.users usersync reads
/// (through `usersync.auth_users`: not the password hashes or tokens), profiles to read, create
/// and keep through the lifecycle, usersync's queue, history and policies, the profile builder,
/// and the count of the registered user-id columns.
pub const RUNTIME_PRIVILEGES: &[Privilege] = &[
    p(Kind::Schema, "public", "USAGE"),
    p(Kind::Schema, "usersync", "USAGE"),
    p(Kind::Table, "usersync.auth_users", "SELECT"),
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
    p(Kind::Table, "usersync.user_id_columns", "SELECT"),
    // Each check's value over time: a row when it changes, old rows pruned.
    p(Kind::Table, "usersync.findings_history", "SELECT"),
    p(Kind::Table, "usersync.findings_history", "INSERT"),
    p(Kind::Table, "usersync.findings_history", "DELETE"),
    p(
        Kind::Function,
        "usersync.build_profile(uuid, text, jsonb, timestamp with time zone)",
        "EXECUTE",
    ),
    p(Kind::Function, "usersync.meta_text(jsonb, text)", "EXECUTE"),
    p(Kind::Function, "usersync.meta_name(jsonb)", "EXECUTE"),
    p(Kind::Function, "usersync.meta_picture(jsonb)", "EXECUTE"),
    p(Kind::Function, "usersync.analyze_profiles()", "EXECUTE"),
    p(
        Kind::Function,
        "usersync.user_id_column_orphans(integer)",
        "EXECUTE",
    ),
];

impl Privilege {
    /// How it reads in a message and in GRANT: `SELECT ON TABLE usersync.auth_users`.
    pub fn describe(&self) -> String {
        format!(
            "{} ON {} {}",
            self.privilege,
            self.kind.keyword(),
            self.object
        )
    }
}

/// Something the runtime role lacks to do its job, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The privilege (`SELECT ON TABLE usersync.auth_users`) or the attribute (`LOGIN`).
    pub what: String,
    pub why: String,
}

// For each privilege of the list ($1 kinds, $2 objects, $3 privileges), with $4 the role (NULL:
// the session's): whether the object exists, whether the role holds it, whether the session's
// role holds it, and holds it with grant option. has_*_privilege errors on a missing object,
// so each is asked only of an object that exists.
const HELD: &str = "
    SELECT x.present,
           x.present AND CASE n.kind
               WHEN 'schema' THEN pg_catalog.has_schema_privilege(COALESCE($4, current_user), n.object, n.privilege)
               WHEN 'table' THEN pg_catalog.has_table_privilege(COALESCE($4, current_user), n.object, n.privilege)
               ELSE pg_catalog.has_function_privilege(COALESCE($4, current_user), n.object, n.privilege) END,
           x.present AND CASE n.kind
               WHEN 'schema' THEN pg_catalog.has_schema_privilege(n.object, n.privilege)
               WHEN 'table' THEN pg_catalog.has_table_privilege(n.object, n.privilege)
               ELSE pg_catalog.has_function_privilege(n.object, n.privilege) END,
           x.present AND CASE n.kind
               WHEN 'schema' THEN pg_catalog.has_schema_privilege(n.object, n.privilege || ' WITH GRANT OPTION')
               WHEN 'table' THEN pg_catalog.has_table_privilege(n.object, n.privilege || ' WITH GRANT OPTION')
               ELSE pg_catalog.has_function_privilege(n.object, n.privilege || ' WITH GRANT OPTION') END
    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),
                    pg_catalog.unnest($2::pg_catalog.text[]),
                    pg_catalog.unnest($3::pg_catalog.text[]))
         WITH ORDINALITY AS n(kind, object, privilege, i)
    CROSS JOIN LATERAL (SELECT CASE n.kind
               WHEN 'schema' THEN pg_catalog.to_regnamespace(n.object) IS NOT NULL
               WHEN 'table' THEN pg_catalog.to_regclass(n.object) IS NOT NULL
               ELSE pg_catalog.to_regprocedure(n.object) IS NOT NULL END AS present) AS x
    ORDER BY n.i";

/// Where one privilege stands.
#[derive(Clone, Copy, Debug)]
pub struct Standing {
    pub privilege: Privilege,
    /// The object exists (else its migration is not applied).
    pub present: bool,
    /// The role asked about holds it (directly, through a role, or through PUBLIC).
    pub held: bool,
    /// The session's own role holds it, and may grant it.
    pub mine: bool,
    pub grantable: bool,
}

/// Where each of [`RUNTIME_PRIVILEGES`] stands for `role` (None: the session's role).
pub async fn standings(client: &Client, role: Option<&str>) -> Result<Vec<Standing>> {
    let kinds: Vec<&str> = RUNTIME_PRIVILEGES
        .iter()
        .map(|p| match p.kind {
            Kind::Schema => "schema",
            Kind::Table => "table",
            Kind::Function => "function",
        })
        .collect();
    let objects: Vec<&str> = RUNTIME_PRIVILEGES.iter().map(|p| p.object).collect();
    let privileges: Vec<&str> = RUNTIME_PRIVILEGES.iter().map(|p| p.privilege).collect();
    let rows = client
        .query(HELD, &[&kinds, &objects, &privileges, &role])
        .await
        .context("reading the runtime role's privileges")?;
    RUNTIME_PRIVILEGES
        .iter()
        .zip(rows)
        .map(|(p, r)| {
            Ok(Standing {
                privilege: *p,
                present: r.value(0)?,
                held: r.value(1)?,
                mine: r.value(2)?,
                grantable: r.value(3)?,
            })
        })
        .collect()
}

/// Whether the gaps so far leave the role in existence (checks of its policies need it).
fn row_exists(gaps: &[Gap]) -> bool {
    !gaps.iter().any(|g| g.what.starts_with("role "))
}

/// What keeps `role` from doing its job, each with its reason: a privilege it lacks (and
/// whether the session's role could grant it), a role that cannot log in or is a superuser,
/// a view of auth.users that shows no rows. Empty: it can.
pub async fn gaps(client: &Client, role: &str) -> Result<Vec<Gap>> {
    let mut gaps: Vec<Gap> = standings(client, Some(role))
        .await?
        .into_iter()
        .filter(|s| !s.held)
        .map(|s| Gap {
            what: s.privilege.describe(),
            why: if !s.present {
                "the object does not exist: run usersync migrate up first".into()
            } else if !s.mine {
                "the connecting role does not hold it".into()
            } else if !s.grantable {
                "the connecting role holds it without grant option".into()
            } else {
                "not granted: run usersync migrate grant as the migration role".into()
            },
        })
        .collect();
    let row = client
        .query_opt(
            "SELECT r.rolcanlogin, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await
        .context("reading the runtime role")?;
    match row {
        None => gaps.push(Gap {
            what: format!("role {role}"),
            why: "it does not exist".into(),
        }),
        Some(row) => {
            let (login, superuser): (bool, bool) = (row.value(0)?, row.value(1)?);
            if !login {
                gaps.push(Gap {
                    what: "LOGIN".into(),
                    why: format!("{role} cannot log in: ALTER ROLE {role} LOGIN;"),
                });
            }
            if superuser {
                gaps.push(Gap {
                    what: "NOSUPERUSER".into(),
                    why: format!(
                        "{role} is a superuser; the runtime role should be an ordinary one"
                    ),
                });
            }
        }
    }
    if row_exists(&gaps) && !sees_every_profile(client, Some(role)).await? {
        gaps.push(Gap {
            what: PROFILE_POLICY.into(),
            why: "it has no BYPASSRLS, so row level security hides every profile from it; \
                  usersync migrate grant creates the policy, as the owner of \
                  public.user_profiles (the migration role)"
                .into(),
        });
    }
    if let Some(why) = auth_view_blind(client).await? {
        gaps.push(Gap {
            what: "rows of usersync.auth_users".into(),
            why,
        });
    }
    Ok(gaps)
}

/// What the runtime role needs besides privileges: `public.user_profiles` has row level
/// security on (for the API roles), so a role without BYPASSRLS sees and writes profiles only
/// through a policy; `migrate grant` creates one for it, named [`PROFILE_POLICY_PREFIX`] and
/// the role.
pub const PROFILE_POLICY: &str = "a row level security policy on public.user_profiles for it";
pub const PROFILE_POLICY_PREFIX: &str = "usersync_runtime_";

/// Whether `role` (None: the session's) sees every profile and may write any: a superuser, a
/// role with BYPASSRLS, the table's owner, or one a permissive policy for every command lets
/// through with `true`.
pub async fn sees_every_profile(
    client: &impl tokio_postgres::GenericClient,
    role: Option<&str>,
) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT r.rolsuper OR r.rolbypassrls OR pg_catalog.pg_has_role(r.oid, t.relowner, 'USAGE')
                    OR NOT t.relrowsecurity
                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                               WHERE p.polrelid = t.oid AND p.polpermissive AND p.polcmd = '*'
                                 AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) = 'true'
                                 AND pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = 'true'
                                 AND (0::pg_catalog.oid = ANY (p.polroles)
                                      OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) AS g
                                                 WHERE pg_catalog.pg_has_role(r.oid, g, 'USAGE'))))
             FROM pg_catalog.pg_roles r, pg_catalog.pg_class t
             WHERE r.rolname = COALESCE($1, current_user)
               AND t.oid = pg_catalog.to_regclass('public.user_profiles')",
            &[&role],
        )
        .await
        .context("reading the policies of public.user_profiles")?;
    Ok(match row {
        Some(row) => row.value(0)?,
        None => true,
    })
}

/// Why `usersync.auth_users` shows no rows to anyone, if it does not: its owner (the role that
/// ran migration 0005) is checked against auth.users' row level security, which has no policy,
/// so the owner needs BYPASSRLS (hosted Supabase's `postgres` has it), superuser, or
/// ownership of auth.users; and SELECT on auth.users.
pub async fn auth_view_blind(client: &Client) -> Result<Option<String>> {
    let row = client
        .query_opt(
            concat!(
                "SELECT pg_catalog.quote_ident(r.rolname::pg_catalog.text),
                        r.rolsuper OR r.rolbypassrls OR r.oid = t.relowner OR NOT t.relrowsecurity,
                        pg_catalog.has_table_privilege(r.oid, t.oid, 'SELECT')
                 FROM pg_catalog.pg_class v
                 JOIN pg_catalog.pg_roles r ON r.oid = v.relowner
                 JOIN pg_catalog.pg_class t ON t.oid = ",
                crate::auth_users_oid!(),
                "
                 WHERE v.oid = pg_catalog.to_regclass('usersync.auth_users')"
            ),
            &[],
        )
        .await
        .context("reading the owner of usersync.auth_users")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (owner, bypass, select): (String, bool, bool) =
        (row.value(0)?, row.value(1)?, row.value(2)?);
    Ok(if !bypass {
        Some(format!(
            "its owner {owner} lacks BYPASSRLS, and auth.users has row level security with no \
             policy: run usersync migrate up as a role with BYPASSRLS (hosted Supabase's postgres)"
        ))
    } else if !select {
        Some(format!("its owner {owner} may not SELECT from auth.users"))
    } else {
        None
    })
}

/// The role usersync connects as holds [`RUNTIME_PRIVILEGES`], and `usersync.auth_users`
/// shows it auth.users' rows.
pub(super) async fn runtime_grants(client: &Client, report: &mut Report) -> Result<()> {
    let role: String = client
        .query_one(
            "SELECT pg_catalog.quote_ident(current_user::pg_catalog.text)",
            &[],
        )
        .await
        .context("reading usersync's role")?
        .value(0)?;
    let mut missing: Vec<String> = standings(client, None)
        .await?
        .iter()
        .filter(|s| s.present && !s.held)
        .map(|s| s.privilege.describe())
        .collect();
    if !sees_every_profile(client, None).await? {
        missing.push(PROFILE_POLICY.into());
    }
    if !missing.is_empty() {
        report.push(
            "runtime_grants",
            "the role usersync runs as holds what it needs",
            format!("{role} lacks {}", missing.join(", ")),
            Fix::command(format!(
                "usersync migrate grant {role} (as the migration role)"
            )),
        );
    }
    if let Some(why) = auth_view_blind(client).await? {
        report.push(
            "auth_view",
            "usersync.auth_users shows the rows of auth.users",
            why,
            Fix::command(
                "usersync migrate down --to 4, then usersync migrate up, as a role with BYPASSRLS",
            ),
        );
    }
    Ok(())
}

/// `migrate verify --runtime-role ROLE`: that role can do its job ([`gaps`]).
pub async fn runtime_role(client: &Client, role: &str, report: &mut Report) -> Result<()> {
    report.checks += 1;
    let gaps = gaps(client, role).await?;
    if gaps.is_empty() {
        return Ok(());
    }
    report.push(
        "runtime_role",
        &format!("{role} can run usersync run, sync, check and the users API"),
        gaps.iter()
            .map(|g| format!("{}: {}", g.what, g.why))
            .collect::<Vec<_>>()
            .join("; "),
        Fix::command(format!(
            "usersync migrate grant {role} (as the migration role)"
        )),
    );
    report.ok = report.passes();
    Ok(())
}
