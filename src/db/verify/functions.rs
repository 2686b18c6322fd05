//! The functions, their grants, the trigger, and cascade deletion, read back from the catalog.

use tokio_postgres::Client;

use super::*;
use crate::db::RowExt;
use crate::error::{DbContext, Result};

pub(super) async fn check_functions(client: &Client, report: &mut Report) -> Result<()> {
    let builder: bool = client
        .query_one(
            // By name and argument types: `to_regprocedure('…(auth.users)')` needs USAGE on
            // schema auth, which the runtime role does not have.
            "SELECT pg_catalog.count(*) = 2 FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'usersync' AND p.proname = 'build_profile'
               AND pg_catalog.oidvectortypes(p.proargtypes)
                   IN ('auth.users', 'uuid, text, jsonb, timestamp with time zone')",
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

pub(super) async fn check_execute_grants(client: &Client, report: &mut Report) -> Result<()> {
    // Who may EXECUTE our functions, from the ACL; PUBLIC is grantee 0.
    let rows = client
        .query(
            "SELECT pg_catalog.format('usersync.%s(%s)', f.name, f.args),
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END
             FROM (VALUES ('on_auth_user_created', ''), ('build_profile', 'auth.users'))
                  AS f(name, args)
             JOIN pg_catalog.pg_namespace n ON n.nspname = 'usersync'
             JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid AND p.proname = f.name
                  AND pg_catalog.oidvectortypes(p.proargtypes) = f.args
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

/// How a trigger is made to fire as its migration defined it, by whoever holds the TRIGGER
/// privilege on its table: `CREATE OR REPLACE TRIGGER` replaces a changed definition and enables
/// a disabled trigger (on hosted Supabase `postgres` may not `ALTER TABLE auth.users ENABLE
/// TRIGGER`, which needs the table's owner).
fn recreate(definition: &str) -> String {
    format!(
        "{};",
        definition.replacen("CREATE TRIGGER", "CREATE OR REPLACE TRIGGER", 1)
    )
}

pub(super) async fn check_trigger(client: &Client, report: &mut Report) -> Result<()> {
    let row = client
        .query_opt(
            concat!(
                "SELECT pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled::text
                 FROM pg_catalog.pg_trigger t
                 WHERE t.tgrelid = ",
                crate::auth_users_oid!(),
                " AND t.tgname = $1"
            ),
            &[&TRIGGER],
        )
        .await
        .context("verifying the trigger on auth.users")?;
    let Some(row) = row else {
        report.push(
            "trigger",
            "AFTER INSERT trigger on auth.users, enabled",
            "missing",
            format!("{TRIGGER_DEF};"),
        );
        return Ok(());
    };
    let def: String = row.value(0)?;
    let enabled: String = row.value(1)?;
    if def != TRIGGER_DEF {
        report.push("trigger", TRIGGER_DEF, def, recreate(TRIGGER_DEF));
    } else if enabled == "D" || enabled == "R" {
        // 'O' fires in origin and local mode, 'A' always; 'D' never; 'R' only on replicas.
        let found = if enabled == "D" {
            "disabled"
        } else {
            "fires only in replica mode"
        };
        report.push("trigger", "enabled", found, recreate(TRIGGER_DEF));
    }
    Ok(())
}

/// Each companion trigger: the migration that adds it, its table, its name, its check.
const COMPANIONS: [(i32, &str, &str, &str, &str); 4] = [
    (
        3,
        "auth",
        "users",
        "usersync_on_auth_user_updated",
        "trigger.updated",
    ),
    (
        4,
        "auth",
        "users",
        "usersync_on_auth_users_deleted",
        "trigger.users_deleted",
    ),
    (
        4,
        "public",
        "user_profiles",
        "usersync_on_profiles_deleted",
        "trigger.profiles_deleted",
    ),
    (
        7,
        "auth",
        "users",
        "usersync_on_auth_user_metadata",
        "trigger.metadata",
    ),
];

/// The triggers later migrations add beside the sign-up trigger: the lifecycle's (0003), the
/// two that count deletions for the cheap path (0004) and the metadata's (0007). Present and firing, once their
/// migration is applied; while one is off, what it handles waits for a full scan.
pub(super) async fn check_companion_triggers(client: &Client, report: &mut Report) -> Result<()> {
    let recorded: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('usersync.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .context("looking for usersync.schema_migrations")?
        .value(0)?;
    if !recorded {
        return Ok(());
    }
    let applied: i32 = client
        .query_one(
            "SELECT COALESCE(max(m.version), 0)::pg_catalog.int4
             FROM usersync.schema_migrations m",
            &[],
        )
        .await
        .context("reading usersync.schema_migrations")?
        .value(0)?;
    for (version, schema, table, name, check) in COMPANIONS {
        if applied < version {
            continue;
        }
        let enabled: Option<String> = client
            .query_opt(
                concat!(
                    "SELECT t.tgenabled::pg_catalog.text FROM pg_catalog.pg_trigger t
                     WHERE t.tgrelid = ",
                    crate::relation_oid!("$1", "$2"),
                    " AND t.tgname = $3"
                ),
                &[&schema, &table, &name],
            )
            .await
            .context("verifying usersync's triggers")?
            .map(|r| r.value(0))
            .transpose()?;
        let Some(definition) = migrate::trigger_definition(name, applied) else {
            continue;
        };
        match enabled.as_deref() {
            None => report.push(
                check,
                &format!("trigger {name} on {schema}.{table}, enabled"),
                "missing",
                format!("{definition};"),
            ),
            Some("D") | Some("R") => {
                report.push(check, "enabled", "disabled", recreate(&definition))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Deleting a user takes its profile and its repair queue row along, read from the catalog:
/// both foreign keys present, validated and ON DELETE CASCADE, and the triggers PostgreSQL
/// enforces them with not disabled (`ALTER TABLE … DISABLE TRIGGER ALL`, which restores use).
/// The profile's key is the `foreign_key` check; this one is the queue's and the triggers.
pub(super) async fn check_cascade(client: &Client, report: &mut Report) -> Result<()> {
    let queue_key: Option<(bool, String, String)> = client
        .query_opt(
            concat!(
                "SELECT c.convalidated, c.confdeltype::pg_catalog.text, pg_catalog.quote_ident(c.conname)
                 FROM pg_catalog.pg_constraint c
                 WHERE c.conrelid = pg_catalog.to_regclass('usersync.repair_queue')
                   AND c.contype = 'f' AND c.confrelid = ",
                crate::auth_users_oid!(),
                "
                 ORDER BY c.convalidated DESC, c.confdeltype = 'c' DESC
                 LIMIT 1"
            ),
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
            concat!(
                "SELECT DISTINCT t.tgrelid::pg_catalog.regclass::pg_catalog.text
             FROM pg_catalog.pg_constraint c
             JOIN pg_catalog.pg_trigger t ON t.tgconstraint = c.oid
             WHERE c.contype = 'f' AND c.confrelid = ",
                crate::auth_users_oid!(),
                "
               AND c.conrelid IN (pg_catalog.to_regclass('public.user_profiles'),
                                  pg_catalog.to_regclass('usersync.repair_queue'))
               AND t.tgenabled = 'D'
             ORDER BY 1"
            ),
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

pub(super) async fn pg_exists(client: &Client, relation: &str) -> Result<bool> {
    client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&relation],
        )
        .await
        .context("looking up a relation")?
        .value(0)
}
