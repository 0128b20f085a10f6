//! `capsa pack DIR -o app.capsa`: a project folder into one bundle file.

use super::run::fail;
use capsa_policy::escape_for_terminal;
use capsa_sandbox::exit;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
DIR holds the program and its files, and a capsa.toml saying what runs and
what it asks for (see README, Bundles). Without capsa.toml, a main.py (or a
single .wasm) runs with nothing asked. Hidden files, __pycache__ and .pyc
are left out; links are refused. The same folder always packs to the same
bytes.

With --web, the site runs the bundle in a browser page (Chrome or Edge 137
or later: it needs WebAssembly JavaScript Promise Integration), with what
the bundle asks for shown first and enforced by the page: see README, In a
browser.

Exit status: 0 packed; 125 a bad folder, bundle or manifest, or an output
capsa will not replace; 70 the bundle or site could not be written (nothing
is left behind).";

#[derive(Args, Debug)]
#[command(about = "Pack a project folder into one .capsa bundle", after_help = AFTER_HELP)]
pub struct PackArgs {
    /// The project folder (with --web, also a .capsa bundle).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The bundle to write (with --web, the site's directory or .html file).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Carry this directory of pure-Python packages (into site-packages/).
    #[arg(long, value_name = "DIR")]
    python_path: Vec<PathBuf>,
    /// Write a native executable for this machine that runs the bundle
    /// (capsa itself with the bundle appended; no capsa needed to run it).
    #[arg(long, conflicts_with = "web")]
    exe: bool,
    /// Write a static web site instead: a directory (or with --single-file
    /// one .html) whose page runs the bundle in a browser, DIR being a
    /// project folder or a .capsa bundle.
    #[arg(long)]
    web: bool,
    /// With --web: one self-contained .html file.
    #[arg(long, requires = "web")]
    single_file: bool,
}

pub fn run(args: PackArgs) -> i32 {
    // A Python entry with a `# /// script` block carries its packages,
    // installed in the sandbox (once), so the bundle runs offline.
    let mut extra = Vec::new();
    if args.dir.is_dir()
        && let Some(entry) = capsa_bundle::pack::named_entry(&args.dir)
        && entry.ends_with(".py")
    {
        let entry = args.dir.join(entry);
        match super::pip::inline::script_requirements(&entry, &[]) {
            Ok(reqs) if reqs.is_empty() => {}
            Ok(reqs) => match super::pip::inline::environment(&reqs, &Default::default()) {
                Ok(env) => extra.push(env),
                Err(code) => return code,
            },
            Err(e) => {
                return fail(exit::USAGE, anyhow::anyhow!("{}: {e}", entry.display()));
            }
        }
    }
    let python_path: Vec<&Path> = args
        .python_path
        .iter()
        .chain(&extra)
        .map(PathBuf::as_path)
        .collect();
    if args.web {
        return super::web::run(super::web::WebArgs {
            input: &args.dir,
            output: &args.output,
            python_path: &python_path,
            single_file: args.single_file,
        });
    }
    let (manifest, files) =
        match capsa_bundle::pack::collect(&args.dir, &python_path, Some(&args.output)) {
            Ok(c) => c,
            Err(e) => return fail(exit::USAGE, e.into()),
        };
    let bytes = match capsa_bundle::write(&manifest, &files) {
        Ok(b) => b,
        Err(e) => return fail(exit::USAGE, e.into()),
    };
    let file = if args.exe {
        // An executable made by --exe packs its own capsa, not itself.
        match capsa_bundle::own_executable() {
            Ok(exe) => capsa_bundle::embed(&exe, &bytes),
            Err(e) => {
                return fail(
                    exit::INTERNAL,
                    anyhow::anyhow!("cannot read capsa's own executable: {e}"),
                );
            }
        }
    } else {
        bytes.clone()
    };
    if let Err(e) = write_atomically(&args.output, &file, args.exe) {
        return fail(
            exit::INTERNAL,
            anyhow::anyhow!("cannot write {}: {e}", args.output.display()),
        );
    }
    let digest = match capsa_bundle::verify(&bytes) {
        Ok((digest, _)) => capsa_bundle::hex(&digest),
        Err(e) => return fail(exit::INTERNAL, e.into()),
    };
    let size: usize = files.values().map(Vec::len).sum();
    let esc = |p: &Path| escape_for_terminal(&p.display().to_string()).into_owned();
    out!(
        "packed {} ({} files, {size} bytes; runs {}) into {}\nsha256 {}",
        esc(&args.dir),
        files.len(),
        escape_for_terminal(&manifest.run.entry),
        esc(&args.output),
        digest
    );
    0
}

/// A reader sees the old file or the whole new one, never a part.
fn write_atomically(path: &Path, bytes: &[u8], executable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".capsa-pack-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if executable { 0o755 } else { 0o644 };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    // Windows runs a file by its name (`.exe`), not by a mode bit.
    #[cfg(not(unix))]
    let _ = executable;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
