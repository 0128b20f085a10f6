//! Inline script metadata (PEP 723): a script's `# /// script` block names
//! the packages it needs. capsa installs them once, with `capsa pip` in the
//! sandbox, into an environment in its cache keyed by the exact requirements
//! and index; runs mount it read-only. The network for the index is the
//! install's, never the script's.

use super::SandboxArgs;
use super::index;
use capsa_sandbox::exit;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The Python every environment is for.
const PYTHON: [u64; 3] = [3, 14, 0];

#[derive(Debug, Default, PartialEq)]
pub struct Inline {
    pub dependencies: Vec<String>,
    pub requires_python: Option<String>,
}

/// The `script` block of `source`, if it has one (PEP 723's rules: lines
/// `# /// script` to `# ///`, each line in between `#` or `# ...`).
pub fn parse(source: &str) -> Result<Option<Inline>, String> {
    let lines: Vec<&str> = source.lines().collect();
    let comment = |l: &str| l == "#" || l.starts_with("# ");
    let mut found: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let kind = lines[i]
            .strip_prefix("# /// ")
            .map(str::trim_end)
            .unwrap_or_default();
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            i += 1;
            continue;
        }
        // The comment lines that follow; the block ends at the last `# ///`.
        let run = lines[i + 1..].iter().take_while(|l| comment(l)).count();
        let close = lines[i + 1..i + 1 + run]
            .iter()
            .rposition(|l| l.trim_end() == "# ///");
        let Some(close) = close else {
            if kind == "script" {
                return Err("the `# /// script` block is not closed with `# ///`".into());
            }
            i += 1;
            continue;
        };
        if kind == "script" {
            if found.is_some() {
                return Err("there are two `# /// script` blocks".into());
            }
            let body: Vec<&str> = lines[i + 1..i + 1 + close]
                .iter()
                .map(|l| l.strip_prefix("# ").unwrap_or(""))
                .collect();
            found = Some(body.join("\n"));
        }
        i += close + 2;
    }
    let Some(text) = found else {
        return Ok(None);
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        format!(
            "the `# /// script` block is not valid TOML: {}",
            e.message()
        )
    })?;
    let mut inline = Inline::default();
    if let Some(deps) = table.get("dependencies") {
        let list = deps
            .as_array()
            .ok_or("`dependencies` in the `# /// script` block must be a list of strings")?;
        for d in list {
            let d = d
                .as_str()
                .ok_or("`dependencies` in the `# /// script` block must be a list of strings")?;
            inline.dependencies.push(requirement(d)?);
        }
    }
    if let Some(r) = table.get("requires-python") {
        inline.requires_python = Some(
            r.as_str()
                .ok_or("`requires-python` must be a string")?
                .to_string(),
        );
    }
    Ok(Some(inline))
}

/// A requirement as pip takes it, from a package index only: a name, with
/// extras, versions and markers, or `name @ https://...`. Never an option
/// (`--index-url=...`, which would change where pip looks), a path or a
/// `file:` URL (a script would choose which of the user's files the
/// install step reads, and its environment would hold them).
pub fn requirement(r: &str) -> Result<String, String> {
    let r = r.trim();
    let refuse = || {
        Err(format!(
            "{} is not a requirement capsa installs: a package name, with extras, versions \
             or markers, or NAME @ https://URL (not a path, a file: URL or an option)",
            capsa_policy::escape_for_terminal(r)
        ))
    };
    if r.chars()
        .any(|c| c.is_control() || !(c.is_ascii_graphic() || c == ' '))
    {
        return refuse();
    }
    let name_len = r
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or(r.len());
    let name = &r[..name_len];
    // pip reads a name that ends like an archive as a file's.
    let archive = [
        ".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz",
    ];
    let lower = name.to_ascii_lowercase();
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || archive.iter().any(|a| lower.ends_with(a))
    {
        return refuse();
    }
    let (spec, markers) = r[name_len..]
        .split_once(';')
        .unwrap_or((&r[name_len..], ""));
    let _ = markers;
    let spec = match spec.split_once('@') {
        Some((before, url)) => {
            let url = url.trim().to_ascii_lowercase();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return refuse();
            }
            before
        }
        None => spec,
    };
    let spec_lower = spec.trim().to_ascii_lowercase();
    if archive.iter().any(|a| spec_lower.ends_with(a)) {
        return refuse();
    }
    let plain = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '['
                    | ']'
                    | ','
                    | '.'
                    | '-'
                    | '_'
                    | '<'
                    | '>'
                    | '='
                    | '!'
                    | '~'
                    | '*'
                    | '('
                    | ')'
            )
    };
    if !spec.chars().all(plain) {
        return refuse();
    }
    Ok(r.to_string())
}

