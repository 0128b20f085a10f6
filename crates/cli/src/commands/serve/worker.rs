//! Warm workers: `capsa serve` runs Python code in worker processes that
//! keep the engine and the Python runtime compiled, linked and ready to
//! instantiate (`capsa_sandbox::keep_warm`), instead of starting a `capsa
//! run` per request. A job is exactly a `capsa run` (the same arguments,
//! the same code path, a fresh store and WASI context per run); only the
//! process is reused. One job at a time per worker: a job that reaches its
//! time limit ends its worker (the run's watchdog ends the process, as in
//! `capsa run`), and the server starts another.
//!
//! The worker reads one job per line on its stdin; the program's stdin is
//! always a file of the job's (`--stdin-file`), never the worker's own. It
//! writes the job's output to its stdout and stderr and marks their ends
//! with the job's nonce, which the server chose and no guest can see.
//!
//! Each worker has a directory of its own for a job's program, policy,
//! input and audit log, which each job writes over: the same four files
//! for all its jobs. Making and removing them for every run kept a disk's
//! file system busy (on ext4, looking for a free inode among those just
//! freed took from 8% to a third of the server's CPU under load; a run's
//! scratch directory, still made for each, is most of what is left).

use super::api::RunDir;
use super::child::{GRACE, Launch, RunResult, Tap, read_audit, run_args};
use super::session::Conversation;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

#[derive(Serialize, Deserialize)]
struct Wire {
    /// `capsa run`'s arguments.
    args: Vec<std::ffi::OsString>,
    cwd: PathBuf,
    nonce: String,
}

/// A worker ends after this many jobs, so that nothing a long life
/// accumulates (fragmented memory) grows without end.
const JOBS_PER_WORKER: u32 = 1000;

/// The worker process: `capsa serve-worker`.
pub fn work() -> i32 {
    capsa_sandbox::keep_warm();
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
        let Ok(job) = serde_json::from_str::<Wire>(&line) else {
            return capsa_sandbox::exit::USAGE;
        };
        let code = run_job(&job);
        // The job's output ends here; the guest has no more to write.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\0capsa-end:{}:{code}", job.nonce);
        let _ = out.flush();
        drop(out);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "\0capsa-end:{}", job.nonce);
        let _ = err.flush();
    }
}

fn run_job(job: &Wire) -> i32 {
    use clap::Parser;
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: crate::commands::run::RunArgs,
    }
    if std::env::set_current_dir(&job.cwd).is_err() {
        return capsa_sandbox::exit::INTERNAL;
    }
    let args =
        std::iter::once(std::ffi::OsString::from("capsa run")).chain(job.args.iter().cloned());
    match Run::try_parse_from(args) {
        // The worker's own stdin carries the jobs: a program never reads it.
        Ok(r) if r.run.sandbox.stdin_file.is_some() => crate::commands::run::run(r.run),
        Ok(_) => capsa_sandbox::exit::USAGE,
        Err(e) => {
            let _ = e.print();
            capsa_sandbox::exit::USAGE
        }
    }
}

struct Worker {
    talk: Conversation,
    jobs: u32,
    /// Its jobs' own files; removed when the worker goes.
    dir: RunDir,
}

/// Writes `bytes` over the file at `path`, which a worker keeps for all
/// its jobs. A file that has another name too (a hard link another program
/// of the user made, to read every later job through it), or that is not a
/// plain file any more, is replaced by a new one instead.
fn put(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::fs::OpenOptions;
    let mut open = OpenOptions::new();
    open.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut open,
        rustix::fs::OFlags::NOFOLLOW.bits() as i32,
    );
    let mine = match open.open(path) {
        Ok(f) => {
            let m = f.metadata()?;
            #[cfg(unix)]
            let alone = std::os::unix::fs::MetadataExt::nlink(&m) == 1;
            #[cfg(not(unix))]
            let alone = true;
            (m.is_file() && alone).then_some((f, m.len()))
        }
        Err(_) => None,
    };
    let mut f = match mine {
        Some((f, len)) => {
            // Only a file with something in it is emptied. On ext4 emptying a
            // file (even an empty one) marks it to be written out to disk
            // when it is closed, so that emptying it between runs and
            // writing it again before each sent every run's program and
            // policy to the disk (a tenth of a millisecond of the server's
            // time a run, besides the block device's). Emptied after each
            // run and written to only before the next, nothing reaches it.
            if len > 0 {
                f.set_len(0)?;
            }
            f
        }
        None => {
            let _ = std::fs::remove_file(path);
            let mut fresh = OpenOptions::new();
            fresh.write(true).create_new(true);
            fresh.open(path)?
        }
    };
    std::io::Write::write_all(&mut f, bytes)
}

/// A Python program for a worker to run, as `/v1/run` asked for it.
pub struct Job<'a> {
    pub code: &'a str,
    /// The run's policy (TOML), already narrowed to the ceiling.
    pub policy: &'a str,
    pub stdin: &'a [u8],
    pub scratch: &'a Path,
    pub ca_certs: &'a [PathBuf],
    pub python_path: &'a [PathBuf],
    pub args: &'a [String],
}

