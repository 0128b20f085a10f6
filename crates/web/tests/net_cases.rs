//! The page decides requests as the policy crate does: both are tested
//! against web/test/net-cases.json (here the policy crate, and the page's
//! own rules.js by its node tests, run from here too).

use capsa_policy::{NetPolicy, NetRule};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

fn web() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web"))
}

/// What `capsa run` decides for a request to `host:port`, as its HTTP
/// client does: an address is decided as it is; a name is looked up, then
/// the address it resolved to (here a public one) is decided for it.
fn cli_allows(rules: &[String], host: &str, port: u16) -> bool {
    let policy = NetPolicy {
        allow: rules.iter().map(|r| NetRule::parse(r).unwrap()).collect(),
        deny: Vec::new(),
        listen: Vec::new(),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return policy.decide_connect(ip, port, &[]).is_allowed();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    policy.decide_lookup(&name).is_allowed()
        && policy
            .decide_connect("93.184.215.14".parse().unwrap(), port, &[name])
            .is_allowed()
}

#[test]
fn the_policy_crate_decides_the_table_as_it_says() {
    let text = std::fs::read_to_string(web().join("test/net-cases.json")).unwrap();
    let table: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() > 20);
    for c in cases {
        let rules: Vec<String> = c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        let host = c["host"].as_str().unwrap();
        let port = c["port"].as_u64().unwrap() as u16;
        let want = c["cli"].as_bool().unwrap();
        assert_eq!(
            cli_allows(&rules, host, port),
            want,
            "{rules:?} {host}:{port}"
        );
        // The page is never wider than the command line.
        if c["page"].as_bool().unwrap() {
            assert!(
                want,
                "the page allows what capsa run refuses: {rules:?} {host}:{port}"
            );
        }
    }
}

#[test]
fn the_page_decides_the_table_as_it_says() {
    let out = Command::new("node")
        .args(["--test", "test/rules.test.mjs"])
        .current_dir(web())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# fail 0") && text.contains("# pass 3"),
        "{text}"
    );
}
