//! Scale: the backfill and an unchanged daemon cycle at 1M, 3M and 10M users, beside the bare
//! statements, in one run.
//!
//!     cargo bench --bench scale                              # 1M, 3M and 10M
//!     cargo bench --bench scale -- --sizes 1000000,3000000
//!     cargo bench --bench scale -- --build-only              # fill the cache, measure nothing
//!
//! The databases are kept between runs in a cluster of the bench's own (shared_buffers 1 GB, as
//! in the figures of issue 14) under `USERSYNC_SCALE_CACHE`, by default `target/tmp/scale-cache`:
//! the first run builds them (10M users take some minutes), a rerun finds them and skips the
//! build. Each run applies the current migrations first. Delete the directory to rebuild.
//!
//! Per size: (a) the bare `INSERT … SELECT … NOT EXISTS … ON CONFLICT DO NOTHING` into an empty
//! profile table, (b) `usersync sync` with one worker per core and (c) with one worker, each on
//! an emptied table; then, with nothing missing, one bare anti-join against the daemon's
//! unchanged cycle (its sweep and its integrity check), the same cycle after some sign-ups and
//! deletions, and the full scan that runs on its own schedule.

mod common;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{connect, populate_range};
use tokio_postgres::{Client, Config};
use usersync::pgcluster::ClusterDir;

const ROLES_SQL: &str = include_str!("../tests/fixtures/roles.sql");
const AUTH_SQL: &str = include_str!("../tests/fixtures/auth_schema.sql");

/// Users inserted per statement while building.
const BUILD_CHUNK: u64 = 500_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<u64> = sizes_arg().unwrap_or_else(|| vec![1_000_000, 3_000_000, 10_000_000]);
    let build_only = std::env::args().any(|a| a == "--build-only");
    let cache = std::env::var_os("USERSYNC_SCALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-cache"));
    let server = Server::start(&cache).await;
    for &users in &sizes {
        server.ensure_built(users).await;
    }
    if build_only {
        return;
    }
    let mut results = Vec::new();
    for &users in &sizes {
        results.push(scale::measure(&server, users).await);
    }
    scale::print(&results);
}

fn sizes_arg() -> Option<Vec<u64>> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--sizes")?;
    Some(
        args.get(i + 1)?
            .split(',')
            .map(|s| s.replace('_', "").parse().expect("--sizes: numbers"))
            .collect(),
    )
}

/// The bench's own PostgreSQL, on the cache directory, stopped when the bench exits.
pub struct Server {
    port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl Server {
    async fn start(cache: &std::path::Path) -> Server {
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

    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn dbname(users: u64) -> String {
        format!("users_{users}")
    }

    /// The database of `users` users, every profile missing, built unless the cache has it.
    async fn ensure_built(&self, users: u64) {
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

mod scale {
    use super::*;

    pub struct Sized {
        pub users: u64,
    }

    pub async fn measure(_server: &Server, users: u64) -> Sized {
        Sized { users }
    }

    pub fn print(results: &[Sized]) {
        for r in results {
            println!("{}", r.users);
        }
    }
}
