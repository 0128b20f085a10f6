//! `capsa run`: flags to a resolved policy, then one call into the sandbox.

use anyhow::{Context, Result};
use capsa_policy::{PathResolver, Policy, RawLimits, RawPolicy, ResolvedPath, TypedGrants};
use capsa_sandbox::report::AuditSink;
use capsa_sandbox::{CodeCache, Outcome, RunConfig, exit};
use clap::Args;
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
Everything is denied unless granted. Lists are comma-separated, and each flag
may be repeated. A host path appears in the program at the same absolute path
(HOST::GUEST chooses another). wasi-libc programs resolve relative paths
against /, so a directory granted below the working directory also appears
at its relative path there: out/result.txt reaches $PWD/out as it would
natively.

Network rules: host, host:port, *.host, IP, IP:port, CIDR, [v6]:port.
Loopback, private, link-local and cloud-metadata addresses are reached only
when a rule names them by IP, CIDR or localhost. The same rules decide each
HTTP(S) request a program makes through wasi:http (Python's urllib and
requests do); capsa verifies TLS against the system's CAs and --ca-cert.

Limit defaults: --memory=1G, --timeout=10m, --max-output=1G, no --fuel,
no --max-write. `none` turns off --timeout, --fuel, --max-output or
--max-write.

Exit status:
  the program's own exit code, or one of capsa's:
  124  time limit reached (--timeout)
  125  usage or policy error (bad flag, policy file or grant)
  126  the program cannot be loaded (missing, not WebAssembly, bad imports,
       a damaged bundle)
  134  the program crashed (a WebAssembly trap)
  137  another limit reached (--memory, --fuel, --max-output, --max-write)
   70  capsa itself failed (host I/O error)";

#[derive(Args, Debug)]
#[command(
    about = "Run a WebAssembly program (WASI preview 1 module or 0.2 command component, binary or text) or a Python script",
    after_help = AFTER_HELP,
    override_usage = "capsa run [OPTIONS] <PROGRAM> [ARGS]..."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Bundles: grant what the bundle asks for without asking.
    #[arg(long)]
    pub grant_requested: bool,
    /// Bundles: bind an asked directory to a host path; :ro or :rw sets the access.
    #[arg(long, value_name = "NAME=PATH[:ro|:rw]", value_parser = super::bundle::parse_bind)]
    pub bind: Vec<super::bundle::Bind>,
    /// Bundles: refuse the bundle unless its sha256 is HEX.
    #[arg(long, value_name = "HEX", value_parser = super::bundle::parse_sha256)]
    pub expect_sha256: Option<[u8; 32]>,
    /// Python: also install this requirement for the script, as its
    /// `# /// script` block would (in the sandbox, once).
    #[arg(long, value_name = "PKG")]
    pub with: Vec<String>,
    /// The program (a .wasm or .wat file, a .py script, or a .capsa
    /// bundle), then its arguments: everything after PROGRAM is the
    /// program's, even what looks like capsa's own flags.
    // One list, so that clap takes nothing after its first value as a
    // flag: with PROGRAM apart, `capsa run x.py --allow-read=/` granted `/`
    // (a caller passing a script untrusted arguments gave it any grant).
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(std::ffi::OsString)
    )]
    command: Vec<std::ffi::OsString>,
    /// The program, from `command` (see [`RunArgs::program_and_args`]).
    #[arg(skip)]
    pub program: PathBuf,
    /// Arguments for the program.
    #[arg(skip)]
    pub args: Vec<String>,
}

impl RunArgs {
    /// Arguments for a program that is not on the command line (a
    /// bundle's executable runs its own bundle).
    pub fn for_program(
        sandbox: SandboxArgs,
        grant_requested: bool,
        bind: Vec<super::bundle::Bind>,
        expect_sha256: Option<[u8; 32]>,
        program: PathBuf,
        args: Vec<String>,
    ) -> RunArgs {
        RunArgs {
            sandbox,
            grant_requested,
            bind,
            expect_sha256,
            with: Vec::new(),
            command: Vec::new(),
            program,
            args,
        }
    }

