//! `capsa run app.capsa`: verify, show every ask, get consent, run.
//!
//! What a bundle asks for reaches the policy as typed values
//! ([`TypedGrants`]): a guest path, a rule, a variable name from the
//! manifest is never written into flag text and parsed again.

use super::run::{RunArgs, execute, fail, resolve_with};
use capsa_bundle::manifest::{DirAccess, DirName};
use capsa_bundle::{GUEST_APP, Manifest};
use capsa_policy::{
    Access, DirGrant, EnvPattern, FsGrant, GrantKind, NetRule, TypedGrants, escape_for_terminal,
    quote_flag_value, split_all,
};
use capsa_sandbox::{CodeCache, exit};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

// The bundle crate keeps capsa's own guest paths from a bundle's
// directories; Python's library and its bytecode must be among them.
const _: () = assert!(same_str(
    capsa_bundle::manifest::RESERVED_GUEST[1],
    capsa_python::GUEST_STDLIB
));
const _: () = assert!(same_str(
    capsa_bundle::manifest::RESERVED_GUEST[2],
    super::pycache::GUEST_PREFIX
));

const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// One `--bind NAME=PATH[:ro|:rw]`, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub name: String,
    pub path: PathBuf,
    /// Given by a `:ro` or `:rw` suffix; without one, the access the bundle
    /// asks for (which then needs consent).
    pub access: Option<DirAccess>,
}

/// Parses `--bind`. Only a trailing `:ro` or `:rw` is read as the access, so
/// a path may hold `:` anywhere else; a path that itself ends in `:ro` or
/// `:rw` is bound by adding the access after it (`out=/mnt/x:ro:rw`).
pub fn parse_bind(text: &str) -> Result<Bind, String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or("expected NAME=PATH, NAME=PATH:ro or NAME=PATH:rw")?;
    let (path, access) = if let Some(p) = rest.strip_suffix(":ro") {
        (p, Some(DirAccess::Read))
    } else if let Some(p) = rest.strip_suffix(":rw") {
        (p, Some(DirAccess::ReadWrite))
    } else {
        (rest, None)
    };
    if name.is_empty() || path.is_empty() {
        return Err("expected NAME=PATH, NAME=PATH:ro or NAME=PATH:rw".into());
    }
    Ok(Bind {
        name: name.to_string(),
        path: PathBuf::from(path),
        access,
    })
}

/// A `--expect-sha256` value.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    capsa_bundle::parse_digest_hex(text).ok_or_else(|| "expected 64 hex digits".to_string())
}

/// The suffix that states `access` in `--bind`.
fn suffix(access: DirAccess) -> &'static str {
    match access {
        DirAccess::Read => "ro",
        DirAccess::ReadWrite => "rw",
    }
}

/// Each ask as the flag that grants it in this run, and what the user
/// reads about it; every piece the bundle chose is escaped.
fn asked(m: &Manifest, binds: &BTreeMap<DirName, Bind>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in &m.ask.net {
        out.push((
            format!("--allow-net={}", quote_flag_value(&n.rule.to_string())),
            escape_for_terminal(n.reason.as_str()).into_owned(),
        ));
    }
    for e in &m.ask.env {
        out.push((
            format!("--allow-env={}", quote_flag_value(&e.name.to_string())),
            escape_for_terminal(e.reason.as_str()).into_owned(),
        ));
    }
    for (name, d) in &m.ask.dirs {
        let (path, given) = match binds.get(name) {
            Some(b) => (b.path.display().to_string(), b.access),
            None => ("PATH".to_string(), None),
        };
        let access = given.unwrap_or(d.access);
        let narrowed = if access == d.access {
            String::new()
        } else {
            format!(" (it asks {})", d.access.describe())
        };
        out.push((
            format!(
                "--bind {name}={}",
                quote_flag_value(&format!("{path}:{}", suffix(access)))
            ),
            format!(
                "{}{narrowed} at {}: {}",
                access.describe(),
                d.guest,
                escape_for_terminal(d.reason.as_str())
            ),
        ));
    }
    // The flag column holds a host path the user typed: escaped too.
    out.into_iter()
        .map(|(flag, why)| (escape_for_terminal(&flag).into_owned(), why))
        .collect()
}

