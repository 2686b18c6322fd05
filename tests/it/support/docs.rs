//! Commands from README.md and docs/, run as written. A fenced block right after a line
//! `<!-- test: NAME -->` is one a test runs: shell blocks line by line with `sh`, the usersync
//! binary first on the PATH, SQL blocks on a connection the test picks.

use std::path::Path;
use std::process::{Command, Output};

/// The blocks of `file` (from the repository's root) marked `<!-- test: name -->`.
pub fn blocks(file: &str, name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let marker = format!("<!-- test: {name} -->");
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.trim_start().starts_with("```"),
            "{file}: {marker} is not followed by a fenced block"
        );
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect();
        found.push(body.join("\n"));
    }
    assert!(!found.is_empty(), "{file} has no block {marker}");
    found
}

/// Every marked block name in `file`, in order.
pub fn names(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("<!-- test: ")?
                .strip_suffix(" -->")
                .map(String::from)
        })
        .collect()
}

/// A shell command line from a document, with the usersync binary first on the PATH, only
/// `env` besides PATH and HOME, in `cwd`; in a process group of its own, so that a signal to
/// the group reaches the command whatever the shell does.
pub fn shell(line: &str, env: &[(&str, &str)], cwd: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_usersync"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// Runs each line of a shell block; panics naming the line that did not exit 0.
pub fn run_lines(block: &str, env: &[(&str, &str)], cwd: &Path) -> Vec<Output> {
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|line| {
            let output = shell(line, env, cwd).output().unwrap();
            assert!(
                output.status.success(),
                "`{line}` exited {:?}\n{}{}",
                output.status.code(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            output
        })
        .collect()
}
