//! What capsa's own heap holds, so that what a guest makes the host keep
//! for it counts against its memory limit.
//!
//! A guest can make the host hold memory that is not its own linear
//! memory: each `wasi:http` field list keeps up to 128 KiB of header bytes,
//! a request keeps its path and authority, a stream keeps what was written
//! to it, and each of up to 100,000 resources may hold such things while
//! the guest reuses the same few pages of its own memory for the next. So
//! the program's global allocator is [`Counting`], which keeps the bytes in
//! use in the whole process, and a run counts what was added since it
//! started together with its linear memories (see `MemoryLimiter`).
//!
//! A process whose allocator is not [`Counting`] (a library's tests) counts
//! nothing: [`in_use`] stays 0.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Bytes allocated and not yet freed through [`Counting`], as the allocator
/// takes them ([`taken`]). Signed: a process's counts start at 0 wherever
/// the allocator is first used.
static IN_USE: AtomicIsize = AtomicIsize::new(0);

/// What the allocator takes for a block of `size` bytes, about: a header
/// of 8 bytes, steps of 16, 32 at least (glibc's; mimalloc's size classes
/// are as close). Counted as asked, a 1-byte block counted 1 where it took
/// 32, and a list of 20 million one-byte names was counted a 30th of what
/// it held.
fn taken(size: usize) -> isize {
    let t = size.saturating_add(8 + 15) & !15;
    isize::try_from(t.max(32)).unwrap_or(isize::MAX)
}

/// Bytes of the heap in use now, by the allocator's count.
pub fn in_use() -> isize {
    IN_USE.load(Relaxed)
}

/// The largest block in use of at least [`LARGE`] bytes, as far as the
/// allocator knows (its address and size; 0 when it was freed and none
/// larger came since). One host call copies each argument of the program's
/// into one block (a 100 MB write to stdout is a 100 MB block for as long
/// as a slow reader takes), data the program also holds in its own memory,
/// counted there: the largest block is not counted twice. Many blocks (the
/// many field lists of a program making the host hold memory) still count,
/// all but one.
static LARGEST_AT: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Blocks smaller than this are never the largest (see [`LARGEST`]).
const LARGE: usize = 1 << 20;

/// The most [`IN_USE`] has been, less the largest block then, since the
/// last [`RunMemory::start`]. What the host held for a program and freed
/// is not room for the program to fill: the allocator keeps pages freed
/// between blocks still in use (100 KB field values dropped while small
/// ones stayed), and a run that counted only what is in use now held
/// three times its limit.
static HIGH: AtomicIsize = AtomicIsize::new(isize::MIN);

fn allocated(p: *mut u8, size: usize) {
    let t = taken(size);
    let now = IN_USE.fetch_add(t, Relaxed) + t;
    let mut largest = LARGEST.load(Relaxed);
    if size >= LARGE && size > largest {
        LARGEST_AT.store(p as usize, Relaxed);
        LARGEST.store(size, Relaxed);
        largest = size;
    }
    HIGH.fetch_max(now - isize::try_from(largest).unwrap_or(0), Relaxed);
}

fn freed(p: *mut u8, size: usize) {
    IN_USE.fetch_sub(taken(size), Relaxed);
    if size >= LARGE && LARGEST_AT.load(Relaxed) == p as usize {
        LARGEST.store(0, Relaxed);
        LARGEST_AT.store(0, Relaxed);
    }
}

/// A global allocator that keeps count of the bytes in use, around `A`.
pub struct Counting<A>(pub A);

// Each call adds or takes away what the allocator takes for the layout's
// size (see `taken`).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            allocated(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            allocated(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Counted first: once freed, another thread may get the address.
        freed(ptr, layout.size());
        unsafe { self.0.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            freed(ptr, layout.size());
            allocated(p, new_size);
        }
        p
    }
}

/// One run's memory as its limit sees it: its linear memories, kept by the
/// store's limiter, and what the heap grew by since the program started,
/// which the run's watchdog looks at as the program runs.
pub(crate) struct RunMemory {
    pub(crate) limit: u64,
    /// [`in_use`] when the program started; [`NOT_STARTED`] before (loading
    /// and compiling it are not the program's doing).
    base: AtomicIsize,
    /// Bytes of every linear memory the program holds.
    pub(crate) linear: AtomicU64,
}

const NOT_STARTED: isize = isize::MIN;

impl RunMemory {
    pub(crate) fn new(limit: u64) -> Self {
        RunMemory {
            limit,
            base: AtomicIsize::new(NOT_STARTED),
            linear: AtomicU64::new(0),
        }
    }

