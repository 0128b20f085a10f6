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
//! Every input is untrusted, and every string in it is checked once, as it
//! is read, for what it is: the TOML is read into plain strings
//! ([`RawManifest`]), then each becomes a typed value or an error that names
//! the field and quotes the input. A network rule or variable name must be
//! written exactly as capsa shows it (it parses to itself), a guest path is
//! one [`GuestPath`], a directory name is `[A-Za-z0-9_-]`, a reason is one
//! short line with no control, bidirectional or invisible characters, and a limit may
//! only lower capsa's defaults. Nothing typed here is ever formatted back
//! into flag text and parsed again.

use capsa_policy::text::is_terminal_unsafe;
use capsa_policy::{
    EnvPattern, GuestPath, NetRule, PolicyError, format_duration, format_size, parse_duration,
    parse_size,
};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The manifest versions this capsa reads.
pub const VERSION: u32 = 1;
/// Longest reason, in characters: one line of a prompt.
pub const MAX_REASON: usize = 200;
/// Longest directory name, in characters.
pub const MAX_DIR_NAME: usize = 64;
/// Most asks of each kind (network, env, directories): a prompt the user
/// can still read.
pub const MAX_ASKS: usize = 64;
/// Most arguments in `run.args`, and the longest one, in characters.
pub const MAX_ARGS: usize = 100;
pub const MAX_ARG: usize = 1000;
/// Where a bundle's own files appear in the guest, read-only.
pub const GUEST_APP: &str = "/app";
/// Guest paths capsa mounts itself: a bundle's directory may be neither
/// there nor below. `/python` is `capsa_python::GUEST_STDLIB`,
/// `/capsa-pycache` where Python reads the bytecode capsa compiled.
pub const RESERVED_GUEST: [&str; 3] = [GUEST_APP, "/python", "/capsa-pycache"];

