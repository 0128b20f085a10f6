//! [`GuestPath`]: a path inside the guest, checked once where it enters.
//!
//! A guest path that came from a bundle was once formatted into flag text
//! (`HOST::GUEST`) and split again at `,`: `guest = "/out,/"` became a second
//! grant of the host's `/`. A `GuestPath` holds exactly one absolute,
//! normalized path with nothing in it that a flag parser or a terminal
//! would read as structure, so it can travel typed and be shown as is.

use crate::PolicyError;
use crate::text::is_terminal_unsafe;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest guest path accepted, in bytes: far above any real mount point,
/// low enough that a prompt listing it stays readable.
pub const MAX_GUEST_PATH: usize = 1024;

/// One absolute guest path in normal form: starts with `/`, no empty, `.`
/// or `..` component (so no `//` and no trailing `/`, except `/` itself), no
/// `,`, `::` or `\`, no control, bidirectional or invisible characters, at most
/// [`MAX_GUEST_PATH`] bytes. Its `Display` is the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GuestPath(String);

impl GuestPath {
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::GuestPath {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(c) = input.chars().find(|&c| is_terminal_unsafe(c)) {
            return Err(err(&format!(
                "the control, bidirectional or invisible character {c:?} is not allowed"
            )));
        }
        if input.len() > MAX_GUEST_PATH {
            return Err(err(&format!("longer than {MAX_GUEST_PATH} bytes")));
        }
        if !input.starts_with('/') {
            return Err(err("must be absolute (start with /)"));
        }
        if input.contains(',') {
            return Err(err(
                "one path only: \",\" separates paths in a list of grants",
            ));
        }
        if input.contains("::") {
            return Err(err("\"::\" separates a host path from a guest path"));
        }
        if input.contains('\\') {
            return Err(err("use / to separate components, not \\"));
        }
        if input != "/" {
            for c in input[1..].split('/') {
                match c {
                    "" => return Err(err("empty component (// or a trailing /)")),
                    "." | ".." => return Err(err("no . or .. components")),
                    _ => {}
                }
            }
        }
        Ok(GuestPath(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Whether `self` is `base` or below it, component by component
    /// (`/database` is not below `/data`).
    pub fn is_within(&self, base: &GuestPath) -> bool {
        base.is_root()
            || self.0 == base.0
            || self
                .0
                .strip_prefix(base.0.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for GuestPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GuestPath {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        GuestPath::parse(&s)
    }
}

impl From<GuestPath> for String {
    fn from(p: GuestPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/out", None),
            ("/", None),
            ("/a/b-c/d_e.f", None),
            ("/mnt/disk:1", None),
            ("/with space", None),
            ("/données", None),
            ("/out,/", Some("one path only")),
            (",", Some("absolute")),
            ("/a::/b", Some("separates a host path")),
            ("out", Some("absolute")),
            ("", Some("absolute")),
            ("/a/../etc", Some(". or ..")),
            ("/..", Some(". or ..")),
            ("/a/./b", Some(". or ..")),
            ("//a", Some("empty component")),
            ("/a//b", Some("empty component")),
            ("/a/", Some("empty component")),
            ("/a\\b", Some("not \\")),
            ("/a\nb", Some("'\\n'")),
            ("/a\r\u{1b}[2K", Some("'\\r'")),
            ("/\u{202e}gpj.exe", Some("bidirectional")),
            ("/a\u{0}", Some("control")),
            ("/a\u{85}", Some("control")),
        ];
        for (input, want) in cases {
            let got = GuestPath::parse(input);
            match want {
                None => assert_eq!(got.unwrap().to_string(), *input),
                Some(w) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(w), "{input:?}: {e}");
                    assert!(e.starts_with("invalid guest path "), "{e}");
                    assert!(!e.chars().any(is_terminal_unsafe), "{e:?}");
                }
            }
        }
        let long = format!("/{}", "a".repeat(MAX_GUEST_PATH));
        assert!(GuestPath::parse(&long).is_err());
        assert!(GuestPath::parse(&long[..MAX_GUEST_PATH]).is_ok());
    }

    #[test]
    fn within() {
        let p = |s| GuestPath::parse(s).unwrap();
        assert!(p("/app").is_within(&p("/app")));
        assert!(p("/app/x").is_within(&p("/app")));
        assert!(!p("/application").is_within(&p("/app")));
        assert!(p("/x").is_within(&p("/")));
        assert!(!p("/").is_within(&p("/app")));
    }
}