    /// Splits the command line's `PROGRAM [ARGS]` into the program and its
    /// arguments. A first word that looks like an option, and names no
    /// file, is one capsa does not know (its own are taken before
    /// PROGRAM): a usage error, not a missing program of that name.
    pub fn program_and_args(&mut self) -> Result<()> {
        let mut words = std::mem::take(&mut self.command).into_iter();
        let Some(first) = words.next() else {
            return Ok(());
        };
        if first.as_encoded_bytes().starts_with(b"-") && std::fs::symlink_metadata(&first).is_err()
        {
            anyhow::bail!(
                "unknown option {}: capsa's options come before PROGRAM (see capsa run --help)",
                capsa_policy::escape_for_terminal(&first.to_string_lossy())
            );
        }
        self.program = PathBuf::from(first);
        self.args = words
            .map(|w| {
                w.into_string().map_err(|w| {
                    anyhow::anyhow!(
                        "the program's argument {} is not valid UTF-8",
                        capsa_policy::escape_for_terminal(&w.to_string_lossy())
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }
}

/// Grants and limits, shared by `capsa run` and `capsa python`.
#[derive(Args, Debug, Default)]
pub struct SandboxArgs {
    /// Read-only access to a directory or file (HOST or HOST::GUEST).
    #[arg(long, value_name = "PATH[,PATH...]")]
    pub(crate) allow_read: Vec<String>,
    /// Read and write access to a directory or file (HOST or HOST::GUEST).
    #[arg(long, value_name = "PATH[,PATH...]")]
    pub(crate) allow_write: Vec<String>,
    /// Refuse reading below these paths, whatever else is granted.
    #[arg(long, value_name = "PATH[,PATH...]")]
    deny_read: Vec<String>,
    /// Refuse changing anything below these paths, whatever else is granted.
    #[arg(long, value_name = "PATH[,PATH...]")]
    deny_write: Vec<String>,
    /// Outbound connections to these hosts, addresses or networks.
    #[arg(long, value_name = "RULE[,RULE...]")]
    pub(crate) allow_net: Vec<String>,
    /// Refuse these hosts, addresses or networks, whatever else is granted.
    #[arg(long, value_name = "RULE[,RULE...]")]
    deny_net: Vec<String>,
    /// Binding and listening on [ADDR:]PORT (port 0: any port).
    #[arg(long, value_name = "[ADDR:]PORT[,...]")]
    allow_listen: Vec<String>,
    /// Pass the host's value of these variables (PREFIX_* for a prefix).
    #[arg(long, value_name = "NAME[,NAME...]")]
    allow_env: Vec<String>,
    /// Set a variable for the program.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Read grants and limits from a TOML file; flags add to it.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Memory the program may use [default: 1G].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Wall-clock time for the whole run [default: 10m].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Deterministic CPU budget, in fuel units (about one per instruction).
    #[arg(long, value_name = "N")]
    fuel: Option<String>,
    /// Bytes the program may write to stdout and stderr together [default: 1G].
    #[arg(long, value_name = "SIZE")]
    max_output: Option<String>,
    /// Bytes the program may write to files, each name it makes counting
    /// 4K [default: none].
    #[arg(long, value_name = "SIZE")]
    max_write: Option<String>,
    /// A private, empty folder for the program's temporary files (its
    /// TMPDIR), removed with what it holds when the run ends.
    #[arg(long)]
    pub tmp: bool,
    /// Do not print denials on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write every capability decision as a JSON line to FILE (- for stderr).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// HTTPS: also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Python: put this directory of packages on sys.path, read-only.
    #[arg(long, value_name = "DIR")]
    pub python_path: Vec<PathBuf>,
    /// The program's stdin is this file's contents (capsa serve's workers).
    #[arg(long, value_name = "FILE", hide = true)]
    pub stdin_file: Option<PathBuf>,
    /// A script that asks for packages (its `# /// script` block) is
    /// refused, not given them (capsa serve: a client's code may not have
    /// the server fetch packages).
    #[arg(long, hide = true)]
    pub no_script_deps: bool,
}

/// `path` without links, or as given if it cannot be resolved.
pub fn canonical_or(path: &Path) -> PathBuf {
    capsa_sandbox::load::canonical(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An I/O error as a message names it ("no such file or directory").
pub fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        _ => e.to_string(),
    }
}

/// Canonicalizes through the real file system.
struct HostFs;

use capsa_sandbox::load::canonical;

impl PathResolver for HostFs {
    fn resolve(&self, path: &Path) -> std::result::Result<ResolvedPath, String> {
        let canonical = canonical(path).map_err(|e| {
            // A file the program is to make (the hint for a refused
            // `open(path, "w")` names the file tried): only its directory
            // can be granted. Said, not done: the directory is more.
            let parent = path.parent().map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            });
            match parent.map(canonical) {
                Some(Ok(dir)) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                    format!(
                        "{} (a folder the program is to fill must be made first, with mkdir; a file the program is to make is granted by the directory it is in: {})",
                        describe_io(&e),
                        dir.display()
                    )
                }
                _ => describe_io(&e),
            }
        })?;
        let is_dir = canonical.is_dir();
        Ok(ResolvedPath { canonical, is_dir })
    }
}

impl SandboxArgs {
    pub fn raw_policy(&self) -> Result<RawPolicy> {
        let mut raw = match &self.policy {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read policy file {}", file.display()))?;
                let mut p = RawPolicy::from_toml(&text)
                    .with_context(|| format!("in policy file {}", file.display()))?;
                let file = std::path::absolute(file)?;
                let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                p.rebase(&dir);
                // A program granted the folder that holds its policy could
                // otherwise widen the policy of every later run.
                p.deny_write.push(file.display().to_string());
                p
            }
            None => RawPolicy::default(),
        };
        let mut flags = RawPolicy {
            allow_read: self.allow_read.clone(),
            allow_write: self.allow_write.clone(),
            deny_read: self.deny_read.clone(),
            deny_write: self.deny_write.clone(),
            allow_net: self.allow_net.clone(),
            deny_net: self.deny_net.clone(),
            allow_listen: self.allow_listen.clone(),
            allow_env: self.allow_env.clone(),
            limits: RawLimits {
                memory: self.memory.clone().map(Into::into),
                timeout: self.timeout.clone().map(Into::into),
                fuel: self.fuel.clone().map(Into::into),
                max_output: self.max_output.clone().map(Into::into),
                max_write: self.max_write.clone().map(Into::into),
            },
            ..Default::default()
        };
        for e in &self.env {
            flags.add_env_assignment(e)?;
        }
        raw.merge(flags);
        Ok(raw)
    }

    pub fn policy(&self, cwd: &Path) -> Result<Policy> {
        resolve(self.raw_policy()?, cwd)
    }
}

/// A raw policy resolved against the real file system.
pub fn resolve(raw: RawPolicy, cwd: &Path) -> Result<Policy> {
    resolve_with(raw, &TypedGrants::default(), cwd)
}

/// [`resolve`], plus grants that arrive typed (a bundle's asks).
pub fn resolve_with(raw: RawPolicy, typed: &TypedGrants, cwd: &Path) -> Result<Policy> {
    let policy = raw.resolve_with(cwd, &HostFs, typed)?;
    refuse_own_files(&policy)?;
    let hosts = capsa_policy::split_all(&raw.allow_read)
        .chain(capsa_policy::split_all(&raw.allow_write))
        .map(|spec| Path::new(spec.split_once("::").map_or(spec, |(h, _)| h)))
        .chain(typed.dirs.iter().map(|d| d.host.as_path()));
    for host in hosts {
        // Walked as the grant was resolved: `..` folded as text first, not
        // taken from where a link before it led.
        let given = capsa_policy::normalize_host(&cwd.join(host));
        let arrived = refuse_links_in_writable_grants(&given, &policy)?;
        // The grant was resolved before this walk: where a name on the way
        // was replaced in between (a link swapped for a directory by a
        // program running now), the two differ, and the grant may be where
        // the link led.
        if cfg!(target_os = "linux")
            && !arrived.is_some_and(|a| policy.fs.grants.iter().any(|g| g.host == a))
        {
            anyhow::bail!(
                "{} changed while capsa checked it; nothing ran",
                given.display()
            );
        }
    }
    Ok(policy)
}

/// A grant is never resolved through a link that lies inside a writable
/// grant: a program granted that directory may have made or replaced the
/// link (in this run's grant, or an earlier run's), and the grant would
/// then land wherever it chose.
///
/// The path is walked as the host resolves it, one name at a time: a link
/// met on the way (the user's own, outside every writable grant) is
/// followed one step, its target's names walked in turn, so a chain of
/// links is checked link by link. Gives where the walk arrived (the path
/// with every link followed), or `None` where a name on the way does not
/// exist (nothing more to check).
pub fn refuse_links_in_writable_grants(given: &Path, policy: &Policy) -> Result<Option<PathBuf>> {
    use capsa_policy::{Access, GrantKind};
    use std::path::Component;
    /// As the kernel's own limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    let mut todo: Vec<PathBuf> = Vec::new();
    let push_all = |todo: &mut Vec<PathBuf>, path: &Path| {
        let mut parts: Vec<PathBuf> = path
            .components()
            .map(|c| PathBuf::from(c.as_os_str()))
            .collect();
        parts.reverse();
        todo.extend(parts);
    };
    push_all(&mut todo, given);
    let writable: Vec<&capsa_policy::FsGrant> = policy
        .fs
        .grants
        .iter()
        .filter(|g| g.access == Access::ReadWrite && g.kind == GrantKind::Dir)
        .collect();
    #[cfg(unix)]
    let id = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    // The writable grant the link lies in, by path or (a folder reached by
    // another path, such as a bind mount, holds the same links) by what
    // the folders on its way are. Only asked where a link is met.
    let holder = |link: &Path| -> Option<PathBuf> {
        if let Some(g) = writable.iter().find(|g| link.starts_with(&g.host)) {
            return Some(g.host.clone());
        }
        #[cfg(unix)]
        let writable_ids: Vec<((u64, u64), &Path)> = writable
            .iter()
            .filter_map(|g| Some((id(&std::fs::metadata(&g.host).ok()?), g.host.as_path())))
            .collect();
        #[cfg(unix)]
        for dir in link.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            if let Some((_, host)) = writable_ids.iter().find(|(i, _)| *i == id(&m)) {
                return Some(host.to_path_buf());
            }
        }
        None
    };
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.components().next() {
            Some(Component::ParentDir) => {
                // `cur` holds no link, so this is the real parent.
                cur.pop();
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(Component::RootDir | Component::Prefix(_)) if cur.as_os_str().is_empty() => {
                cur.push(&part);
                continue;
            }
            Some(Component::RootDir) => {
                // A link's absolute target starts again at the root (and
                // on Windows keeps the drive of where it is).
                let mut root = PathBuf::new();
                if let Some(Component::Prefix(p)) = cur.components().next() {
                    root.push(p.as_os_str());
                }
                root.push(&part);
                cur = root;
                continue;
            }
            Some(Component::Prefix(_)) => {
                cur = part;
                continue;
            }
            Some(Component::Normal(_)) => cur.push(&part),
        }
        let Ok(meta) = std::fs::symlink_metadata(&cur) else {
            return Ok(None);
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        if let Some(g) = holder(&cur) {
            anyhow::bail!(
                "{} is reached through the link {}, which lies in the writable grant {}; grant the path it leads to instead",
                given.display(),
                cur.display(),
                g.display()
            );
        }
        links += 1;
        if links > MAX_LINKS {
            anyhow::bail!("{}: too many levels of links", given.display());
        }
        let target = std::fs::read_link(&cur)?;
        cur.pop();
        push_all(&mut todo, &target);
    }
    Ok(Some(cur))
}

/// Refuses `resolved` (a path resolved after [`refuse_links_in_writable_grants`]
/// walked it) unless it is where the walk arrived: a name on the way was
/// replaced in between, maybe with a link the check never saw.
pub fn same_as_checked(arrived: Option<PathBuf>, resolved: &Path) -> Result<()> {
    if cfg!(target_os = "linux") && arrived.as_deref() != Some(resolved) {
        anyhow::bail!(
            "{} changed while capsa checked it; nothing ran",
            resolved.display()
        );
    }
    Ok(())
}

/// Creates (or empties) the audit file at `path`, never through a link in
/// a writable grant (a program could have put one there to have the log
/// overwrite a file of its choice): its folder is walked as a grant's path
/// is, then opened where the walk arrived with no link followed on the way
/// or at the file's name, so a name swapped for a link after the walk fails
/// instead. Gives the file and its real path.
fn create_audit(path: &Path, policy: &Policy) -> Result<(std::fs::File, PathBuf)> {
    // Where it exists, the file the walk arrived at (the user's own links
    // followed); else a new file in the folder the walk arrived at.
    let at = match refuse_links_in_writable_grants(path, policy)? {
        Some(at) => at,
        None => {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                anyhow::bail!("not a file name");
            };
            refuse_links_in_writable_grants(dir, policy)?
                .ok_or_else(|| anyhow::anyhow!("no such directory {}", dir.display()))?
                .join(name)
        }
    };
    let (Some(dir), Some(name)) = (at.parent(), at.file_name()) else {
        anyhow::bail!("not a file name");
    };
    let mut f = capsa_sandbox::load::create_no_links(dir, name)?;
    // Only an empty file or an earlier audit log is emptied: a mistyped
    // `--audit` naming the script, the policy or a file of the user's
    // would otherwise be lost.
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, 64 << 10), &mut head)?;
    if !head.is_empty() && !is_audit_log(&head) {
        anyhow::bail!(
            "{} is not an audit log capsa wrote; name a new file (or remove it)",
            at.display()
        );
    }
    // An empty file is left as it is: on ext4, emptying a file marks it to
    // be written out to disk when it is closed (see `capsa serve`'s warm
    // workers, whose runs reuse their audit file).
    if !head.is_empty() {
        f.set_len(0)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
    }
    Ok((f, at))
}

