//! `usersync demo`: everything on one machine, in one command. A throwaway PostgreSQL from the
//! local binaries (run as the `postgres` OS user when started as root, since initdb refuses
//! root), a Supabase-shaped auth schema, the migration, ten thousand users of whom a fifth
//! have no profile, then the daemon in the foreground. Ctrl-C removes everything it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::error::{Error, Result};

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
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
        cluster.wait_ready(&url).await?;
        load(&url).await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        settings = settings.for_demo(&url, &token)?;
        let listener = tokio::net::TcpListener::bind(settings.http.listen).await.map_err(|source| {
            Error::Io { context: format!("listening on {} (http.listen)", settings.http.listen), source }
        })?;
        let base = format!("http://{}", listener.local_addr().map_err(|source| Error::Io {
            context: "reading the listen address".into(),
            source,
        })?);
        println!(
            "\nusersync demo: PostgreSQL on 127.0.0.1:{port} (data in {dir}), {USERS} users, \
             {missing} of them without a profile.\n\
             The daemon sweeps every 10 seconds; watch the missing profiles appear.\n\n  \
             {base}/healthz\n  {base}/readyz\n  {base}/metrics\n\n  \
             curl -s {base}/metrics | grep usersync_profiles_created_total\n  \
             curl -s -H 'Authorization: Bearer {token}' '{base}/v1/users?limit=3'\n  \
             curl -s -H 'Authorization: Bearer {token}' '{base}/v1/users?missing_profile=true&limit=3'\n  \
             psql postgres://postgres@127.0.0.1:{port}/postgres\n\n\
             Ctrl-C stops the daemon and removes the database.\n",
            port = cluster.port,
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
            source,
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
        let bindir = bindir().ok_or_else(|| {
            Error::Internal(
                "no PostgreSQL binaries (initdb, postgres) found: install PostgreSQL".into(),
            )
        })?;
        let owner = postgres_user()?;
        let dir = std::env::temp_dir().join(format!("usersync-demo-{}", std::process::id()));
        let io = |context: &str| {
            let context = context.to_string();
            move |source| Error::Io {
                context: context.clone(),
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating the demo directory"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io("handing the demo directory to postgres"))?;
        }
        let data = dir.join("data");
        let initdb = as_owner(Command::new(bindir.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io("running initdb"))?;
        if !initdb.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Internal(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let mut command = as_owner(Command::new(bindir.join("postgres")), owner);
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If the demo is killed outright, the server stops with it.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = command.spawn().map_err(io("starting postgres"))?;
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

fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
    {
        return Some(dir);
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .find(|d| Path::new(d).join("initdb").exists())
}

/// (uid, gid) of the `postgres` OS user when running as root.
fn postgres_user() -> Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::Internal(
            "running as root, and there is no `postgres` OS user to run initdb as".into(),
        ));
    }
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", std::env::temp_dir());
    }
    command
}