/// Runs going on, in warm workers or in processes of their own, and
/// whether the server is ending: then no run starts, and each going on is
/// ended (its process killed and reaped).
#[derive(Default)]
pub struct Gate {
    busy: AtomicUsize,
    ending: AtomicBool,
    /// Signalled, again and again, while the server ends.
    pub end_now: tokio::sync::Notify,
}

/// One run going on, counted while it lasts.
pub struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Gate {
    /// Counts a run that starts, unless the server is ending.
    pub fn enter(&self) -> std::io::Result<Entered<'_>> {
        // Counted before the check, so `end` sees this run or it sees `end`.
        self.busy.fetch_add(1, SeqCst);
        let entered = Entered(&self.busy);
        if self.ending.load(SeqCst) {
            return Err(std::io::Error::other("the server is ending"));
        }
        Ok(entered)
    }

    /// Ends every run going on and starts no other, so that no run makes
    /// files while the server removes them. Waits 10 s at most.
    pub async fn end(&self) {
        self.ending.store(true, SeqCst);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while self.busy.load(SeqCst) > 0 && Instant::now() < deadline {
            // Again and again: a run between two waits misses one.
            self.end_now.notify_waiters();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Workers not busy with a job.
pub struct Pool {
    idle: std::sync::Mutex<Vec<Worker>>,
    cwd: PathBuf,
}

impl Pool {
    pub fn new(cwd: &Path) -> Pool {
        Pool {
            idle: std::sync::Mutex::new(Vec::new()),
            cwd: cwd.to_path_buf(),
        }
    }

    fn take(&self) -> std::io::Result<Worker> {
        loop {
            let w = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match w {
                // One that died while idle is not handed to a run.
                Some(mut w) => {
                    if w.talk.alive() {
                        return Ok(w);
                    }
                }
                None => break,
            }
        }
        let dir = RunDir(
            self.cwd
                .join("runs")
                .join(format!("worker-{}", super::random_id())),
        );
        std::fs::create_dir(&dir.0)?;
        let cmd = super::child::capsa(["serve-worker".into()], &self.cwd);
        Ok(Worker {
            talk: Conversation::start(cmd)?,
            jobs: 0,
            dir,
        })
    }

    /// Runs `job` as `capsa run` would.
    pub async fn run(
        &self,
        job: Job<'_>,
        limits: super::ceiling::Limits,
        tap: Tap,
        gate: &Gate,
    ) -> std::io::Result<RunResult> {
        let start = Instant::now();
        let _entered = gate.enter()?;
        let mut worker = self.take()?;
        // Over the last job's files: nothing is made or removed. The audit
        // log is emptied here, so a run that ends before it opens its own
        // cannot hand on the last job's denials.
        let file = |name: &str| worker.dir.0.join(name);
        let (program, policy_file, stdin_file, audit_file) = (
            file("main.py"),
            file("policy.toml"),
            file("stdin"),
            file("audit.jsonl"),
        );
        let files = [
            (&program, job.code.as_bytes()),
            (&policy_file, job.policy.as_bytes()),
            (&stdin_file, job.stdin),
            (&audit_file, &b""[..]),
        ];
        for (path, bytes) in files {
            put(path, bytes)?;
        }
        let launch = Launch {
            policy_file: &policy_file,
            audit_file: &audit_file,
            scratch: job.scratch,
            ca_certs: job.ca_certs,
            python_path: job.python_path,
            cache_dir: None,
            program: &program,
            args: job.args,
        };
        let mut args = vec![std::ffi::OsString::from(format!(
            "--stdin-file={}",
            stdin_file.display()
        ))];
        args.extend(run_args(&launch));
        let job = Wire {
            args,
            cwd: launch.scratch.to_path_buf(),
            nonce: super::random_id(),
        };
        let line = serde_json::to_string(&job).map_err(std::io::Error::other)?;
        let reply = worker
            .talk
            .call(
                &line,
                &job.nonce,
                limits.timeout,
                GRACE,
                limits.max_output,
                &tap,
                &gate.end_now,
            )
            .await;
        let audit = std::fs::read(launch.audit_file).unwrap_or_default();
        // Nothing of this client's stays behind while the worker waits.
        for path in [&program, &policy_file, &stdin_file, &audit_file] {
            let _ = put(path, b"");
        }
        let (denials, audit_limit) = read_audit(&audit);
        let (mut result, alive) = reply.result(denials, audit_limit.clone(), start);
        if alive {
            worker.jobs += 1;
            // A limit the run reached is its own; the worker goes on.
            result.limit = audit_limit;
            if worker.jobs < JOBS_PER_WORKER {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(worker);
            } else {
                worker.talk.end().await;
            }
        }
        Ok(result)
    }
}
