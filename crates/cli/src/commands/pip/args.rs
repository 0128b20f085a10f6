//! pip's command line, read just enough to grant what it names: the install
//! target, the files it reads, the index it uses. Paths become absolute,
//! since pip runs in a temporary working directory.

use capsa_policy::escape_for_terminal;
use std::path::{Path, PathBuf};

/// pip's arguments, ready for the sandbox, and what they need granted.
#[derive(Debug, Default)]
pub struct PipCommand {
    /// pip's command (`install`, `list`, ...), if any.
    pub command: Option<String>,
    /// The arguments to hand pip, with paths made absolute.
    pub args: Vec<String>,
    /// Directories pip writes: created if missing, granted read-write.
    pub write_dirs: Vec<PathBuf>,
    /// Files and directories pip reads: granted read-only.
    pub read_paths: Vec<PathBuf>,
    /// `--index-url`, `--extra-index-url`, `--find-links` URLs, `--no-index`.
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub find_links: Vec<String>,
    pub no_index: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Value {
    /// A directory pip writes.
    WriteDir,
    /// A file or directory pip reads.
    ReadPath,
    /// A file pip reads (requirements, constraints).
    ReadFile,
    IndexUrl,
    ExtraIndexUrl,
    FindLinks,
    /// Any other option that takes a value: passed on.
    Other,
}

/// Options that take a value, by every name pip gives them.
const VALUED: &[(&[&str], Value)] = &[
    (&["-t", "--target"], Value::WriteDir),
    (
        &[
            "-d",
            "--dest",
            "--destination-dir",
            "--destination-directory",
            "--download",
        ],
        Value::WriteDir,
    ),
    (&["-w", "--wheel-dir"], Value::WriteDir),
    (&["-r", "--requirement", "--requirements"], Value::ReadFile),
    (&["--requirements-from-script"], Value::ReadFile),
    (&["-c", "--constraint"], Value::ReadFile),
    (&["--build-constraint"], Value::ReadFile),
    (&["--path"], Value::ReadPath),
    (&["-i", "--index-url", "--index"], Value::IndexUrl),
    (&["--extra-index-url"], Value::ExtraIndexUrl),
    (&["-f", "--find-links"], Value::FindLinks),
    (
        &[
            "--platform",
            "--python-version",
            "--implementation",
            "--abi",
            "--upgrade-strategy",
            "--global-option",
            "--config-settings",
            "-C",
            "--no-binary",
            "--only-binary",
            "--progress-bar",
            "--root-user-action",
            "--retries",
            "--timeout",
            "--exists-action",
            "--trusted-host",
            "--use-feature",
            "--use-deprecated",
            "--keyring-provider",
            "--format",
            "--exclude",
            "--group",
            "--uploaded-prior-to",
            "--resume-retries",
            "--algorithm",
            "-a",
            "--report",
            "--excludes",
            "--release-control",
            "--all-releases",
            "--only-final",
            "--default-timeout",
            "--editor",
            "--refresh-package",
        ],
        Value::Other,
    ),
];

/// Options capsa cannot honour, and why.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &["--user"],
        "packages go to --target DIR, not to a user site",
    ),
    (&["--prefix", "--root"], "packages go to --target DIR"),
    (
        &["-e", "--editable"],
        "an editable install writes into the source folder; install it with --target",
    ),
    (
        &["--src", "--source", "--source-dir", "--source-directory"],
        "version control checkouts need git, which cannot run in WASI",
    ),
    (
        &["-o", "--output"],
        "pip's output file is not supported; pip writes only the target",
    ),
    (&["--pypi-url"], "give the index with --index-url"),
    (&["--cache-dir"], "pip's cache is capsa's, for one run only"),
    (
        &["--log", "--log-file", "--local-log"],
        "pip's output is on stderr",
    ),
    (
        &["--cert", "--client-cert"],
        "TLS is done by capsa's host: use capsa's --ca-cert before pip's command",
    ),
    (&["--proxy"], "the host connects to the index directly"),
    (&["--python"], "pip runs on capsa's CPython 3.14"),
    (&["--report"], "pip's report file is not supported yet"),
];

/// Commands that take a directory to write, and the option that names it.
const NEEDS_DIR: &[(&str, &str)] = &[("install", "--target"), ("download", "-d"), ("wheel", "-w")];

/// Short options that are plain flags in some commands: `show -f`
/// (`--files`), `completion -f` (fish), `list -o` (`--outdated`).
fn is_flag_here(name: &str, command: Option<&str>) -> bool {
    matches!(
        (name, command),
        ("-f", Some("show" | "completion")) | ("-o", Some("list"))
    )
}

fn find(name: &str) -> Option<Value> {
    VALUED
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, v)| *v)
}

fn refused(name: &str) -> Option<&'static str> {
    REFUSED
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, why)| *why)
}

fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// `value` made absolute against `cwd` (which the system gave: no links),
/// refused if it is empty or reached through a link: a link would send the
/// grant wherever it points, and such names often come with the project
/// being installed. Its own components are checked as far as they exist.
fn plain_path(cwd: &Path, value: &str, option: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    if value.is_empty() {
        return Err(format!("{option} needs a path"));
    }
    let given = Path::new(value);
    let mut cur = if given.is_absolute() {
        PathBuf::new()
    } else {
        cwd.to_path_buf()
    };
    for c in given.components() {
        match c {
            Component::ParentDir => {
                cur.pop();
            }
            Component::CurDir => {}
            c => {
                cur.push(c);
                if matches!(c, Component::Normal(_))
                    && std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(format!(
                        "{option} {}: {} is a link; give the path it leads to",
                        escape_for_terminal(value),
                        escape_for_terminal(&cur.display().to_string())
                    ));
                }
            }
        }
    }
    Ok(cur)
}

pub fn parse(argv: &[String], cwd: &Path) -> Result<PipCommand, String> {
    let mut cmd = PipCommand::default();
    let abs = |p: &str| -> PathBuf { cwd.join(p) };
    let mut i = 0;
    let mut after_dashes = false;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if after_dashes || !a.starts_with('-') || a == "-" {
            if cmd.command.is_none() {
                cmd.command = Some(a.clone());
                cmd.args.push(a.clone());
                continue;
            }
            // A local archive or folder to install: read-only (only before
            // `--`: capsa passes requirements it did not check after it).
            let local = Path::new(a);
            if !after_dashes
                && !is_url(a)
                && !a.contains('@')
                && abs(a).exists()
                && (a.contains('/') || local.extension().is_some())
            {
                let p = plain_path(cwd, a, "a local package")?;
                cmd.read_paths.push(p.clone());
                cmd.args.push(p.display().to_string());
            } else {
                cmd.args.push(a.clone());
            }
            continue;
        }
        if a == "--" {
            after_dashes = true;
            cmd.args.push(a.clone());
            continue;
        }
        // `--name=value`, `-xVALUE` or `--name value`.
        let (name, inline) = if let Some(rest) = a.strip_prefix("--") {
            match rest.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (a.clone(), None),
            }
        } else if a.len() > 2
            && a.is_char_boundary(2)
            && (find(&a[..2]).is_some() || refused(&a[..2]).is_some())
            && !is_flag_here(&a[..2], cmd.command.as_deref())
        {
            (a[..2].to_string(), Some(a[2..].to_string()))
        } else if a.len() > 2 {
            // A group of short flags (`-qv`): none of them may be one that
            // takes a value or is refused, which capsa would not see.
            if let Some(c) = a[1..].chars().find(|c| {
                let o = format!("-{c}");
                (find(&o).is_some() || refused(&o).is_some())
                    && !is_flag_here(&o, cmd.command.as_deref())
            }) {
                return Err(format!(
                    "give -{c} on its own, not in the group {}",
                    escape_for_terminal(a)
                ));
            }
            (a.clone(), None)
        } else {
            (a.clone(), None)
        };
        if is_flag_here(&name, cmd.command.as_deref()) {
            cmd.args.push(a.clone());
            continue;
        }
        if let Some(why) = refused(&name) {
            return Err(format!(
                "{} is not supported: {why}",
                escape_for_terminal(&name)
            ));
        }
        if name == "--no-index" {
            cmd.no_index = true;
            cmd.args.push(a.clone());
            continue;
        }
        let Some(kind) = find(&name) else {
            cmd.args.push(a.clone());
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None => {
                let Some(v) = argv.get(i) else {
                    return Err(format!("{name} needs a value"));
                };
                i += 1;
                v.clone()
            }
        };
        let value = match kind {
            Value::WriteDir => {
                let p = plain_path(cwd, &value, &name)?;
                if p.exists() && !p.is_dir() {
                    return Err(format!(
                        "{name} {}: not a directory",
                        escape_for_terminal(&value)
                    ));
                }
                cmd.write_dirs.push(p.clone());
                p.display().to_string()
            }
            Value::ReadPath | Value::ReadFile => {
                let p = plain_path(cwd, &value, &name)?;
                if !p.exists() {
                    return Err(format!(
                        "{name} {}: no such file or directory",
                        escape_for_terminal(&value)
                    ));
                }
                if kind == Value::ReadFile && !p.is_file() {
                    return Err(format!(
                        "{name} {}: not a file",
                        escape_for_terminal(&value)
                    ));
                }
                cmd.read_paths.push(p.clone());
                p.display().to_string()
            }
            Value::IndexUrl => {
                cmd.index_url = Some(value.clone());
                value
            }
            Value::ExtraIndexUrl => {
                cmd.extra_index_urls.push(value.clone());
                value
            }
            Value::FindLinks if is_url(&value) => {
                cmd.find_links.push(value.clone());
                value
            }
            Value::FindLinks => {
                let p = plain_path(cwd, &value, &name)?;
                if !p.exists() {
                    return Err(format!(
                        "{name} {}: no such file or directory",
                        escape_for_terminal(&value)
                    ));
                }
                cmd.read_paths.push(p.clone());
                p.display().to_string()
            }
            Value::Other => value,
        };
        cmd.args.push(name);
        cmd.args.push(value);
    }
    if let Some(c) = &cmd.command
        && let Some((_, opt)) = NEEDS_DIR.iter().find(|(n, _)| n == c)
        && cmd.write_dirs.is_empty()
    {
        return Err(match c.as_str() {
            "install" => "install needs --target DIR: the packages go there, and `capsa run \
                          --python-path=DIR` uses them (pip cannot write anywhere else)"
                .to_string(),
            c => format!("{c} needs {opt} DIR: pip writes only there"),
        });
    }
    if cmd.command.as_deref() == Some("install") {
        // The bytecode pip would write is capsa's to make, read-only, when a
        // run uses the folder.
        cmd.args.insert(1, "--no-compile".into());
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<PipCommand, String> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&v, Path::new("/work"))
    }

    #[test]
    fn paths_become_absolute_and_granted() {
        let t = tempfile::tempdir().unwrap();
        let cwd = std::fs::canonicalize(t.path()).unwrap();
        std::fs::write(cwd.join("req.txt"), "six\n").unwrap();
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse(
            &v(&[
                "install",
                "--target=libs",
                "-r",
                "req.txt",
                "-i",
                "http://127.0.0.1:9/simple",
                "six",
            ]),
            &cwd,
        )
        .unwrap();
        assert_eq!(c.command.as_deref(), Some("install"));
        assert_eq!(c.write_dirs, vec![cwd.join("libs")]);
        assert_eq!(c.read_paths, vec![cwd.join("req.txt")]);
        assert_eq!(c.index_url.as_deref(), Some("http://127.0.0.1:9/simple"));
        let (libs, req) = (
            cwd.join("libs").display().to_string(),
            cwd.join("req.txt").display().to_string(),
        );
        assert_eq!(
            c.args,
            [
                "install",
                "--no-compile",
                "--target",
                &libs,
                "-r",
                &req,
                "-i",
                "http://127.0.0.1:9/simple",
                "six"
            ]
        );
        let c = parse(&v(&["download", "-dout", "six"]), &cwd).unwrap();
        assert_eq!(c.write_dirs, vec![cwd.join("out")]);
        // Links, directories given as files, and empty paths are refused.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/", cwd.join("link")).unwrap();
            for bad in [
                &["install", "-t", "link"][..],
                &["install", "-t", "link/x"],
                &["install", "-t", "x", "-r", "link/etc/passwd"],
            ] {
                let e = parse(&v(bad), &cwd).unwrap_err();
                assert!(e.contains("is a link"), "{bad:?}: {e}");
            }
        }
        assert!(
            parse(&v(&["install", "-t", "x", "-r", "."]), &cwd)
                .unwrap_err()
                .contains("not a file")
        );
        assert!(
            parse(&v(&["install", "--target="]), &cwd)
                .unwrap_err()
                .contains("needs a path")
        );
        assert!(
            parse(&v(&["install", "-t", "req.txt"]), &cwd)
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn refuses_what_would_write_elsewhere_and_says_why() {
        for bad in [
            &["install", "--user", "six"][..],
            &["install", "-t", "x", "-e", "."],
            &["install", "--prefix=/usr", "-t", "x"],
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("not supported"), "{e}");
        }
        let e = p(&["install", "six"]).unwrap_err();
        assert!(e.contains("--target DIR"), "{e}");
        assert!(p(&["install", "-t"]).unwrap_err().contains("needs a value"));
        assert!(
            p(&["install", "-t", "x", "-r", "/no/such/file"])
                .unwrap_err()
                .contains("no such file")
        );
        assert!(p(&["list"]).is_ok());
        assert!(p(&["list", "-o"]).is_ok());
        assert!(p(&["show", "-f", "six"]).unwrap().read_paths.is_empty());
        assert!(p(&["-\u{e9}"]).is_ok() || p(&["-\u{e9}"]).is_err());
        assert!(p(&["install", "-t", "x", "-\u{e9}x"]).is_ok());
        assert!(
            p(&["install", "-t", "x", "-qe", "."])
                .unwrap_err()
                .contains("give -e on its own")
        );
        assert!(
            p(&["install", "-qqt", "x"])
                .unwrap_err()
                .contains("give -t on its own")
        );
        assert!(p(&["install", "-t", "x", "-qv", "six"]).is_ok());
        assert!(
            p(&["install", "-t", "x", "--source-dir=s"])
                .unwrap_err()
                .contains("not supported")
        );
        let c = p(&["install", "-t", "x", "--", "/etc"]).unwrap();
        assert!(c.read_paths.is_empty());
    }
}
