//! A file's read and write streams that do their I/O on the calling thread.
//!
//! wasmtime-wasi's own file streams hand each non-blocking `read` and
//! `write` to tokio's blocking pool and wait for it on another thread, and
//! the preview 1 adapter reads and writes files that way: a Python
//! `os.read` of a small file cost 57 us and an `os.write` 78 us, against
//! 1.5 us for `os.pread` and `os.pwrite` (which are done in place). The
//! guest runs on a thread of its own that may block
//! (`allow_blocking_current_thread`), so these streams do the I/O at once,
//! with wasmtime-wasi's results: a read returns at most 64 KiB, the end of
//! the file closes the stream, and an error is the call's own.
//!
//! One difference, on purpose: a write may be up to 16 MiB at a time
//! (wasmtime-wasi's 64 KiB made every larger `write()` come back short,
//! which CPython's own bytecode writer took for a failure).

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// As wasmtime-wasi's: a guest asking for more gets at most this per call.
const MAX_READ: usize = 64 * 1024;

/// What a write may hand over at once.
const MAX_WRITE: usize = 16 << 20;

pub(crate) struct FileReadStream {
    file: Arc<std::fs::File>,
    position: u64,
    closed: bool,
}

impl FileReadStream {
    pub(crate) fn new(file: Arc<std::fs::File>, position: u64) -> FileReadStream {
        FileReadStream {
            file,
            position,
            closed: false,
        }
    }
}

impl InputStream for FileReadStream {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::zeroed(size.min(MAX_READ));
        loop {
            match read_at(&self.file, &mut buf, self.position) {
                Ok(0) => {
                    self.closed = true;
                    return Err(StreamError::Closed);
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.position += n as u64;
                    return Ok(buf.freeze());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    return Err(StreamError::LastOperationFailed(e.into()));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Pollable for FileReadStream {
    /// Always ready: a read never waits for another thread.
    async fn ready(&mut self) {}
}

/// A stream writing at a position of its own, from `write-via-stream`.
/// (Appending streams stay wasmtime-wasi's.)
pub(crate) struct FileWriteStream {
    file: Arc<std::fs::File>,
    position: u64,
    state: WriteState,
    /// The run's file write limit: each write counts its bytes and the gap
    /// it leaves past the file's end (see [`write_cost`]).
    budget: Arc<crate::output::OutputBudget>,
}

/// What a write of `len` bytes at `offset` makes the file take: its bytes;
/// the gap it leaves between the file's end and `offset`, which some file
/// systems fill in and which, one byte a block apart, takes a whole block
/// for each byte on the others; and, for a write into a hole the file
/// already has (made before the run, or paid for as a gap), the whole
/// blocks it spans.
pub(crate) fn write_cost(file: &std::fs::File, offset: u64, len: usize) -> u64 {
    const BLOCK: u64 = 4096;
    let end = file.metadata().map(|m| m.len()).unwrap_or(0);
    let len = len as u64;
    let bytes = len.saturating_add(offset.saturating_sub(end));
    if offset < end && in_a_hole(file, offset, len.min(end - offset)) {
        let first = offset / BLOCK * BLOCK;
        let last = offset
            .saturating_add(len)
            .div_ceil(BLOCK)
            .saturating_mul(BLOCK);
        return bytes.max(last - first);
    }
    bytes
}

/// Whether `offset..offset + len` of `file` reaches into a hole. The
/// file's cursor is left where it was.
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
fn in_a_hole(file: &std::fs::File, offset: u64, len: u64) -> bool {
    use rustix::fs::{SeekFrom, seek};
    let Ok(cursor) = seek(file, SeekFrom::Current(0)) else {
        return false;
    };
    let hole = seek(file, SeekFrom::Hole(offset));
    let _ = seek(file, SeekFrom::Start(cursor));
    matches!(hole, Ok(h) if h < offset.saturating_add(len))
}

/// Elsewhere a file has holes only if it was made sparse on purpose.
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "freebsd")))]
fn in_a_hole(_: &std::fs::File, _: u64, _: u64) -> bool {
    false
}

enum WriteState {
    Ready,
    /// The last write failed: said at the next call, as wasmtime-wasi does.
    Failed(std::io::Error),
    Closed,
}

impl FileWriteStream {
    pub(crate) fn new(
        file: Arc<std::fs::File>,
        position: u64,
        budget: Arc<crate::output::OutputBudget>,
    ) -> FileWriteStream {
        FileWriteStream {
            file,
            position,
            state: WriteState::Ready,
            budget,
        }
    }

    /// `Ok` while the stream can take more; else the error it ended with.
    fn usable(&mut self) -> Result<(), StreamError> {
        match std::mem::replace(&mut self.state, WriteState::Closed) {
            WriteState::Ready => {
                self.state = WriteState::Ready;
                Ok(())
            }
            WriteState::Failed(e) => Err(StreamError::LastOperationFailed(e.into())),
            WriteState::Closed => Err(StreamError::Closed),
        }
    }
}

impl OutputStream for FileWriteStream {
    fn write(&mut self, mut buf: Bytes) -> Result<(), StreamError> {
        match self.state {
            WriteState::Ready => {}
            WriteState::Closed => return Err(StreamError::Closed),
            WriteState::Failed(_) => {
                return Err(StreamError::Trap(wasmtime::format_err!(
                    "write not permitted: check_write not called first"
                )));
            }
        }
        if buf.len() > MAX_WRITE {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "write beyond the permit check_write gave"
            )));
        }
        if self.budget.limited()
            && !buf.is_empty()
            && !self
                .budget
                .spend(write_cost(&self.file, self.position, buf.len()))
        {
            return Err(StreamError::trap("file write limit reached"));
        }
        while !buf.is_empty() {
            match write_at(&self.file, &buf, self.position) {
                Ok(n) => {
                    let _ = buf.split_to(n);
                    self.position += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = WriteState::Failed(e);
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        // Nothing is held back: each write was done when it was made.
        self.usable()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.usable().map(|()| MAX_WRITE)
    }
}

#[async_trait::async_trait]
impl Pollable for FileWriteStream {
    /// Always ready: a write never waits for another thread.
    async fn ready(&mut self) {}
}

/// A file's appending stream whose bytes count against the run's file
/// write limit (`--max-write`): a write past it is not made, and ends the
/// run. (An append leaves no gap.)
pub(crate) struct CountedWrites {
    inner: wasmtime_wasi::p2::DynOutputStream,
    budget: Arc<crate::output::OutputBudget>,
}

impl CountedWrites {
    pub(crate) fn new(
        inner: wasmtime_wasi::p2::DynOutputStream,
        budget: Arc<crate::output::OutputBudget>,
    ) -> CountedWrites {
        CountedWrites { inner, budget }
    }

    fn spend(&self, n: usize) -> Result<(), StreamError> {
        if self.budget.spend(n as u64) {
            Ok(())
        } else {
            Err(StreamError::trap("file write limit reached"))
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for CountedWrites {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.spend(bytes.len())?;
        self.inner.write(bytes)
    }

    fn write_zeroes(&mut self, n: usize) -> Result<(), StreamError> {
        self.spend(n)?;
        self.inner.write_zeroes(n)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[async_trait::async_trait]
impl Pollable for CountedWrites {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// As wasmtime-wasi reads there: the file's cursor is left where it is
/// (every read names its offset).
#[cfg(windows)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}