/// A checked manifest. Its parts are typed, so one built in code is checked
/// too; [`Manifest::validate`] adds the checks that span fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub version: u32,
    pub run: Run,
    pub ask: Ask,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// A path inside the bundle (see [`crate::check_entry_path`]).
    pub entry: String,
    /// Put before the user's own arguments.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ask {
    pub net: Vec<NetAsk>,
    pub env: Vec<EnvAsk>,
    /// Named host directories, bound to real paths by the user at run time.
    pub dirs: BTreeMap<DirName, DirAsk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetAsk {
    #[serde(serialize_with = "shown")]
    pub rule: NetRule,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvAsk {
    #[serde(serialize_with = "shown")]
    pub name: EnvPattern,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirAccess {
    Read,
    ReadWrite,
}

impl DirAccess {
    /// As a prompt says it.
    pub fn describe(self) -> &'static str {
        match self {
            DirAccess::Read => "read-only",
            DirAccess::ReadWrite => "read-write",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirAsk {
    pub access: DirAccess,
    /// Where the program sees it. Never `/`, never at or below a
    /// [reserved](RESERVED_GUEST) path.
    pub guest: GuestPath,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory: Option<MemoryLimit>,
    pub timeout: Option<TimeoutLimit>,
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

/// One value that is not in the form capsa reads; quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("invalid {what} {input:?}: {why}")]
    Invalid {
        what: &'static str,
        input: String,
        why: String,
    },
}

fn invalid(what: &'static str, input: &str, why: impl Into<String>) -> ValueError {
    ValueError::Invalid {
        what,
        input: input.to_string(),
        why: why.into(),
    }
}

/// Refuses what would change how a terminal shows the text around it.
fn no_unsafe_chars(what: &'static str, input: &str) -> Result<(), ValueError> {
    match input.chars().find(|&c| is_terminal_unsafe(c)) {
        Some(c) => Err(invalid(
            what,
            input,
            format!("the control, bidirectional or invisible character {c:?} is not allowed"),
        )),
        None => Ok(()),
    }
}

/// Why the bundle asks for something: one line the user reads before
/// granting it, so nothing in it may redraw or reorder the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Reason(String);

impl Reason {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        no_unsafe_chars("reason", input)?;
        if input.trim().is_empty() {
            return Err(invalid(
                "reason",
                input,
                "empty; say why the bundle needs this",
            ));
        }
        if input.chars().count() > MAX_REASON {
            return Err(invalid(
                "reason",
                input,
                format!("longer than {MAX_REASON} characters"),
            ));
        }
        Ok(Reason(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

/// The name of an asked directory, as the user types it in `--bind NAME=`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct DirName(String);

impl DirName {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let ok = !input.is_empty()
            && input.len() <= MAX_DIR_NAME
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(invalid(
                "directory name",
                input,
                format!("use 1 to {MAX_DIR_NAME} letters, digits, - and _"),
            ));
        }
        Ok(DirName(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for DirName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DirName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<DirName> for String {
    fn from(n: DirName) -> String {
        n.0
    }
}

/// A memory limit a bundle sets: more than 0 and at most capsa's default.
/// A bundle may only lower limits; raising one is the user's decision
/// (`--memory`), never a file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct MemoryLimit(u64);

impl MemoryLimit {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        no_unsafe_chars("memory limit", input)?;
        let bytes = parse_size(input)?;
        let default = capsa_policy::Limits::DEFAULT_MEMORY;
        if bytes == 0 {
            return Err(invalid("memory limit", input, "must be more than 0"));
        }
        if bytes > default {
            return Err(invalid(
                "memory limit",
                input,
                format!(
                    "above capsa's default of {}: a bundle may only lower limits (the user raises them with --memory)",
                    format_size(default)
                ),
            ));
        }
        Ok(MemoryLimit(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl From<MemoryLimit> for String {
    fn from(m: MemoryLimit) -> String {
        m.to_string()
    }
}

/// A time limit a bundle sets: at most capsa's default (never `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TimeoutLimit(Duration);

impl TimeoutLimit {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        no_unsafe_chars("time limit", input)?;
        let d = parse_duration(input)?;
        let default = capsa_policy::Limits::DEFAULT_TIMEOUT;
        if d > default {
            return Err(invalid(
                "time limit",
                input,
                format!(
                    "above capsa's default of {}: a bundle may only lower limits (the user raises them with --timeout)",
                    format_duration(default)
                ),
            ));
        }
        Ok(TimeoutLimit(d))
    }

    pub fn duration(self) -> Duration {
        self.0
    }
}

impl fmt::Display for TimeoutLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl From<TimeoutLimit> for String {
    fn from(t: TimeoutLimit) -> String {
        t.to_string()
    }
}

/// A rule or pattern as it was asked for. Accepting only text that parses
/// to itself means the manifest, the prompt and the grant all say the same
/// thing: `API.Example.com.` is refused with the form to write instead.
fn exact<T: fmt::Display>(
    what: &'static str,
    input: &str,
    parse: impl Fn(&str) -> Result<T, PolicyError>,
) -> Result<T, ValueError> {
    no_unsafe_chars(what, input)?;
    let value = parse(input)?;
    let shown = value.to_string();
    if shown != input {
        return Err(invalid(
            what,
            input,
            format!("write it exactly as capsa shows it: {shown:?}"),
        ));
    }
    Ok(value)
}

fn shown<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// `capsa.toml` exactly as written: strings not checked yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub version: u32,
    pub run: RawRun,
    #[serde(default)]
    pub ask: RawAsk,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub entry: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAsk {
    #[serde(default)]
    pub net: Vec<RawNetAsk>,
    #[serde(default)]
    pub env: Vec<RawEnvAsk>,
    #[serde(default)]
    pub dirs: BTreeMap<String, RawDirAsk>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetAsk {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvAsk {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirAsk {
    pub access: DirAccess,
    pub guest: String,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub memory: Option<String>,
    pub timeout: Option<String>,
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;

    fn try_from(raw: RawManifest) -> Result<Self, ManifestError> {
        // Read first: a newer version may mean other fields entirely.
        if raw.version != VERSION {
            return Err(ManifestError::Version(raw.version));
        }
        let at =
            |field: String| move |e: ValueError| ManifestError::Invalid(format!("{field}: {e}"));
        let mut ask = Ask::default();
        for n in &raw.ask.net {
            ask.net.push(NetAsk {
                rule: exact("network rule", &n.rule, NetRule::parse)
                    .map_err(at("ask.net rule".into()))?,
                reason: Reason::parse(&n.reason)
                    .map_err(at(format!("ask.net rule {:?}", n.rule)))?,
            });
        }
        for e in &raw.ask.env {
            ask.env.push(EnvAsk {
                name: exact("variable name", &e.name, EnvPattern::parse)
                    .map_err(at("ask.env name".into()))?,
                reason: Reason::parse(&e.reason)
                    .map_err(at(format!("ask.env name {:?}", e.name)))?,
            });
        }
        for (name, d) in &raw.ask.dirs {
            let name = DirName::parse(name).map_err(at("ask.dirs".into()))?;
            let dir = DirAsk {
                access: d.access,
                guest: GuestPath::parse(&d.guest)
                    .map_err(ValueError::from)
                    .map_err(at(format!("ask.dirs.{name}.guest")))?,
                reason: Reason::parse(&d.reason).map_err(at(format!("ask.dirs.{name}")))?,
            };
            ask.dirs.insert(name, dir);
        }
        let limits = Limits {
            memory: raw
                .limits
                .memory
                .as_deref()
                .map(MemoryLimit::parse)
                .transpose()
                .map_err(at("limits.memory".into()))?,
            timeout: raw
                .limits
                .timeout
                .as_deref()
                .map(TimeoutLimit::parse)
                .transpose()
                .map_err(at("limits.timeout".into()))?,
        };
        let m = Manifest {
            version: raw.version,
            run: Run {
                entry: raw.run.entry,
                args: raw.run.args,
            },
            ask,
            limits,
        };
        m.validate()?;
        Ok(m)
    }
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
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            // One line: where, then what (toml's own Display draws the source).
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                format!("line {line}: ")
            });
            ManifestError::Syntax(format!(
                "{}{}",
                at.unwrap_or_default(),
                e.message().lines().next().unwrap_or("invalid")
            ))
        })?;
        Manifest::try_from(raw)
    }

    pub fn to_toml(&self) -> String {
        // Strings, numbers, arrays and tables: nothing here can fail to serialize.
        toml::to_string(self).unwrap_or_default()
    }

    /// Whether the manifest asks for anything at all.
    pub fn asks_anything(&self) -> bool {
        !(self.ask.net.is_empty() && self.ask.env.is_empty() && self.ask.dirs.is_empty())
    }

    /// The checks the field types cannot make on their own: the version,
    /// the entry and arguments, how many asks, and guest paths that would
    /// collide with each other or with capsa's own mounts.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        if let Err(e) = crate::check_entry_path(&self.run.entry) {
            return bad(format!("run.entry {:?}: {e}", self.run.entry));
        }
        if self.run.args.len() > MAX_ARGS {
            return bad(format!("run.args: more than {MAX_ARGS} arguments"));
        }
        for a in &self.run.args {
            if let Err(e) = no_unsafe_chars("argument", a) {
                return bad(format!("run.args: {e}"));
            }
            if a.chars().count() > MAX_ARG {
                return bad(format!(
                    "run.args: an argument is longer than {MAX_ARG} characters"
                ));
            }
        }
        for (kind, n) in [
            ("ask.net", self.ask.net.len()),
            ("ask.env", self.ask.env.len()),
            ("ask.dirs", self.ask.dirs.len()),
        ] {
            if n > MAX_ASKS {
                return bad(format!("{kind}: {n} asks, at most {MAX_ASKS}"));
            }
        }
        for (i, n) in self.ask.net.iter().enumerate() {
            if self.ask.net[..i].iter().any(|o| o.rule == n.rule) {
                return bad(format!(
                    "ask.net rule {:?} is asked twice",
                    n.rule.to_string()
                ));
            }
        }
        for (i, e) in self.ask.env.iter().enumerate() {
            if self.ask.env[..i].iter().any(|o| o.name == e.name) {
                return bad(format!(
                    "ask.env name {:?} is asked twice",
                    e.name.to_string()
                ));
            }
        }
        let mut seen: BTreeMap<&GuestPath, &DirName> = BTreeMap::new();
        for (name, d) in &self.ask.dirs {
            let field = format!("ask.dirs.{name}.guest {:?}", d.guest.as_str());
            if d.guest.is_root() {
                return bad(format!(
                    "{field}: a directory may not be the guest's whole file system"
                ));
            }
            for r in RESERVED_GUEST {
                let reserved =
                    GuestPath::parse(r).map_err(|e| ManifestError::Invalid(e.to_string()))?;
                if d.guest.is_within(&reserved) {
                    return bad(format!(
                        "{field}: {r} is capsa's own (the bundle's files, Python's library and bytecode)"
                    ));
                }
            }
            if let Some(other) = seen.insert(&d.guest, name) {
                return bad(format!(
                    "{field}: ask.dirs.{other} is at the same guest path"
                ));
            }
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
        assert_eq!(m.ask.dirs["output"].guest.as_str(), "/output");
        assert_eq!(m.ask.net[0].rule.to_string(), "api.example.com:443");
        assert_eq!(m.limits.memory.unwrap().bytes(), 512 << 20);
        assert_eq!(
            m.limits.timeout.unwrap().duration(),
            Duration::from_secs(60)
        );
        assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
        assert!(m.asks_anything());
        assert!(!Manifest::default_for("main.py").asks_anything());
    }

    /// A manifest of `version = 1`, `entry = "main.py"` and `rest`.
    fn with(rest: &str) -> String {
        format!("version = 1\n[run]\nentry = \"main.py\"\n{rest}\n")
    }

    /// `s` as a TOML basic string, control characters escaped as TOML
    /// writes them, so the hostile text reaches capsa's checks intact.
    fn q(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn dir(guest: &str) -> String {
        with(&format!(
            "[ask.dirs.out]\naccess = \"read-write\"\nguest = {}\nreason = \"r\"",
            q(guest)
        ))
    }

    fn net(rule: &str, reason: &str) -> String {
        with(&format!(
            "[[ask.net]]\nrule = {}\nreason = {}",
            q(rule),
            q(reason)
        ))
    }

    fn env(name: &str) -> String {
        with(&format!("[[ask.env]]\nname = {}\nreason = \"r\"", q(name)))
    }

    fn dir_named(name: &str) -> String {
        with(&format!(
            "[ask.dirs.{}]\naccess = \"read\"\nguest = \"/o\"\nreason = \"r\"",
            q(name)
        ))
    }

    #[test]
    fn every_string_is_checked_for_what_it_is() {
        let esc = "fetches\r\u{1b}[2K  granted: nothing";
        let long = "x".repeat(MAX_REASON + 1);
        let cases: Vec<(String, &str)> = vec![
            // The version, and unknown keys anywhere.
            (
                "version = 2\n[run]\nentry = \"a.py\"".into(),
                "version 2 is not supported",
            ),
            (with("shell = true"), "unknown field `shell`"),
            (with("[ask]\nroot = true"), "unknown field `root`"),
            (
                with("[ask.dirs.out]\naccess = \"all\"\nguest = \"/o\"\nreason = \"r\""),
                "unknown variant",
            ),
            // Guest paths: one absolute normalized path, nothing else.
            (
                dir("/out,/"),
                "ask.dirs.out.guest: invalid guest path \"/out,/\": one path only",
            ),
            (dir("/out::/"), "\"::\" separates"),
            (dir("/o/../etc"), "no . or .. components"),
            (dir("/o/./x"), "no . or .. components"),
            (dir("out"), "must be absolute"),
            (dir(""), "must be absolute"),
            (dir("/o/"), "empty component"),
            (dir("//o"), "empty component"),
            (
                dir("/o\u{1b}[2K"),
                "control, bidirectional or invisible character '\\u{1b}'",
            ),
            (dir("/\u{202e}tuo"), "'\\u{202e}'"),
            (
                dir(&format!("/{}", "a".repeat(2000))),
                "longer than 1024 bytes",
            ),
            (dir("/"), "the guest's whole file system"),
            (dir("/app"), "/app is capsa's own"),
            (dir("/app/data"), "/app is capsa's own"),
            (dir("/python/lib"), "/python is capsa's own"),
            (dir("/capsa-pycache"), "/capsa-pycache is capsa's own"),
            (dir("/capsa-pycache/x"), "/capsa-pycache is capsa's own"),
            // Directory names.
            (dir_named("a b"), "ask.dirs: invalid directory name \"a b\""),
            (dir_named(""), "invalid directory name"),
            (dir_named("a,b"), "invalid directory name"),
            (dir_named("out=x"), "invalid directory name"),
            (
                dir_named(&"d".repeat(MAX_DIR_NAME + 1)),
                "invalid directory name",
            ),
            // Network rules: parse, and parse to exactly themselves.
            (
                net("x:99999", "r"),
                "ask.net rule: invalid network rule \"x:99999\"",
            ),
            (net("*", "r"), "ask.net rule"),
            (
                net("API.example.com", "r"),
                "write it exactly as capsa shows it: \"api.example.com\"",
            ),
            (net("example.com.", "r"), "\"example.com\""),
            (net(" example.com", "r"), "\"example.com\""),
            (net("a.com,/", "r"), "ask.net rule"),
            (net("a.com\u{1b}", "r"), "'\\u{1b}'"),
            // Variable names likewise.
            (
                env("A B"),
                "ask.env name: invalid environment variable pattern",
            ),
            (env("A,B"), "ask.env name"),
            (env("*"), "ask.env name"),
            (env(" HOME"), "ask.env name"),
            // Reasons: one short line that cannot redraw the prompt.
            (
                net("x.org", " "),
                "ask.net rule \"x.org\": invalid reason \" \": empty",
            ),
            (net("x.org", ""), "empty"),
            (net("x.org", esc), "'\\r' is not allowed"),
            (net("x.org", "a\nb"), "'\\n' is not allowed"),
            (net("x.org", "ok\u{85}"), "'\\u{85}'"),
            (net("x.org", "ok\u{9b}31m"), "'\\u{9b}'"),
            (net("x.org", "ok\u{7f}"), "'\\u{7f}'"),
            (net("x.org", "\u{202e}dnes"), "'\\u{202e}'"),
            (net("x.org", "\u{2066}x\u{2069}"), "'\\u{2066}'"),
            (net("x.org", "\u{61c}x"), "'\\u{61c}'"),
            (net("x.org", "\u{200f}x"), "'\\u{200f}'"),
            (net("x.org", &long), "longer than 200 characters"),
            (
                with("[ask.dirs.out]\naccess = \"read\"\nguest = \"/o\"\nreason = \"a\\u001bb\""),
                "ask.dirs.out: invalid reason",
            ),
            (with("[[ask.env]]\nname = \"A\"\nreason = \"\\t\""), "'\\t'"),
            // The same thing twice, or two directories at one guest path.
            (
                with(
                    "[[ask.net]]\nrule = \"a.com\"\nreason = \"r\"\n[[ask.net]]\nrule = \"a.com\"\nreason = \"s\"",
                ),
                "asked twice",
            ),
            (
                with(
                    "[ask.dirs.a]\naccess = \"read\"\nguest = \"/o\"\nreason = \"r\"\n[ask.dirs.b]\naccess = \"read\"\nguest = \"/o\"\nreason = \"r\"",
                ),
                "ask.dirs.a is at the same guest path",
            ),
            // The entry and the arguments.
            (
                "version = 1\n[run]\nentry = \"../a.py\"".into(),
                "run.entry",
            ),
            (
                "version = 1\n[run]\nentry = \"/etc/a.py\"".into(),
                "run.entry",
            ),
            (
                "version = 1\n[run]\nentry = \"a\\u001b.py\"".into(),
                "run.entry",
            ),
            (
                "version = 1\n[run]\nentry = \"\\u202eyp.a\"".into(),
                "run.entry",
            ),
            (
                "version = 1\n[run]\nentry = \"main.py\"\nargs = [\"\\u001b[2J\"]".into(),
                "run.args: invalid argument",
            ),
            (
                format!(
                    "version = 1\n[run]\nentry = \"main.py\"\nargs = [{}]",
                    q(&"a".repeat(MAX_ARG + 1))
                ),
                "longer than 1000",
            ),
            // Limits: valid, and never above capsa's defaults.
            (with("[limits]\nmemory = \"lots\""), "limits.memory"),
            (with("[limits]\nmemory = \"0\""), "must be more than 0"),
            (
                with("[limits]\nmemory = \"2G\""),
                "above capsa's default of 1G: a bundle may only lower limits",
            ),
            (
                with("[limits]\ntimeout = \"11m\""),
                "above capsa's default of 10m",
            ),
            (with("[limits]\ntimeout = \"none\""), "limits.timeout"),
            (with("[limits]\ntimeout = \"0s\""), "limits.timeout"),
            (with("[limits]\nfuel = \"1\""), "unknown field `fuel`"),
        ];
        for (text, want) in &cases {
            let e = Manifest::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}:\n  got  {e}\n  want {want}");
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(!e.chars().any(is_terminal_unsafe), "{e:?}");
        }
    }

    #[test]
    fn what_is_accepted() {
        let cases: Vec<String> = vec![
            dir("/out"),
            dir("/mnt/a b/c:d"),
            dir("/application"),
            dir("/py"),
            net("*.example.com:443", "r"),
            net("10.0.0.0/8", "r"),
            net("[::1]:8080", "r"),
            net("localhost", "a reason with ünïcödé and emoji 😀"),
            net("x.org", &"x".repeat(MAX_REASON)),
            env("APP_*"),
            dir_named("Out_dir-2"),
            with("[limits]\nmemory = \"1G\"\ntimeout = \"10m\""),
            with("[limits]\nmemory = \"64M\"\ntimeout = \"500ms\""),
            "version = 1\n[run]\nentry = \"main.py\"\nargs = [\"\", \"--x=a b\"]".into(),
        ];
        for text in &cases {
            let m = Manifest::from_toml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m, "{text:?}");
        }
    }

    #[test]
    fn limits_keep_their_meaning_when_written_again() {
        let m =
            Manifest::from_toml(&with("[limits]\nmemory = \"512MiB\"\ntimeout = \"90s\"")).unwrap();
        let again = Manifest::from_toml(&m.to_toml()).unwrap();
        assert_eq!(again.limits.memory.unwrap().bytes(), 512 << 20);
        assert_eq!(
            again.limits.timeout.unwrap().duration(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn too_many_asks() {
        let many: String = (0..=MAX_ASKS)
            .map(|i| format!("[[ask.env]]\nname = \"V{i}\"\nreason = \"r\"\n"))
            .collect();
        let e = Manifest::from_toml(&with(&many)).unwrap_err().to_string();
        assert!(e.contains("at most 64"), "{e}");
    }
}
