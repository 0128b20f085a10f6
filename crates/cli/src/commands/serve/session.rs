//! A session: one Python interpreter, kept in its own `capsa run` process
//! between calls, with its own scratch directory. A call that reaches a
//! limit ends the session (its process) and only it.

use super::ceiling::Limits;
use super::child::{
    Launch, RunResult, Stream, Tap, output_message, read_audit, read_capped, timeout_message,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

pub struct Session {
    /// `base/sessions/ID`: its policy, its audit log, its scratch directory.
    pub dir: PathBuf,
    pub scratch: PathBuf,
    talk: Conversation,
    /// Ends a call going on now (for DELETE, idle expiry, shutdown), without
    /// waiting for the session's lock.
    pub cancel: Arc<tokio::sync::Notify>,
    /// The interpreter's CPU time when its last call ended: it must not
    /// grow between calls.
    cpu_after_call: Option<u64>,
    /// Bytes of the audit log already reported.
    audit_seen: usize,
    audit_file: PathBuf,
    pub limits: Limits,
    pub last_used: Instant,
}

/// Why a session is gone.
pub type Ended = String;

impl Session {
    pub fn start(launch: Launch<'_>, dir: PathBuf, limits: Limits) -> std::io::Result<Session> {
        Ok(Session {
            dir,
            scratch: launch.scratch.to_path_buf(),
            talk: Conversation::start(super::child::command(&launch))?,
            cancel: Arc::new(tokio::sync::Notify::new()),
            cpu_after_call: None,
            audit_seen: 0,
            audit_file: launch.audit_file.to_path_buf(),
            limits,
            last_used: Instant::now(),
        })
    }

    /// Runs one cell. `Err` carries the answer of a call that ended the
    /// session, and why it ended.
    pub async fn exec(
        &mut self,
        code: &str,
        stdin: &str,
        timeout: Option<Duration>,
        tap: Tap,
    ) -> Result<RunResult, (RunResult, Ended)> {
        let start = Instant::now();
        self.last_used = start;
        // A mark of its own for each call, which the server chose.
        let nonce = super::random_id();
        let line = serde_json::json!({"code": code, "stdin": stdin, "nonce": nonce}).to_string();
        let timeout = timeout.or(self.limits.timeout);
        let reply = self
            .talk
            .call(
                &line,
                &nonce,
                timeout,
                Duration::ZERO,
                self.limits.max_output,
                &tap,
                &self.cancel,
            )
            .await;
        let audit = std::fs::read(&self.audit_file).unwrap_or_default();
        let fresh = audit.get(self.audit_seen..).unwrap_or_default();
        let (denials, audit_limit) = read_audit(fresh);
        self.audit_seen = audit.len();
        self.last_used = Instant::now();
        let (result, alive) = reply.result(denials, audit_limit, start);
        if alive {
            self.cpu_after_call = self.talk.cpu_ms();
            return Ok(result);
        }
        let why = match &result.limit {
            Some(l) => format!("its interpreter ended: {l}"),
            None => format!("its interpreter ended with exit code {}", result.exit_code),
        };
        Err((result, why))
    }

    /// Whether the interpreter used the CPU since its last call ended: a
    /// cell that forged the end of its call (it can read its own
    /// interpreter's memory) and went on running, outside any time limit.
    pub fn ran_between_calls(&self) -> bool {
        /// More than the interpreter's own idling could take, and a
        /// hundredth of the time since (threads that come and go while it
        /// waits took about 0.1 ms a second, beside the time limit's).
        const SLACK_MS: u64 = 250;
        let idle = u64::try_from(self.last_used.elapsed().as_millis()).unwrap_or(u64::MAX);
        match (self.cpu_after_call, self.talk.cpu_ms()) {
            (Some(then), Some(now)) => now.saturating_sub(then) > SLACK_MS + idle / 100,
            _ => false,
        }
    }

    /// Ends the interpreter and removes its files.
    pub async fn end(&mut self) {
        self.talk.end().await;
        // Off the threads that answer requests: a deep tree takes seconds.
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || capsa_sandbox::load::remove_tree(&dir)).await;
    }
}

