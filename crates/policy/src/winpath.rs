//! How a Windows host path appears in the guest, and back.
//!
//! A guest sees POSIX paths, as WASI programs expect: `C:\data\in` is
//! `/c/data/in` (the drive letter in lower case, as in MSYS and Git Bash), so
//! `/` is always the root the guest knows, and a path with no `::` is still
//! the same text in the guest as on the host, only spelled the POSIX way.
//! Network paths (`\\server\share`) have no such spelling: they need
//! `HOST::GUEST`. Pure text, so it is tested on every system.

/// `C:\data\in`, `c:/data/in/` and `\\?\C:\data\in` → `/c/data/in`.
/// `None` for a path that is not absolute on a drive.
pub fn guest_of_host(host: &str) -> Option<String> {
    let host = strip_verbatim(host);
    let bytes = host.as_bytes();
    if bytes.len() < 2 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b':' {
        return None;
    }
    let rest = &host[2..];
    if !rest.is_empty() && !rest.starts_with(['\\', '/']) {
        // `C:data` is relative to the drive's current directory.
        return None;
    }
    let mut out = format!("/{}", (bytes[0] as char).to_ascii_lowercase());
    for part in rest
        .split(['\\', '/'])
        .filter(|p| !p.is_empty() && *p != ".")
    {
        out.push('/');
        out.push_str(part);
    }
    Some(out)
}

/// `/c/data/in` → `C:\data\in`: the host path a guest path names when a
/// drive is mapped as itself. `None` when the first name is not one letter.
pub fn host_of_guest(guest: &str) -> Option<String> {
    let rest = guest.strip_prefix('/')?;
    let (drive, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let letter = drive.chars().next()?;
    if drive.len() != 1 || !letter.is_ascii_alphabetic() {
        return None;
    }
    let mut out = format!("{}:\\", letter.to_ascii_uppercase());
    out.push_str(
        &tail
            .split('/')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("\\"),
    );
    Some(out)
}

/// `\\?\C:\x` → `C:\x` (what `canonicalize` gives on Windows, shown as a
/// user would type it); anything else as it is.
pub fn strip_verbatim(path: &str) -> &str {
    match path.strip_prefix(r"\\?\") {
        Some(rest) if rest.as_bytes().get(1) == Some(&b':') => rest,
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_become_guest_paths() {
        let cases: &[(&str, Option<&str>)] = &[
            (r"C:\data", Some("/c/data")),
            (r"D:\out\", Some("/d/out")),
            ("c:/data/in/", Some("/c/data/in")),
            (r"C:\", Some("/c")),
            ("C:", Some("/c")),
            (r"\\?\C:\Users\me\x.txt", Some("/c/Users/me/x.txt")),
            (r"C:\a\.\b", Some("/c/a/b")),
            (r"C:data", None),
            (r"\\server\share\x", None),
            (r"\\?\UNC\server\share", None),
            (r"\data", None),
            ("data", None),
            ("", None),
            ("1:/x", None),
        ];
        for (host, guest) in cases {
            assert_eq!(guest_of_host(host).as_deref(), *guest, "{host}");
        }
    }

    #[test]
    fn guest_paths_name_drives() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/c/data/x", Some(r"C:\data\x")),
            ("/d", Some(r"D:\")),
            ("/c//a/", Some(r"C:\a")),
            ("/cd/x", None),
            ("/1/x", None),
            ("c/x", None),
            ("/", None),
        ];
        for (guest, host) in cases {
            assert_eq!(host_of_guest(guest).as_deref(), *host, "{guest}");
        }
        for host in [r"C:\data\in", r"D:\x y\z"] {
            assert_eq!(host_of_guest(&guest_of_host(host).unwrap()).unwrap(), host);
        }
    }

    #[test]
    fn verbatim_prefix_is_dropped_only_for_drives() {
        assert_eq!(strip_verbatim(r"\\?\C:\x"), r"C:\x");
        assert_eq!(strip_verbatim(r"\\?\UNC\s\x"), r"\\?\UNC\s\x");
        assert_eq!(strip_verbatim(r"C:\x"), r"C:\x");
    }
}
