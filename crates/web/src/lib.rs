//! A static site that runs a program in a browser page, with the
//! permissions its bundle asked for enforced by the page's host.
//!
//! The program is a `wasi:cli/command` component (capsa's Python runtime,
//! or a WASI program). [`write_site`] transpiles it with the Bytecode
//! Alliance's `js-component-bindgen` (the core of jco) into core WebAssembly
//! and an ES module, using JavaScript Promise Integration so the guest's
//! blocking calls (a read of stdin, a request, a sleep) wait on the page's
//! promises. Beside it go capsa's host (`web/`, built into this crate), the
//! bundle's files and, for Python, the standard library, as gzip archives
//! the host unpacks into the guest's in-memory filesystem.
//!
//! The site is a directory (`index.html` and its files, for any static
//! server) or one `.html` holding everything, each file gzip-compressed and
//! base64-encoded.

use base64::Engine as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use js_component_bindgen::{AsyncMode, InstantiationMode, TranspileOpts};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

const WORKER_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/worker.js"));
const PAGE_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/page.js"));
const INDEX_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/web/index.html"));

/// The guest's blocking WASI calls, which suspend the guest while the page
/// waits: jco's own list for `--async-wasi-imports`, and `read`, which the
/// host's stdin makes wait for a line (a guest that polls stdin with
/// non-blocking reads would otherwise spin and never let the line in).
const ASYNC_IMPORTS: [&str; 9] = [
    "wasi:io/streams#[method]input-stream.read",
    "wasi:io/poll#poll",
    "wasi:io/poll#[method]pollable.block",
    "wasi:io/streams#[method]input-stream.blocking-read",
    "wasi:io/streams#[method]input-stream.blocking-skip",
    "wasi:io/streams#[method]output-stream.blocking-flush",
    "wasi:io/streams#[method]output-stream.blocking-write-and-flush",
    "wasi:io/streams#[method]output-stream.blocking-write-zeroes-and-flush",
    "wasi:io/streams#[method]output-stream.blocking-splice",
];
const ASYNC_EXPORTS: [&str; 1] = ["wasi:cli/run#run"];

/// The name the transpiled files take: `component.js`, `component.core*.wasm`.
const NAME: &str = "component";

/// What the page reads to run the program (`site` in the host).
#[derive(Debug, Clone, Serialize)]
pub struct SiteConfig {
    /// Shown as the page's title.
    pub name: String,
    /// The component's command line (`argv`, its first element included).
    pub argv: Vec<String>,
    /// The guest's working directory: an empty, writable scratch directory.
    pub cwd: String,
    /// Where the standard library is mounted (Python), read-only.
    pub stdlib: Option<String>,
    pub ask: Asks,
    /// The bundle's SHA-256 digest, shown with what it asks for.
    pub digest: String,
    pub limits: PageLimits,
}

/// Limits the page enforces by ending the Worker: the wall-clock time a
/// program may compute (its start, or one REPL line; time spent waiting for
/// the user's input is not counted) and the bytes of output it may write.
#[derive(Debug, Clone, Serialize)]
pub struct PageLimits {
    pub timeout_ms: u64,
    /// What the page says when the time is up (the command line's words).
    pub timeout_text: String,
    pub max_output: u64,
    pub output_text: String,
}

