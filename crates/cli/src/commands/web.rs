//! `capsa pack --web`: a bundle as a static site that runs it in a browser
//! page, with what it asked for enforced by the page (see `web/` and the
//! `capsa-web` crate).

use super::run::fail;
use capsa_bundle::{GUEST_APP, Manifest};
use capsa_policy::{EnvPattern, escape_for_terminal};
use capsa_sandbox::exit;
use std::collections::BTreeMap;
use std::path::Path;

/// The page's working directory: empty and writable, gone with the page.
const GUEST_SCRATCH: &str = "/scratch";

/// Output a page holds before it ends the program: a page cannot show the
/// gigabyte the command line allows (the same cap as `capsa serve`'s).
const PAGE_MAX_OUTPUT: u64 = 16 << 20;

pub struct WebArgs<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub python_path: &'a [&'a Path],
    pub single_file: bool,
}

pub fn run(args: WebArgs) -> i32 {
    // `site/` is `site`: a trailing slash would make a link's target be
    // checked instead of the link.
    let output: std::path::PathBuf = args.output.components().collect();
    let args = WebArgs {
        output: &output,
        ..args
    };
    if let Err(e) = check_paths(args.input, args.output) {
        return fail(exit::USAGE, e);
    }
    if let Err(e) = capsa_web::check_output(args.output, args.single_file) {
        return fail(exit::USAGE, e.into());
    }
    let (manifest, files) = match read_input(args.input, args.python_path) {
        Ok(x) => x,
        Err(e) => return fail(exit::USAGE, e),
    };
    for d in manifest.ask.dirs.values() {
        let g = d.guest.as_str();
        if g == GUEST_SCRATCH || g.starts_with(&format!("{GUEST_SCRATCH}/")) {
            return fail(
                exit::USAGE,
                anyhow::anyhow!(
                    "the bundle asks for a folder at {}, but {GUEST_SCRATCH} is the page's working directory: choose another guest path",
                    escape_for_terminal(g)
                ),
            );
        }
    }
    let esc = |p: &Path| escape_for_terminal(&p.display().to_string()).into_owned();
    let name = args
        .input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let entry = manifest.run.entry.clone();
    let python = entry.ends_with(".py") || entry.ends_with(".pyw");
    let (component, argv, stdlib) = if python {
        eprintln!(
            "capsa: preparing Python 3.14 for the page (a snapshot of its own; about 20 s)..."
        );
        let component = match capsa_python::generate_fresh() {
            Ok(c) => c,
            Err(e) => return fail(exit::INTERNAL, e.into()),
        };
        let stdlib = match capsa_python::stdlib_sources() {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    exit::INTERNAL,
                    anyhow::anyhow!("cannot read the standard library: {e}"),
                );
            }
        };
        let file = format!("{GUEST_APP}/{entry}");
        let site = capsa_bundle::pack::SITE_PACKAGES;
        let path = if files.keys().any(|k| k.starts_with(&format!("{site}/"))) {
            vec![format!("{GUEST_APP}/{site}")]
        } else {
            Vec::new()
        };
        let mut inv = capsa_python::Invocation::script(file.clone(), manifest.run.args.clone());
        // As `python3 -i`: the REPL follows, in the program's globals.
        inv.inspect = true;
        inv.quiet = true;
        inv.unbuffered = true;
        let json = inv.to_guest_json(Some(&file), Some(GUEST_SCRATCH), &path);
        (component, vec!["python".to_string(), json], stdlib)
    } else {
        let Some(bytes) = files.get(&entry) else {
            return fail(
                exit::USAGE,
                anyhow::anyhow!("the bundle has no file {}", escape_for_terminal(&entry)),
            );
        };
        let component = match component_of(&entry, bytes) {
            Ok(c) => c,
            Err(e) => return fail(exit::USAGE, e),
        };
        let mut argv = vec![entry.clone()];
        argv.extend(manifest.run.args.iter().cloned());
        (component, argv, Vec::new())
    };
    let digest = match capsa_bundle::write(&manifest, &files)
        .map(|b| capsa_bundle::verify(&b).map(|(d, _)| d))
    {
        Ok(Ok(d)) => capsa_bundle::hex(&d),
        Ok(Err(e)) | Err(e) => return fail(exit::USAGE, e.into()),
    };
    let timeout = manifest
        .limits
        .timeout
        .map(|t| t.duration())
        .unwrap_or(capsa_policy::Limits::DEFAULT_TIMEOUT);
    let config = capsa_web::SiteConfig {
        name,
        argv,
        cwd: GUEST_SCRATCH.into(),
        stdlib: python.then(|| capsa_python::GUEST_STDLIB.to_string()),
        ask: asks(&manifest),
        digest,
        limits: capsa_web::PageLimits {
            timeout_ms: page_timeout_ms(timeout),
            timeout_text: capsa_sandbox::timeout_message(timeout),
            max_output: PAGE_MAX_OUTPUT,
            output_text: capsa_sandbox::output_message(PAGE_MAX_OUTPUT),
        },
    };
    let app: Vec<(String, Vec<u8>)> = files.into_iter().collect();
    let site = capsa_web::Site {
        config,
        component: &component,
        app: &app,
        stdlib: &stdlib,
    };
    let written = match capsa_web::write_site(&site, args.output, args.single_file) {
        Ok(w) => w,
        Err(e @ (capsa_web::WebError::Transpile(_) | capsa_web::WebError::TooLarge(_))) => {
            return fail(exit::USAGE, e.into());
        }
        Err(e) => return fail(exit::INTERNAL, e.into()),
    };
    let mut skipped = Vec::new();
    for e in &manifest.ask.env {
        if let EnvPattern::Prefix(_) = e.name {
            skipped.push(e.name.to_string());
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "capsa: note: the page asks for variables by exact name; it cannot ask for {}",
            escape_for_terminal(&skipped.join(", "))
        );
    }
    out!(
        "wrote {} ({} {}, {:.1} MB; runs {}{})",
        esc(&written.path),
        written.files,
        if written.files == 1 { "file" } else { "files" },
        written.bytes as f64 / 1e6,
        escape_for_terminal(&entry),
        if args.single_file {
            ""
        } else {
            "; serve the directory, e.g. python3 -m http.server, and open index.html"
        }
    );
    0
}