    /// The program starts (is instantiated) now. The largest block is
    /// forgotten: one held from before (a piece of the compiled program's
    /// metadata) is no copy of the program's, and must not be forgiven.
    pub(crate) fn start(&self) {
        LARGEST.store(0, Relaxed);
        LARGEST_AT.store(0, Relaxed);
        let now = in_use();
        HIGH.store(now, Relaxed);
        self.base.store(now, Relaxed);
    }

    /// Bytes the heap grew by since the program started, less its largest
    /// block (see [`LARGEST`]) up to the size of the program's own
    /// memories: a copy of a list of lists is three times what the program
    /// holds of it (a name is 8 bytes there, 24 here), and only a copy the
    /// size of what the program holds is forgiven. At least the most it
    /// grew by, less the largest block then (see [`HIGH`]): what was freed
    /// since is still the process's.
    pub(crate) fn host(&self) -> u64 {
        match self.base.load(Relaxed) {
            NOT_STARTED => 0,
            base => {
                let largest = (LARGEST.load(Relaxed) as u64).min(self.linear.load(Relaxed));
                let now = in_use()
                    .saturating_sub(base)
                    .saturating_sub(isize::try_from(largest).unwrap_or(isize::MAX));
                let most = HIGH.load(Relaxed).saturating_sub(base);
                u64::try_from(now.max(most)).unwrap_or(0)
            }
        }
    }

    /// Whether the program holds more than its limit, its linear memories
    /// and the host's part together.
    pub(crate) fn over(&self) -> bool {
        self.linear.load(Relaxed).saturating_add(self.host()) > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_allocated_and_freed_and_the_largest_block() {
        let a = Counting(std::alloc::System);
        let before = in_use();
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let p = a.realloc(p, layout, 3 << 20);
            assert!(!p.is_null());
            let z = a.alloc_zeroed(layout);
            assert!(!z.is_null());
            // Other tests' threads do not use this allocator.
            assert_eq!(in_use() - before, taken(1 << 20) + taken(3 << 20));
            assert_eq!(taken(1 << 20), (1 << 20) + 16);
            // A small block takes more than it asked for.
            let one = Layout::from_size_align(1, 1).unwrap();
            let b = a.alloc(one);
            assert_eq!(in_use() - before, taken(1 << 20) + taken(3 << 20) + 32);
            a.dealloc(b, one);
            a.dealloc(p, Layout::from_size_align(3 << 20, 8).unwrap());
            a.dealloc(z, layout);
        }
        assert_eq!(in_use(), before);

        // The largest block is known until it is freed. (One test: the
        // counts are the process's, which another test would change.)
        let small = Layout::from_size_align(64 << 10, 8).unwrap();
        let big = Layout::from_size_align(8 << 20, 8).unwrap();
        unsafe {
            let s = a.alloc(small);
            assert_ne!(LARGEST.load(Relaxed), small.size());
            let b = a.alloc(big);
            assert_eq!(LARGEST.load(Relaxed), big.size());
            assert_eq!(LARGEST_AT.load(Relaxed), b as usize);
            a.dealloc(b, big);
            assert_eq!(LARGEST.load(Relaxed), 0);
            a.dealloc(s, small);
        }

        // A block held from before the program started is not its largest:
        // only a block of the run's own is forgiven, and only up to the
        // size of the program's own memories.
        let run = RunMemory::new(1 << 30);
        run.linear.store(8 << 20, Relaxed);
        let mid = Layout::from_size_align(4 << 20, 8).unwrap();
        let two = Layout::from_size_align(2 << 20, 8).unwrap();
        let size = |l: Layout| taken(l.size()) as u64;
        unsafe {
            let held = a.alloc(big);
            run.start();
            let copy = a.alloc(mid);
            assert_eq!(run.host(), 16, "the run's largest block is forgiven");
            let kept = a.alloc(two);
            assert_eq!(run.host(), size(mid) + size(two) - (4 << 20));
            run.linear.store(1 << 20, Relaxed);
            assert_eq!(run.host(), size(mid) + size(two) - (1 << 20));
            a.dealloc(held, big);
            a.dealloc(kept, two);
            a.dealloc(copy, mid);
        }

        // What the host held and freed is still counted; the largest block
        // then is not, freed or not (a large write to stdout).
        let run = RunMemory::new(1 << 30);
        run.linear.store(8 << 20, Relaxed);
        let piece = Layout::from_size_align(100 << 10, 8).unwrap();
        unsafe {
            run.start();
            let copy = a.alloc(mid);
            a.dealloc(copy, mid);
            assert_eq!(run.host(), 16);
            let pieces: Vec<_> = (0..10).map(|_| a.alloc(piece)).collect();
            let held = 10 * size(piece);
            assert_eq!(run.host(), held);
            for p in pieces {
                a.dealloc(p, piece);
            }
            assert_eq!(run.host(), held, "freed, still counted");
        }
    }
}
