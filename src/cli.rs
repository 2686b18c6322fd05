//! The command line, as clap definitions only; [`crate::commands`] runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "usersync",
    version,
    about = "Keeps every Supabase auth user paired with exactly one profile"
)]
pub struct Cli {
    /// Configuration file (TOML); its keys override the built-in defaults.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "USERSYNC_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduled sweeps, repair on NOTIFY, integrity checks, HTTP, until
    /// SIGTERM or SIGINT.
    Run,
    /// Users joined with their profiles, as the users API shows them.
    Users {
        #[command(subcommand)]
        command: Users,
    },
    /// Quick start: a throwaway PostgreSQL with a Supabase-shaped schema and users, then the
    /// daemon against it; Ctrl-C removes everything.
    Demo,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// One reconciliation pass: create the missing profiles (exit 1 if any user failed).
    Sync {
        /// Detect only: list the users that would get a profile and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run, also show the profile each user would get.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Run every integrity check once (exit 1 when a finding is at error level).
    Check {
        /// Also prove that deleting a user takes its profile along: a probe user inserted and
        /// deleted in auth.users, rolled back. Needs INSERT and DELETE on auth.users (the
        /// migration role), and fires the application's own triggers there.
        #[arg(long, conflicts_with = "history")]
        e2e: bool,
        /// Print how each check's value changed, as the daemon recorded it, instead of
        /// checking.
        #[arg(long)]
        history: bool,
        /// With --history: since this long ago (`90s`, `30m`, `24h`, `7d`) or this date
        /// (`2026-11-30`, or an RFC 3339 time). Default: 7 days.
        #[arg(long, requires = "history", value_name = "WHEN")]
        since: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Why a user has the profile it has, or none, and what `usersync sync` would do for it:
    /// exit 0 nothing to do, 1 something to do, 2 no such user.
    Explain {
        /// The user's id, or e-mail.
        user: String,
        #[command(flatten)]
        output: Output,
    },
    /// Install, roll back, show and verify the schema usersync needs.
    Migrate {
        #[command(subcommand)]
        command: Migrate,
    },
}

#[derive(Debug, Subcommand)]
pub enum Migrate {
    /// Apply pending migrations; a no-op when all are applied.
    Up {
        /// Stop after this version.
        #[arg(long, value_name = "V")]
        to: Option<i32>,
        /// Install usersync's trigger even though auth.users already has a profile trigger.
        #[arg(long)]
        allow_existing_trigger: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Roll back the latest migration, or every migration above --to.
    Down {
        /// Roll back to this version (0 removes everything usersync installed).
        #[arg(long, value_name = "V")]
        to: Option<i32>,
        #[command(flatten)]
        output: Output,
    },
    /// Show applied, pending and drifted migrations.
    Status {
        #[command(flatten)]
        output: Output,
    },
    /// Grant a runtime role exactly what `run`, `sync`, `check` and the API need (run as the
    /// migration role, after `migrate up`), then read it back: exit 1 naming what is missing.
    Grant {
        /// The role the daemon connects as; it must exist (CREATE ROLE … LOGIN PASSWORD …).
        role: String,
        #[command(flatten)]
        output: Output,
    },
    /// Write usersync's migrations as Supabase CLI migration files
    /// (`<timestamp>_usersync_<name>.sql`, each with its history row); only those DIR lacks.
    Export {
        /// The Supabase CLI's migrations folder, e.g. supabase/migrations.
        #[arg(long, value_name = "DIR")]
        supabase: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Check every object the migrations promise; exit 1 when one is broken.
    Verify {
        /// Also run a sign-up probe inside a transaction that is rolled back.
        #[arg(long)]
        e2e: bool,
        /// Also check that this role (the daemon's) holds everything `migrate grant` gives it,
        /// can log in and sees auth.users' rows: a release step that fails instead of a pod
        /// that never gets ready.
        #[arg(long, value_name = "ROLE")]
        runtime_role: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum Users {
    /// One page of users in id order.
    List {
        /// Users per page (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Where to continue: the next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Only users without a profile.
        #[arg(long)]
        missing_profile: bool,
        /// Also soft-deleted users.
        #[arg(long)]
        include_deleted: bool,
        #[command(flatten)]
        output: Output,
    },
    /// One user by id.
    Get {
        id: uuid::Uuid,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, Args)]
pub struct Output {
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}
