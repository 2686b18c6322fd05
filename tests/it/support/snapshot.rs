//! The schema of a database as text, to compare what migrations leave behind.

use tokio_postgres::Client;

/// The database's schema as sorted text lines, free of OIDs: schemas, relations, columns,
/// constraints, indexes, triggers, functions, policies, owners, grants and comments.
/// Two databases with equal snapshots have the same schema for everything usersync touches.
pub async fn schema_snapshot(client: &Client) -> Vec<String> {
    const SQL: &str = "
        WITH ns AS (
            SELECT oid, nspname FROM pg_namespace
            WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
              AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%'
        ), rel AS (
            SELECT c.* FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
        )
        SELECT format('schema %s owner %s acl %s comment %s', nspname,
                      pg_get_userbyid(n.nspowner), n.nspacl, obj_description(n.oid, 'pg_namespace'))
        FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM ns)
        UNION ALL
        SELECT format('relation %s kind %s owner %s rls %s/%s acl %s comment %s', oid::regclass,
                      relkind, pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity,
                      relacl, obj_description(oid, 'pg_class'))
        FROM rel
        UNION ALL
        SELECT format('column %s.%s %s notnull %s default %s generated %s', a.attrelid::regclass,
                      a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid), a.attgenerated)
        FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped AND rel.relkind IN ('r', 'v', 'p')
        UNION ALL
        SELECT format('constraint %s.%s %s valid %s', c.conrelid::regclass, c.conname,
                      pg_get_constraintdef(c.oid), c.convalidated)
        FROM pg_constraint c JOIN rel ON rel.oid = c.conrelid
        UNION ALL
        SELECT format('index %s', pg_get_indexdef(i.indexrelid))
        FROM pg_index i JOIN rel ON rel.oid = i.indrelid
        UNION ALL
        SELECT format('trigger %s enabled %s', pg_get_triggerdef(t.oid), t.tgenabled)
        FROM pg_trigger t JOIN rel ON rel.oid = t.tgrelid WHERE NOT t.tgisinternal
        UNION ALL
        SELECT format('function %s owner %s secdef %s config %s acl %s body %s',
                      p.oid::regprocedure, pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig,
                      p.proacl, md5(p.prosrc))
        FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
        UNION ALL
        SELECT format('policy %s.%s %s %s', polrelid::regclass, polname, polcmd,
                      pg_get_expr(polqual, polrelid))
        FROM pg_policy
        ORDER BY 1";
    client
        .query(SQL, &[])
        .await
        .expect("reading the schema snapshot")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Lines in one snapshot and not the other, for assertion messages.
pub fn snapshot_diff(before: &[String], after: &[String]) -> String {
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    format!("only before: {gone:#?}\nonly after: {new:#?}")
}
