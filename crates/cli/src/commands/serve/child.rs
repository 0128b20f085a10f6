//! Each run, and each session, is a `capsa run` of its own: a child process
//! of the server with a policy file written for it. A guest that loops,
//! traps, exhausts its memory or floods its output ends its own process,
//! with the code and message `capsa run` gives, and nothing else.

use super::ceiling::Limits;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Which of the guest's streams output came on.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where output goes as it comes, for a streaming answer. Bounded: a
/// client that reads slowly slows the program down (and its time limit
/// still holds), it does not grow the server's memory.
pub type Tap = Option<Sender>;
pub type Sender = tokio::sync::mpsc::Sender<(Stream, Vec<u8>)>;

/// How long a streamed piece of output may wait for a client that reads
/// too slowly; then the stream stops (the answer still carries all of it).
const STREAM_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Streams `item` unless the client has fallen behind (or left); whether
/// to go on streaming.
pub async fn stream(tx: &Sender, item: (Stream, Vec<u8>)) -> bool {
    matches!(
        tokio::time::timeout(STREAM_STALL, tx.send(item)).await,
        Ok(Ok(()))
    )
}

/// What `/v1/run` and a session call answer.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub denials: Vec<String>,
    /// The limit that ended the run, as `capsa run` words it.
    pub limit: Option<String>,
    pub duration_ms: f64,
}

/// How a child is started.
pub struct Launch<'a> {
    pub policy_file: &'a Path,
    pub audit_file: &'a Path,
    pub scratch: &'a Path,
    pub ca_certs: &'a [PathBuf],
    pub python_path: &'a [PathBuf],
    /// For a WebAssembly program: a cache of its own, so that programs
    /// sent to the server cannot fill capsa's shared cache.
    pub cache_dir: Option<&'a Path>,
    pub program: &'a Path,
    pub args: &'a [String],
}

/// Slack on top of a run's own time limit before the server ends the
/// process itself: the child's watchdog says which limit it was.
pub const GRACE: Duration = Duration::from_secs(2);

/// `capsa run`'s arguments for `launch` (after `capsa run`).
pub fn run_args(launch: &Launch<'_>) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "--quiet".into(),
        // A client's code may not have the server fetch packages.
        "--no-script-deps".into(),
        format!("--policy={}", launch.policy_file.display()).into(),
        format!("--audit={}", launch.audit_file.display()).into(),
    ];
    for ca in launch.ca_certs {
        a.push(format!("--ca-cert={}", ca.display()).into());
    }
    for p in launch.python_path {
        a.push(format!("--python-path={}", p.display()).into());
    }
    a.push("--".into());
    a.push(launch.program.into());
    a.extend(launch.args.iter().map(Into::into));
    a
}

/// A child of the server: `capsa ARGS`, with pipes for its standard streams,
/// ended if the server lets go of it.
pub fn capsa(args: impl IntoIterator<Item = std::ffi::OsString>, cwd: &Path) -> Command {
    let mut c = Command::new(own_exe());
    c.args(args)
        .current_dir(cwd)
        // The server's credential is never the guest's to read, whatever
        // --allow-env grants.
        .env_remove("CAPSA_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A child ends with the server, even one busy with a call that has no
    // time limit (a session's interpreter between the server's checks).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs here.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    c
}

/// This executable. On Linux, the file the process runs, even after an
/// upgrade replaced (or removed) the file at its path.
fn own_exe() -> std::path::PathBuf {
    #[cfg(target_os = "linux")]
    {
        std::path::PathBuf::from("/proc/self/exe")
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::env::current_exe().unwrap_or_else(|_| "capsa".into())
    }
}

pub fn command(launch: &Launch<'_>) -> Command {
    let args = std::iter::once("run".into()).chain(run_args(launch));
    let mut c = capsa(args, launch.scratch);
    if let Some(dir) = launch.cache_dir {
        c.env("CAPSA_CACHE_DIR", dir);
    }
    c
}

/// Reads `r` to its end, keeping at most `cap` bytes; whether more came.
pub async fn read_capped(
    mut r: impl AsyncRead + Unpin,
    cap: u64,
    tap: Option<(&Sender, Stream)>,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut over = false;
    let mut tap = tap;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (cap as usize).saturating_sub(out.len());
                let kept = &buf[..n.min(room)];
                if let (Some((tx, which)), false) = (tap, kept.is_empty())
                    && !stream(tx, (which, kept.to_vec())).await
                {
                    tap = None;
                }
                out.extend_from_slice(kept);
                over |= n > room;
            }
        }
    }
    (out, over)
}

