//! The database harness: one PostgreSQL cluster per test binary, a fresh database per test.
//!
//! The admin connection comes from `USERSYNC_TEST_DATABASE_URL`, else `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres` when something answers there, else a
//! throwaway cluster started from the local PostgreSQL binaries (as the `postgres` OS user when
//! the tests run as root, since initdb refuses root). `USERSYNC_TEST_CLUSTER=throwaway` forces
//! the throwaway cluster, and so does `USERSYNC_PG_BINDIR`, naming the bin directory of the
//! PostgreSQL to test on (CI runs the suite on 15 and on 17 so).
//!
//! Every test database is a copy of a template holding the fixture auth schema, owned by
//! `supabase_auth_admin`, and hosted Supabase's privileges (tests/fixtures: roles.sql,
//! auth_schema.sql, hosted.sql, each built from supabase/postgres's and supabase/auth's own
//! files). usersync migrates as `usersync_app`, which plays the hosted project's `postgres`:
//! not a superuser, BYPASSRLS, the database's owner, USAGE on schema auth without grant
//! option, SELECT on auth.users with it; where hosted relies on supautils (dropping a trigger
//! on auth.users), hosted.sql says so and stands in for it. The daemon runs as
//! `usersync_runtime`: LOGIN and what `usersync migrate grant` gives it, nothing else.

#![allow(dead_code)]

use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};

mod clusters;
pub mod docs;
pub mod pgbouncer;
mod snapshot;
mod tools;
mod users;

use clusters::Throwaway;
pub use clusters::{OwnCluster, free_port};
pub use snapshot::{schema_snapshot, snapshot_diff};
pub use tools::{OwnDir, tool, usersync};
pub use users::{AuthUser, count, insert_users, supabase_default_privileges};

pub const APP_ROLE: &str = "usersync_app";
const APP_PASSWORD: &str = "usersync-test";
/// The runtime role: LOGIN and what `usersync migrate grant` gives it, nothing else (no
/// BYPASSRLS, nothing in schema auth).
pub const RUNTIME_ROLE: &str = "usersync_runtime";
const RUNTIME_PASSWORD: &str = "usersync-runtime-test";
const ROLES_SQL: &str = include_str!("../../fixtures/roles.sql");
const AUTH_SQL: &str = include_str!("../../fixtures/auth_schema.sql");
pub(super) const HOSTED_SQL: &str = include_str!("../../fixtures/hosted.sql");