/// Whether capsa's Python 3.14.0 meets `spec` (PEP 440 specifiers).
pub fn check_requires_python(spec: &str) -> Result<(), String> {
    let fail = || {
        format!(
            "the script requires Python {}; capsa runs Python {}.{}.{}",
            capsa_policy::escape_for_terminal(spec),
            PYTHON[0],
            PYTHON[1],
            PYTHON[2]
        )
    };
    for clause in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let op_len = clause
            .find(|c: char| c.is_ascii_digit())
            .ok_or_else(|| format!("requires-python {clause:?} is not a version specifier"))?;
        let (op, ver) = clause.split_at(op_len);
        let op = op.trim();
        let wildcard = ver.ends_with(".*");
        let parts: Vec<u64> = ver
            .trim_end_matches(".*")
            .split('.')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("requires-python {clause:?} is not a version specifier"))?;
        let cmp = |n: usize| {
            let pad = |v: &[u64]| {
                (0..n)
                    .map(|i| v.get(i).copied().unwrap_or(0))
                    .collect::<Vec<_>>()
            };
            pad(&PYTHON).cmp(&pad(&parts))
        };
        use std::cmp::Ordering::*;
        let full = parts.len().max(3);
        let ok = match op {
            ">=" => cmp(full) != Less,
            ">" => cmp(full) == Greater,
            "<=" => cmp(full) != Greater,
            "<" => cmp(full) == Less,
            "==" | "===" if wildcard => cmp(parts.len()) == Equal,
            "==" | "===" => cmp(full) == Equal,
            "!=" if wildcard => cmp(parts.len()) != Equal,
            "!=" => cmp(full) != Equal,
            "~=" if parts.len() >= 2 => cmp(full) != Less && cmp(parts.len() - 1) == Equal,
            _ => {
                return Err(format!(
                    "requires-python {clause:?} is not a version specifier"
                ));
            }
        };
        if !ok {
            return Err(fail());
        }
    }
    Ok(())
}

/// The environment holding `requirements`, installed now if it is not yet.
/// Its folder is in capsa's cache, complete or absent, never partial.
pub fn environment(requirements: &[String], user: &SandboxArgs) -> Result<PathBuf, i32> {
    let fail = |code, e: String| super::fail(code, anyhow::anyhow!("{e}"));
    let cmd = super::args::PipCommand {
        command: Some("install".into()),
        ..Default::default()
    };
    let cwd = super::super::run::working_dir()?;
    let indexes = index::configured(&cmd, &cwd).map_err(|e| fail(exit::USAGE, e))?;
    let mut reqs: Vec<String> = requirements.to_vec();
    reqs.sort();
    reqs.dedup();
    let mut h = Sha256::new();
    for r in &reqs {
        h.update(r.as_bytes());
        h.update([0]);
    }
    h.update(format!("{indexes:?}").as_bytes());
    let key = super::hex(&h.finalize())[..24].to_string();
    let root = capsa_sandbox::CodeCache::default_dir().ok_or_else(|| {
        fail(
            exit::INTERNAL,
            "no cache directory: set CAPSA_CACHE_DIR (or HOME)".into(),
        )
    })?;
    let envs = root.join("envs");
    let dir = envs.join(&key);
    if dir.join(".complete").is_file() {
        return super::trusted(&root, &dir.join("lib")).map(|()| dir.join("lib"));
    }
    super::super::run::say(&format!(
        "capsa: installing the script's dependencies in the sandbox (once): {}",
        capsa_policy::escape_for_terminal(&reqs.join(", "))
    ));
    // pip writes a temporary folder outside the cache (no grant may reach
    // into it); capsa copies what it installed (files and folders only).
    let (_target, target_path) = super::private_temp("capsa-env-")?;
    let mut argv = vec![
        "install".to_string(),
        "--quiet".to_string(),
        "--target".to_string(),
        target_path.display().to_string(),
        "--".to_string(),
    ];
    argv.extend(reqs.iter().cloned());
    let mut sandbox = SandboxArgs::default();
    sandbox.ca_cert = user.ca_cert.clone();
    sandbox.quiet = user.quiet;
    let code = super::run_pip(sandbox, &argv, &cwd);
    if code != 0 {
        super::super::run::say(
            "capsa: the script's dependencies did not install; the script was not run",
        );
        return Err(code);
    }
    capsa_sandbox::load::make_private_dir(&envs).map_err(|e| {
        fail(
            exit::INTERNAL,
            format!("cannot create {}: {e}", envs.display()),
        )
    })?;
    let staging = super::private_dir()
        .prefix(".env-")
        .tempdir_in(&envs)
        .map_err(|e| {
            fail(
                exit::INTERNAL,
                format!("cannot make a directory in {}: {e}", envs.display()),
            )
        })?;
    // Removed without recursion on any error below: the copy holds a tree
    // the sandboxed install made.
    let staging = super::TempTree(staging.keep());
    let io = |e: std::io::Error| fail(exit::INTERNAL, format!("cannot keep the environment: {e}"));
    super::copy_tree(&target_path, &staging.0.join("lib")).map_err(io)?;
    std::fs::write(staging.0.join("requirements.txt"), reqs.join("\n") + "\n").map_err(io)?;
    std::fs::write(staging.0.join(".complete"), "").map_err(io)?;
    let staged = staging.keep();
    match std::fs::rename(&staged, &dir) {
        Ok(()) => Ok(dir.join("lib")),
        Err(_) if dir.join(".complete").is_file() => {
            let _ = capsa_sandbox::load::remove_tree(&staged);
            super::trusted(&root, &dir.join("lib")).map(|()| dir.join("lib"))
        }
        Err(e) => {
            let _ = capsa_sandbox::load::remove_tree(&staged);
            Err(io(e))
        }
    }
}