/// Whether `head` (a file's first bytes) begins with an audit record.
fn is_audit_log(head: &[u8]) -> bool {
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(first).is_ok_and(|v| {
        ["time", "kind", "decision"]
            .iter()
            .all(|k| v.get(k).is_some())
    })
}

/// No grant may reach into capsa's cache: it holds code capsa runs
/// natively and the Python every later run imports. (A grant that merely
/// contains it is narrowed by the sandbox instead.)
pub fn refuse_own_files(policy: &Policy) -> Result<()> {
    let Some(cache) = CodeCache::default_dir() else {
        return Ok(());
    };
    let cache = canonical(&cache).unwrap_or(cache);
    for g in &policy.fs.grants {
        if g.host.starts_with(&cache) {
            anyhow::bail!(
                "{} is inside capsa's own cache {}, which no program may reach",
                g.host.display(),
                cache.display()
            );
        }
    }
    Ok(())
}

/// `--python-path` as the user gave it may not reach into capsa's cache
/// (capsa mounts its own folders there, pip and environments, itself).
pub fn refuse_python_path_in_cache(sandbox: &SandboxArgs) -> std::result::Result<(), i32> {
    let Some(cache) = CodeCache::default_dir() else {
        return Ok(());
    };
    let cache = canonical(&cache).unwrap_or(cache);
    for dir in &sandbox.python_path {
        let real = canonical(dir).unwrap_or_else(|_| dir.clone());
        if real.starts_with(&cache) || cache.starts_with(&real) {
            return Err(fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "--python-path={}: it holds or is inside capsa's own cache {}, which no program may reach",
                    dir.display(),
                    cache.display()
                ),
            ));
        }
    }
    Ok(())
}

