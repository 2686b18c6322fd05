//! The integration tests: one binary, a module per area, all against a real PostgreSQL.

mod property;
mod repair;
mod secrets;
mod support;

mod attacks;
mod cli;
mod daemon;
mod deploy;
mod docs;
mod explain;
mod findings;
mod history;
mod hosted;
mod hostile;
mod house;
mod integrity;
mod lifecycle;
mod migrate;
mod plans;
mod pooler;
mod signup;
mod status;
mod sync;
mod tls;
mod users;
mod verify;
mod watch;
