//! usersync keeps every Supabase `auth.users` row paired with exactly one
//! `public.user_profiles` row.
//!
//! - [`config`]: layered settings, validated before anything connects; secrets that never
//!   print, the URL's `sslmode`.
//! - [`db`]: the pool and its pinned sessions; [`db::migrate`] the embedded migrations and
//!   their history; [`db::verify`] the catalog checks behind `migrate verify` (with
//!   [`db::verify::access`], what the API roles and the runtime role may do); [`db::grant`]
//!   `migrate grant`; [`db::probe`] the rolled-back sign-up probe of `migrate verify --e2e`;
//!   [`db::users`] users joined with their profiles.
//! - [`sync`]: the reconcile step: [`sync::plan`] detects users without a profile,
//!   [`sync::apply`] creates them in batches, [`sync::repair`] drains the repair queue,
//!   [`sync::policy`] the lifecycle policies and their sweep.
//! - [`integrity`]: the checks behind `usersync check` and the daemon's integrity metrics.
//! - [`daemon`]: `usersync run`: schedules, the repair listener, the health monitor,
//!   shutdown, the board of last runs; [`http`] its endpoints (health, metrics, the status
//!   page, the users API) and what a client can make it hold; [`metrics`] every metric.
//! - [`demo`]: `usersync demo`, a throwaway database and the daemon against it;
//!   [`pgcluster`] starts such a database (the tests use it too).
//! - [`error`]: the crate-wide error and its exit codes; [`sql`] the SQL rules every layer
//!   shares.
//! - [`telemetry`]: tracing to stderr, text or JSON.
//! - [`cli`]: the command line definitions; [`commands`] runs them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod error;
pub mod finding;
pub mod http;
pub mod integrity;
pub mod job;
pub mod metrics;
pub mod pgcluster;
pub mod sql;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod words;

pub use error::{Error, Result};
pub use words::plural;
