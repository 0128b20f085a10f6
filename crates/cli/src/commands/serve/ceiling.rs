//! The operator's grants and limits as the ceiling of every request: a
//! request may take a subset of them, never anything beyond.
//!
//! A request names grants the operator gave, and the run gets the
//! operator's own entry for each (its text, resolved by the run as the
//! operator's flags would be); nothing a request sends becomes a path, a
//! rule or a guest name of its own.

use capsa_policy::{
    Access, EnvPattern, ListenRule, NetRule, Policy, RawPolicy, Scalar, format_duration,
    format_size, parse_duration, parse_size, split_all,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Items one list of asks may hold.
const MAX_ASKS: usize = 1000;

/// What a request may ask for, beside its program.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asks {
    pub allow_read: Option<Vec<String>>,
    pub allow_write: Option<Vec<String>>,
    pub allow_net: Option<Vec<String>>,
    pub allow_listen: Option<Vec<String>>,
    pub allow_env: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub memory: Option<String>,
    pub max_output: Option<String>,
    pub max_write: Option<String>,
}

/// Why a request was not taken.
#[derive(Debug)]
pub enum Refusal {
    /// Malformed (400).
    Bad(String),
    /// Beyond the ceiling (403); the text is the denial.
    Beyond(String),
}

/// A directory or file the operator granted, as typed and as resolved.
struct FsEntry {
    spec: String,
    access: Access,
    canonical: PathBuf,
    /// The host path as the operator gave it, made absolute.
    given: PathBuf,
}

pub struct Ceiling {
    /// The operator's policy, every path made absolute.
    raw: RawPolicy,
    fs: Vec<FsEntry>,
    policy: Policy,
    /// Limits of one run or one session call.
    pub limits: Limits,
}

/// The limits a run gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Option<Duration>,
    pub memory: u64,
    pub max_output: u64,
    /// Bytes a run (or a session, over its life) may write to files.
    pub max_write: Option<u64>,
}

/// Defaults of `capsa serve` where the operator gave none: a server
/// buffers each answer, and many runs share its machine.
pub const DEFAULT_TIMEOUT: &str = "60s";
pub const DEFAULT_MEMORY: &str = "512M";
pub const DEFAULT_MAX_OUTPUT: &str = "16M";
/// Each run writes in the server's own directory: without a limit, one
/// could fill its disk for every other run.
pub const DEFAULT_MAX_WRITE: &str = "256M";

