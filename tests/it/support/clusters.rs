//! PostgreSQL clusters of the tests' own: the throwaway cluster the harness starts when no
//! server answers, and a cluster one test owns (TLS settings, being stopped and started).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_postgres::Config;
use usersync::pgcluster::ClusterDir;

use super::{APP_PASSWORD, APP_ROLE, AUTH_SQL, HOSTED_SQL, ROLES_SQL, connect, try_connect};

/// A PostgreSQL cluster in a temporary directory, stopped when the test binary exits.
pub(super) struct Throwaway {
    dir: PathBuf,
    pub(super) port: u16,
}

impl Throwaway {
    pub(super) fn start() -> Throwaway {
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("usersync-it-{}", std::process::id()));
        let cluster = ClusterDir::init(&dir, &[]).expect("initdb for the throwaway cluster");
        let port = free_port();
        let command = cluster
            .server(port, &fast_settings())
            .expect("the postgres command");
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::spawn(move || {
            let mut command = command;
            match command.spawn() {
                Ok(child) => {
                    let _ = tx.send(Ok(()));
                    keep_forever(child);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        rx.recv().unwrap().expect("starting postgres");
        Throwaway {
            dir: cluster.dir,
            port,
        }
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

fn keep_forever(mut child: Child) -> ! {
    let _ = child.wait();
    // The server stopped on its own: keep the thread, so nothing else is signalled.
    loop {
        std::thread::park();
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Directories of throwaway clusters whose test binary has died.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("usersync-it-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Settings that make a test cluster fast: nothing it holds needs to survive a crash.
pub(super) fn fast_settings() -> Vec<String> {
    [
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
        "max_connections=200",
    ]
    .map(String::from)
    .to_vec()
}

/// A cluster of one test's own, for what the shared one cannot do: TLS settings, being
/// stopped and started again. Removed when dropped.
pub struct OwnCluster {
    cluster: ClusterDir,
    pub port: u16,
    settings: Vec<String>,
    /// The running server: a channel that takes the signal to stop it with, and its thread.
    server: Option<(std::sync::mpsc::Sender<i32>, std::thread::JoinHandle<()>)>,
}

impl OwnCluster {
    /// Initializes and starts it, with the Supabase roles and the fixture auth schema in its
    /// `postgres` database.
    pub async fn start(tag: &str, files: &[(&str, &[u8])], settings: &[String]) -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("usersync-it-{}-{tag}", std::process::id()));
        let cluster = ClusterDir::init(&dir, files).expect("initdb for the test's own cluster");
        let mut settings = settings.to_vec();
        settings.extend(fast_settings());
        let mut own = OwnCluster {
            cluster,
            port: free_port(),
            settings,
            server: None,
        };
        own.resume().await;
        let admin = connect(&own.config("postgres")).await;
        admin.batch_execute(ROLES_SQL).await.unwrap();
        admin
            .batch_execute(&format!(
                "ALTER ROLE {APP_ROLE} PASSWORD '{APP_PASSWORD}';
                 ALTER DATABASE postgres OWNER TO {APP_ROLE};"
            ))
            .await
            .unwrap();
        admin.batch_execute(AUTH_SQL).await.unwrap();
        admin.batch_execute(HOSTED_SQL).await.unwrap();
        own
    }

    /// A superuser connection config (TLS-less: the trust rules of initdb allow it).
    pub fn config(&self, dbname: &str) -> Config {
        Config::from_str(&format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}",
            self.port
        ))
        .unwrap()
    }

    /// The URL usersync is given, as usersync_app.
    pub fn app_url(&self) -> String {
        format!(
            "postgres://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    /// Stops the server as a crash would (immediate shutdown: no checkpoint, recovery at the
    /// next start, the statistics lost) and waits for it to exit.
    pub fn crash(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(libc::SIGQUIT);
            let _ = thread.join();
        }
    }

    pub fn pause(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(libc::SIGINT);
            let _ = thread.join();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn resume(&mut self) {
        let mut command = self
            .cluster
            .server(self.port, &self.settings)
            .expect("the postgres command");
        let (stop, stopped) = std::sync::mpsc::channel::<i32>();
        let (started, up) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started.send(Ok(()));
                let signal = stopped.recv().unwrap_or(libc::SIGINT);
                unsafe { libc::kill(child.id() as i32, signal) };
                let _ = child.wait();
            }
            Err(e) => {
                let _ = started.send(Err(e));
            }
        });
        up.recv().unwrap().expect("starting postgres");
        self.server = Some((stop, thread));
        let config = self.config("postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_connect(&config, Duration::from_secs(1)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "own cluster did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.cluster.log()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
}
