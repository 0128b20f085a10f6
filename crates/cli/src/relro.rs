//! Read-only after relocation, in the static build.
//!
//! A position-independent binary's vtables, function pointers and global
//! offset table (`PT_GNU_RELRO`) must be written once, when the binary is
//! relocated at its random address, and never again. glibc's loader makes
//! them read-only right after; musl's start-up code in a static binary
//! relocates them and leaves them writable. So the static build does it
//! itself, before `main` (a constructor, run after the relocations), as
//! glibc's loader would: every page wholly inside the segment becomes
//! read-only, and a failure ends the process, as it does there.

/// Run by the C library's start-up code with the other constructors.
#[used]
#[unsafe(link_section = ".init_array")]
static PROTECT: extern "C" fn() = protect;

extern "C" fn protect() {
    // SAFETY: the auxiliary vector's program headers are this executable's,
    // mapped for as long as it runs; mprotect only takes write access away
    // from pages nothing writes after relocation.
    unsafe {
        let phdr = libc::getauxval(libc::AT_PHDR) as usize;
        let count = libc::getauxval(libc::AT_PHNUM) as usize;
        let page = libc::getauxval(libc::AT_PAGESZ) as usize;
        if phdr == 0 || count == 0 || !page.is_power_of_two() {
            fail(b"capsa: cannot find its own program headers\n");
        }
        let headers = std::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, count);
        // Where it was loaded: the headers' address less their own link
        // address.
        let Some(base) = headers
            .iter()
            .find(|h| h.p_type == libc::PT_PHDR)
            .map(|h| phdr.wrapping_sub(h.p_vaddr as usize))
        else {
            fail(b"capsa: cannot find its own program headers\n");
        };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_GNU_RELRO) {
            let start = base.wrapping_add(h.p_vaddr as usize) & !(page - 1);
            let end = base
                .wrapping_add(h.p_vaddr as usize)
                .wrapping_add(h.p_memsz as usize)
                & !(page - 1);
            if end > start && libc::mprotect(start as *mut _, end - start, libc::PROT_READ) != 0 {
                fail(b"capsa: cannot make its relocated data read-only\n");
            }
        }
    }
}

/// Says `msg` and ends the process: this runs before Rust's runtime is set
/// up, so without a panic or an allocation.
fn fail(msg: &[u8]) -> ! {
    // SAFETY: writes a static buffer to stderr, then ends the process.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}