/// What the bundle asks for, shown to the user before it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Asks {
    pub net: Vec<NetAsk>,
    pub env: Vec<EnvAsk>,
    pub dirs: Vec<DirAsk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetAsk {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvAsk {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirAsk {
    pub name: String,
    /// `read` or `read-write`.
    pub access: String,
    pub guest: String,
    pub reason: String,
}

/// The program and its files.
pub struct Site<'a> {
    pub config: SiteConfig,
    /// A `wasi:cli/command` component.
    pub component: &'a [u8],
    /// The bundle's files, by relative path: mounted read-only at `/app`.
    pub app: &'a [(String, Vec<u8>)],
    /// The standard library's files, by relative path (Python).
    pub stdlib: &'a [(String, Vec<u8>)],
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    /// Total bytes written.
    pub bytes: u64,
    pub files: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot turn the program into JavaScript: {0}")]
    Transpile(String),
    #[error("{0} is 4 GiB or more: a page cannot hold it")]
    TooLarge(String),
    #[error("cannot write {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
}

/// The file in a site directory, and the comment at the top of a one-file
/// site, that say capsa wrote it: only such a site (or an empty directory,
/// or nothing) is ever replaced.
pub const SITE_MARKER: &str = ".capsa-site";
const HTML_MARKER: &str = "<!-- written by capsa pack --web -->";

/// Refuses an output that is not capsa's to replace: anything but nothing,
/// an empty directory, or a site capsa wrote (of the same kind). A link is
/// never followed.
pub fn check_output(out: &Path, single_file: bool) -> Result<(), WebError> {
    let refuse = |why: &str| WebError::Io {
        path: out.to_path_buf(),
        err: std::io::Error::other(why.to_string()),
    };
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(WebError::Io {
                path: out.to_path_buf(),
                err,
            });
        }
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a link; give the path itself"));
    }
    if single_file {
        // Only a regular file is opened (a pipe would block the open).
        if !meta.is_file() {
            return Err(refuse("it exists and is not a page capsa pack --web wrote"));
        }
        let mut head = [0u8; 256];
        let n = std::fs::File::open(out)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .unwrap_or(0);
        let ours = String::from_utf8_lossy(&head[..n]).contains(HTML_MARKER);
        if !ours {
            return Err(refuse("it exists and is not a page capsa pack --web wrote"));
        }
        return Ok(());
    }
    let empty = meta.is_dir()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if empty {
        return Ok(());
    }
    // A site capsa wrote lists its files in the marker; anything else in
    // the directory (a .git, a CNAME, notes) is the user's, and keeps it.
    let listed = std::fs::read_to_string(out.join(SITE_MARKER))
        .ok()
        .filter(|_| std::fs::symlink_metadata(out.join(SITE_MARKER)).is_ok_and(|m| m.is_file()));
    let Some(listed) = listed.filter(|_| meta.is_dir()) else {
        return Err(refuse(
            "it exists and is not an empty directory or a site capsa pack --web wrote",
        ));
    };
    let ours: std::collections::BTreeSet<&str> = listed.lines().skip(1).collect();
    let entries = std::fs::read_dir(out).map_err(|err| WebError::Io {
        path: out.to_path_buf(),
        err,
    })?;
    for entry in entries {
        let name = entry
            .map_err(|err| WebError::Io {
                path: out.to_path_buf(),
                err,
            })?
            .file_name();
        let name = name.to_string_lossy();
        // A listed name must still be a file capsa wrote: one the user
        // turned into a directory (or a link) is theirs.
        let file = std::fs::symlink_metadata(out.join(name.as_ref())).is_ok_and(|m| m.is_file());
        if name != SITE_MARKER && (!ours.contains(name.as_ref()) || !file) {
            return Err(refuse(&format!(
                "it holds {}, which capsa did not write; move it out first",
                capsa_policy::escape_for_terminal(&name)
            )));
        }
    }
    Ok(())
}