/// capsa's working directory, or the exit code (said) when it cannot be read.
pub fn working_dir() -> std::result::Result<PathBuf, i32> {
    std::env::current_dir().map_err(|e| {
        fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot read the working directory: {e}"),
        )
    })
}

/// The working directory and the policy the flags give, or the exit code.
pub fn prepare(sandbox: &SandboxArgs) -> std::result::Result<(PathBuf, Policy), i32> {
    let cwd = working_dir()?;
    let mut policy = sandbox.policy(&cwd).map_err(|e| fail(exit::USAGE, e))?;
    add_private_tmp(sandbox, &mut policy)?;
    Ok((cwd, policy))
}

/// With `--tmp`: a private, empty folder made for the run (mode 0700, in
/// the host's temporary directory), granted writable at its own path and
/// named by the program's `TMPDIR`, where Python's `tempfile` and most
/// programs put their temporary files. Removed with what it holds when
/// the process ends (`capsa_sandbox::remove_run_folders`).
pub fn add_private_tmp(sandbox: &SandboxArgs, policy: &mut Policy) -> std::result::Result<(), i32> {
    if !sandbox.tmp {
        return Ok(());
    }
    if policy.env.set.iter().any(|(name, _)| name == "TMPDIR") {
        return Err(fail(
            exit::USAGE,
            anyhow::anyhow!(
                "--tmp sets the program's TMPDIR; it cannot also be set (--env, or env in a policy file)"
            ),
        ));
    }
    let (dir, path) = super::pip::private_temp("capsa-tmp-")?;
    let denied = |rules: &[PathBuf], flag: &str| {
        rules.iter().find(|r| path.starts_with(r)).map(|r| {
            fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "--tmp's folder would be in {}, which {flag} refuses; the program could not use it",
                    r.display()
                ),
            )
        })
    };
    if let Some(code) = denied(&policy.fs.deny_write, "--deny-write")
        .or_else(|| denied(&policy.fs.deny_read, "--deny-read"))
    {
        return Err(code);
    }
    let Some(guest) = capsa_policy::default_guest(&path) else {
        return Err(fail(
            exit::INTERNAL,
            anyhow::anyhow!("the temporary directory's path is not UTF-8"),
        ));
    };
    capsa_sandbox::remove_with_process(dir.keep());
    policy.fs.grants.push(capsa_policy::FsGrant {
        host: path,
        guest: guest.clone(),
        access: capsa_policy::Access::ReadWrite,
        kind: capsa_policy::GrantKind::Dir,
    });
    policy.env.set.push(("TMPDIR".into(), guest));
    Ok(())
}

