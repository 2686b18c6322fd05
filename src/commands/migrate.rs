//! `usersync migrate …`: one function per subcommand, each a call and its output.

use super::{emit, exit, render};
use crate::cli::Migrate;
use crate::config::Settings;
use crate::db::{self, migrate, probe, verify};
use crate::error::Result;
use crate::sync;

pub(super) async fn run(command: Migrate, settings: &Settings) -> Result<u8> {
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
            let steps = up(settings, options).await?;
            emit(output.json, &steps, |s| {
                render::steps_text(s, migrate::Direction::Up)
            })?;
            Ok(exit::OK)
        }
        Migrate::Down { to, output } => {
            let steps = migrate::down(&mut **client(settings).await?, to).await?;
            emit(output.json, &steps, |s| {
                render::steps_text(s, migrate::Direction::Down)
            })?;
            Ok(exit::OK)
        }
        Migrate::Status { output } => {
            let status = migrate::status(&**client(settings).await?).await?;
            emit(output.json, &status, |s| render::status_text(s))?;
            Ok(exit::OK)
        }
        Migrate::Grant { role, output } => {
            let columns = &settings.integrity.user_id_columns;
            let granted = db::grant::grant(&mut **client(settings).await?, &role, columns).await?;
            emit(output.json, &granted, render::grant_text)?;
            Ok(if granted.complete() {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        // Files only: no database.
        Migrate::Export { supabase, output } => {
            let exported = db::export::supabase(&supabase, chrono::Utc::now())?;
            emit(output.json, &exported, render::export_text)?;
            Ok(exit::OK)
        }
        Migrate::Verify {
            e2e,
            runtime_role,
            output,
        } => {
            let report = verify_all(settings, e2e, runtime_role.as_deref()).await?;
            emit(output.json, &report, |r| render::verify_text(r, e2e))?;
            Ok(if report.ok { exit::OK } else { exit::FAILED })
        }
    }
}

/// A connection for a subcommand that needs one.
async fn client(settings: &Settings) -> Result<deadpool_postgres::Object> {
    db::connect(&settings.database).await?.get().await
}

/// `migrate up`, then the policies: the release step is their one writer (the triggers and
/// every daemon apply what it leaves in `usersync.policy`).
async fn up(settings: &Settings, options: migrate::UpOptions) -> Result<Vec<migrate::Step>> {
    let mut client = client(settings).await?;
    let steps = migrate::up(&mut client, options).await?;
    let policy = settings.sync.policy();
    if sync::policy::load(&client).await?.is_some() && sync::policy::store(&policy, &client).await?
    {
        tracing::info!(%policy, "lifecycle policies written to usersync.policy");
    }
    Ok(steps)
}

/// `migrate verify`, with the sign-up probe and the runtime role's check when asked.
async fn verify_all(
    settings: &Settings,
    e2e: bool,
    runtime_role: Option<&str>,
) -> Result<verify::Report> {
    let mut client = client(settings).await?;
    let mut report = verify::verify(&client).await?;
    if e2e {
        probe::run(&mut client, &mut report).await?;
    }
    if let Some(role) = runtime_role {
        verify::runtime::runtime_role(&client, role, &mut report).await?;
    }
    Ok(report)
}
