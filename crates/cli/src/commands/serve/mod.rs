//! `capsa serve`: sandboxes behind an HTTP/1.1 JSON API, for programs (an
//! agent's code interpreter, a grading service) that run code they did not
//! write. The operator's flags are the ceiling of every request.

mod api;
mod ceiling;
mod child;
mod mcp;
mod scratch;
mod session;
mod worker;

pub use worker::work as worker_main;

use super::run::{SandboxArgs, fail};
use capsa_sandbox::exit;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const AFTER_HELP: &str = "\
The grant and limit flags are those of `capsa run`, and they are the ceiling:
a request may ask for a subset of the grants (the same host paths, rules and
names) and for lower limits, never more; a request that asks for more gets
403 with the denial. Limits default to --timeout=60s, --memory=512M and
--max-output=16M here (per run, and per call of a session), and to
--max-write=256M (per run, and over a session's life: the files a program
writes stay on the server's disk).

Every request needs `Authorization: Bearer TOKEN` when a token is set, from
--token-file or the CAPSA_TOKEN variable. Without one, capsa serve listens
only on a loopback address, and refuses requests a web page could have sent
(with an Origin header, or a Host that is not the address it listens on).

Endpoints (GET /v1/openapi.json describes them):
  POST   /v1/run                          run Python code or a WASI program
  POST   /v1/sessions                     start a persistent Python session
  POST   /v1/sessions/ID/exec             run a cell in it
  GET    /v1/sessions/ID/files/[PATH]     a file, or a directory's listing
  PUT    /v1/sessions/ID/files/PATH       write a file
  DELETE /v1/sessions/ID                  end it
  GET    /v1/health                       for probes; needs no token
  POST   /mcp                             the tools of `capsa mcp`, over HTTP";

#[derive(Args, Debug)]
#[command(
    about = "Serve sandboxes over HTTP: runs, and persistent Python sessions",
    after_help = AFTER_HELP,
    mut_arg("memory", |a| a.help(MEMORY_HELP)),
    mut_arg("timeout", |a| a.help(TIMEOUT_HELP)),
    mut_arg("max_output", |a| a.help(MAX_OUTPUT_HELP)),
    mut_arg("max_write", |a| a.help(MAX_WRITE_HELP)),
)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Read the bearer token from FILE (else from CAPSA_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// What `capsa serve` and `capsa mcp` share: the ceiling, and how many
/// sandboxes they keep.
#[derive(Args, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// End a session after this long without a call.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    session_idle: String,
    /// Sessions open at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions: usize,
    /// Runs going on at once; further runs wait their turn.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_runs: usize,
    /// Runs that may wait their turn; more are answered 503 at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_queue: usize,
    /// Run each Python program in a `capsa run` process of its own, not in
    /// a warm worker (slower; for comparison).
    #[arg(long)]
    cold: bool,
    /// Where runs and sessions keep their files: a new private directory
    /// is made in DIR [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

/// Random bits that nobody outside can guess (session ids, names).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without the system's randomness there is nothing safe to hand out.
    getrandom::getrandom(&mut b).expect("the system's random source");
    u64::from_le_bytes(b)
}

pub fn random_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

pub fn run(args: ServeArgs) -> i32 {
    // Once per machine; every run and session would wait for it otherwise.
    if let Err(code) = super::python::prepare_runtime() {
        return code;
    }
    let token = match read_token(&args) {
        Ok(t) => t,
        Err(e) => return fail(exit::USAGE, e),
    };
    if token.is_none() && !args.listen.ip().is_loopback() {
        return fail(
            exit::USAGE,
            anyhow::anyhow!(
                "{} is not a loopback address: set a token with --token-file FILE or CAPSA_TOKEN",
                args.listen
            ),
        );
    }
    // The token file is held out of every grant, as the environment is.
    let token_file = args
        .token_file
        .as_deref()
        .map(|f| capsa_sandbox::load::canonical(f).unwrap_or_else(|_| f.to_path_buf()));
    match setup(&args.common, token, token_file.as_deref(), args.listen) {
        Ok(state) => serve(state, args.listen),
        Err((code, e)) => fail(code, e),
    }
}