/// Shows every ask and asks on the terminal; without one, the user must
/// have said yes by flag.
fn consent(
    bundle: &str,
    m: &Manifest,
    binds: &BTreeMap<DirName, Bind>,
    granted: bool,
) -> Result<(), i32> {
    if !m.asks_anything() || granted {
        return Ok(());
    }
    let list: String = asked(m, binds)
        .iter()
        .map(|(flag, why)| format!("  {flag:<40} {why}\n"))
        .collect();
    let bundle = escape_for_terminal(bundle);
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(fail(
            exit::USAGE,
            anyhow::anyhow!(
                "{bundle} asks for permissions and there is no terminal to ask on; add --grant-requested to grant them, or grant them one by one with the flags:\n{}",
                list.trim_end()
            ),
        ));
    }
    let mut stdin = std::io::stdin().lock();
    loop {
        eprint!("{bundle} asks for:\n{list}Grant these? [y]es / [n]o / [d]etails: ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.read_line(&mut line).unwrap_or(0) == 0 {
            return Err(fail(
                exit::USAGE,
                anyhow::anyhow!("not granted (no answer)"),
            ));
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(()),
            "d" | "details" => {
                for l in m.to_toml().lines() {
                    eprintln!("{}", escape_for_terminal(l));
                }
            }
            _ => return Err(fail(exit::USAGE, anyhow::anyhow!("not granted"))),
        }
    }
}

/// Each asked directory bound once, each bind naming an asked directory,
/// and no bind granting more than the bundle asks.
fn check_binds(
    shown: &str,
    m: &Manifest,
    given: &[Bind],
) -> Result<BTreeMap<DirName, Bind>, anyhow::Error> {
    let mut binds = BTreeMap::new();
    for b in given {
        let flag = escape_for_terminal(&b.name).into_owned();
        let Some((name, d)) = m.ask.dirs.get_key_value(b.name.as_str()) else {
            anyhow::bail!("--bind {flag}=...: {shown} asks for no directory named {flag}");
        };
        if b.access == Some(DirAccess::ReadWrite) && d.access == DirAccess::Read {
            anyhow::bail!(
                "--bind {name}=...:rw: {shown} asks to read {name}, not to write it; bind it with :ro or without a suffix"
            );
        }
        if binds.insert(name.clone(), b.clone()).is_some() {
            anyhow::bail!("--bind {name} is given twice");
        }
    }
    for (name, d) in &m.ask.dirs {
        if !binds.contains_key(name) {
            anyhow::bail!(
                "{shown} asks for a directory {name} ({} at {}: {}); bind one with --bind {name}=PATH",
                d.access.describe(),
                d.guest,
                escape_for_terminal(d.reason.as_str())
            );
        }
    }
    Ok(binds)
}

