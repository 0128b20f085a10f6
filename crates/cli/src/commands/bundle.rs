//! `capsa run app.capsa`: verify, show what it asks for, get consent, run.

use super::run::{RunArgs, execute, fail, resolve};
use capsa_bundle::Manifest;
use capsa_bundle::manifest::DirAccess;
use capsa_policy::{Access, FsGrant, GrantKind};
use capsa_sandbox::{CodeCache, exit};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Where a bundle's own files appear in the guest, read-only.
pub const GUEST_APP: &str = "/app";

/// The flags that grant what `m` asks for, with `binds` for its directories.
fn asked_flags(m: &Manifest) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in &m.ask.net {
        out.push((format!("--allow-net={}", n.rule), n.reason.clone()));
    }
    for e in &m.ask.env {
        out.push((format!("--allow-env={}", e.name), e.reason.clone()));
    }
    for (name, d) in &m.ask.dirs {
        let access = match d.access {
            DirAccess::Read => "read-only",
            DirAccess::ReadWrite => "read-write",
        };
        out.push((
            format!("--bind {name}=PATH ({access}, seen at {})", d.guest),
            d.reason.clone(),
        ));
    }
    out
}

/// Asks on the terminal; without one, the user must have said yes by flag.
fn consent(bundle: &str, m: &Manifest, granted: bool) -> Result<(), i32> {
    let asked = asked_flags(m);
    let net_or_env = !m.ask.net.is_empty() || !m.ask.env.is_empty();
    if !net_or_env || granted {
        return Ok(());
    }
    let list: String = asked
        .iter()
        .map(|(flag, why)| format!("  {flag:<40} {why}\n"))
        .collect();
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
                eprintln!("{}", m.to_toml());
            }
            _ => return Err(fail(exit::USAGE, anyhow::anyhow!("not granted"))),
        }
    }
}

pub fn run(args: RunArgs) -> i32 {
    let shown = args.program.display().to_string();
    let bundle = match super::inspect::open(&args.program) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let m = &bundle.manifest;
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            return fail(
                exit::INTERNAL,
                anyhow::anyhow!("cannot read the working directory: {e}"),
            );
        }
    };
    // Each asked directory must be bound; a bind must name an asked one.
    let mut binds = std::collections::BTreeMap::new();
    for b in &args.bind {
        let Some((name, path)) = b.split_once('=') else {
            return fail(
                exit::USAGE,
                anyhow::anyhow!("--bind {b}: expected NAME=PATH"),
            );
        };
        if !m.ask.dirs.contains_key(name) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!("--bind {b}: {shown} asks for no directory named {name}"),
            );
        }
        binds.insert(name.to_string(), PathBuf::from(path));
    }
    for (name, d) in &m.ask.dirs {
        if !binds.contains_key(name) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "{shown} asks for a directory {name} ({}); bind one with --bind {name}=PATH",
                    d.reason
                ),
            );
        }
    }
    let mut raw = match args.sandbox.raw_policy() {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    // Typing every asked grant as a flag is consent too.
    let typed = |list: &[String], item: &str| capsa_policy::split_all(list).any(|x| x == item);
    let all_typed = m.ask.net.iter().all(|n| typed(&raw.allow_net, &n.rule))
        && m.ask.env.iter().all(|e| typed(&raw.allow_env, &e.name));
    if let Err(code) = consent(&shown, m, args.grant_requested || all_typed) {
        return code;
    }
    raw.allow_net
        .extend(m.ask.net.iter().map(|n| n.rule.clone()));
    raw.allow_env
        .extend(m.ask.env.iter().map(|e| e.name.clone()));
    for (name, d) in &m.ask.dirs {
        let spec = format!("{}::{}", binds[name].display(), d.guest);
        match d.access {
            DirAccess::Read => raw.allow_read.push(spec),
            DirAccess::ReadWrite => raw.allow_write.push(spec),
        }
    }
    if raw.limits.memory.is_none() {
        raw.limits.memory = m.limits.memory.clone().map(Into::into);
    }
    if raw.limits.timeout.is_none() {
        raw.limits.timeout = m.limits.timeout.clone().map(Into::into);
    }
    let mut policy = match resolve(raw, &cwd) {
        Ok(p) => p,
        Err(e) => return fail(exit::USAGE, e),
    };

    let Some(cache_root) = CodeCache::default_dir() else {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!("no cache directory: set CAPSA_CACHE_DIR or HOME"),
        );
    };
    let dir =
        match capsa_bundle::extract(&bundle, &cache_root).and_then(|d| std::fs::canonicalize(&d)) {
            Ok(d) => d,
            Err(e) => {
                return fail(
                    exit::INTERNAL,
                    anyhow::anyhow!("cannot unpack {shown}: {e}"),
                );
            }
        };
    policy.fs.grants.push(FsGrant {
        host: dir.clone(),
        guest: GUEST_APP.into(),
        access: Access::Read,
        kind: GrantKind::Dir,
    });
    let mut guest_args = m.run.args.clone();
    guest_args.extend(args.args.iter().cloned());
    let entry = &m.run.entry;
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
            shown,
            guest_args,
        )
    }
}
