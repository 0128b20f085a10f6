//! The guest's stdout and stderr, capped together at `--max-output` bytes so
//! a flood cannot fill the disk a user redirected output to.

use bytes::Bytes;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal as WasiIsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes one write may carry (the guest's own memory holds them first).
/// What one host call may copy is raised to this (see `host_side`).
pub(crate) const MAX_WRITE: usize = 1 << 30;

/// Whether the program's last write to stderr (stdout) ended inside a line.
static STDERR_MID_LINE: AtomicBool = AtomicBool::new(false);
static STDOUT_MID_LINE: AtomicBool = AtomicBool::new(false);

/// What to write before one of capsa's own lines on stderr: a line break
/// when the program left its last line there unfinished (the preview 1
/// adapter's `assertion failed at adapter line 2858`, with no newline, had
/// `capsa: the program crashed` run on after it), or on stdout when both
/// are terminals (the same screen, most likely).
pub fn line_start() -> &'static str {
    let err = STDERR_MID_LINE.swap(false, Ordering::Relaxed);
    let out = STDOUT_MID_LINE.load(Ordering::Relaxed)
        && IsTerminal::is_terminal(&std::io::stdout())
        && IsTerminal::is_terminal(&std::io::stderr());
    if out {
        STDOUT_MID_LINE.store(false, Ordering::Relaxed);
    }
    if err || out { "\n" } else { "" }
}

/// A run starts: what an earlier run of the process (a warm worker's)
/// left unfinished is not this one's.
pub(crate) fn lines_start() {
    STDERR_MID_LINE.store(false, Ordering::Relaxed);
    STDOUT_MID_LINE.store(false, Ordering::Relaxed);
}

/// Bytes left for stdout and stderr together.
pub struct OutputBudget {
    remaining: Option<AtomicU64>,
    hit: AtomicBool,
}

impl OutputBudget {
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(OutputBudget {
            remaining: limit.map(AtomicU64::new),
            hit: AtomicBool::new(false),
        })
    }

    pub fn was_hit(&self) -> bool {
        self.hit.load(Ordering::SeqCst)
    }

    /// Whether there is a limit at all (else nothing need be counted).
    pub fn limited(&self) -> bool {
        self.remaining.is_some()
    }

    /// Takes `want` bytes whole, or none and marks the budget hit: for a
    /// write that must not happen in part.
    pub fn spend(&self, want: u64) -> bool {
        let Some(rem) = &self.remaining else {
            return true;
        };
        let taken = rem.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            cur.checked_sub(want)
        });
        if taken.is_err() {
            self.hit.store(true, Ordering::SeqCst);
        }
        taken.is_ok()
    }

    /// Returns `n` bytes [`spend`](Self::spend) took for what did not happen.
    pub fn give_back(&self, n: u64) {
        if let Some(rem) = &self.remaining
            && n > 0
        {
            rem.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Takes up to `want` bytes from the budget; returns how many may go out.
    fn take(&self, want: usize) -> usize {
        let Some(rem) = &self.remaining else {
            return want;
        };
        let mut cur = rem.load(Ordering::SeqCst);
        loop {
            let n = cur.min(want as u64);
            match rem.compare_exchange(cur, cur - n, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    if (n as usize) < want {
                        self.hit.store(true, Ordering::SeqCst);
                    }
                    return n as usize;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

#[derive(Clone, Copy)]
pub enum Which {
    Stdout,
    Stderr,
}

/// One of the host's standard streams, behind the shared budget.
#[derive(Clone)]
pub struct LimitedOutput {
    which: Which,
    budget: Arc<OutputBudget>,
}

impl LimitedOutput {
    pub fn new(which: Which, budget: Arc<OutputBudget>) -> Self {
        LimitedOutput { which, budget }
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<bool> {
        // A limit is ending the process (see `ENDING`): the program's
        // last words would come after capsa's message that ended it.
        if crate::ENDING.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let n = self.budget.take(bytes.len());
        // Where the line stands is kept while the stream is still held, so
        // that one of capsa's own lines (see `line_start`) never comes
        // between the write and it.
        let mark = |res: &std::io::Result<()>, mid_line: &AtomicBool| {
            if let (Ok(()), Some(last)) = (res, bytes[..n].last()) {
                mid_line.store(*last != b'\n', Ordering::Relaxed);
            }
        };
        let res = match self.which {
            Which::Stdout => {
                let mut out = std::io::stdout().lock();
                let res = out.write_all(&bytes[..n]).and_then(|_| out.flush());
                mark(&res, &STDOUT_MID_LINE);
                res
            }
            Which::Stderr => {
                let mut err = std::io::stderr().lock();
                let res = err.write_all(&bytes[..n]);
                mark(&res, &STDERR_MID_LINE);
                res
            }
        };
        res.map(|_| n == bytes.len())
    }
}

impl WasiIsTerminal for LimitedOutput {
    fn is_terminal(&self) -> bool {
        match self.which {
            Which::Stdout => IsTerminal::is_terminal(&std::io::stdout()),
            Which::Stderr => IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

impl StdoutStream for LimitedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LimitedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LimitedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        match self.write_bytes(&bytes) {
            Ok(true) => Ok(()),
            // Ending the run is the point of the limit: trap the guest.
            Ok(false) => Err(StreamError::trap("output limit reached")),
            // A closed pipe (`capsa run x | head`) is the guest's ordinary EPIPE.
            Err(e) => Err(StreamError::LastOperationFailed(e.into())),
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // As much as a program may ask to write at once: `write` takes it
        // all, synchronously. A smaller permit made wasi-libc's write()
        // short, and CPython's print() lost the rest of a large string.
        Ok(MAX_WRITE)
    }
}

impl tokio::io::AsyncWrite for LimitedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(match self.write_bytes(buf) {
            Ok(true) => Ok(buf.len()),
            Ok(false) => Err(std::io::Error::other("output limit reached")),
            Err(e) => Err(e),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_exact() {
        let b = OutputBudget::new(Some(10));
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(4), 4);
        assert!(!b.was_hit());
        assert_eq!(b.take(4), 2);
        assert!(b.was_hit());
        assert_eq!(b.take(1), 0);
        let unlimited = OutputBudget::new(None);
        assert_eq!(unlimited.take(1 << 30), 1 << 30);
        assert!(!unlimited.was_hit());
    }
}
