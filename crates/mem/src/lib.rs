//! `memcpy` and `memmove` for capsa's static build (README, "Platforms").
//!
//! Every `memory.copy` a guest makes is one host `memmove`, and CPython for
//! WASI makes one for each of its `memcpy`s, most of them a few dozen bytes.
//! musl's x86-64 `memcpy` starts each with `rep movsq` and ends with a byte
//! loop: an eighth of a JSON benchmark's time, which ran 46% slower than with
//! glibc's. Here a copy of up to 64 bytes is a few unaligned loads, all made
//! before any store (so it is also a correct `memmove`), and a longer one
//! moves 64 bytes at a time, forwards or backwards as the overlap requires.
//!
//! The symbols are defined only in the static build (musl on x86-64), where
//! they take the place of the C library's; elsewhere the crate holds only the
//! copy itself, for its tests, which check every byte a copy leaves against
//! what a `memmove` must leave.
//!
//! `no_builtins`: the compiler must not turn these loops back into calls to
//! `memcpy` (which would be these functions). The crate is compiled with
//! optimisation and without debug checks in every profile (the workspace's
//! Cargo.toml), so that the unaligned reads below are plain loads; a test of
//! the static build (crates/cli/tests/all/layout.rs) checks in the binary
//! that neither function calls anything.
#![no_std]
#![no_builtins]

use core::ptr::{read_unaligned as load, write_unaligned as store};

/// Copies `n` bytes from `src` to `dst`; the two may overlap. (Not public:
/// only this crate is compiled without builtins.)
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[cfg_attr(
    not(all(target_env = "musl", target_arch = "x86_64")),
    allow(dead_code)
)]
#[inline(always)]
unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every access below is within the first `n` bytes of `src` or
    // `dst`, as the caller guarantees valid.
    unsafe {
        if n <= 64 {
            return small(dst, src, n);
        }
        if (dst as usize).wrapping_sub(src as usize) >= n {
            // `dst` is before `src`, or they do not overlap: forwards. A store
            // of block i reaches at most the source's block i, already read.
            let mut i = 0;
            while n - i >= 64 {
                let b = block(src.add(i));
                put(dst.add(i), b);
                i += 64;
            }
            small(dst.add(i), src.add(i), n - i);
        } else {
            // `dst` is after `src` and overlaps it: backwards, for the same
            // reason the other way round.
            let mut end = n;
            while end >= 64 {
                let b = block(src.add(end - 64));
                put(dst.add(end - 64), b);
                end -= 64;
            }
            small(dst, src, end);
        }
    }
}

type Block = [u128; 4];

#[inline(always)]
unsafe fn block(p: *const u8) -> Block {
    // SAFETY: the caller's 64 bytes.
    unsafe {
        [
            load(p.cast::<u128>()),
            load(p.add(16).cast::<u128>()),
            load(p.add(32).cast::<u128>()),
            load(p.add(48).cast::<u128>()),
        ]
    }
}

#[inline(always)]
unsafe fn put(p: *mut u8, b: Block) {
    // SAFETY: the caller's 64 bytes.
    unsafe {
        store(p.cast::<u128>(), b[0]);
        store(p.add(16).cast::<u128>(), b[1]);
        store(p.add(32).cast::<u128>(), b[2]);
        store(p.add(48).cast::<u128>(), b[3]);
    }
}

/// Up to 64 bytes: the first and the last pieces of a size, which overlap
/// when `n` is not twice it, all read before any is written.
#[inline(always)]
unsafe fn small(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: each access is within the first `n` bytes (the branch's bounds
    // say which sizes fit).
    unsafe {
        if n >= 32 {
            let (a, b) = (load(src.cast::<u128>()), load(src.add(16).cast::<u128>()));
            let (c, d) = (
                load(src.add(n - 32).cast::<u128>()),
                load(src.add(n - 16).cast::<u128>()),
            );
            store(dst.cast::<u128>(), a);
            store(dst.add(16).cast::<u128>(), b);
            store(dst.add(n - 32).cast::<u128>(), c);
            store(dst.add(n - 16).cast::<u128>(), d);
        } else if n >= 16 {
            ends::<u128>(dst, src, n);
        } else if n >= 8 {
            ends::<u64>(dst, src, n);
        } else if n >= 4 {
            ends::<u32>(dst, src, n);
        } else if n >= 2 {
            ends::<u16>(dst, src, n);
        } else if n == 1 {
            *dst = *src;
        }
    }
}

/// `n` bytes, `n` from one to two `T`s: the first and the last `T`, both
/// read before either is written.
#[inline(always)]
unsafe fn ends<T>(dst: *mut u8, src: *const u8, n: usize) {
    let last = n - size_of::<T>();
    // SAFETY: size_of::<T>() <= n, so both pieces are within the caller's
    // `n` bytes.
    unsafe {
        let (a, b) = (load(src.cast::<T>()), load(src.add(last).cast::<T>()));
        store(dst.cast::<T>(), a);
        store(dst.add(last).cast::<T>(), b);
    }
}

/// The C library's `memcpy`, in the static build.
///
/// # Safety
///
/// As C's: `src` valid for reads and `dst` for writes of `n` bytes.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's, as C's memcpy (a memmove is a correct memcpy).
    unsafe { copy(dst, src, n) };
    dst
}

/// The C library's `memmove`, in the static build.
///
/// # Safety
///
/// As C's: `src` valid for reads and `dst` for writes of `n` bytes.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's, as C's memmove.
    unsafe { copy(dst, src, n) };
    dst
}

#[cfg(test)]
mod tests {
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// The byte at `i` of a buffer before the copy.
    fn pattern(i: usize) -> u8 {
        (i * 7 + 3 + i / 251) as u8
    }

    /// Copies `n` bytes within one buffer of `len`, from `from` to `to`, and
    /// checks every byte against what a memmove must leave, worked out
    /// without copying memory (in the static build, `clone` and
    /// `core::ptr::copy` would call these very functions).
    fn check(len: usize, from: usize, to: usize, n: usize) {
        let mut buf: Vec<u8> = (0..len).map(pattern).collect();
        // SAFETY: from + n and to + n are within len (the callers' bounds).
        unsafe { super::copy(buf.as_mut_ptr().add(to), buf.as_ptr().add(from), n) };
        for (i, &got) in buf.iter().enumerate() {
            let want = if (to..to + n).contains(&i) {
                pattern(from + i - to)
            } else {
                pattern(i)
            };
            assert_eq!(
                got, want,
                "len {len}, from {from} to {to}, {n} bytes: byte {i}"
            );
        }
    }

    #[test]
    fn every_small_length_and_overlap() {
        for n in 0..=200 {
            for shift in 0..=70 {
                check(n + shift + 8, 4, 4 + shift, n);
                check(n + shift + 8, 4 + shift, 4, n);
            }
        }
    }

    #[test]
    fn apart() {
        for n in [0, 1, 63, 64, 65, 127, 128, 129, 4096, 100_003] {
            check(2 * n + 40, 3, n + 20, n);
            check(2 * n + 40, n + 20, 3, n);
        }
    }

    proptest! {
        #[test]
        fn like_ptr_copy(n in 0usize..5000, from in 0usize..5000, to in 0usize..5000) {
            check(n + from.max(to) + 1, from, to, n);
        }
    }
}
