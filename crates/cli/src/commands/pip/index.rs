//! Which package index pip uses, as the host's pip would decide: its
//! configuration files, then `PIP_*` variables, then the command line. capsa
//! grants the network only to these, and hands them to pip in the sandbox
//! (which reads no configuration file there).

use super::args::PipCommand;
use std::path::{Path, PathBuf};

pub const PYPI: &str = "https://pypi.org/simple";

#[derive(Debug, Default, PartialEq)]
pub struct Indexes {
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub find_links: Vec<String>,
    pub no_index: bool,
}

impl Indexes {
    /// The index pip uses first (PyPI unless configured), or none.
    pub fn first_index(&self) -> Option<&str> {
        if self.no_index {
            return None;
        }
        Some(self.index_url.as_deref().unwrap_or(PYPI))
    }

    fn urls(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.find_links.iter().map(String::as_str).collect();
        if !self.no_index {
            v.push(self.index_url.as_deref().unwrap_or(PYPI));
            v.extend(self.extra_index_urls.iter().map(String::as_str));
        }
        v
    }

    /// `--allow-net` rules: each URL's host and port; PyPI's files are served
    /// from files.pythonhosted.org.
    pub fn net_rules(&self) -> Vec<String> {
        let mut rules = Vec::new();
        for url in self.urls() {
            if let Some(rule) = host_port(url) {
                if rule == "pypi.org:443" {
                    rules.push("files.pythonhosted.org:443".to_string());
                }
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        rules
    }

    /// The variables that tell pip in the sandbox the same.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(u) = &self.index_url {
            env.push(("PIP_INDEX_URL", u.clone()));
        }
        if !self.extra_index_urls.is_empty() {
            env.push(("PIP_EXTRA_INDEX_URL", self.extra_index_urls.join(" ")));
        }
        if !self.find_links.is_empty() {
            env.push(("PIP_FIND_LINKS", self.find_links.join(" ")));
        }
        if self.no_index {
            env.push(("PIP_NO_INDEX", "1".to_string()));
        }
        env
    }
}

/// `host:port` of an http(s) URL (credentials dropped), as an `--allow-net`
/// rule.
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A host name, an IPv4 address or a bracketed IPv6 one, and a port:
    // nothing a grant would read as more (`,`, `::` outside brackets).
    let plain =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    if host_port.is_empty() || !host_port.chars().all(plain) {
        return None;
    }
    if !host_port.starts_with('[') && host_port.matches(':').count() > 1 {
        return None;
    }
    let has_port = if host_port.starts_with('[') {
        host_port.contains("]:")
    } else {
        host_port.contains(':')
    };
    Some(if has_port {
        host_port.to_ascii_lowercase()
    } else {
        format!("{}:{default}", host_port.to_ascii_lowercase())
    })
}

/// What the host's pip would use for `cmd`.
pub fn configured(cmd: &PipCommand, _cwd: &Path) -> Result<Indexes, String> {
    let mut ix = Indexes::default();
    let section = cmd.command.as_deref().unwrap_or("global");
    for file in config_files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        apply_ini(&mut ix, &text, section);
    }
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    if let Some(v) = var("PIP_INDEX_URL") {
        ix.index_url = Some(v);
    }
    if let Some(v) = var("PIP_EXTRA_INDEX_URL") {
        ix.extra_index_urls = v.split_whitespace().map(str::to_string).collect();
    }
    if let Some(v) = var("PIP_FIND_LINKS") {
        ix.find_links = v
            .split_whitespace()
            .filter(|u| is_url(u))
            .map(str::to_string)
            .collect();
    }
    if let Some(v) = var("PIP_NO_INDEX") {
        ix.no_index = truthy(&v);
    }
    if let Some(u) = &cmd.index_url {
        ix.index_url = Some(u.clone());
    }
    if !cmd.extra_index_urls.is_empty() {
        ix.extra_index_urls = cmd.extra_index_urls.clone();
    }
    ix.find_links.extend(cmd.find_links.iter().cloned());
    ix.no_index |= cmd.no_index;
    for u in ix.index_url.iter().chain(&ix.extra_index_urls) {
        if host_port(u).is_none() {
            return Err(format!("the index {u} is not an http:// or https:// URL"));
        }
    }
    Ok(ix)
}