/// A child process that takes one request per line on its stdin and marks
/// the end of each answer on its stdout (with a status) and its stderr,
/// with a nonce the server chose: a session's interpreter, or a warm
/// worker (see `worker`).
pub struct Conversation {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

/// What one call brought back.
pub struct Reply {
    out: Vec<u8>,
    err: Vec<u8>,
    /// The status the end mark gave.
    status: Option<i32>,
    /// A limit the server itself enforced (time, output).
    limit: Option<String>,
    /// The child is still there, ready for the next call; else it has
    /// ended (and `exit` says how).
    alive: bool,
    exit: Option<i32>,
    max: u64,
}

impl Reply {
    /// The answer of the call, and whether the child is still there.
    pub fn result(
        self,
        denials: Vec<String>,
        audit_limit: Option<String>,
        start: Instant,
    ) -> (RunResult, bool) {
        let clip = |mut v: Vec<u8>| {
            v.truncate(self.max as usize);
            String::from_utf8_lossy(&v).into_owned()
        };
        let mut result = RunResult {
            exit_code: self.status.unwrap_or(0),
            stdout: clip(self.out),
            stderr: clip(self.err),
            denials,
            limit: None,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        };
        if self.alive {
            return (result, true);
        }
        result.limit = self.limit.clone().or(audit_limit);
        result.exit_code = match (&self.limit, self.exit) {
            (Some(l), _) if l.starts_with("time") => capsa_sandbox::exit::TIMEOUT,
            (Some(_), _) => capsa_sandbox::exit::LIMIT,
            (None, Some(code)) => code,
            (None, None) => capsa_sandbox::exit::INTERNAL,
        };
        (result, false)
    }
}

impl Conversation {
    pub fn start(mut command: tokio::process::Command) -> std::io::Result<Self> {
        let mut child = command.spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the child's pipes are missing"));
        };
        Ok(Conversation {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Sends `line` and reads the answer to its end marks (with `nonce`),
    /// within `timeout` (and `slack` more) and `max` bytes of output; past
    /// either, the child is ended.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &mut self,
        line: &str,
        nonce: &str,
        timeout: Option<Duration>,
        slack: Duration,
        max: u64,
        tap: &Tap,
        cancel: &tokio::sync::Notify,
    ) -> Reply {
        let mut line = line.to_string();
        line.push('\n');
        let out_mark = format!("\0capsa-end:{nonce}:").into_bytes();
        let err_mark = format!("\0capsa-end:{nonce}\n").into_bytes();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut out_done, mut err_done) = (None::<i32>, false);
        // One of its streams ended: the child is gone by itself.
        let mut gone = false;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t + slack);
        let mut limit: Option<String> = None;
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // A child that does not read (a cell still running) must not hold
        // the call past its limit, nor past an end asked for.
        let mut alive = tokio::select! {
            w = async {
                self.stdin.write_all(line.as_bytes()).await.is_ok() && self.stdin.flush().await.is_ok()
            } => w,
            () = sleep => {
                limit = Some(timeout_message(timeout.unwrap_or_default()));
                false
            }
            () = cancel.notified() => false,
        };
        let (mut bo, mut be) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut sent_out, mut sent_err) = (0usize, 0usize);
        let mut streaming = true;
        while alive && (out_done.is_none() || !err_done) {
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.stdout.read(&mut bo), if out_done.is_none() => match r {
                    Ok(0) | Err(_) => (alive, gone) = (false, true),
                    Ok(n) => {
                        let from = out.len().saturating_sub(out_mark.len() + 8);
                        out.extend_from_slice(&bo[..n]);
                        if let Some(at) = find(&out[from..], &out_mark).map(|i| i + from) {
                            let rest = &out[at + out_mark.len()..];
                            if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                                let status = std::str::from_utf8(&rest[..nl]).ok().and_then(|s| s.parse().ok());
                                out_done = Some(status.unwrap_or(1));
                                out.truncate(at);
                            }
                        }
                    }
                },
                r = self.stderr.read(&mut be), if !err_done => match r {
                    Ok(0) | Err(_) => (alive, gone) = (false, true),
                    Ok(n) => {
                        let from = err.len().saturating_sub(err_mark.len());
                        err.extend_from_slice(&be[..n]);
                        if let Some(at) = find(&err[from..], &err_mark).map(|i| i + from) {
                            err.truncate(at);
                            err_done = true;
                        }
                    }
                },
                () = sleep => {
                    limit = Some(timeout_message(timeout.unwrap_or_default()));
                    alive = false;
                }
                () = cancel.notified() => alive = false,
            }
            // Stream what cannot be the start of an end mark (unless the
            // client fell behind: then the answer carries it all).
            if let Some(tx) = tap.as_ref().filter(|_| streaming) {
                for (buf, sent, which, done, mark) in [
                    (
                        &out,
                        &mut sent_out,
                        Stream::Stdout,
                        out_done.is_some(),
                        &out_mark,
                    ),
                    (&err, &mut sent_err, Stream::Stderr, err_done, &err_mark),
                ] {
                    let upto = if done {
                        buf.len()
                    } else {
                        settled(buf, *sent, mark)
                    };
                    let upto = upto.min(max as usize);
                    if upto > *sent && streaming {
                        streaming =
                            super::child::stream(tx, (which, buf[*sent..upto].to_vec())).await;
                        *sent = upto;
                    }
                }
            }
            if (out.len() + err.len()) as u64 > max + out_mark.len() as u64 + 32 && limit.is_none()
            {
                limit = Some(output_message(max));
                alive = false;
            }
        }
        if gone && limit.is_none() {
            // What it wrote just before it went is still in the other pipe:
            // a run's own time limit, say, ends its worker with the reason
            // on stderr, which came after the end of stdout.
            // (Not streamed: the answer carries it.)
            let room = |b: &Vec<u8>| (max + 32).saturating_sub(b.len() as u64);
            let rest = async {
                if !err_done {
                    let (more, _) = read_capped(&mut self.stderr, room(&err), None).await;
                    err.extend_from_slice(&more);
                }
                if out_done.is_none() {
                    let (more, _) = read_capped(&mut self.stdout, room(&out), None).await;
                    out.extend_from_slice(&more);
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
            // Its end marks, if it wrote them after all, are not output.
            if let Some(at) = find(&err, &err_mark) {
                err.truncate(at);
            }
            if let Some(at) = find(&out, &out_mark) {
                out.truncate(at);
            }
        }
        // A stream cut before its end mark (a limit, the child gone) may end
        // in the first bytes of one, read before the rest came: not output.
        if out_done.is_none() {
            out.truncate(settled(&out, 0, &out_mark));
        }
        if !err_done {
            err.truncate(settled(&err, 0, &err_mark));
        }
        let exit = if alive {
            None
        } else {
            // Ended by the server, or gone by itself: either way, reaped.
            let _ = self.child.start_kill();
            match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
                Ok(Ok(s)) => Some(super::child::exit_code(s)),
                _ => None,
            }
        };
        Reply {
            out,
            err,
            status: out_done,
            limit,
            alive,
            exit,
            max,
        }
    }

    /// Whether the child is still there (a worker may die while idle: the
    /// OOM killer, an operator).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The child's CPU time so far, in milliseconds (where the system
    /// tells), less its time limit's thread: that thread looks at the run
    /// every 10 ms for as long as it lasts, a session's idle time included
    /// (about 1.5 ms a second: an idle session passed the slack of
    /// [`Session::ran_between_calls`] within minutes and was ended).
    pub fn cpu_ms(&self) -> Option<u64> {
        // Not yet reaped (the session holds it), so the id is still its.
        cpu_ms_of(self.child.id()?)
    }

    /// Ends the child.
    pub async fn end(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// How much of `buf` is surely output: all of it but an end mark begun
/// (whole, or cut at the buffer's end). `from` is where to look from.
fn settled(buf: &[u8], from: usize, mark: &[u8]) -> usize {
    let from = from.min(buf.len());
    if let Some(at) = find(&buf[from..], mark) {
        return from + at;
    }
    let held = (1..=mark.len().min(buf.len() - from))
        .rev()
        .find(|&k| buf.ends_with(&mark[..k]))
        .unwrap_or(0);
    buf.len() - held
}

/// The CPU time of process `pid`, in milliseconds, less that of its
/// thread named [`capsa_sandbox::WATCHDOG_THREAD`]. The process's total
/// counts threads that have ended too, which the guest's work may have run
/// on (a blocking file operation).
#[cfg(target_os = "linux")]
fn cpu_ms_of(pid: u32) -> Option<u64> {
    let (_, total) = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let watchdog: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            ticks(&stat)
                .filter(|(name, _)| *name == capsa_sandbox::WATCHDOG_THREAD)
                .map(|(_, t)| t)
        })
        .sum();
    let hz = rustix::param::clock_ticks_per_second();
    Some(total.saturating_sub(watchdog) * 1000 / hz.max(1))
}

