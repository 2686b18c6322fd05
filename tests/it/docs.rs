//! README.md and docs/ as a newcomer meets them: every command block is run as written by a
//! test or says why not, every relative link and anchor leads somewhere, and the commands of
//! the README's own-database section and of the users API's page run here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::daemon::{Daemon, users_without_trigger};
use crate::support::docs::{blocks, run_lines};
use crate::support::{AuthUser, TestDb, count, insert_users, tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// README.md and every page of docs/, relative to the repository's root.
fn documents() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages
}

/// The languages of fenced blocks that hold commands.
const SHELL: [&str; 4] = ["sh", "bash", "shell", "console"];

/// What is wrong with the command blocks of one document: a shell block without a mark, a mark
/// no test reads, a command in an indented block (which no mark can reach).
fn unmarked(file: &str, text: &str, tests: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut previous = "";
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            if !fenced && SHELL.contains(&lang.trim()) {
                let mark = previous.trim();
                let tested = mark
                    .strip_prefix("<!-- test: ")
                    .and_then(|m| m.strip_suffix(" -->"));
                let excused = mark
                    .strip_prefix("<!-- not run: ")
                    .and_then(|m| m.strip_suffix(" -->"))
                    .is_some_and(|why| why.split_whitespace().count() >= 3);
                match tested {
                    Some(name) if !tests.contains(&format!("\"{name}\"")) => {
                        problems.push(format!("{at}: no test reads the block `{name}`"))
                    }
                    Some(_) => {}
                    None if excused => {}
                    None => problems.push(format!(
                        "{at}: a shell block without `<!-- test: NAME -->` or `<!-- not run: REASON -->`"
                    )),
                }
            }
            fenced = !fenced;
        } else if !fenced {
            let indented = line.strip_prefix("    ").map(str::trim_start);
            let commands = [
                "$ ",
                "usersync ",
                "cargo ",
                "curl ",
                "kubectl ",
                "systemctl ",
                "psql ",
            ];
            if let Some(code) = indented
                && commands.iter().any(|c| code.starts_with(c))
            {
                problems.push(format!("{at}: a command in an indented block: `{code}`"));
            }
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    problems
}

/// The source of every test, where the marked names must appear.
fn test_sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(&Path::new(ROOT).join("tests"), &mut out);
    out
}

#[test]
fn every_command_block_is_run_by_a_test_or_says_why_not() {
    let tests = test_sources();
    let problems: Vec<String> = documents()
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
            unmarked(file, &text, &tests)
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // The check catches each kind of problem.
    let sample = "```sh\nusersync run\n```\n\n<!-- test: nobody-reads-this -->\n```sh\nx\n```\n\n    usersync sync\n";
    assert_eq!(unmarked("sample.md", sample, &tests).len(), 3);
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(slug(line.trim_start_matches('#')));
        }
    }
    found
}

/// Each relative link of a document that leads nowhere: `file: target`.
fn broken_links(file: &str) -> Vec<String> {
    let path = Path::new(ROOT).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = path.parent().unwrap().to_path_buf();
    let mut broken = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file_part, anchor) = target.split_once('#').unwrap_or((target, ""));
        let linked: PathBuf = if file_part.is_empty() {
            path.clone()
        } else {
            dir.join(file_part)
        };
        if !linked.exists() {
            broken.push(format!("{file}: {target} (no such file)"));
        } else if !anchor.is_empty() && !anchors(&linked).contains(anchor) {
            broken.push(format!("{file}: {target} (no such heading)"));
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_leads_somewhere() {
    let mut files = documents();
    files.extend([
        "deploy/README.md".to_string(),
        "deploy/RUNBOOK.md".to_string(),
    ]);
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "{broken:#?}");
    assert_eq!(
        slug("What `migrate up` installs"),
        "what-migrate-up-installs"
    );
    assert_eq!(slug("The profile's lifecycle"), "the-profiles-lifecycle");
}

/// README.md's "Your own database", as written, on a database with users from before
/// usersync: installed and proven, listed, created, checked clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_own_database_commands_run_as_written() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let users: Vec<AuthUser> = (0..12)
        .map(|i| AuthUser::email(&format!("before{i}@example.test")))
        .collect();
    insert_users(&admin, &users).await.unwrap();
    let url = db.app_url();
    let block = blocks("README.md", "own-database").remove(0);
    let outputs = tokio::task::spawn_blocking(move || {
        run_lines(&block, &[("DATABASE_URL", &url)], &std::env::temp_dir())
    })
    .await
    .unwrap();
    let dry_run = String::from_utf8_lossy(&outputs[1].stdout);
    for user in &users {
        let id = user.id.to_string();
        assert!(dry_run.contains(&id), "the dry run lists {id}: {dry_run}");
    }
    assert_eq!(count(&admin, "public.user_profiles").await, 12);
}

/// docs/users-api.md's examples against a running daemon (the docs' `localhost:9187` is the
/// test daemon's address): every user, then only those missing a profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_api_examples_run_as_written() {
    if !tool(
        "the users API's examples",
        "curl",
        &["--version"],
        "Debian package curl",
    ) {
        return;
    }
    const TOKEN: &str = "docs-token-0123456789abcdef";
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    users_without_trigger(&admin, 7).await;
    let with_profiles: Vec<AuthUser> = (0..5)
        .map(|i| AuthUser::email(&format!("with{i}@example.test")))
        .collect();
    insert_users(&admin, &with_profiles).await.unwrap();
    let daemon = Daemon::start(db.runtime_settings_with(&[
        ("USERSYNC__API__TOKEN", TOKEN),
        ("USERSYNC__SYNC__SCHEDULE", crate::daemon::NEVER),
        ("USERSYNC__INTEGRITY__SCHEDULE", crate::daemon::NEVER),
    ]))
    .await;
    let block = blocks("docs/users-api.md", "users-api")[0]
        .replace("localhost:9187", &daemon.addr.to_string());
    let url = db.runtime_url();
    let outputs = tokio::task::spawn_blocking(move || {
        let env = [("TOKEN", TOKEN), ("DATABASE_URL", url.as_str())];
        run_lines(&block, &env, &std::env::temp_dir())
    })
    .await
    .unwrap();
    daemon.stop().await.unwrap();
    let listed = |i: usize| -> usize {
        let page: serde_json::Value = serde_json::from_slice(&outputs[i].stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&outputs[i].stdout)));
        page["users"].as_array().expect("a page of users").len()
    };
    assert_eq!(listed(0), 12, "every user");
    assert_eq!(listed(1), 7, "those missing a profile");
    let cli = String::from_utf8_lossy(&outputs[2].stdout);
    assert!(cli.contains("@example.test"), "{cli}");
}