/// The requirements of the script at `path` plus `with`, after checking its
/// `requires-python`.
pub fn script_requirements(path: &Path, with: &[String]) -> Result<Vec<String>, String> {
    let mut reqs = Vec::new();
    // A script capsa cannot read is reported by the run itself.
    if let Ok(source) = std::fs::read_to_string(path)
        && let Some(inline) = parse(&source)?
    {
        if let Some(spec) = &inline.requires_python {
            check_requires_python(spec)?;
        }
        reqs.extend(inline.dependencies);
    }
    for w in with {
        reqs.push(requirement(w)?);
    }
    Ok(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_script_block_as_pep_723_says() {
        let src = "#!/usr/bin/env python3\n# /// script\n# requires-python = \">=3.11\"\n# dependencies = [\n#   \"rich>=13\",\n#   \"six\",\n# ]\n# ///\nimport rich\n";
        let i = parse(src).unwrap().unwrap();
        assert_eq!(i.dependencies, ["rich>=13", "six"]);
        assert_eq!(i.requires_python.as_deref(), Some(">=3.11"));
        assert_eq!(parse("print(1)\n").unwrap(), None);
        assert_eq!(parse("# /// other\n# x = 1\n# ///\n").unwrap(), None);
        assert!(parse("# /// script\n# dependencies = [\"a\"]\nprint(1)\n").is_err());
        assert!(
            parse("# /// script\n# dependencies = [\"--index-url=http://evil\"]\n# ///\n").is_err()
        );
        assert!(parse("# /// script\n# dependencies = \"six\"\n# ///\n").is_err());
        for ok in [
            "six",
            "rich>=13,<15",
            "requests[socks]==2.32.3",
            "six; python_version >= '3'",
            "pkg @ https://example.org/pkg-1.0.tar.gz",
            "zope.interface",
        ] {
            assert_eq!(requirement(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "./aaa-helper",
            "/home/me/backup.tar.gz",
            "pkg @ file:///etc/passwd",
            "x/../y",
            "-e .",
            "\u{ad}six",
            "six\u{200b}",
            "a.whl/..",
            "a.whl",
            "x.tar.gz",
            "~/x",
            "",
        ] {
            assert!(requirement(bad).is_err(), "{bad:?}");
        }
        let two =
            "# /// script\n# dependencies = []\n# ///\n# /// script\n# dependencies = []\n# ///\n";
        assert!(parse(two).is_err());
    }

    #[test]
    fn requires_python_against_3_14() {
        for ok in [
            ">=3.11",
            ">=3.14",
            "<4",
            "==3.14.*",
            "~=3.12",
            "!=3.13.*",
            ">=3.10,<3.15",
            "==3.14",
        ] {
            assert!(check_requires_python(ok).is_ok(), "{ok}");
        }
        for bad in [">=3.15", "<3.14", "==3.13.*", "~=3.15", "!=3.14.*", ">3.14"] {
            assert!(check_requires_python(bad).is_err(), "{bad}");
        }
        assert!(check_requires_python("python3").is_err());
    }
}
