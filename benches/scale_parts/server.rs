//! The scale bench's own PostgreSQL, and the databases of each size it keeps between runs.

use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config};
use usersync::pgcluster::ClusterDir;

use super::common::{connect, populate_range};
use super::{AUTH_SQL, BUILD_CHUNK, ROLES_SQL};

/// The bench's own PostgreSQL, on the cache directory, stopped when the bench exits.
pub struct Server {
    port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl Server {
    pub async fn start(cache: &std::path::Path) -> Server {
        let cluster = match ClusterDir::open(cache).expect("the cache directory") {
            Some(cluster) => cluster,
            None => {
                eprintln!("creating the cache cluster in {}", cache.display());
                ClusterDir::init(cache, &[]).expect("initdb for the cache cluster")
            }
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings: Vec<String> = [
            "shared_buffers=1GB",
            "max_wal_size=4GB",
            "max_connections=100",
            "checkpoint_timeout=15min",
        ]
        .map(String::from)
        .to_vec();
        let mut command = cluster
            .server(port, &settings)
            .expect("the postgres command");
        let thread = std::thread::spawn(move || {
            let mut child = command.spawn().expect("starting postgres");
            let _ = child.wait();
        });
        let server = Server {
            port,
            _thread: thread,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let config = server.config("postgres");
            match tokio::time::timeout(
                Duration::from_secs(2),
                config.connect(tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok(_)) => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => panic!("the cache cluster did not start: {}", cluster.log()),
            }
        }
        server
    }

    pub fn config(&self, dbname: &str) -> Config {
        Config::from_str(&format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}",
            self.port
        ))
        .unwrap()
    }

    /// The runtime role's URL, as the daemon runs in production: no superuser, no BYPASSRLS,
    /// auth.users through `usersync.auth_users`, the profiles through its policy.
    pub fn runtime_url(&self, dbname: &str) -> String {
        format!(
            "postgres://usersync_runtime@127.0.0.1:{}/{dbname}",
            self.port
        )
    }

    pub fn dbname(users: u64) -> String {
        format!("users_{users}")
    }

    /// The database of `users` users, every profile missing, built unless the cache has it.
    pub async fn ensure_built(&self, users: u64) {
        let admin = connect(&self.config("postgres")).await;
        let name = Server::dbname(users);
        let built: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if built {
            let db = connect(&self.config(&name)).await;
            let done: bool = db
                .query_one("SELECT to_regclass('public.bench_built') IS NOT NULL", &[])
                .await
                .unwrap()
                .get(0);
            if done {
                eprintln!("{users} users: in the cache");
                return;
            }
            drop(db);
            admin
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        let started = Instant::now();
        eprintln!("{users} users: building");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut db = connect(&self.config(&name)).await;
        db.batch_execute(ROLES_SQL).await.unwrap();
        db.batch_execute(AUTH_SQL).await.unwrap();
        usersync::db::migrate::up(&mut db, Default::default())
            .await
            .unwrap();
        let mut from = 1;
        while from <= users {
            let to = (from + BUILD_CHUNK - 1).min(users);
            populate_range(&db, from, to).await;
            eprintln!("  {to} users after {:.0?}", started.elapsed());
            from = to + 1;
        }
        db.batch_execute("VACUUM (ANALYZE, FREEZE) auth.users")
            .await
            .unwrap();
        db.batch_execute("CHECKPOINT").await.unwrap();
        db.batch_execute("CREATE TABLE public.bench_built ()")
            .await
            .unwrap();
        eprintln!("{users} users: built in {:.0?}", started.elapsed());
    }

    pub async fn client(&self, users: u64) -> Client {
        connect(&self.config(&Server::dbname(users))).await
    }
}
