//! A real PgBouncer (Debian package `pgbouncer`) in front of the test cluster, in session or
//! transaction mode: what Supabase's session pooler (port 5432) and transaction pooler (6543)
//! are to usersync. It runs as the `postgres` OS user when the tests run as root (PgBouncer
//! refuses root), on a port of its own, and stops when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clusters::free_port;

pub enum Mode {
    Session,
    Transaction,
}

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts one in front of `host:port`, or None (the test skips, or fails under CI=true)
    /// when PgBouncer is not installed.
    pub fn start(test: &str, mode: Mode, host: &str, port: u16) -> Option<PgBouncer> {
        let program = which()?;
        if !super::tool(
            test,
            program.to_str()?,
            &["--version"],
            "Debian package pgbouncer",
        ) {
            return None;
        }
        let listen = free_port();
        let dir = std::env::temp_dir().join(format!(
            "usersync-it-{}-pgbouncer-{listen}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mode = match mode {
            Mode::Session => "session",
            Mode::Transaction => "transaction",
        };
        // Trust: the cluster behind it trusts local connections too; the users file only
        // names who may connect.
        std::fs::write(
            dir.join("users.txt"),
            "\"postgres\" \"\"\n\"usersync_app\" \"\"\n\"usersync_runtime\" \"\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = {mode}\n\
                 max_client_conn = 1000\ndefault_pool_size = 60\n\
                 logfile = {log}\nignore_startup_parameters = extra_float_digits\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(program);
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = usersync::pgcluster::postgres_os_user().unwrap() {
            use std::os::unix::process::CommandExt;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            for file in ["users.txt", "pgbouncer.ini"] {
                std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).unwrap();
            }
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().expect("starting pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(PgBouncer {
            port: listen,
            dir,
            child,
        })
    }

    /// `url` with its host and port replaced by this PgBouncer's.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("a URL with a user");
        let (_, path) = rest.split_once('/').expect("a URL with a database");
        format!("{scheme_user}@127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
        .or_else(|| Some(PathBuf::from("pgbouncer")))
}