/// A Python script: by its extension, or a `#!` line naming python.
fn is_python(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("py") || e.eq_ignore_ascii_case("pyw"))
    {
        return true;
    }
    let mut head = [0u8; 128];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    head.starts_with(b"#!")
        && head
            .split(|&b| b == b'\n')
            .next()
            .is_some_and(|line| line.windows(6).any(|w| w == b"python"))
}

pub fn run(mut args: RunArgs) -> i32 {
    if let Err(e) = args.program_and_args() {
        return fail(exit::USAGE, e);
    }
    if let Err(code) = refuse_python_path_in_cache(&args.sandbox) {
        return code;
    }
    let python = !capsa_bundle::is_bundle_file(&args.program) && is_python(&args.program);
    if !args.with.is_empty() && !python {
        return fail(
            exit::USAGE,
            anyhow::anyhow!(
                "--with is for Python scripts; {} is not one",
                args.program.display()
            ),
        );
    }
    if capsa_bundle::is_bundle_file(&args.program) {
        return super::bundle::run(args, None);
    }
    if args.grant_requested || !args.bind.is_empty() || args.expect_sha256.is_some() {
        return fail(
            exit::USAGE,
            anyhow::anyhow!(
                "--grant-requested, --bind and --expect-sha256 are for bundles; {} is not one",
                args.program.display()
            ),
        );
    }
    if python {
        // The packages its `# /// script` block (and --with) asks for,
        // installed in the sandbox once, read-only for the run.
        let reqs = match super::pip::inline::script_requirements(&args.program, &args.with) {
            Ok(r) => r,
            Err(e) => {
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("{}: {e}", args.program.display()),
                );
            }
        };
        if !reqs.is_empty() && args.sandbox.no_script_deps {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "this server installs no packages a program asks for (its `# /// script` block); the operator gives them with --python-path"
                ),
            );
        }
        if !reqs.is_empty() {
            match super::pip::inline::environment(&reqs, &args.sandbox) {
                Ok(env) => args.sandbox.python_path.push(env),
                Err(code) => return code,
            }
        }
        let script = args.program.to_string_lossy().into_owned();
        return super::python::run_invocation(
            &args.sandbox,
            capsa_python::Invocation::script(script, args.args),
        );
    }
    if !args.sandbox.python_path.is_empty() {
        return fail(
            exit::USAGE,
            anyhow::anyhow!(
                "--python-path is for Python programs; {} is not one (a .py file)",
                args.program.display()
            ),
        );
    }
    let (cwd, policy) = match prepare(&args.sandbox) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // The command's only run: capsa exits with its code.
    capsa_sandbox::exit_after_run();
    execute(
        &args.sandbox,
        cwd,
        policy,
        args.program.clone(),
        args.program.display().to_string(),
        args.args,
        None,
        false,
    )
}

