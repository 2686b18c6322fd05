//! The `usersync` binary: parse the command line, start logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use usersync::cli::Cli;
use usersync::{commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match commands::load_settings(&cli) {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("usersync: cannot start the runtime: {e}");
            return ExitCode::from(usersync::error::exit::FAILED);
        }
    };
    match runtime.block_on(commands::run(cli, settings)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(e: &usersync::Error) -> ExitCode {
    eprintln!("usersync: {}", usersync::error::Chain(e));
    ExitCode::from(e.exit_code())
}
