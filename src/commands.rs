//! Runs a parsed command line: load the settings, connect, call the library, print.
//!
//! Output goes to stdout (one JSON document with `--json`); logs go to stderr.

use std::io::Write;

use serde::Serialize;

use crate::cli::{Cli, Command, Migrate};
use crate::config::{Settings, Sources};
use crate::db::{self, migrate, probe, verify};
use crate::error::{Error, Result, exit};
use crate::{integrity, sync};

/// Runs `cli` with settings already loaded; returns the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> Result<u8> {
    match cli.command {
        Command::Config => {
            print!("{}", settings.to_redacted_toml());
            Ok(exit::OK)
        }
        Command::Run => {
            let listen = settings.http.listen;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| Error::Io {
                    context: format!("listening on {listen} (http.listen)"),
                    source,
                })?;
            crate::daemon::run(settings, listener, shutdown_signal()).await?;
            Ok(exit::OK)
        }
        Command::Demo => {
            crate::demo::run(settings, shutdown_signal()).await?;
            Ok(exit::OK)
        }
        Command::Migrate { command } => run_migrate(command, &settings).await,
        Command::Check { output, e2e } => check_command(&settings, output.json, e2e).await,
        Command::Users { command } => users_command(command, &settings).await,
        Command::Sync {
            dry_run,
            verbose,
            output,
        } => sync_command(&settings, dry_run, verbose, output.json).await,
    }
}

