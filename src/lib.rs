//! usersync keeps every Supabase `auth.users` row paired with exactly one
//! `public.user_profiles` row.
//!
//! - [`config`]: layered settings, validated before anything connects.
//! - [`db`]: the pool; [`db::migrate`] the embedded migrations and their history;
//!   [`db::verify`] the catalog checks behind `migrate verify`; [`db::probe`] the
//!   rolled-back sign-up probe of `migrate verify --e2e`.
//! - [`sync`]: the reconcile step: [`sync::plan`] detects users without a profile,
//!   [`sync::apply`] creates them in batches, [`sync::repair`] drains the repair queue.
//! - [`integrity`]: the checks behind `usersync check` and the daemon's integrity metrics.
//! - [`daemon`]: `usersync run`: schedules, the repair listener, shutdown; [`http`] its
//!   health and metrics endpoints; [`metrics`] every metric it exports.
//! - [`demo`]: `usersync demo`, a throwaway database and the daemon against it;
//!   [`pgcluster`] starts such a database (the tests use it too).
//! - [`error`]: the crate-wide error and its exit codes.
//! - [`telemetry`]: tracing to stderr, text or JSON.
//! - [`cli`]: the command line definitions; [`commands`] runs them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod error;
pub mod http;
pub mod integrity;
pub mod metrics;
pub mod pgcluster;
pub mod sync;
pub mod telemetry;

pub use error::{Error, Result};
