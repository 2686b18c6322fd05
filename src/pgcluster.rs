//! A throwaway PostgreSQL cluster from the local binaries, for `usersync demo` and the tests.
//!
//! initdb refuses to run as root, so as root the cluster belongs to the `postgres` OS user and
//! its programs run as that user. The server is started with `PR_SET_PDEATHSIG`: it gets
//! SIGINT (a fast shutdown) when the thread that started it ends, so it never outlives its
//! owner.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::IoContext;
use crate::error::{Error, Result};

/// The directory of `initdb` and `postgres`: `USERSYNC_PG_BINDIR`, `pg_config --bindir`, the
/// newest `/usr/lib/postgresql/*/bin`, or the PATH.
pub fn bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("USERSYNC_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
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

/// (uid, gid) of the `postgres` OS user when running as root, None otherwise.
pub fn postgres_os_user() -> Result<Option<(u32, u32)>> {
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

/// A cluster directory: `data/` for the cluster, `postgres.log`, and the server's socket.
pub struct ClusterDir {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub bindir: PathBuf,
    pub owner: Option<(u32, u32)>,
}

impl ClusterDir {
    /// Runs initdb (trust authentication, superuser `postgres`) in a fresh `dir`, and writes
    /// `files` (name, contents) into the data directory, readable by the server only.
    pub fn init(dir: &Path, files: &[(&str, &[u8])]) -> Result<ClusterDir> {
        let bindir = bindir().ok_or_else(|| {
            Error::Internal(
                "no PostgreSQL binaries (initdb, postgres) found: install PostgreSQL".into(),
            )
        })?;
        let owner = postgres_os_user()?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).io_context("creating the cluster directory")?;
        let chown = |path: &Path| match owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .io_context("handing the cluster directory to postgres"),
            None => Ok(()),
        };
        chown(dir)?;
        {
            // Its owner only: the unix socket lives here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .io_context("restricting the cluster directory")?;
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
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .io_context("running initdb")?;
        if !initdb.status.success() {
            return Err(Error::Internal(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            )));
        }
        for (file, contents) in files {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(file);
            std::fs::write(&path, contents).io_context("writing into the data directory")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .io_context("writing into the data directory")?;
            chown(&path)?;
        }
        let log = dir.join("postgres.log");
        std::fs::File::create(&log).io_context("creating postgres.log")?;
        chown(&log)?;
        Ok(ClusterDir {
            dir: dir.to_path_buf(),
            data,
            bindir,
            owner,
        })
    }

    /// A cluster [`ClusterDir::init`] made earlier in `dir`, if there is one.
    pub fn open(dir: &Path) -> Result<Option<ClusterDir>> {
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() || !dir.join("postgres.log").exists() {
            return Ok(None);
        }
        let bindir = bindir().ok_or_else(|| {
            Error::Internal(
                "no PostgreSQL binaries (initdb, postgres) found: install PostgreSQL".into(),
            )
        })?;
        Ok(Some(ClusterDir {
            dir: dir.to_path_buf(),
            data,
            bindir,
            owner: postgres_os_user()?,
        }))
    }

    /// The `postgres` command serving on 127.0.0.1:`port`, with `-c` settings, logging to
    /// `postgres.log`, and stopped (SIGINT) when the thread that spawns it ends.
    pub fn server(&self, port: u16, settings: &[String]) -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("postgres.log"))
            .io_context("opening postgres.log")?;
        let mut command = as_owner(Command::new(self.bindir.join("postgres")), self.owner);
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log);
        for s in settings {
            command.arg("-c").arg(s);
        }
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", std::env::temp_dir());
    }
    command
}
