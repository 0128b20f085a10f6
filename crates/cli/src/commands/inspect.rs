//! `capsa inspect app.capsa`: what a bundle runs and asks for, before it runs.

use super::run::fail;
use capsa_bundle::manifest::DirAccess;
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
}

/// Reads and verifies a bundle file, or says why not (exit 126).
pub fn open(path: &std::path::Path) -> Result<capsa_bundle::Bundle, i32> {
    let cannot = |e: std::io::Error| {
        fail(
            exit::LOAD,
            anyhow::anyhow!("cannot read {}: {e}", path.display()),
        )
    };
    // A bundle file, or an executable made by `capsa pack --exe`.
    let bytes = match capsa_bundle::embedded(path).map_err(cannot)? {
        Some(bytes) => bytes,
        None => std::fs::read(path).map_err(cannot)?,
    };
    capsa_bundle::read(&bytes, capsa_bundle::ReadLimits::default())
        .map_err(|e| fail(exit::LOAD, anyhow::anyhow!("{}: {e}", path.display())))
}

pub fn run(args: InspectArgs) -> i32 {
    let b = match open(&args.bundle) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let m = &b.manifest;
    if args.json {
        let v = serde_json::json!({
            "sha256": b.digest_hex(),
            "manifest": m,
            "files": b.files.iter().map(|(p, d)| serde_json::json!({"path": p, "size": d.len()})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return 0;
    }
    println!("bundle  {}", args.bundle.display());
    println!("sha256  {}", b.digest_hex());
    let args_text = if m.run.args.is_empty() {
        String::new()
    } else {
        format!(" {}", m.run.args.join(" "))
    };
    println!("runs    {}{args_text}", m.run.entry);
    println!("asks for:");
    if m.ask.net.is_empty() && m.ask.env.is_empty() && m.ask.dirs.is_empty() {
        println!("  nothing");
    }
    for n in &m.ask.net {
        println!("  network  {:<32} {}", n.rule, n.reason);
    }
    for e in &m.ask.env {
        println!("  env      {:<32} {}", e.name, e.reason);
    }
    for (name, d) in &m.ask.dirs {
        let access = match d.access {
            DirAccess::Read => "read-only",
            DirAccess::ReadWrite => "read-write",
        };
        println!(
            "  dir      {:<32} {}",
            format!("{name} ({access}, at {})", d.guest),
            d.reason
        );
    }
    println!(
        "limits  memory {}, timeout {}",
        m.limits.memory.as_deref().unwrap_or("default"),
        m.limits.timeout.as_deref().unwrap_or("default")
    );
    println!("files:");
    for (p, d) in &b.files {
        println!("  {:>10}  {p}", d.len());
    }
    0
}