/// `capsa mcp`: the same sandboxes as tools of a Model Context Protocol
/// server on stdin and stdout.
pub fn mcp(args: McpArgs) -> i32 {
    if let Err(code) = super::python::prepare_runtime() {
        return code;
    }
    match setup(
        &args.common,
        None,
        None,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ) {
        Ok(state) => mcp::stdio(state),
        Err((code, e)) => fail(code, e),
    }
}

// The limit flags are `capsa run`'s, whose help gives its own defaults.
const MEMORY_HELP: &str = "Memory each run may use [default: 512M]";
const TIMEOUT_HELP: &str =
    "Wall-clock time for each run, and each call of a session [default: 60s]";
const MAX_OUTPUT_HELP: &str =
    "Bytes each run may write to stdout and stderr together [default: 16M]";
const MAX_WRITE_HELP: &str = "Bytes each run, or a session over its life, may write to files, each name it makes counting 4K [default: 256M]";

#[derive(Args, Debug)]
#[command(
    mut_arg("memory", |a| a.help(MEMORY_HELP)),
    mut_arg("timeout", |a| a.help(TIMEOUT_HELP)),
    mut_arg("max_output", |a| a.help(MAX_OUTPUT_HELP)),
    mut_arg("max_write", |a| a.help(MAX_WRITE_HELP)),
    about = "A Model Context Protocol server on stdio: run_python, read_file, write_file, list_files",
    after_help = "The grant and limit flags are those of `capsa serve` and fix what every tool call\nmay do; nothing a model sends can widen them. Sessions are named by the model."
)]
pub struct McpArgs {
    #[command(flatten)]
    common: CommonArgs,
}

fn read_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CAPSA_TOKEN").ok(),
    };
    if token.as_deref() == Some("") {
        anyhow::bail!("the token is empty");
    }
    Ok(token)
}

fn setup(
    args: &CommonArgs,
    token: Option<String>,
    token_file: Option<&Path>,
    listen: SocketAddr,
) -> Result<api::State, (i32, anyhow::Error)> {
    let usage = |e: anyhow::Error| (exit::USAGE, e);
    let cwd = std::env::current_dir().map_err(|e| (exit::INTERNAL, e.into()))?;
    let raw = args.sandbox.raw_policy().map_err(usage)?;
    if args.sandbox.audit.is_some() || args.sandbox.quiet {
        return Err(usage(anyhow::anyhow!(
            "--audit and --quiet are per run here: each answer lists its denials"
        )));
    }
    if args.sandbox.tmp {
        return Err(usage(anyhow::anyhow!(
            "--tmp is for capsa run and capsa python: here each run's working directory is a scratch folder of its own"
        )));
    }
    let ceiling = ceiling::Ceiling::new(raw, &cwd).map_err(usage)?;
    let idle = capsa_policy::parse_duration(&args.session_idle).map_err(|e| usage(e.into()))?;
    if args.max_runs == 0 || args.max_sessions == 0 {
        return Err(usage(anyhow::anyhow!(
            "--max-runs and --max-sessions must be at least 1"
        )));
    }
    // /proc shows every process of the user: the server's environment (its
    // token), and the memory of the workers that run other clients' code.
    // --python-path is a read grant too.
    let python_path: Vec<PathBuf> = args
        .sandbox
        .python_path
        .iter()
        .map(|p| capsa_sandbox::load::canonical(p).unwrap_or_else(|_| cwd.join(p)))
        .collect();
    let granted: Vec<&Path> = ceiling
        .granted_paths()
        .chain(python_path.iter().map(PathBuf::as_path))
        .collect();
    #[cfg(target_os = "linux")]
    for granted in &granted {
        if Path::new("/proc").starts_with(granted) || granted.starts_with("/proc") {
            return Err(usage(anyhow::anyhow!(
                "the grant {} holds /proc, where a program could read the server's memory and environment and those of other runs: capsa serve grants no part of it",
                granted.display()
            )));
        }
    }
    if let Some(file) = token_file
        && let Some(granted) = granted.iter().find(|g| file.starts_with(g))
    {
        return Err(usage(anyhow::anyhow!(
            "the grant {} holds the token file {}, which no program may read: keep the token elsewhere, or grant less",
            granted.display(),
            file.display()
        )));
    }
    let base = api::WorkDir::make(args.work_dir.as_deref()).map_err(|e| (exit::INTERNAL, e))?;
    for granted in &granted {
        if base.path.starts_with(granted) || granted.starts_with(&base.path) {
            base.remove();
            return Err(usage(anyhow::anyhow!(
                "the grant {} holds the server's own files ({}), where every run and session keeps its own: choose another --work-dir",
                granted.display(),
                base.path.display()
            )));
        }
    }
    Ok(api::State::new(api::Config {
        ceiling,
        token,
        idle,
        max_sessions: args.max_sessions,
        max_runs: args.max_runs,
        max_queue: args.max_queue,
        base,
        listen,
        ca_certs: args.sandbox.ca_cert.clone(),
        // Each run starts in its own directory: relative paths are the
        // operator's, from here.
        python_path: python_path.clone(),
        warm: !args.cold,
    }))
}