/// Runs `program` under `policy` and turns the outcome into an exit code.
pub fn execute(
    sandbox: &SandboxArgs,
    cwd: PathBuf,
    policy: Policy,
    program: PathBuf,
    argv0: String,
    args: Vec<String>,
    teach_pages: Option<Vec<String>>,
    enters_cwd: bool,
) -> i32 {
    let mut policy = policy;
    let audit = match &sandbox.audit {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(AuditSink::Stderr),
        Some(p) => match create_audit(&cwd.join(p), &policy) {
            Ok((f, at)) => {
                // The program may not rewrite its own record: the file is
                // denied to it as `--deny-write` would (where a writable
                // grant holds it).
                policy.fs.deny_write.push(at);
                Some(AuditSink::File(f))
            }
            Err(e) => {
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("cannot create audit file {}: {e:#}", p.display()),
                );
            }
        },
    };
    if !sandbox.quiet {
        for w in policy.net.warnings() {
            say(&format!("capsa: note: {w}"));
        }
    }
    let stdin = match &sandbox.stdin_file {
        None => None,
        Some(f) => match std::fs::read(f) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                return fail(
                    exit::USAGE,
                    anyhow::anyhow!("cannot read {}: {}", f.display(), describe_io(&e)),
                );
            }
        },
    };
    let config = RunConfig {
        argv0,
        program,
        args,
        policy,
        // As the guest spells it (on Windows `C:\\x` is `/c/x`).
        cwd: capsa_policy::default_guest(&cwd),
        enters_cwd,
        quiet: sandbox.quiet,
        audit,
        cache: CodeCache::default_dir().map(CodeCache::new),
        ca_certs: sandbox.ca_cert.clone(),
        stdin,
        teach_pages,
        // Not for `capsa serve`'s runs (given their stdin as a file),
        // which have no such flag.
        suggest_tmp: !sandbox.tmp && sandbox.stdin_file.is_none(),
    };
    match capsa_sandbox::run(config) {
        Ok(Outcome::Exited(code)) => code,
        Ok(Outcome::Limit { code, message }) => {
            say(&format!("capsa: {message}"));
            code
        }
        Ok(Outcome::Trapped { message, note }) => {
            say(&format!(
                "capsa: the program crashed: {}",
                capsa_sandbox::report::escape(&message)
            ));
            if let Some(note) = note {
                say(&format!("  note: {note}"));
            }
            exit::TRAP
        }
        Err(e) => fail(e.exit_code(), e.into()),
    }
}

/// One line on stderr. Never panics: an exit code must reach the caller
/// even when stderr is closed or full (`2>/dev/full`).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{}{line}", capsa_sandbox::line_start());
}

/// Prints `err` and its causes on one line (lines only where capsa itself
/// broke them), escaped: a message may quote a path, a name or a reason
/// that a bundle or a guest chose.
pub fn fail(code: i32, err: anyhow::Error) -> i32 {
    let text = format!("{err:#}");
    let lines: Vec<_> = text
        .split('\n')
        .map(capsa_policy::escape_for_terminal)
        .collect();
    say(&format!("capsa: error: {}", lines.join("\n")));
    code
}