async fn sync_command(settings: &Settings, dry_run: bool, verbose: bool, json: bool) -> Result<u8> {
    let db = db::connect(&settings.database).await?;
    let configured = settings.sync.policy();
    let policy = sync::policy::Policy::load(&*db.get().await?)
        .await?
        .unwrap_or(configured);
    if policy != configured {
        tracing::warn!(
            database = %policy,
            configuration = %configured,
            "the database's policies differ from this configuration; applying the database's \
             (usersync migrate up writes them)"
        );
    }
    // A manual pass retries every queued user now: it runs after the cause was fixed.
    let options = sync::Options {
        dry_run,
        preview: verbose,
        retry_queue_now: true,
        ..sync::Options::from_settings(&settings.sync)
    }
    .with_policy(policy);
    let progress = std::sync::Arc::new(sync::Progress::default());
    let bar = progress_bar::start(progress.clone());
    let report = sync::run(&db, &options, Some(progress)).await;
    progress_bar::finish(bar).await;
    let report = report?;
    if json {
        print_json(&report)?;
    } else {
        write_stdout(&sync_text(&report, verbose))?;
    }
    Ok(if report.failed > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

async fn users_command(command: crate::cli::Users, settings: &Settings) -> Result<u8> {
    use crate::cli::Users;
    use crate::db::users;
    let db = db::connect(&settings.database).await?;
    let client = db.get().await?;
    match command {
        Users::List {
            limit,
            cursor,
            missing_profile,
            include_deleted,
            output,
        } => {
            let after = match cursor {
                None => None,
                Some(c) => Some(users::decode_cursor(&c).ok_or_else(|| {
                    Error::Usage(format!(
                        "--cursor {c:?}: not a cursor `usersync users list` printed"
                    ))
                })?),
            };
            let query = users::Query {
                limit,
                after,
                missing_profile,
                include_deleted,
            };
            let page = users::list(&**client, &query).await?;
            if output.json {
                print_json(&page)?;
            } else {
                let mut out = String::new();
                for u in &page.users {
                    out.push_str(&user_line(u));
                }
                if let Some(next) = &page.next_cursor {
                    out.push_str(&format!("next page: --cursor {next}\n"));
                }
                write_stdout(&out)?;
            }
            Ok(exit::OK)
        }
        Users::Get { id, output } => match users::get(&**client, id).await? {
            Some(user) if output.json => print_json(&user).map(|()| exit::OK),
            Some(user) => write_stdout(&user_line(&user)).map(|()| exit::OK),
            None => Err(Error::NotFound(format!("no user {id}"))),
        },
    }
}

fn user_line(u: &crate::db::users::User) -> String {
    format!(
        "{}  {:<32} {:<24} role={} active={}{}{}\n",
        u.id,
        printable(
            u.email
                .as_deref()
                .or(u.phone.as_deref())
                .unwrap_or(if u.is_anonymous { "(anonymous)" } else { "-" })
        ),
        printable(u.profile.full_name.as_deref().unwrap_or("-")),
        printable(&u.profile.role),
        u.profile.is_active,
        if u.profile_missing {
            "  PROFILE MISSING"
        } else {
            ""
        },
        if u.deleted_at.is_some() {
            "  deleted"
        } else {
            ""
        },
    )
}

async fn check_command(settings: &Settings, json: bool, e2e: bool) -> Result<u8> {
    let db = db::connect(&settings.database).await?;
    let mut client = db.get().await?;
    let report = integrity::run(
        &mut client,
        &settings.integrity,
        &settings.sync.policy(),
        e2e,
    )
    .await?;
    if json {
        print_json(&report)?;
    } else {
        write_stdout(&check_text(&report))?;
    }
    Ok(if report.has_errors() {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn check_text(report: &integrity::Report) -> String {
    use integrity::Level;
    if report.findings.is_empty() {
        return format!("ok: no findings ({:.0} ms)\n", report.duration_ms);
    }
    let mut out = String::new();
    for (level, heading) in [
        (Level::Error, "ERRORS"),
        (Level::Warning, "WARNINGS"),
        (Level::Info, "INFO"),
    ] {
        let of_level: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.level == level)
            .collect();
        if of_level.is_empty() {
            continue;
        }
        out.push_str(&format!("{heading} ({})\n", of_level.len()));
        for f in of_level {
            out.push_str(&format!(
                "\n  {}: {}\n    {}\n",
                f.check,
                printable(&f.title),
                printable(&f.detail)
            ));
            if !f.samples.is_empty() {
                out.push_str(&format!("    samples: {}\n", f.samples.join(", ")));
            }
            out.push_str(&format!(
                "    {}{}\n",
                fix_label(f.fix_kind),
                printable(&f.fix)
            ));
        }
        out.push('\n');
    }
    out
}

fn sync_text(r: &sync::Report, verbose: bool) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&format!(
            "dry run: {} users would get a profile ({} scanned, {} soft-deleted and {} anonymous skipped); nothing written\n",
            r.missing, r.scanned, r.skipped_deleted, r.skipped_anonymous
        ));
        if verbose {
            for p in &r.profiles {
                out.push_str(&format!("{p}\n"));
            }
        } else {
            for id in &r.would_create {
                out.push_str(&format!("{id}\n"));
            }
        }
        return out;
    }
    if let Some(repair) = &r.repair {
        let now = if repair.retried_now {
            " (retried every queued user now, whatever its backoff)"
        } else {
            ""
        };
        out.push_str(&format!(
            "repair queue: {} due, {} created, {} resolved, {} failed, {} remaining{now}\n",
            repair.due, repair.created, repair.resolved, repair.failed, repair.remaining
        ));
    }
    let a = &r.applied;
    out.push_str(&format!(
        "lifecycle: {} e-mails filled, {} followed; soft-deleted users' profiles: {} scrubbed, {} deleted\n",
        a.emails_filled, a.emails_followed, a.scrubbed, a.deleted
    ));
    out.push_str(&format!(
        "sweep: {} scanned, {} missing, {} created, {} raced, {} deferred, {} failed; \
         skipped {} soft-deleted, {} anonymous; {} batches (longest {:.0} ms) in {:.0} ms\n",
        r.scanned,
        r.missing,
        r.created,
        r.raced,
        r.deferred,
        r.failed,
        r.skipped_deleted,
        r.skipped_anonymous,
        r.batches,
        r.longest_batch_ms,
        r.duration_ms
    ));
    if r.ranges_busy > 0 {
        out.push_str(&format!(
            "{} of {} ranges were being swept by another process\n",
            r.ranges_busy, r.ranges
        ));
    }
    for f in &r.failures {
        out.push_str(&format!(
            "failed {}: {} (SQLSTATE {})\n",
            f.user_id,
            printable(&f.reason),
            f.sqlstate
        ));
    }
    out
}

/// A progress bar on stderr for passes long enough to want one, only in a terminal.
mod progress_bar {
    use std::io::IsTerminal;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use tokio::task::JoinHandle;

    use crate::sync::Progress;

    pub struct Bar {
        bar: ProgressBar,
        ticker: JoinHandle<()>,
    }

    pub fn start(progress: Arc<Progress>) -> Option<Bar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} missing users handled, {msg} created  {per_sec}  ETA {eta}",
            )
            .expect("a valid template"),
        );
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            // Nothing for the first second: short passes stay quiet.
            tokio::time::sleep(Duration::from_secs(1)).await;
            loop {
                let total = progress.total.load(Ordering::Relaxed);
                let done = progress.done.load(Ordering::Relaxed);
                ticker_bar.set_length(total.max(done));
                ticker_bar.set_position(done);
                ticker_bar.set_message(progress.created.load(Ordering::Relaxed).to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Some(Bar { bar, ticker })
    }

    pub async fn finish(bar: Option<Bar>) {
        if let Some(Bar { bar, ticker }) = bar {
            ticker.abort();
            let _ = ticker.await;
            bar.finish_and_clear();
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before the future is
/// first polled: a signal that arrives while the daemon is still starting (after systemd was
/// told READY) is then a clean shutdown, not the default action's kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// Loads the settings for `cli` from the process environment.
pub fn load_settings(cli: &Cli) -> Result<Settings> {
    Settings::load(&Sources::from_process(cli.config.as_deref()))
}

async fn run_migrate(command: Migrate, settings: &Settings) -> Result<u8> {
    let db = db::connect(&settings.database).await?;
    let mut client = db.get().await?;
    let client: &mut tokio_postgres::Client = &mut client;
    match command {
        Migrate::Up {
            to,
            allow_existing_trigger,
            output,
        } => {
            let options = migrate::UpOptions {
                to,
                allow_existing_trigger,
                policy: Some(settings.sync.policy()),
            };
            let steps = migrate::up(client, options).await?;
            print_steps(&steps, output.json, "up")?;
            Ok(exit::OK)
        }
        Migrate::Down { to, output } => {
            let steps = migrate::down(client, to).await?;
            print_steps(&steps, output.json, "down")?;
            Ok(exit::OK)
        }
        Migrate::Status { output } => {
            let status = migrate::status(client).await?;
            if output.json {
                print_json(&status)?;
            } else {
                let mut out = String::new();
                for s in &status {
                    let state = match &s.state {
                        migrate::State::Applied {
                            applied_at,
                            duration_ms,
                        } => {
                            format!("applied  {applied_at} ({duration_ms} ms)")
                        }
                        migrate::State::Pending => "pending".into(),
                        migrate::State::Drifted { .. } => {
                            "DRIFTED  the file differs from what was applied".into()
                        }
                        migrate::State::Unknown => "unknown  applied by a newer usersync".into(),
                    };
                    out.push_str(&format!("{:04}  {:<16} {state}\n", s.version, s.name));
                }
                write_stdout(&out)?;
            }
            Ok(exit::OK)
        }
        Migrate::Grant { role, output } => {
            let granted =
                db::grant::grant(client, &role, &settings.integrity.user_id_columns).await?;
            if output.json {
                print_json(&granted)?;
            } else {
                let mut out = String::new();
                for sql in &granted.statements {
                    out.push_str(sql);
                    out.push_str(";\n");
                }
                out.push_str(&format!(
                    "granted: {} may now run usersync run, sync, check and the users API\n",
                    granted.role
                ));
                write_stdout(&out)?;
            }
            Ok(exit::OK)
        }
        Migrate::Verify { e2e, output } => {
            let mut report = verify::verify(client).await?;
            if e2e {
                probe::run(client, &mut report).await?;
            }
            if output.json {
                print_json(&report)?;
            } else {
                write_stdout(&verify_text(&report, e2e))?;
            }
            Ok(if report.ok { exit::OK } else { exit::FAILED })
        }
    }
}

fn verify_text(report: &verify::Report, e2e: bool) -> String {
    let probe = if e2e { " and the sign-up probe" } else { "" };
    if report.findings.is_empty() {
        return format!("ok: {} checks{probe} passed\n", report.checks);
    }
    let mut out = if report.ok {
        format!(
            "ok: {} checks{probe} passed, with warnings\n",
            report.checks
        )
    } else {
        format!(
            "FAILED: {} of {} checks{probe}\n",
            report.findings.len(),
            report.checks
        )
    };
    for f in &report.findings {
        let warning = if f.level == verify::Level::Warning {
            " (warning)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{}{warning}\n  expected: {}\n  found:    {}\n  {}{}\n",
            f.check,
            f.expected,
            printable(&f.found),
            fix_label(f.fix_kind),
            printable(&f.fix)
        ));
    }
    out
}

/// How a fix is introduced: SQL to run as printed, or a step.
fn fix_label(kind: verify::FixKind) -> &'static str {
    match kind {
        verify::FixKind::Sql => "fix (SQL): ",
        verify::FixKind::Command => "fix (run): ",
    }
}

fn print_steps(steps: &[migrate::Step], json: bool, direction: &str) -> Result<()> {
    if json {
        return print_json(&steps);
    }
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str(match direction {
            "up" => "nothing to apply: the schema is up to date\n",
            _ => "nothing to roll back\n",
        });
    }
    for s in steps {
        let verb = if s.direction == "up" {
            "applied"
        } else {
            "rolled back"
        };
        out.push_str(&format!(
            "{verb} {:04}_{} ({} ms)\n",
            s.version, s.name, s.duration_ms
        ));
    }
    write_stdout(&out)
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("output serializes");
    text.push('\n');
    write_stdout(&text)
}

/// Writes to stdout. A reader that went away (`usersync users list | head -1`) is not an
/// error: the output was wanted up to there.
fn write_stdout(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(|source| Error::Io {
            context: "writing to stdout".into(),
            source,
        }),
    }
}

/// A value from the database made safe for a terminal: control characters (an escape
/// sequence in someone's name would retitle or repaint the terminal) are shown as `\u{1b}`.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_from_the_database_are_shown_escaped() {
        assert_eq!(printable("Ada Lovelace"), "Ada Lovelace");
        assert_eq!(
            printable("\u{1b}]0;pwned\u{7}Ada\nEve\u{9b}"),
            "\\u{1b}]0;pwned\\u{7}Ada\\u{a}Eve\\u{9b}"
        );
    }
}
