//! Python's memory kept from run to run in a warm process, and reset in
//! place (Linux).
//!
//! A `capsa serve` worker runs the same Python component again and again.
//! wasmtime maps the component's memory snapshot copy-on-write for each
//! instance and unmaps it afterwards, so each run paid again for every page
//! it wrote (a fresh page, copied), for every page it read (a fault), and
//! for unmapping them all: about a third of all CPU time under load.
//!
//! Here the component runs without its memory's data segments (taken out
//! once, see `capsa_python::image`); their bytes, the image, lie in a file
//! in the code cache. This creator maps that file copy-on-write at the
//! start of the memory it makes. When the instance goes, the memory is not
//! unmapped but put back as the snapshot made it: every page of the image
//! that is no longer the file's (in `/proc/self/pagemap`: present and not
//! the file's page, or swapped out) gets the image's bytes again, the rest
//! of the memory's minimum size is emptied (`MADV_DONTNEED` gives zeros),
//! and what the run grew past it is emptied and made inaccessible again.
//! The next instance of the same memory gets that slot. A slot from which a
//! run wrote more than [`MOST_COPIED`] pages is unmapped instead, and the
//! next run maps the image anew: copying back costs more than faulting in.
//! A reset that fails in any way unmaps the slot.
//!
//! Every other memory (of another type) is a fresh reservation of zeros,
//! unmapped when its instance goes.

use std::sync::{Arc, Mutex};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// The page size this works in; on a system with larger pages (some
/// ARM machines), no component is split (see `reuse_for`).
pub const PAGE: usize = 4096;

/// A memory's initial contents, in a file of its own.
pub struct Image {
    file: std::fs::File,
    /// Its length, a multiple of the page size.
    len: usize,
    /// The memory's minimum size in bytes: which memory it is for.
    minimum: usize,
    /// The same bytes, mapped read-only, to copy back from.
    source: usize,
}

