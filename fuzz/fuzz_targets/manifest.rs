//! `capsa.toml` on arbitrary text: an error or a manifest, never a panic.
//! A manifest that parses holds only checked values: every guest path is
//! one normalized path, every rule and name parses to itself, no text a
//! prompt shows can redraw or reorder it, no limit is above capsa's
//! default, and writing it out and reading it back gives the same manifest.
#![no_main]

use capsa_bundle::Manifest;
use capsa_policy::text::is_terminal_unsafe;
use capsa_policy::{EnvPattern, GuestPath, Limits, NetRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = Manifest::from_toml(text) else { return };
    let clean = |s: &str| !s.chars().any(is_terminal_unsafe);
    assert!(capsa_bundle::check_entry_path(&m.run.entry).is_ok());
    assert!(m.run.args.iter().all(|a| clean(a)));
    for n in &m.ask.net {
        let shown = n.rule.to_string();
        assert_eq!(NetRule::parse(&shown).as_ref(), Ok(&n.rule));
        assert!(clean(n.reason.as_str()) && !n.reason.as_str().trim().is_empty());
    }
    for e in &m.ask.env {
        assert_eq!(EnvPattern::parse(&e.name.to_string()).as_ref(), Ok(&e.name));
        assert!(clean(e.reason.as_str()));
    }
    for (name, d) in &m.ask.dirs {
        assert!(name.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let g = d.guest.as_str();
        assert_eq!(GuestPath::parse(g).as_ref(), Ok(&d.guest));
        assert!(g != "/" && !g.contains(',') && !g.contains("::") && clean(g));
        assert!(clean(d.reason.as_str()));
    }
    if let Some(mem) = m.limits.memory {
        assert!(mem.bytes() > 0 && mem.bytes() <= Limits::DEFAULT_MEMORY);
    }
    if let Some(t) = m.limits.timeout {
        assert!(t.duration() <= Limits::DEFAULT_TIMEOUT);
    }
    assert_eq!(Manifest::from_toml(&m.to_toml()).as_ref(), Ok(&m));
});
