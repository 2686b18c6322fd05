//! `usersync demo`: everything on one machine, in one command. A throwaway PostgreSQL from the
//! local binaries (run as the `postgres` OS user when started as root, since initdb refuses
//! root), a Supabase-shaped auth schema, the migration, ten thousand users of whom a fifth
//! have no profile, then the daemon in the foreground. Ctrl-C removes everything it made.
//!
//! Nothing of it is reachable from the network: the database listens only on a unix socket in
//! a directory only its owner may enter, and the daemon on 127.0.0.1.

use std::path::PathBuf;
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::error::IoContext;
use crate::error::{Error, Result};
use crate::pgcluster::ClusterDir;

const ROLES_SQL: &str = include_str!("../tests/fixtures/roles.sql");
const AUTH_SQL: &str = include_str!("../tests/fixtures/auth_schema.sql");
const USERS: i64 = 10_000;

/// Runs the demo until `shutdown` resolves, then removes the cluster.
pub async fn run(
    mut settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let cluster = Cluster::start()?;
    let result = async {
        let url = format!(
            "host={} port={} user=postgres dbname=postgres",
            cluster.dir.display(),
            cluster.port
        );
        cluster.wait_ready(&url).await?;
        load(&url).await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        settings = settings.for_demo(&url, &token)?;
        // Loopback only, on the configured port.
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], settings.http.listen.port()));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .io_context(format!("listening on {listen} (http.listen's port)"))?;
        let port = listener.local_addr().io_context("reading the listen address")?.port();
        let base = format!("http://localhost:{port}");
        println!(
            "\nusersync demo: PostgreSQL on a private unix socket (data in {dir}), {USERS} users, \
             {missing} of them without a profile.\n\
             The daemon sweeps every 10 seconds; watch the missing profiles appear.\n\n  \
             {base}/  (the status page)\n  {base}/healthz\n  {base}/readyz\n  {base}/metrics\n\n  \
             curl -s {base}/metrics | grep usersync_profiles_created_total\n  \
             curl -s -H 'Authorization: Bearer {token}' '{base}/v1/users?limit=3'\n  \
             curl -s -H 'Authorization: Bearer {token}' '{base}/v1/users?missing_profile=true&limit=3'\n  \
             psql '{url}'\n\n\
             Ctrl-C stops the daemon and removes the database.\n",
            dir = cluster.dir.display(),
            missing = USERS / 5,
        );
        crate::daemon::run(settings, listener, shutdown).await
    }
    .await;
    drop(cluster);
    result
}

async fn load(url: &str) -> Result<()> {
    let config = tokio_postgres::Config::from_str(url).expect("a demo URL");
    let (mut client, connection) =
        config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::Unreachable {
                target: crate::config::target(&config),
                reason: e.to_string(),
            })?;
    tokio::spawn(connection);
    let fail = |context: &'static str| {
        move |source| Error::Db {
            context: context.into(),
            source: crate::error::DbError(source),
        }
    };
    client
        .batch_execute(ROLES_SQL)
        .await
        .map_err(fail("creating the Supabase roles"))?;
    client
        .batch_execute(AUTH_SQL)
        .await
        .map_err(fail("creating the auth schema"))?;
    crate::db::migrate::up(&mut client, Default::default()).await?;
    // Four fifths sign up with the trigger on; the rest arrive as from a restore, without it.
    client
        .batch_execute(&format!(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password,
                 confirmation_token, recovery_token, email_change_token_new, email_change,
                 raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
             SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
                 'authenticated', 'demo' || g || '@example.test', '', '', '', '', '',
                 '{{\"provider\": \"google\"}}',
                 jsonb_build_object('name', 'Demo User ' || g, 'picture', 'https://example.test/' || g || '.png'),
                 now() - g * interval '1 minute', now()
             FROM generate_series(1, {signed}) g;
             ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
             INSERT INTO auth.users (id, email, raw_user_meta_data, created_at)
             SELECT gen_random_uuid(), 'restored' || g || '@example.test',
                 jsonb_build_object('full_name', 'Restored User ' || g), now() - interval '1 day'
             FROM generate_series(1, {missing}) g;
             ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;",
            signed = USERS - USERS / 5,
            missing = USERS / 5,
        ))
        .await
        .map_err(fail("creating the demo users"))?;
    Ok(())
}

/// The throwaway cluster; stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
    server: Child,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("usersync-demo-{}", std::process::id()));
        let cluster = ClusterDir::init(&dir, &[])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .io_context("finding a free port")?
            .port();
        // Spawned from the main thread, which lives as long as the demo: if the demo is
        // killed outright, the server stops with it.
        // No TCP at all: the socket in the cluster's own directory (mode 0700) is the way in.
        let server = cluster
            .server(port, &["listen_addresses=".to_string()])?
            .spawn()
            .io_context("starting postgres")?;
        Ok(Cluster { dir, port, server })
    }

    async fn wait_ready(&self, url: &str) -> Result<()> {
        let config = tokio_postgres::Config::from_str(url).expect("a demo URL");
        let started = Instant::now();
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    return Err(Error::Unreachable {
                        target: crate::config::target(&config),
                        reason: e.to_string(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        println!(
            "usersync demo: database stopped and {} removed",
            self.dir.display()
        );
    }
}
