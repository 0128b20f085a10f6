//! The `capsa` binary: parses the command line and hands each subcommand to
//! its module in `commands/`.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "capsa",
    version,
    about = "Run code you do not trust with exactly the access it needs.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(commands::run::RunArgs),
    Python(commands::python::PythonArgs),
    Pack(commands::pack::PackArgs),
    Inspect(commands::inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                // Everything else, bare `capsa` included, is a usage error.
                _ => capsa_sandbox::exit::USAGE,
            };
            let _ = e.print();
            return exit(code);
        }
    };
    let code = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Python(args) => commands::python::run(args),
        Command::Pack(args) => commands::pack::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
    };
    exit(code)
}

fn exit(code: i32) -> ExitCode {
    // The guest's own code passes through; a shell only sees its low byte.
    ExitCode::from((code & 0xff) as u8)
}
