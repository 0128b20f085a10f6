//! The `capsa` binary: parses the command line and hands each subcommand to
//! its module in `commands/`.

/// `println!` for capsa's own output (listings, usage): see [`print_line`].
macro_rules! out {
    ($($t:tt)*) => { $crate::print_line(format_args!($($t)*)) };
}

mod commands;
#[cfg(all(target_os = "linux", target_env = "musl"))]
mod relro;
// Its memcpy and memmove take the place of the C library's (crates/mem).
#[cfg(target_env = "musl")]
extern crate capsa_mem;

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
    Pip(commands::pip::PipArgs),
    Pack(commands::pack::PackArgs),
    Inspect(commands::inspect::InspectArgs),
    Serve(commands::serve::ServeArgs),
    Mcp(commands::serve::McpArgs),
    Cache(commands::cache::CacheArgs),
    /// A warm worker of `capsa serve` (started by it, not by hand).
    #[command(hide = true)]
    ServeWorker,
    /// Makes what warm workers run Python with (started by `capsa serve`).
    #[command(hide = true)]
    ServePrepare,
    /// The compile step of `--python-path` bytecode (started by capsa).
    #[command(hide = true)]
    PycacheCompile,
}

/// An executable made by `capsa pack --exe`: capsa with a bundle appended.
/// It takes `capsa run`'s flags, then the bundle's arguments.
#[derive(Parser)]
#[command(
    about = "A capsa bundle, packed as an executable: runs as `capsa run app.capsa` would",
    after_help = "Leading flags are capsa's (they can widen what the program may do): put `--` before arguments you did not write, as in `./app -- \"$@\"`."
)]
struct ExeCli {
    #[command(flatten)]
    sandbox: commands::run::SandboxArgs,
    /// Grant what the bundle asks for without asking.
    #[arg(long)]
    grant_requested: bool,
    /// Bind an asked directory to a host path; :ro or :rw sets the access.
    #[arg(long, value_name = "NAME=PATH[:ro|:rw]", value_parser = commands::bundle::parse_bind)]
    bind: Vec<commands::bundle::Bind>,
    /// Refuse to run unless the bundle's sha256 is HEX.
    #[arg(long, value_name = "HEX", value_parser = commands::bundle::parse_sha256)]
    expect_sha256: Option<[u8; 32]>,
    /// Arguments for the program.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

/// The static build's allocator (see Cargo.toml), the system's elsewhere,
/// counted: what the heap grows by while a program runs counts against its
/// memory limit (see `capsa_sandbox::heap`).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);
#[cfg(not(target_env = "musl"))]
#[global_allocator]
static ALLOC: Counting<std::alloc::System> = Counting(std::alloc::System);

use capsa_sandbox::heap::Counting;

/// Exit status of capsa stopped by a reader that closed its output.
const CLOSED_OUTPUT: u8 = 141;

/// Writes one line of capsa's own output. A reader that stops early
/// (`capsa inspect x.capsa | head`) ends capsa quietly with 141, the
/// status a shell shows for a program ended by SIGPIPE, where `println!`
/// panicked (101) with a backtrace; any other failure to write ends it
/// with capsa's internal error (70) and one line on stderr.
pub fn print_line(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(CLOSED_OUTPUT));
        }
        commands::run::say(&format!("capsa: error: cannot write the output: {e}"));
        std::process::exit(capsa_sandbox::exit::INTERNAL);
    }
}

fn main() -> ExitCode {
    capsa_sandbox::one_malloc_arena();
    // Only capsa's own executable is searched for an appended bundle.
    if let Ok(Some(bundle)) = capsa_bundle::own_bundle() {
        let cli = match parse::<ExeCli>() {
            Ok(cli) => cli,
            Err(code) => return code,
        };
        let me = std::env::current_exe().unwrap_or_else(|_| "capsa".into());
        return exit(commands::bundle::run(
            commands::run::RunArgs::for_program(
                cli.sandbox,
                cli.grant_requested,
                cli.bind,
                cli.expect_sha256,
                me,
                cli.args,
            ),
            Some(bundle),
        ));
    }
    let cli = match parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let code = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Python(args) => commands::python::run(args),
        Command::Pip(args) => commands::pip::run(args),
        Command::Pack(args) => commands::pack::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Mcp(args) => commands::serve::mcp(args),
        Command::Cache(args) => commands::cache::run(args),
        Command::ServeWorker => commands::serve::worker_main(),
        Command::ServePrepare => commands::python::prepare_kept_main(),
        Command::PycacheCompile => commands::pycache::compile_main(),
    };
    exit(code)
}

/// The command line, or the exit code after clap printed help, the version
/// or a usage error.
fn parse<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        let code = match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
            // Everything else, bare `capsa` included, is a usage error.
            _ => capsa_sandbox::exit::USAGE,
        };
        let _ = e.print();
        exit(code)
    })
}

fn exit(code: i32) -> ExitCode {
    capsa_sandbox::remove_run_folders();
    // The guest's own code passes through; a shell only sees its low byte.
    ExitCode::from((code & 0xff) as u8)
}