/// A listener whose queue holds a burst of connections (std's 128 reset
/// the rest of a thousand clients arriving at once); the system caps it.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn serve(state: api::State, listen: SocketAddr) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(exit::INTERNAL, anyhow::anyhow!("cannot start: {e}")),
    };
    runtime.block_on(async move {
        let listener = match bind(listen) {
            Ok(l) => l,
            Err(e) => {
                state.remove_files();
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("cannot listen on {listen}: {e}"),
                );
            }
        };
        let shown = listener.local_addr().unwrap_or(listen);
        let state = Arc::new(state.listening_on(shown));
        super::run::say(&format!(
            "capsa serve: listening on http://{shown}{}",
            if state.has_token() {
                ""
            } else {
                " (no token: only this machine, and no web page, may call it)"
            }
        ));
        tokio::spawn(api::reap_idle(state.clone()));
        // Ctrl-C, or SIGTERM (a service manager's stop): end every sandbox
        // and remove the server's files before exiting.
        let shutdown = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else {
                        // Out of descriptors, for instance: wait, then go on.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    // Past the cap, or the peer's share of it, a connection
                    // is closed at once.
                    let Some(slot) = state.enter(peer.ip()) else {
                        drop(stream);
                        continue;
                    };
                    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                        drop(stream);
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        api::connection(state, stream).await;
                        drop((permit, slot));
                    });
                }
                () = &mut shutdown => break,
            }
        }
        state.end_all().await;
        0
    })
}

#[cfg(test)]
mod help_tests {
    use super::ceiling;

    /// The limits' help, as `capsa serve --help` and `capsa mcp --help`
    /// print it, names the server's defaults, not `capsa run`'s.
    #[test]
    fn the_limits_help_gives_the_servers_defaults() {
        use clap::{Args, Command};
        for (name, cmd) in [
            (
                "serve",
                super::ServeArgs::augment_args(Command::new("serve")),
            ),
            ("mcp", super::McpArgs::augment_args(Command::new("mcp"))),
        ] {
            let mut cmd = cmd.term_width(1000);
            let help = cmd.render_help().to_string();
            for (flag, default) in [
                ("--memory", ceiling::DEFAULT_MEMORY),
                ("--timeout", ceiling::DEFAULT_TIMEOUT),
                ("--max-output", ceiling::DEFAULT_MAX_OUTPUT),
                ("--max-write", ceiling::DEFAULT_MAX_WRITE),
            ] {
                let line = help
                    .lines()
                    .find(|l| l.trim_start().starts_with(flag))
                    .unwrap_or_else(|| panic!("{name}: no {flag} in\n{help}"));
                assert!(
                    line.ends_with(&format!("[default: {default}]")),
                    "{name}: {line}"
                );
            }
        }
    }
}