/// The cluster the whole test binary shares.
struct Cluster {
    /// Superuser connection to the maintenance database.
    admin: Config,
    /// Database every test database is copied from.
    template: String,
    /// Keeps a throwaway server alive as long as the binary runs.
    _throwaway: Option<Throwaway>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

fn cluster() -> &'static Cluster {
    // Started on a plain thread with its own runtime: callers are inside #[tokio::test].
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            runtime().block_on(async {
                let (admin, throwaway) = find_or_start_cluster().await;
                let template = prepare_template(&admin).await;
                Cluster {
                    admin,
                    template,
                    _throwaway: throwaway,
                }
            })
        })
        .join()
        .expect("starting the test cluster")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn find_or_start_cluster() -> (Config, Option<Throwaway>) {
    let forced = std::env::var("USERSYNC_TEST_CLUSTER").is_ok_and(|v| v == "throwaway")
        || std::env::var_os("USERSYNC_PG_BINDIR").is_some();
    if !forced {
        for var in ["USERSYNC_TEST_DATABASE_URL", "DATABASE_URL"] {
            if let Ok(url) = std::env::var(var) {
                let config = Config::from_str(&url).unwrap_or_else(|e| panic!("{var}: {e}"));
                return (config, None);
            }
        }
        let local = Config::from_str("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        if try_connect(&local, Duration::from_secs(2)).await.is_ok() {
            return (local, None);
        }
    }
    let server = Throwaway::start();
    let config = Config::from_str(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        server.port
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_connect(&config, Duration::from_secs(2)).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                panic!("throwaway PostgreSQL did not start: {e}\n{}", server.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    (config, Some(server))
}

async fn try_connect(config: &Config, timeout: Duration) -> Result<Client, String> {
    let mut config = config.clone();
    config.connect_timeout(timeout);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

/// Opens a connection and drives it on the current runtime.
pub async fn connect(config: &Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {:?}: {e}", config.get_dbname()));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Roles once per cluster, then this binary's template database with the fixture.
async fn prepare_template(admin: &Config) -> String {
    let client = connect(admin).await;
    // Several test binaries may share one cluster: create the roles one at a time.
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock(7573657273);
             {ROLES_SQL}
             ALTER ROLE {APP_ROLE} PASSWORD '{APP_PASSWORD}';
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') THEN
                     CREATE ROLE {RUNTIME_ROLE};
                 END IF;
             END $$;
             ALTER ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                 PASSWORD '{RUNTIME_PASSWORD}';
             SELECT pg_advisory_unlock(7573657273);"
        ))
        .await
        .expect("creating the Supabase roles");
    drop_stale_databases(&client).await;

    let template = format!("usersync_it_{}_tmpl", std::process::id());
    // One statement per call: CREATE and DROP DATABASE refuse to run in a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {template}"),
        format!("CREATE DATABASE {template}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .expect("creating the template database");
    }
    let mut config = admin.clone();
    config.dbname(&template);
    let tmpl = connect(&config).await;
    tmpl.batch_execute(AUTH_SQL)
        .await
        .expect("loading tests/fixtures/auth_schema.sql");
    tmpl.batch_execute(HOSTED_SQL)
        .await
        .expect("loading tests/fixtures/hosted.sql");
    drop(tmpl);
    template
}

/// Databases left by test binaries that died before their cleanup ran.
async fn drop_stale_databases(client: &Client) {
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'usersync\\_it\\_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        }) {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// A fresh database for one test, dropped when the value goes out of scope (set
/// `USERSYNC_TEST_KEEP=1` to keep it for a look after a failure).
pub struct TestDb {
    pub name: String,
    admin: Config,
    app: Config,
    runtime: Config,
}

impl TestDb {
    /// A copy of the fixture: auth schema and roles, no usersync objects.
    pub async fn new() -> TestDb {
        let cluster = cluster();
        let name = format!(
            "usersync_it_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(&cluster.admin).await;
        let create = format!("CREATE DATABASE {name} TEMPLATE {}", cluster.template);
        // Hosted `postgres` owns the project's database, and so schema public.
        let grant = format!("ALTER DATABASE {name} OWNER TO {APP_ROLE}");
        for sql in [create, grant] {
            client
                .batch_execute(&sql)
                .await
                .expect("creating a test database");
        }
        let mut admin = cluster.admin.clone();
        admin.dbname(&name);
        let mut app = cluster.admin.clone();
        app.dbname(&name).user(APP_ROLE).password(APP_PASSWORD);
        let mut runtime = cluster.admin.clone();
        runtime
            .dbname(&name)
            .user(RUNTIME_ROLE)
            .password(RUNTIME_PASSWORD);
        TestDb {
            name,
            admin,
            app,
            runtime,
        }
    }

    /// A fresh database with every migration applied, as usersync_app, and the runtime role
    /// granted what it needs (`usersync migrate grant usersync_runtime`).
    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        let mut client = db.app().await;
        usersync::db::migrate::up(&mut client, Default::default())
            .await
            .expect("migrate up");
        let columns = db.settings().integrity.user_id_columns;
        usersync::db::grant::grant(&mut client, RUNTIME_ROLE, &columns)
            .await
            .expect("migrate grant");
        db
    }

    /// A connection as the runtime role.
    pub async fn runtime(&self) -> Client {
        connect(&self.runtime).await
    }

    /// The URL the daemon is given: the runtime role's.
    /// The application's `public.orders` (a user-id column without a foreign key), made by its
    /// owner and registered for the count; the runtime role's settings with `env` and the column
    /// in `integrity.user_id_columns`.
    pub async fn with_orders(&self, env: &[(&str, &str)]) -> usersync::config::Settings {
        let mut app = self.app().await;
        app.batch_execute("CREATE TABLE public.orders (id serial PRIMARY KEY, user_id uuid)")
            .await
            .unwrap();
        let mut env = env.to_vec();
        env.push((
            "USERSYNC__INTEGRITY__USER_ID_COLUMNS",
            "public.orders.user_id",
        ));
        let settings = self.runtime_settings_with(&env);
        usersync::db::grant::grant(&mut app, RUNTIME_ROLE, &settings.integrity.user_id_columns)
            .await
            .unwrap();
        settings
    }

    pub fn runtime_url(&self) -> String {
        self.app_url().replacen(APP_ROLE, RUNTIME_ROLE, 1).replacen(
            APP_PASSWORD,
            RUNTIME_PASSWORD,
            1,
        )
    }

    /// Settings as the runtime role, with `USERSYNC__…` overrides: what the daemon runs with.
    pub fn runtime_settings_with(&self, env: &[(&str, &str)]) -> usersync::config::Settings {
        let mut vars = vec![("DATABASE_URL".to_string(), self.runtime_url())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let sources = usersync::config::Sources {
            file: None,
            env: vars,
        };
        usersync::config::Settings::load(&sources).expect("test settings")
    }

    /// A superuser connection, for sabotage and for reading what the test checks.
    pub async fn admin(&self) -> Client {
        connect(&self.admin).await
    }

    /// A connection as usersync_app whose connection half the caller drives, to read
    /// notifications.
    pub async fn connect_raw(
        &self,
    ) -> (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ) {
        self.app
            .connect(NoTls)
            .await
            .expect("connecting as usersync_app")
    }

    /// A connection as the role usersync runs as.
    pub async fn app(&self) -> Client {
        connect(&self.app).await
    }

    /// The URL the usersync binary is given, as DATABASE_URL.
    pub fn app_url(&self) -> String {
        let (host, port) = self.server();
        format!(
            "postgres://{APP_ROLE}:{APP_PASSWORD}@{host}:{port}/{}",
            self.name
        )
    }

    /// The URL of this database as `role` with `password`.
    pub fn url_as(&self, role: &str, password: &str) -> String {
        let (host, port) = self.server();
        format!("postgres://{role}:{password}@{host}:{port}/{}", self.name)
    }

    /// Host and port of the cluster this database is on.
    pub fn server(&self) -> (String, u16) {
        let host = match &self.app.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        (host, self.app.get_ports().first().copied().unwrap_or(5432))
    }

    /// Settings pointing at this database, as the binary would load them.
    pub fn settings(&self) -> usersync::config::Settings {
        self.settings_with(&[])
    }

    /// Settings pointing at this database with `USERSYNC__…` overrides.
    pub fn settings_with(&self, env: &[(&str, &str)]) -> usersync::config::Settings {
        let mut vars = vec![("DATABASE_URL".to_string(), self.app_url())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let sources = usersync::config::Sources {
            file: None,
            env: vars,
        };
        usersync::config::Settings::load(&sources).expect("test settings")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("USERSYNC_TEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        let admin = cluster().admin.clone();
        // Drop may run inside a runtime: do the work on a thread of its own.
        let _ = std::thread::spawn(move || {
            runtime().block_on(async {
                let client = connect(&admin).await;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
    }
}
