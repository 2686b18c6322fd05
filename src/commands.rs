//! Runs a parsed command line: load the settings, connect, call the library, print.
//!
//! Output goes to stdout (one JSON document with `--json`); logs go to stderr.

use std::io::Write;

use serde::Serialize;

use crate::cli::{Cli, Command, Migrate};
use crate::config::{Settings, Sources};
use crate::db::{self, migrate, probe, verify};
use crate::error::{Error, Result, exit};

/// Runs `cli` with settings already loaded; returns the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> Result<u8> {
    match cli.command {
        Command::Config => {
            print!("{}", settings.to_redacted_toml());
            Ok(exit::OK)
        }
        Command::Migrate { command } => run_migrate(command, &settings).await,
    }
}

/// Loads the settings for `cli` from the process environment.
pub fn load_settings(cli: &Cli) -> Result<Settings> {
    Settings::load(&Sources::from_process(cli.config.as_deref()))
}

async fn run_migrate(command: Migrate, settings: &Settings) -> Result<u8> {
    let pool = db::connect(&settings.database).await?;
    let mut client = db::get(&pool, &settings.database).await?;
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
    if report.ok {
        return format!("ok: {} checks{probe} passed\n", report.checks);
    }
    let mut out = format!(
        "FAILED: {} of {} checks{probe}\n",
        report.findings.len(),
        report.checks
    );
    for f in &report.findings {
        out.push_str(&format!(
            "\n{}\n  expected: {}\n  found:    {}\n  fix:      {}\n",
            f.check, f.expected, f.found, f.fix
        ));
    }
    out
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

fn write_stdout(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Io {
            context: "writing to stdout".into(),
            source,
        })
}