/// Runs a bundle: the file `args.program`, or `embedded`, the bundle
/// appended to capsa's own executable.
pub fn run(args: RunArgs, embedded: Option<Vec<u8>>) -> i32 {
    let shown = escape_for_terminal(&args.program.display().to_string()).into_owned();
    let expected = args.expect_sha256.as_ref();
    let bytes = match embedded.map_or_else(|| super::inspect::read(&args.program), Ok) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let Some(cache_root) = CodeCache::default_dir() else {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!(
                "no cache directory: set CAPSA_CACHE_DIR (or HOME, or on Windows LOCALAPPDATA)"
            ),
        );
    };
    let bundle = match super::inspect::decode(&shown, &bytes, expected, Some(&cache_root)) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let m = &bundle.manifest;
    let cwd = match super::run::working_dir() {
        Ok(d) => d,
        Err(code) => return code,
    };
    let binds = match check_binds(&shown, m, &args.bind) {
        Ok(b) => b,
        Err(e) => return fail(exit::USAGE, e),
    };
    let raw = match args.sandbox.raw_policy() {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    // Typing every asked grant as its flag is consent too: the rules and
    // names compared as parsed values, each directory bound with its access
    // stated (`:ro` or `:rw`).
    let user_net: Vec<NetRule> = split_all(&raw.allow_net)
        .filter_map(|r| NetRule::parse(r).ok())
        .collect();
    let user_env: Vec<EnvPattern> = split_all(&raw.allow_env)
        .filter_map(|e| EnvPattern::parse(e).ok())
        .collect();
    let all_typed = m.ask.net.iter().all(|n| user_net.contains(&n.rule))
        && m.ask.env.iter().all(|e| user_env.contains(&e.name))
        && binds.values().all(|b| b.access.is_some());
    if let Err(code) = consent(&shown, m, &binds, args.grant_requested || all_typed) {
        return code;
    }

    let typed = TypedGrants {
        dirs: m
            .ask
            .dirs
            .iter()
            .filter_map(|(name, d)| {
                let b = binds.get(name)?;
                Some(DirGrant {
                    host: b.path.clone(),
                    guest: d.guest.clone(),
                    access: match b.access.unwrap_or(d.access) {
                        DirAccess::Read => Access::Read,
                        DirAccess::ReadWrite => Access::ReadWrite,
                    },
                })
            })
            .collect(),
        net: m.ask.net.iter().map(|n| n.rule.clone()).collect(),
        env: m.ask.env.iter().map(|e| e.name.clone()).collect(),
    };
    // The user's limit flags win; a bundle's limits only lower capsa's
    // defaults (the manifest refuses a higher one).
    let (user_memory, user_timeout) = (raw.limits.memory.is_some(), raw.limits.timeout.is_some());
    let mut policy = match resolve_with(raw, &typed, &cwd) {
        Ok(p) => p,
        Err(e) => return fail(exit::USAGE, e),
    };
    if let Err(code) = super::run::add_private_tmp(&args.sandbox, &mut policy) {
        return code;
    }
    if let (false, Some(mem)) = (user_memory, m.limits.memory) {
        policy.limits.memory = mem.bytes();
    }
    if let (false, Some(t)) = (user_timeout, m.limits.timeout) {
        policy.limits.timeout = Some(t.duration());
    }

    let dir = match capsa_bundle::extract(&bundle, &bytes, &cache_root)
        .and_then(|d| capsa_sandbox::load::canonical(&d))
    {
        Ok(d) => d,
        Err(e) => {
            return fail(
                exit::INTERNAL,
                anyhow::anyhow!("cannot unpack {shown}: {e}"),
            );
        }
    };
    drop(bytes);
    policy.fs.grants.push(FsGrant {
        host: dir.clone(),
        guest: GUEST_APP.into(),
        access: Access::Read,
        kind: GrantKind::Dir,
    });
    let mut guest_args = m.run.args.clone();
    guest_args.extend(args.args.iter().cloned());
    let entry = &m.run.entry;
    // The bundle's only run: capsa exits with its code.
    capsa_sandbox::exit_after_run();
    if entry.ends_with(".py") || entry.ends_with(".pyw") {
        let file = format!("{GUEST_APP}/{entry}");
        let site = capsa_bundle::pack::SITE_PACKAGES;
        let python_path = if bundle
            .files
            .keys()
            .any(|k| k.starts_with(&format!("{site}/")))
        {
            vec![format!("{GUEST_APP}/{site}")]
        } else {
            Vec::new()
        };
        super::python::run_prepared(
            &args.sandbox,
            capsa_python::Invocation::script(file.clone(), guest_args),
            cwd,
            policy,
            Some(super::python::Granted { file, python_path }),
        )
    } else {
        execute(
            &args.sandbox,
            cwd,
            policy,
            dir.join(entry),
            args.program.display().to_string(),
            guest_args,
            None,
            false,
        )
    }
}
