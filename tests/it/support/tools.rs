//! The tools tests run: the usersync binary, the programs a test needs (skipped with one line
//! when missing, failed under CI=true), directories of a test's own.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory of the test's own under the temporary directory, removed when dropped.
pub struct OwnDir(std::path::PathBuf);

impl OwnDir {
    pub fn new(tag: &str) -> OwnDir {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let dir = std::env::temp_dir().join(format!(
            "usersync-it-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        OwnDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a tool a test needs can run. When it cannot, the test is skipped with one line
/// naming the tool on stderr (written past libtest's capture, so `cargo test` shows it), but
/// under `CI=true`, where `.ci/run` installs every tool, a missing one fails the test.
pub fn tool(test: &str, program: &str, args: &[&str], package: &str) -> bool {
    let runs = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {program} ({package}) is missing, and CI=true needs every tool"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test} needs {program} ({package})"
    );
    false
}

/// Runs the usersync binary with `args`, only the given environment, and returns
/// (exit code, stdout, stderr).
pub fn usersync(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("running the usersync binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