type Files = BTreeMap<String, Vec<u8>>;

/// The site may be neither the input nor inside it, nor hold it: replacing
/// it would destroy the project being packed.
fn check_paths(input: &Path, output: &Path) -> anyhow::Result<()> {
    let shown = |p: &Path| escape_for_terminal(&p.display().to_string()).into_owned();
    let input = std::fs::canonicalize(input)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", shown(input)))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = output.file_name() else {
        anyhow::bail!("{} names no file or directory to write", shown(output));
    };
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", shown(parent)))?;
    let out = parent.join(name);
    if out == input || out.starts_with(&input) || input.starts_with(&out) {
        anyhow::bail!(
            "the site {} would overlap what is packed, {}: write it elsewhere",
            shown(output),
            shown(&input)
        );
    }
    Ok(())
}

/// A project folder as `capsa pack` takes it, or a `.capsa` bundle.
fn read_input(input: &Path, python_path: &[&Path]) -> anyhow::Result<(Manifest, Files)> {
    if input.is_dir() {
        return Ok(capsa_bundle::pack::collect(input, python_path, None)?);
    }
    if !python_path.is_empty() {
        anyhow::bail!("--python-path is for a project folder; a bundle carries its packages");
    }
    let bytes = std::fs::read(input).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}",
            escape_for_terminal(&input.display().to_string())
        )
    })?;
    let limits = capsa_bundle::ReadLimits::default();
    let bundle = capsa_bundle::read(&bytes, limits)?;
    let files = capsa_bundle::contents(&bundle, &bytes, limits)?;
    Ok((bundle.manifest, files))
}

/// The program as a component: a component as it is, a preview 1 module
/// adapted, text parsed (as `capsa run` does).
fn component_of(entry: &str, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let leaf = entry.rsplit('/').next().unwrap_or("program.wasm");
    let path = dir.path().join(leaf);
    std::fs::write(&path, bytes)?;
    let program = capsa_sandbox::load::Program::read(&path, None)?;
    Ok(program.component_bytes()?)
}

fn asks(m: &Manifest) -> capsa_web::Asks {
    capsa_web::Asks {
        net: m
            .ask
            .net
            .iter()
            .map(|a| capsa_web::NetAsk {
                rule: a.rule.to_string(),
                reason: a.reason.to_string(),
            })
            .collect(),
        env: m
            .ask
            .env
            .iter()
            .filter_map(|a| match &a.name {
                EnvPattern::Exact(name) => Some(capsa_web::EnvAsk {
                    name: name.clone(),
                    reason: a.reason.to_string(),
                }),
                EnvPattern::Prefix(_) => None,
            })
            .collect(),
        dirs: m
            .ask
            .dirs
            .iter()
            .map(|(name, d)| capsa_web::DirAsk {
                name: name.as_str().to_string(),
                access: match d.access {
                    capsa_bundle::manifest::DirAccess::Read => "read".into(),
                    capsa_bundle::manifest::DirAccess::ReadWrite => "read-write".into(),
                },
                guest: d.guest.as_str().to_string(),
                reason: d.reason.to_string(),
            })
            .collect(),
    }
}

/// The page's time limit in whole milliseconds (what `setTimeout` takes),
/// rounded up: never shorter than the limit the bundle gives.
fn page_timeout_ms(limit: std::time::Duration) -> u64 {
    u64::try_from(limit.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_page_time_limit_is_rounded_up_to_whole_milliseconds() {
        for (limit, ms) in [
            (Duration::from_micros(400), 1),
            (Duration::from_micros(1_500), 2),
            (Duration::from_millis(250), 250),
            (Duration::from_secs(30), 30_000),
            (Duration::from_nanos(30_000_000_001), 30_001),
        ] {
            assert_eq!(super::page_timeout_ms(limit), ms, "{limit:?}");
        }
    }
}