/// Runs one program to its end.
pub async fn run_once(
    launch: Launch<'_>,
    stdin: Vec<u8>,
    limits: Limits,
    tap: Tap,
    gate: &super::worker::Gate,
) -> std::io::Result<RunResult> {
    let start = Instant::now();
    let _entered = gate.enter()?;
    let mut child = command(&launch).spawn()?;
    let mut input = child.stdin.take();
    let feed = async move {
        if let Some(i) = input.as_mut() {
            // A guest that never reads its input must not hold the run.
            let _ = i.write_all(&stdin).await;
        }
        drop(input);
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("the run's pipes are missing"));
    };
    let out = read_capped(
        stdout,
        limits.max_output,
        tap.as_ref().map(|t| (t, Stream::Stdout)),
    );
    let err = read_capped(
        stderr,
        limits.max_output,
        tap.as_ref().map(|t| (t, Stream::Stderr)),
    );
    let wait = wait_within(&mut child, limits.timeout, &gate.end_now);
    let ((), (stdout, _), (stderr, _), status) = tokio::join!(feed, out, err, wait);
    let Some((exit_code, killed)) = status? else {
        return Err(std::io::Error::other("the server is ending"));
    };
    let audit = std::fs::read(launch.audit_file).unwrap_or_default();
    let (denials, mut limit) = read_audit(&audit);
    let exit_code = if killed {
        let t = limits.timeout.unwrap_or_default();
        limit.get_or_insert_with(|| timeout_message(t));
        capsa_sandbox::exit::TIMEOUT
    } else {
        exit_code
    };
    Ok(RunResult {
        exit_code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        denials,
        limit,
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The child's exit code, or that the server had to end it at its time
/// limit; `None` when the server is ending (the child killed and reaped).
async fn wait_within(
    child: &mut Child,
    timeout: Option<Duration>,
    end: &tokio::sync::Notify,
) -> std::io::Result<Option<(i32, bool)>> {
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t + GRACE).await,
            None => std::future::pending().await,
        }
    };
    let status = tokio::select! {
        s = child.wait() => s?,
        () = limit => {
            let _ = child.kill().await;
            return Ok(Some((capsa_sandbox::exit::TIMEOUT, true)));
        }
        () = end.notified() => {
            // `kill` waits for the child too: it makes no file after this.
            let _ = child.kill().await;
            return Ok(None);
        }
    };
    Ok(Some((exit_code(status), false)))
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    if let Some(c) = status.code() {
        return c;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    capsa_sandbox::exit::INTERNAL
}

pub use capsa_sandbox::{output_message, timeout_message};

/// At most this many denials are listed in one answer.
const MAX_DENIALS: usize = 100;

/// The denials and the limit recorded in an audit log, worded as capsa's
/// own lines are ([`capsa_sandbox::report::denial_text`]).
pub fn read_audit(log: &[u8]) -> (Vec<String>, Option<String>) {
    let mut denials: Vec<String> = Vec::new();
    let mut limit = None;
    for line in log.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if v["decision"] != "deny" {
            continue;
        }
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        if v["kind"] == "limit" {
            // The audit file's own size limit ends nothing: the run went
            // on, and its later denials are still recorded.
            if v["op"] != "reach" || !text("target").starts_with("audit size limit") {
                limit.get_or_insert(text("target"));
            }
            continue;
        }
        let d = capsa_sandbox::report::denial_text(
            &text("op"),
            &text("target"),
            v["reason"].as_str(),
            v["hint"].as_str(),
        );
        if !denials.contains(&d) && denials.len() < MAX_DENIALS {
            denials.push(d);
        }
    }
    (denials, limit)
}

#[cfg(test)]
mod tests {
    /// The audit file's own size limit is not a limit of the run: the run
    /// went on, and its denials recorded after it are listed.
    #[test]
    fn the_audit_size_limit_ends_nothing_and_hides_no_denial() {
        let log = concat!(
            r#"{"kind":"fs","op":"read","target":"/granted/f","decision":"allow"}"#,
            "\n",
            r#"{"kind":"limit","op":"reach","target":"audit size limit of 64 MiB; later decisions are not recorded, but for the first 1000 distinct denials","decision":"deny"}"#,
            "\n",
            r#"{"kind":"fs","op":"read","target":"/etc/passwd","decision":"deny","reason":"not granted","hint":"--allow-read=/etc/passwd"}"#,
            "\n",
            r#"{"kind":"limit","op":"reach","target":"memory limit of 1M","decision":"deny"}"#,
            "\n",
        );
        let (denials, limit) = super::read_audit(log.as_bytes());
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert!(denials[0].contains("/etc/passwd"), "{denials:?}");
        assert_eq!(limit.as_deref(), Some("memory limit of 1M"));
    }
}