/// The name and the user and system ticks of a `/proc` `stat` file.
#[cfg(target_os = "linux")]
fn ticks(stat: &str) -> Option<(&str, u64)> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    // Fields after the name, which may hold spaces.
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some((
        name,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

#[cfg(not(target_os = "linux"))]
fn cpu_ms_of(_pid: u32) -> Option<u64> {
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::settled;

    /// CPU the time limit's thread takes is not the guest's; any other
    /// thread's is, also once it has ended.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_time_limits_thread_is_not_counted_as_the_guests() {
        use std::sync::mpsc::channel;
        let hz = rustix::param::clock_ticks_per_second();
        // Spins until this thread has had `ms` of CPU, then waits for `go`.
        let burn = |name: &str, ms: u64| {
            let (spent, spent_rx) = channel();
            let (go, go_rx) = channel::<()>();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let own = || {
                        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                        super::ticks(&stat).unwrap().1 * 1000 / hz
                    };
                    let start = own();
                    let mut x = 0u64;
                    while own() - start < ms {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(x.wrapping_add(1));
                        }
                    }
                    spent.send(()).unwrap();
                    let _ = go_rx.recv();
                })
                .unwrap();
            spent_rx.recv().unwrap();
            (t, go)
        };
        let me = std::process::id();
        let before = super::cpu_ms_of(me).unwrap();
        let (watchdog, go) = burn(capsa_sandbox::WATCHDOG_THREAD, 800);
        let after_watchdog = super::cpu_ms_of(me).unwrap();
        drop(go);
        // Other tests run beside this one: a margin for their time.
        assert!(
            after_watchdog - before < 600,
            "{before} -> {after_watchdog}"
        );
        // The time limit's thread outlives a run; this one ended here.
        watchdog.join().unwrap();
        let (guest, go) = burn("guest", 800);
        drop(go);
        guest.join().unwrap();
        let after_guest = super::cpu_ms_of(me).unwrap();
        assert!(
            after_guest - after_watchdog >= 800 + 780,
            "{after_watchdog} -> {after_guest}"
        );
    }

    #[test]
    fn output_is_held_back_only_where_an_end_mark_may_begin() {
        let mark = b"\0capsa-end:abc:";
        assert_eq!(settled(b"hello\n", 0, mark), 6);
        assert_eq!(settled(b"hello\0cap", 0, mark), 5);
        assert_eq!(settled(b"hello\0capsa-end:abc:0\n", 0, mark), 5);
        assert_eq!(settled(b"a\0b", 0, mark), 3);
        assert_eq!(settled(b"hello", 5, mark), 5);
    }
}
