//! Runs a parsed command line: load the settings, connect, call the library, print.
//!
//! Output goes to stdout (one JSON document with `--json`); logs go to stderr.

use std::io::Write;

use serde::Serialize;

mod explain;
mod migrate;
mod progress_bar;
mod render;

use crate::cli::{Cli, Command};
use crate::config::{Settings, Sources};
use crate::db;
use crate::error::IoContext;
use crate::error::{Error, Result, exit};
use crate::{integrity, sync};
use render::{check_text, sync_text, user_line};

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
                .io_context(format!("listening on {listen} (http.listen)"))?;
            crate::daemon::run(settings, listener, shutdown_signal()).await?;
            Ok(exit::OK)
        }
        Command::Demo => {
            crate::demo::run(settings, shutdown_signal()).await?;
            Ok(exit::OK)
        }
        Command::Migrate { command } => migrate::run(command, &settings).await,
        Command::Check {
            output,
            history: true,
            since,
            ..
        } => explain::history_command(&settings, since.as_deref(), output.json).await,
        Command::Check { output, e2e, .. } => check_command(&settings, output.json, e2e).await,
        Command::Explain { user, output } => {
            explain::explain_command(&settings, &user, output.json).await
        }
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
    let policy = sync::policy::load(&*db.get().await?)
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

async fn check_command(settings: &Settings, json: bool, e2e: bool) -> Result<u8> {
    let db = db::connect(&settings.database).await?;
    let mut client = db.get().await?;
    let configured = settings.sync.policy();
    let policies = integrity::Policies {
        database: sync::policy::load(&client).await?.unwrap_or(configured),
        configured,
    };
    let report = integrity::run(
        &mut client,
        &settings.integrity,
        policies,
        integrity::Counts::ALL,
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

/// `value` as one JSON document with `--json`, else as `text` renders it.
fn emit<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        print_json(value)
    } else {
        write_stdout(&text(value))
    }
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
        result => result.io_context("writing to stdout"),
    }
}
