//! Everything a user or a policy file can hand the policy parsers: TOML
//! policies, network and listen rules, env patterns, sizes and durations.
//! None may panic; a rule that parses must display as text that parses back
//! to the same rule.
#![no_main]

use capsa_policy::{
    EnvPattern, ListenRule, NetRule, PathResolver, RawPolicy, ResolvedPath, parse_duration, parse_size,
};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Every path exists and is a directory: resolution stays pure for the fuzzer.
struct AllDirs;

impl PathResolver for AllDirs {
    fn resolve(&self, path: &Path) -> Result<ResolvedPath, String> {
        Ok(ResolvedPath { canonical: path.to_path_buf(), is_dir: true })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = RawPolicy::from_toml(text) {
        let _ = raw.resolve(Path::new("/work"), &AllDirs);
    }
    for line in text.lines() {
        if let Ok(rule) = NetRule::parse(line) {
            let again = NetRule::parse(&rule.to_string()).expect("a displayed rule parses");
            assert_eq!(again, rule);
        }
        if let Ok(rule) = ListenRule::parse(line) {
            assert_eq!(ListenRule::parse(&rule.to_string()).expect("a displayed rule parses"), rule);
        }
        let _ = EnvPattern::parse(line);
        let _ = parse_size(line);
        let _ = parse_duration(line);
    }
});
