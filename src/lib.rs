//! usersync keeps every Supabase `auth.users` row paired with exactly one
//! `public.user_profiles` row.
//!
//! - [`config`]: layered settings, validated before anything connects.
//! - [`db`]: the pool; [`db::migrate`] the embedded migrations and their history;
//!   [`db::verify`] the catalog checks behind `migrate verify`; [`db::probe`] the
//!   rolled-back sign-up probe of `migrate verify --e2e`.
//! - [`error`]: the crate-wide error and its exit codes.
//! - [`telemetry`]: tracing to stderr, text or JSON.
//! - [`cli`]: the command line definitions; [`commands`] runs them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod telemetry;

pub use error::{Error, Result};