/// Writes the site to `out`: a directory, or with `single_file` one HTML
/// file. What was at `out` is replaced only once the whole site is written,
/// and only if [`check_output`] allows; an error leaves nothing behind and
/// what was there in place.
pub fn write_site(site: &Site, out: &Path, single_file: bool) -> Result<Written, WebError> {
    check_output(out, single_file)?;
    let files = site_files(site)?;
    let io = |err| WebError::Io {
        path: out.to_path_buf(),
        err,
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if single_file {
        let html = single_html(site, &files).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".capsa-web-")
            .tempfile_in(parent)
            .map_err(io)?;
        tmp.write_all(html.as_bytes()).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        check_output(out, single_file)?;
        tmp.persist(out).map_err(|e| io(e.error))?;
        return Ok(Written {
            path: out.to_path_buf(),
            bytes: html.len() as u64,
            files: 1,
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(".capsa-web-")
        .tempdir_in(parent)
        .map_err(io)?;
    let mut bytes = 0;
    let html = page_html(site, &files, None);
    let mut all: Vec<(&str, &[u8])> = vec![
        ("index.html", html.as_bytes()),
        ("page.js", PAGE_JS.as_bytes()),
    ];
    all.extend(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    // The marker: capsa's own files, one per line, after a line saying so.
    let mut marker = String::from(
        "written by capsa pack --web, which replaces this directory only while it holds nothing but these files:\n",
    );
    for (name, _) in &all {
        marker.push_str(name);
        marker.push('\n');
    }
    all.push((SITE_MARKER, marker.as_bytes()));
    for (name, data) in &all {
        std::fs::write(tmp.path().join(name), data).map_err(io)?;
        bytes += data.len() as u64;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    // Checked again just before the swap: it may have changed meanwhile.
    check_output(out, single_file)?;
    let aside = tempfile::Builder::new()
        .prefix(".capsa-web-old-")
        .tempdir_in(parent)
        .map_err(io)?;
    let old = aside.path().join("site");
    let moved = match std::fs::rename(out, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(e)),
    };
    if let Err(e) = std::fs::rename(tmp.path(), out) {
        if moved {
            // Put back what was there.
            let _ = std::fs::rename(&old, out);
        }
        return Err(io(e));
    }
    let _ = tmp.keep();
    Ok(Written {
        path: out.to_path_buf(),
        bytes,
        files: all.len(),
    })
}

/// Every file of the site but the page: the host, the transpiled program,
/// and the archives.
fn site_files(site: &Site) -> Result<Vec<(String, Vec<u8>)>, WebError> {
    let opts = TranspileOpts {
        name: NAME.into(),
        no_typescript: true,
        instantiation_mode: Some(InstantiationMode::Async),
        nodejs_compat_disabled: true,
        async_mode: Some(AsyncMode::JavaScriptPromiseIntegration {
            imports: ASYNC_IMPORTS.iter().map(|s| s.to_string()).collect(),
            exports: ASYNC_EXPORTS.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    };
    let transpiled = js_component_bindgen::transpile(site.component, opts)
        .map_err(|e| WebError::Transpile(format!("{e:#}")))?;
    let mut files = vec![("worker.js".to_string(), WORKER_JS.as_bytes().to_vec())];
    for (name, data) in transpiled.files {
        // Only the module and its core modules: no types, no other output.
        if name == format!("{NAME}.js")
            || (name.starts_with(&format!("{NAME}.core")) && name.ends_with(".wasm"))
        {
            files.push((name, data));
        }
    }
    for (path, data) in site.app.iter().chain(site.stdlib) {
        if data.len() > u32::MAX as usize || path.len() > u32::MAX as usize {
            return Err(WebError::TooLarge(path.clone()));
        }
    }
    files.push(("app.bin".into(), archive(site.app)));
    if !site.stdlib.is_empty() {
        files.push(("stdlib.bin".into(), archive(site.stdlib)));
    }
    Ok(files)
}

/// Files as the host's `unpack` reads them: gzip of `CAPSAFS1`, then per
/// file a little-endian u32 path length, the path, a u32 length, the bytes.
pub fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(b"CAPSAFS1").expect("writing to memory");
    for (path, data) in files {
        gz.write_all(&(path.len() as u32).to_le_bytes())
            .expect("writing to memory");
        gz.write_all(path.as_bytes()).expect("writing to memory");
        gz.write_all(&(data.len() as u32).to_le_bytes())
            .expect("writing to memory");
        gz.write_all(data).expect("writing to memory");
    }
    gz.finish().expect("writing to memory")
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(9));
    gz.write_all(data)?;
    gz.finish()
}

#[derive(Serialize)]
struct PageConfig<'a> {
    #[serde(flatten)]
    config: &'a SiteConfig,
    component: String,
    core: Vec<&'a str>,
    files: Vec<&'a str>,
}

/// JSON that may stand inside a `<script>` element.
fn script_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("serializing the site")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// `index.html`; `inline` holds the single-file site's files (JSON).
fn page_html(site: &Site, files: &[(String, Vec<u8>)], inline: Option<(&str, &str)>) -> String {
    let config = PageConfig {
        config: &site.config,
        component: format!("{NAME}.js"),
        core: files
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.ends_with(".wasm"))
            .collect(),
        files: files.iter().map(|(n, _)| n.as_str()).collect(),
    };
    let mut scripts = format!(
        "<script type=\"application/json\" id=\"capsa-site\">{}</script>\n",
        script_json(&config)
    );
    match inline {
        None => scripts.push_str("<script type=\"module\" src=\"page.js\"></script>"),
        Some((files_json, page_b64)) => {
            scripts.push_str(&format!(
                "<script type=\"application/json\" id=\"capsa-files\">{files_json}</script>\n\
                 <script type=\"module\">import(URL.createObjectURL(new Blob([atob(\"{page_b64}\")], {{type: \"text/javascript\"}})));</script>"
            ));
        }
    }
    let title = html_escape(&site.config.name);
    INDEX_HTML
        .replacen(
            "<!doctype html>",
            &format!("<!doctype html>\n{HTML_MARKER}"),
            1,
        )
        .replace(
            "<title>capsa</title>",
            &format!("<title>{title} · capsa</title>"),
        )
        .replace("<!--capsa-->", &scripts)
}

fn single_html(site: &Site, files: &[(String, Vec<u8>)]) -> std::io::Result<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut inline = serde_json::Map::new();
    for (name, data) in files {
        // The archives are gzip already: not compressed twice.
        let packed = if name.ends_with(".bin") {
            data.clone()
        } else {
            gzip(data)?
        };
        inline.insert(name.clone(), b64.encode(packed).into());
    }
    let files_json = script_json(&inline);
    // page.js as UTF-8 bytes in base64 (atob gives Latin-1 code units).
    let page_b64 = b64.encode(PAGE_JS.as_bytes());
    Ok(page_html(site, files, Some((&files_json, &page_b64))))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let a = archive(&[("a/b.txt".into(), b"hi".to_vec())]);
        let mut d = flate2::read::GzDecoder::new(&a[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(&raw[..8], b"CAPSAFS1");
        assert_eq!(&raw[8..12], &7u32.to_le_bytes());
        assert_eq!(&raw[12..19], b"a/b.txt");
        assert_eq!(&raw[19..23], &2u32.to_le_bytes());
        assert_eq!(&raw[23..], b"hi");
    }

    #[test]
    fn json_cannot_close_its_script() {
        let s = script_json(&serde_json::json!({"x": "</script><script>alert(1)</script>"}));
        assert!(!s.contains('<') && !s.contains('>'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["x"], "</script><script>alert(1)</script>");
    }
}
