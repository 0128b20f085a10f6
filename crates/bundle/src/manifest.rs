//! `capsa.toml`: what a bundle runs, and what it asks for.
//!
//! ```toml
//! version = 1
//!
//! [run]
//! entry = "main.py"            # a .py script, or a .wasm/.wat program
//! args = ["--verbose"]
//!
//! [[ask.net]]
//! rule = "api.example.com:443"
//! reason = "fetches the forecast"
//!
//! [[ask.env]]
//! name = "API_TOKEN"
//! reason = "authenticates to the API"
//!
//! [ask.dirs.output]
//! access = "read-write"        # or "read"
//! guest = "/output"
//! reason = "where the report is written"
//!
//! [limits]
//! memory = "512M"
//! timeout = "1m"
//! ```
//!
//! Every input is untrusted: unknown keys, an unknown version, or a request
//! in a form capsa does not know are errors, each one line.

use capsa_policy::{EnvPattern, NetRule, parse_duration, parse_size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest versions this capsa reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub run: Run,
    #[serde(default)]
    pub ask: Ask,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// A path inside the bundle.
    pub entry: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    #[serde(default)]
    pub net: Vec<NetAsk>,
    #[serde(default)]
    pub env: Vec<EnvAsk>,
    /// Named host directories, bound to real paths by the user at run time.
    #[serde(default)]
    pub dirs: BTreeMap<String, DirAsk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAsk {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvAsk {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirAccess {
    Read,
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirAsk {
    pub access: DirAccess,
    /// Where the program sees it: an absolute guest path.
    pub guest: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("capsa.toml: {0}")]
    Syntax(String),
    #[error("capsa.toml: version {0} is not supported (this capsa reads version {VERSION})")]
    Version(u32),
    #[error("capsa.toml: {0}")]
    Invalid(String),
}

impl Manifest {
    /// A manifest for a folder without one: run `entry`, ask for nothing.
    pub fn default_for(entry: &str) -> Self {
        Manifest {
            version: VERSION,
            run: Run {
                entry: entry.to_string(),
                args: Vec::new(),
            },
            ask: Ask::default(),
            limits: Limits::default(),
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            ManifestError::Syntax(e.message().lines().next().unwrap_or("invalid").to_string())
        })?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serializes")
    }

    /// Checks every field in the forms capsa knows.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        if let Err(e) = crate::check_entry_path(&self.run.entry) {
            return bad(format!("run.entry: {e}"));
        }
        for n in &self.ask.net {
            if let Err(e) = NetRule::parse(&n.rule) {
                return bad(format!("ask.net rule {:?}: {e}", n.rule));
            }
            if n.reason.trim().is_empty() {
                return bad(format!("ask.net rule {:?} needs a reason", n.rule));
            }
        }
        for e in &self.ask.env {
            if let Err(err) = EnvPattern::parse(&e.name) {
                return bad(format!("ask.env name {:?}: {err}", e.name));
            }
            if e.reason.trim().is_empty() {
                return bad(format!("ask.env name {:?} needs a reason", e.name));
            }
        }
        for (name, d) in &self.ask.dirs {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return bad(format!(
                    "ask.dirs name {name:?}: use letters, digits, - and _"
                ));
            }
            let guest_ok = d.guest.starts_with('/')
                && d.guest.len() > 1
                && !d.guest.split('/').any(|c| c == ".." || c == ".");
            if !guest_ok {
                return bad(format!(
                    "ask.dirs.{name}.guest {:?}: must be an absolute path without . or ..",
                    d.guest
                ));
            }
            if d.reason.trim().is_empty() {
                return bad(format!("ask.dirs.{name} needs a reason"));
            }
        }
        if let Some(m) = &self.limits.memory
            && let Err(e) = parse_size(m)
        {
            return bad(format!("limits.memory: {e}"));
        }
        if let Some(t) = &self.limits.timeout
            && let Err(e) = parse_duration(t)
        {
            return bad(format!("limits.timeout: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version = 1
[run]
entry = "main.py"
args = ["-v"]
[[ask.net]]
rule = "api.example.com:443"
reason = "fetches the forecast"
[[ask.env]]
name = "API_TOKEN"
reason = "authenticates"
[ask.dirs.output]
access = "read-write"
guest = "/output"
reason = "results"
[limits]
memory = "512M"
timeout = "1m"
"#;

    #[test]
    fn full_manifest_round_trips() {
        let m = Manifest::from_toml(FULL).unwrap();
        assert_eq!(m.run.entry, "main.py");
        assert_eq!(m.ask.dirs["output"].access, DirAccess::ReadWrite);
        assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            (
                "version = 2\n[run]\nentry = \"a.py\"",
                "version 2 is not supported",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\nshell = true",
                "unknown field `shell`",
            ),
            ("version = 1\n[run]\nentry = \"../a.py\"", "run.entry"),
            ("version = 1\n[run]\nentry = \"/etc/a.py\"", "run.entry"),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[[ask.net]]\nrule = \"x:99999\"\nreason = \"r\"",
                "ask.net rule",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[[ask.net]]\nrule = \"x.org\"\nreason = \" \"",
                "needs a reason",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[ask.dirs.out]\naccess = \"all\"\nguest = \"/o\"\nreason = \"r\"",
                "unknown variant",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[ask.dirs.out]\naccess = \"read\"\nguest = \"/o/../etc\"\nreason = \"r\"",
                "without . or ..",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[limits]\nmemory = \"lots\"",
                "limits.memory",
            ),
            (
                "version = 1\n[run]\nentry = \"a.py\"\n[ask]\nroot = true",
                "unknown field `root`",
            ),
        ];
        for (text, want) in cases {
            let e = Manifest::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