impl Ceiling {
    /// `raw` as the operator gave it (flags and policy file), relative
    /// paths taken from `cwd`.
    pub fn new(mut raw: RawPolicy, cwd: &Path) -> anyhow::Result<Ceiling> {
        raw.rebase(cwd);
        let l = &mut raw.limits;
        l.timeout.get_or_insert(Scalar::Str(DEFAULT_TIMEOUT.into()));
        l.memory.get_or_insert(Scalar::Str(DEFAULT_MEMORY.into()));
        l.max_output
            .get_or_insert(Scalar::Str(DEFAULT_MAX_OUTPUT.into()));
        l.max_write
            .get_or_insert(Scalar::Str(DEFAULT_MAX_WRITE.into()));
        let policy = super::super::run::resolve(raw.clone(), cwd)?;
        // What would fail every run is refused now.
        capsa_sandbox::check_mounts(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
        let max_output = policy.limits.max_output.ok_or_else(|| {
            anyhow::anyhow!("capsa serve holds each answer in memory: --max-output cannot be none")
        })?;
        let mut fs = Vec::new();
        for (list, access) in [
            (&raw.allow_read, Access::Read),
            (&raw.allow_write, Access::ReadWrite),
        ] {
            for spec in split_all(list) {
                let one = RawPolicy {
                    allow_read: vec![spec.to_string()],
                    ..Default::default()
                };
                let resolved = super::super::run::resolve(one, cwd)?;
                fs.push(FsEntry {
                    spec: spec.to_string(),
                    access,
                    canonical: resolved.fs.grants[0].host.clone(),
                    given: resolved.fs.given[0].clone(),
                });
            }
        }
        let limits = Limits {
            timeout: policy.limits.timeout,
            memory: policy.limits.memory,
            max_output,
            max_write: policy.limits.max_write,
        };
        Ok(Ceiling {
            raw,
            fs,
            policy,
            limits,
        })
    }

    /// Canonical host paths the operator granted (to keep the server's own
    /// files out of them).
    pub fn granted_paths(&self) -> impl Iterator<Item = &Path> {
        self.fs.iter().map(|e| e.canonical.as_path())
    }

    /// The policy of one run: the operator's, narrowed to what `asks`
    /// names, with its limits; `scratch` is added, writable.
    pub fn narrow(&self, asks: &Asks, scratch: &Path) -> Result<(RawPolicy, Limits), Refusal> {
        // Each item becomes a line of the run's policy, which the run reads
        // again: a body of 60 MB held 20 million of them.
        for (flag, items) in [
            ("allow-read", &asks.allow_read),
            ("allow-write", &asks.allow_write),
            ("allow-net", &asks.allow_net),
            ("allow-listen", &asks.allow_listen),
            ("allow-env", &asks.allow_env),
        ] {
            if items.as_ref().is_some_and(|i| i.len() > MAX_ASKS) {
                return Err(Refusal::Bad(format!("{flag}: at most {MAX_ASKS} items")));
            }
        }
        let mut raw = self.raw.clone();
        if asks.allow_read.is_some() || asks.allow_write.is_some() {
            raw.allow_read.clear();
            raw.allow_write.clear();
            let mut asked = Vec::new();
            for (items, access) in [
                (&asks.allow_read, Access::Read),
                (&asks.allow_write, Access::ReadWrite),
            ] {
                for item in items.iter().flatten() {
                    asked.push((self.fs_entry(item, access)?, access));
                }
            }
            (raw.allow_read, raw.allow_write) = self.keep_within(&asked);
        }
        if let Some(items) = &asks.allow_net {
            raw.allow_net = self.subset("allow-net", items, |item| {
                let rule = NetRule::parse(item).map_err(|e| Refusal::Bad(e.to_string()))?;
                Ok(self.policy.net.allow.contains(&rule))
            })?;
        }
        if let Some(items) = &asks.allow_listen {
            raw.allow_listen = self.subset("allow-listen", items, |item| {
                let rule = ListenRule::parse(item).map_err(|e| Refusal::Bad(e.to_string()))?;
                Ok(self.policy.net.listen.contains(&rule))
            })?;
        }
        if let Some(items) = &asks.allow_env {
            raw.allow_env = self.subset("allow-env", items, |item| {
                let pattern = EnvPattern::parse(item).map_err(|e| Refusal::Bad(e.to_string()))?;
                let allow = &self.policy.env.allow;
                // A pattern the operator gave, or one name a pattern covers.
                Ok(allow.contains(&pattern)
                    || (!item.ends_with('*') && allow.iter().any(|p| p.matches(item))))
            })?;
        }
        raw.allow_write.push(scratch.display().to_string());

        let mut limits = self.limits;
        if let Some(t) = &asks.timeout {
            let t = parse_duration(t).map_err(|e| Refusal::Bad(e.to_string()))?;
            match self.limits.timeout {
                Some(max) if t > max => {
                    return Err(Refusal::Beyond(format!(
                        "a timeout of {} is beyond this server's --timeout={}",
                        format_duration(t),
                        format_duration(max)
                    )));
                }
                _ => limits.timeout = Some(t),
            }
        }
        for (ask, ceiling, flag, slot) in [
            (
                &asks.memory,
                self.limits.memory,
                "memory",
                &mut limits.memory,
            ),
            (
                &asks.max_output,
                self.limits.max_output,
                "max-output",
                &mut limits.max_output,
            ),
        ] {
            if let Some(text) = ask {
                let n = parse_size(text).map_err(|e| Refusal::Bad(e.to_string()))?;
                if n == 0 && flag == "memory" {
                    return Err(Refusal::Bad(format!(
                        "invalid size {:?}: memory must be more than 0",
                        capsa_policy::escape_for_terminal(text)
                    )));
                }
                if n > ceiling {
                    return Err(Refusal::Beyond(format!(
                        "{flag} of {} is beyond this server's --{flag}={}",
                        format_size(n),
                        format_size(ceiling)
                    )));
                }
                *slot = n;
            }
        }
        if let Some(text) = &asks.max_write {
            let n = parse_size(text).map_err(|e| Refusal::Bad(e.to_string()))?;
            if let Some(ceiling) = self.limits.max_write
                && n > ceiling
            {
                return Err(Refusal::Beyond(format!(
                    "max-write of {} is beyond this server's --max-write={}",
                    format_size(n),
                    format_size(ceiling)
                )));
            }
            limits.max_write = Some(n);
        }
        raw.limits.memory = Some(Scalar::Int(limits.memory));
        raw.limits.max_output = Some(Scalar::Int(limits.max_output));
        raw.limits.max_write = Some(match limits.max_write {
            Some(n) => Scalar::Int(n),
            None => Scalar::Str("none".into()),
        });
        raw.limits.timeout = Some(Scalar::Str(match limits.timeout {
            Some(t) => format_duration(t),
            None => "none".into(),
        }));
        Ok((raw, limits))
    }

    /// The grants of a run that asked for `asked`: those, and every grant
    /// of the operator's that lies within one of them, so that what the
    /// operator kept read-only inside a writable directory stays so (a run
    /// asking only for the directory would otherwise write in it, and
    /// rename its way to it for later runs). Such a grant gets at most the
    /// access of the asked one it lies in. (A grant reached through a link
    /// in a writable one is refused when the server starts.)
    fn keep_within(&self, asked: &[(&FsEntry, Access)]) -> (Vec<String>, Vec<String>) {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        let mut add = |e: &FsEntry, access| match access {
            Access::Read => read.push(e.spec.clone()),
            Access::ReadWrite => write.push(e.spec.clone()),
        };
        for (e, access) in asked {
            add(e, *access);
        }
        for c in &self.fs {
            if asked.iter().any(|(r, _)| r.canonical == c.canonical) {
                continue;
            }
            let within = asked
                .iter()
                .filter(|(r, _)| c.canonical.starts_with(&r.canonical))
                .max_by_key(|(r, _)| r.canonical.components().count());
            if let Some((_, around)) = within {
                let access = match (c.access, around) {
                    (Access::ReadWrite, Access::ReadWrite) => Access::ReadWrite,
                    _ => Access::Read,
                };
                add(c, access);
            }
        }
        (read, write)
    }

    fn fs_entry(&self, item: &str, access: Access) -> Result<&FsEntry, Refusal> {
        let flag = match access {
            Access::Read => "allow-read",
            Access::ReadWrite => "allow-write",
        };
        let beyond = || {
            let offered: Vec<String> = self
                .fs
                .iter()
                .filter(|e| access == Access::Read || e.access == Access::ReadWrite)
                .map(|e| e.canonical.display().to_string())
                .collect();
            Refusal::Beyond(format!(
                "--{flag}={} is beyond this server's grants ({})",
                capsa_policy::escape_for_terminal(item),
                if offered.is_empty() {
                    "it grants none".to_string()
                } else {
                    format!("it offers {}", offered.join(", "))
                }
            ))
        };
        if item.contains("::") || item.contains(',') {
            return Err(Refusal::Bad(format!(
                "{flag}: {} must be one host path the server grants, as it names it",
                capsa_policy::escape_for_terminal(item)
            )));
        }
        if !Path::new(item).is_absolute() {
            return Err(Refusal::Bad(format!(
                "{flag}: {} is not an absolute path",
                capsa_policy::escape_for_terminal(item)
            )));
        }
        if Path::new(item)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Refusal::Bad(format!(
                "{flag}: {} must be one host path the server grants, without `..`",
                capsa_policy::escape_for_terminal(item)
            )));
        }
        // Compared as text, as the operator gave it or as it resolved when
        // the server started: a name a client sends is never looked up on
        // the host, which would tell it what exists there.
        let asked: PathBuf = Path::new(item).components().collect();
        self.fs
            .iter()
            .find(|e| {
                (e.given == asked || e.canonical == asked)
                    && (access == Access::Read || e.access == Access::ReadWrite)
            })
            .ok_or_else(beyond)
    }

    fn subset(
        &self,
        flag: &str,
        items: &[String],
        granted: impl Fn(&str) -> Result<bool, Refusal>,
    ) -> Result<Vec<String>, Refusal> {
        let mut out: Vec<String> = Vec::new();
        for item in items {
            if out.contains(item) {
                continue;
            }
            if item.contains(',') || item.trim().is_empty() {
                return Err(Refusal::Bad(format!(
                    "{flag}: one rule per item, not {:?}",
                    capsa_policy::escape_for_terminal(item)
                )));
            }
            if !granted(item)? {
                return Err(Refusal::Beyond(format!(
                    "--{flag}={} is beyond this server's grants",
                    capsa_policy::escape_for_terminal(item)
                )));
            }
            out.push(item.clone());
        }
        Ok(out)
    }
}