impl Image {
    /// The image in `file` (`len` bytes, a multiple of the page size) for a
    /// memory of `minimum` bytes.
    pub fn open(file: std::fs::File, len: u64, minimum: usize) -> std::io::Result<Image> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        if len == 0 || len % PAGE != 0 || len > minimum || file.metadata()?.len() != len as u64 {
            return Err(std::io::Error::other("the image does not fit its memory"));
        }
        // SAFETY: a new read-only shared mapping of the whole file.
        let source = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )?
        } as usize;
        Ok(Image {
            file,
            len,
            minimum,
            source,
        })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`, read only by slots this outlives.
        unsafe {
            let _ = rustix::mm::munmap(self.source as *mut _, self.len);
        }
    }
}

/// One reservation: a guard, `reserved` bytes from `base`, and a guard
/// again (as wasmtime lays out the memories it makes: the one before is
/// defence in depth against a compiler bug with a negative offset), the
/// first `size` bytes from `base` accessible.
struct Slot {
    /// Where the reservation starts, the guard before `base` included.
    start: usize,
    base: usize,
    reserved: usize,
    /// All of it, both guards included.
    total: usize,
    size: usize,
    /// The image mapped at its start, or none (a memory of zeros).
    image: Option<Arc<Image>>,
}

impl Slot {
    fn new(
        image: Option<Arc<Image>>,
        minimum: usize,
        reserved: usize,
        guard: usize,
    ) -> std::io::Result<Slot> {
        use rustix::mm::{MapFlags, ProtFlags, mmap, mmap_anonymous};
        let total = reserved
            .checked_add(guard)
            .and_then(|t| t.checked_add(guard))
            .ok_or_else(|| std::io::Error::other("too large"))?;
        // SAFETY: a new reservation of nothing accessible.
        let start = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        } as usize;
        let base = start + guard;
        let mut slot = Slot {
            start,
            base,
            reserved,
            total,
            size: 0,
            image: None,
        };
        if let Some(image) = image {
            // SAFETY: over the start of the reservation this owns.
            unsafe {
                mmap(
                    base as *mut _,
                    image.len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                    &image.file,
                    0,
                )?;
            }
            slot.size = image.len;
            slot.image = Some(image);
        }
        slot.grow_to(minimum)?;
        slot.size = minimum;
        Ok(slot)
    }

    fn image_len(&self) -> usize {
        self.image.as_ref().map_or(0, |i| i.len)
    }

    fn grow_to(&mut self, new: usize) -> std::io::Result<()> {
        if new > self.reserved {
            return Err(std::io::Error::other("beyond the reservation"));
        }
        if new > self.size {
            let from = self.size.max(self.image_len());
            if new > from {
                // SAFETY: inside the reservation this owns.
                unsafe {
                    rustix::mm::mprotect(
                        (self.base + from) as *mut _,
                        new - from,
                        rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
                    )?;
                }
            }
            self.size = new;
        }
        Ok(())
    }

    /// Puts the memory back as it was made with `minimum` bytes: the
    /// image's pages hold the image, the rest of `minimum` zeros, nothing
    /// beyond accessible. Gives how many pages were copied back.
    fn reset(&mut self, minimum: usize) -> std::io::Result<usize> {
        use rustix::mm::{Advice, MprotectFlags, madvise, mprotect};
        let image_len = self.image_len();
        // SAFETY: every range lies inside the reservation this owns, which
        // no instance uses any more.
        unsafe {
            if self.size > minimum {
                let len = self.size - minimum;
                madvise((self.base + minimum) as *mut _, len, Advice::LinuxDontNeed)?;
                mprotect((self.base + minimum) as *mut _, len, MprotectFlags::empty())?;
            }
            self.size = minimum;
            if minimum > image_len {
                madvise(
                    (self.base + image_len) as *mut _,
                    minimum - image_len,
                    Advice::LinuxDontNeed,
                )?;
            }
        }
        let Some(image) = &self.image else {
            return Ok(0);
        };
        let entries = crate::prefault::pagemap(self.base, image.len / PAGE)?;
        let mut copied = 0;
        for (i, e) in entries.iter().enumerate() {
            let present = e >> 63 & 1 == 1;
            let swapped = e >> 62 & 1 == 1;
            let file_or_shared = e >> 61 & 1 == 1;
            if swapped || (present && !file_or_shared) {
                // SAFETY: page `i` of the image and of the slot's start.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (image.source + i * PAGE) as *const u8,
                        (self.base + i * PAGE) as *mut u8,
                        PAGE,
                    );
                }
                copied += 1;
            }
        }
        Ok(copied)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `new`, used by no instance now.
        unsafe {
            let _ = rustix::mm::munmap(self.start as *mut _, self.total);
        }
    }
}

/// A memory handed to wasmtime; its slot goes back to `pool` when the
/// instance goes.
struct Kept {
    slot: Option<Slot>,
    minimum: usize,
    pool: Arc<Mutex<Vec<Slot>>>,
}

unsafe impl LinearMemory for Kept {
    fn byte_size(&self) -> usize {
        self.slot.as_ref().map_or(0, |s| s.size)
    }
    fn byte_capacity(&self) -> usize {
        self.slot.as_ref().map_or(0, |s| s.reserved)
    }
    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        match &mut self.slot {
            Some(s) => Ok(s.grow_to(new_size)?),
            None => wasmtime::bail!("no memory"),
        }
    }
    fn as_ptr(&self) -> *mut u8 {
        self.slot
            .as_ref()
            .map_or(std::ptr::null_mut(), |s| s.base as *mut u8)
    }
}

/// Slots from which a run wrote more pages than this (8 MiB) are unmapped
/// instead of kept: copying them all back at every reset would cost more
/// than the faults of a fresh mapping.
const MOST_COPIED: usize = 2048;

impl Drop for Kept {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        if slot.image.is_none() {
            return;
        }
        match slot.reset(self.minimum) {
            Ok(n) if n <= MOST_COPIED => {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                if pool.is_empty() {
                    pool.push(slot);
                }
            }
            // Anything else: unmapped.
            _ => {}
        }
    }
}

/// Gives the memory `image` is for a kept slot, every other memory a
/// fresh reservation of zeros.
pub struct Slots {
    image: Arc<Image>,
    pool: Arc<Mutex<Vec<Slot>>>,
}

impl Slots {
    pub fn new(image: Arc<Image>) -> Slots {
        Slots {
            image,
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

unsafe impl MemoryCreator for Slots {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let _ = maximum;
        let reserved = reserved_size_in_bytes.ok_or("no reservation size")?;
        let ours = minimum == self.image.minimum && !ty.is_shared() && !ty.is_64();
        let slot = if ours {
            let kept = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match kept {
                Some(s)
                    if s.reserved == reserved && s.total == reserved + 2 * guard_size_in_bytes =>
                {
                    s
                }
                _ => Slot::new(
                    Some(self.image.clone()),
                    minimum,
                    reserved,
                    guard_size_in_bytes,
                )
                .map_err(|e| e.to_string())?,
            }
        } else {
            Slot::new(None, minimum, reserved, guard_size_in_bytes).map_err(|e| e.to_string())?
        };
        Ok(Box::new(Kept {
            slot: Some(slot),
            minimum,
            pool: self.pool.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_slot_holds_the_image_again_and_zeros_after_it() {
        let mut bytes = vec![0u8; 40 * PAGE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let minimum = 64 * PAGE;
        let path = std::env::temp_dir().join(format!("capsa-slot-test-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let image = Arc::new(Image::open(file, bytes.len() as u64, minimum).unwrap());
        let mut slot = Slot::new(Some(image.clone()), minimum, 1 << 30, 1 << 20).unwrap();
        // Nothing is accessible just before the memory or past its size.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for at in [slot.base - 1, slot.base - (1 << 20), slot.base + (1 << 30)] {
            let line = maps
                .lines()
                .find(|l| {
                    let (a, b) = l
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .split_once('-')
                        .unwrap();
                    let (a, b) = (
                        usize::from_str_radix(a, 16).unwrap(),
                        usize::from_str_radix(b, 16).unwrap(),
                    );
                    a <= at && at < b
                })
                .unwrap();
            assert!(
                line.split_whitespace().nth(1).unwrap().starts_with("---"),
                "{line}"
            );
        }
        for round in 0..3u8 {
            slot.grow_to(minimum + 16 * PAGE).unwrap();
            // Write some pages, read others, past the image too.
            unsafe {
                for p in (0..80).step_by(3 + round as usize) {
                    *((slot.base + p * PAGE + 5) as *mut u8) = 0xAA ^ round;
                }
                for p in (1..40).step_by(5) {
                    std::ptr::read_volatile((slot.base + p * PAGE) as *const u8);
                }
            }
            slot.reset(minimum).unwrap();
            assert_eq!(slot.size, minimum);
            let mem = unsafe { std::slice::from_raw_parts(slot.base as *const u8, minimum) };
            let mut want = bytes.clone();
            want.resize(minimum, 0);
            assert!(mem == &want[..], "round {round}");
            // Grown again, the memory past the minimum is zeros.
            slot.grow_to(minimum + 16 * PAGE).unwrap();
            let grown = unsafe {
                std::slice::from_raw_parts((slot.base + minimum) as *const u8, 16 * PAGE)
            };
            assert!(grown.iter().all(|&b| b == 0), "round {round}");
            slot.reset(minimum).unwrap();
        }
    }
}