fn is_url(s: &str) -> bool {
    host_port(s).is_some()
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "true" | "on")
}

/// pip's configuration files, in the order pip reads them (later wins).
fn config_files() -> Vec<PathBuf> {
    let env = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if env("PIP_CONFIG_FILE").is_some_and(|f| f == Path::new("/dev/null") || f == Path::new("nul"))
    {
        return Vec::new();
    }
    let mut files = Vec::new();
    let xdg_dirs = std::env::var("XDG_CONFIG_DIRS").unwrap_or_else(|_| "/etc/xdg".into());
    for d in xdg_dirs.split(':').filter(|d| !d.is_empty()) {
        files.push(Path::new(d).join("pip").join("pip.conf"));
    }
    files.push(PathBuf::from("/etc/pip.conf"));
    if let Some(home) = env("HOME") {
        files.push(home.join(".pip").join("pip.conf"));
        let config = env("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        files.push(config.join("pip").join("pip.conf"));
    }
    if let Some(venv) = env("VIRTUAL_ENV") {
        files.push(venv.join("pip.conf"));
    }
    if let Some(f) = env("PIP_CONFIG_FILE") {
        files.push(f);
    }
    files
}

/// The index settings of an INI file's `[global]` and `[COMMAND]` sections
/// (the command's win), as pip reads them.
fn apply_ini(ix: &mut Indexes, text: &str, command: &str) {
    for wanted in ["global", command] {
        let mut in_section = false;
        let mut key: Option<String> = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if trimmed.starts_with('[') && trimmed.ends_with(']') {
                in_section = trimmed[1..trimmed.len() - 1].trim() == wanted;
                key = None;
                continue;
            }
            if !in_section || trimmed.is_empty() {
                continue;
            }
            let continued = line.starts_with([' ', '\t']) && key.is_some();
            let (k, v) = if continued {
                (key.clone().unwrap_or_default(), trimmed.to_string())
            } else if let Some((k, v)) = trimmed.split_once(['=', ':']) {
                let k = k.trim().to_ascii_lowercase().replace('_', "-");
                key = Some(k.clone());
                (k, v.trim().to_string())
            } else {
                continue;
            };
            let values: Vec<String> = v.split_whitespace().map(str::to_string).collect();
            match k.as_str() {
                "index-url" | "index" if !continued => ix.index_url = values.into_iter().next(),
                "extra-index-url" => {
                    if !continued {
                        ix.extra_index_urls.clear();
                    }
                    ix.extra_index_urls.extend(values);
                }
                "find-links" => {
                    if !continued {
                        ix.find_links.clear();
                    }
                    ix.find_links
                        .extend(values.into_iter().filter(|u| is_url(u)));
                }
                "no-index" if !continued => ix.no_index = truthy(&v),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_each_host_and_port() {
        assert_eq!(
            host_port("https://u:p@Example.org/simple").as_deref(),
            Some("example.org:443")
        );
        assert_eq!(
            host_port("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(host_port("http://[::1]:81/").as_deref(), Some("[::1]:81"));
        assert_eq!(host_port("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(host_port("file:///x"), None);
        assert_eq!(host_port("http://x,127.0.0.1:8766/simple/"), None);
        assert_eq!(host_port("http://a::b/"), None);
        let ix = Indexes::default();
        assert_eq!(
            ix.net_rules(),
            ["files.pythonhosted.org:443", "pypi.org:443"]
        );
        let ix = Indexes {
            no_index: true,
            ..Default::default()
        };
        assert!(ix.net_rules().is_empty());
        assert_eq!(ix.first_index(), None);
    }

    #[test]
    fn ini_sections_and_continuations() {
        let mut ix = Indexes::default();
        let text = "[global]\nindex-url = https://a.example/simple\nextra-index-url =\n  https://b.example/s\n  https://c.example/s\n[install]\nindex_url: https://d.example/simple\n[download]\nindex-url = https://e.example/x\n";
        apply_ini(&mut ix, text, "install");
        assert_eq!(ix.index_url.as_deref(), Some("https://d.example/simple"));
        assert_eq!(
            ix.extra_index_urls,
            ["https://b.example/s", "https://c.example/s"]
        );
    }
}
