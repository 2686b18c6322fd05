//! The runtime role reads auth.users through `usersync.auth_users` (migration 0005); the
//! planner must see through the view: the backfill's batch is still a TID range scan of a
//! few pages, the users listing still walks the primary key, exactly the plans of the same
//! statements written against auth.users.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::daemon::users_without_trigger;
use crate::support::TestDb;

/// The plan's nodes, top down, as `Node Type on relation using index`.
async fn plan(
    client: &Client,
    settings: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Vec<String> {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(settings).await.unwrap();
    let row = client
        .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), params)
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    let json: serde_json::Value = row.get(0);
    let mut nodes = Vec::new();
    fn walk(node: &serde_json::Value, nodes: &mut Vec<String>) {
        let field = |k: &str| {
            node[k]
                .as_str()
                .map(|v| format!(" {v}"))
                .unwrap_or_default()
        };
        nodes.push(format!(
            "{}{}{}",
            node["Node Type"].as_str().unwrap_or("?"),
            field("Relation Name"),
            field("Index Name")
        ));
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, nodes);
        }
    }
    walk(&json[0]["Plan"], &mut nodes);
    nodes
}

/// The statement as it would read against auth.users itself.
fn direct(sql: &str) -> String {
    sql.replace("usersync.auth_users", "auth.users")
        .replace("row_address", "ctid")
}

#[tokio::test]
async fn the_view_keeps_the_backfills_tid_range_scans_and_the_listings_primary_key() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    users_without_trigger(&admin, 20_000).await;
    admin
        .batch_execute("ANALYZE auth.users; ANALYZE public.user_profiles;")
        .await
        .unwrap();
    let runtime = db.runtime().await;
    runtime
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .await
        .unwrap();

    let (from, to) = ("(0,0)", "(40,0)");
    let batch = usersync::sync::PAGE_BATCH;
    let tids = format!("SELECT '{from}'::tid, '{to}'::tid");
    let bounds = admin.query_one(&tids, &[]).await.unwrap();
    let (lower, upper): (usersync::sync::plan::Tid, usersync::sync::plan::Tid) =
        (bounds.get(0), bounds.get(1));
    let params: [&(dyn ToSql + Sync); 3] = [&lower, &upper, &true];
    let settings = usersync::sync::PAGE_BATCH_SETTINGS;
    let through_view = plan(&runtime, settings, batch, &params).await;
    assert!(
        through_view.iter().any(|n| n == "Tid Range Scan users"),
        "{through_view:#?}"
    );
    assert!(
        !through_view.iter().any(|n| n.starts_with("Seq Scan")),
        "{through_view:#?}"
    );
    assert_eq!(
        through_view,
        plan(&admin, settings, &direct(batch), &params).await
    );

    let listing = usersync::db::users::list_statement();
    let after: Option<uuid::Uuid> = admin
        .query_one(
            "SELECT id FROM auth.users ORDER BY id OFFSET 10000 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for cursor in [None, after] {
        let params: [&(dyn ToSql + Sync); 5] = [&cursor, &false, &false, &101_i64, &(1_i64 << 20)];
        let through_view = plan(&runtime, "SELECT 1", &listing, &params).await;
        assert!(
            through_view
                .iter()
                .any(|n| n.starts_with("Index Scan users users_pkey")),
            "{through_view:#?}"
        );
        assert_eq!(
            through_view,
            plan(&admin, "SELECT 1", &direct(&listing), &params).await
        );
    }
}
