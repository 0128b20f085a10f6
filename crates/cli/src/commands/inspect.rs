//! `capsa inspect app.capsa`: what a bundle runs and asks for, before it runs.

use super::bundle::parse_sha256;
use super::run::fail;
use capsa_bundle::BundleError;
use capsa_policy::{escape_for_terminal, quote_flag_value};
use capsa_sandbox::exit;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(about = "Show a bundle's program, requested permissions, limits, digest and files")]
pub struct InspectArgs {
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// Print JSON, for tools.
    #[arg(long)]
    json: bool,
    /// Refuse the bundle unless its sha256 is HEX.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    expect_sha256: Option<[u8; 32]>,
}

/// Reads and verifies a bundle file, or says why not: 126 for a file that
/// is not a sound bundle, 125 for one whose digest is not `expected`.
///
/// Only the file itself is read, from its start: a bundle appended to an
/// executable is found only by that executable (`capsa_bundle::own_bundle`).
pub fn open(
    path: &std::path::Path,
    expected: Option<&[u8; 32]>,
) -> Result<capsa_bundle::Bundle, i32> {
    let shown = escape_for_terminal(&path.display().to_string()).into_owned();
    decode(&shown, &read(path)?, expected, None)
}

/// The bytes of the bundle file at `path`, or why not (126).
pub fn read(path: &std::path::Path) -> Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| {
        fail(
            exit::LOAD,
            anyhow::anyhow!(
                "cannot read {}: {}",
                escape_for_terminal(&path.display().to_string()),
                super::run::describe_io(&e)
            ),
        )
    })
}

/// [`open`] on bytes already read; `shown` names them in messages. For a
/// run, `cache_root` is where the bundle is unpacked: its files are
/// compared with the bundle's as they are read (`read_for_run`).
pub fn decode(
    shown: &str,
    bytes: &[u8],
    expected: Option<&[u8; 32]>,
    cache_root: Option<&std::path::Path>,
) -> Result<capsa_bundle::Bundle, i32> {
    let limits = capsa_bundle::ReadLimits::default();
    match cache_root {
        Some(root) => capsa_bundle::read_for_run(bytes, limits, expected, root),
        None => capsa_bundle::read_expecting(bytes, limits, expected),
    }
    .map_err(|e| {
        let code = match e {
            // The user's own check said no: the bundle may be sound.
            BundleError::UnexpectedDigest { .. } => exit::USAGE,
            _ => exit::LOAD,
        };
        fail(code, anyhow::anyhow!("{shown}: {e}"))
    })
}

pub fn run(args: InspectArgs) -> i32 {
    let b = match open(&args.bundle, args.expect_sha256.as_ref()) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let m = &b.manifest;
    if args.json {
        // JSON escapes control characters itself; tools get the text as is.
        let v = serde_json::json!({
            "sha256": b.digest_hex(),
            "manifest": m,
            "files": b.files.iter().map(|(p, size)| serde_json::json!({"path": p, "size": size})).collect::<Vec<_>>(),
        });
        match serde_json::to_string_pretty(&v) {
            Ok(text) => out!("{text}"),
            Err(e) => return fail(exit::INTERNAL, e.into()),
        }
        return 0;
    }
    // Everything below that the bundle chose is escaped: the manifest's
    // checks refuse control characters, and this does not rely on them.
    let esc = |s: &str| escape_for_terminal(s).into_owned();
    out!("bundle  {}", esc(&args.bundle.display().to_string()));
    out!("sha256  {}", b.digest_hex());
    let args_text: String = m
        .run
        .args
        .iter()
        .map(|a| format!(" {}", esc(&quote_flag_value(a))))
        .collect();
    out!("runs    {}{args_text}", esc(&m.run.entry));
    out!("asks for:");
    if !m.asks_anything() {
        out!("  nothing");
    }
    for n in &m.ask.net {
        out!(
            "  network  {:<32} {}",
            n.rule.to_string(),
            esc(n.reason.as_str())
        );
    }
    for e in &m.ask.env {
        out!(
            "  env      {:<32} {}",
            e.name.to_string(),
            esc(e.reason.as_str())
        );
    }
    for (name, d) in &m.ask.dirs {
        out!(
            "  dir      {:<32} {}",
            format!("{name} ({}, at {})", d.access.describe(), d.guest),
            esc(d.reason.as_str())
        );
    }
    let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".into());
    out!(
        "limits  memory {}, timeout {}",
        or_default(m.limits.memory.map(|l| l.to_string())),
        or_default(m.limits.timeout.map(|l| l.to_string()))
    );
    out!("files:");
    for (p, size) in &b.files {
        out!("  {size:>10}  {}", esc(p));
    }
    0
}
