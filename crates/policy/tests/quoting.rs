//! `quote_flag_value` checked against a real shell: whatever the value,
//! `sh -c "printf %s QUOTED"` prints the value itself, so a hint pasted
//! into a shell passes exactly the path or rule it names, and nothing in
//! the value runs.

use capsa_policy::quote_flag_value;
use proptest::prelude::*;
use std::process::Command;

/// What `sh` makes of `word`, as one argument to printf.
fn through_sh(word: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s {word}"))
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "sh failed on {word:?}");
    out.stdout
}

#[test]
fn hostile_values_survive_the_shell() {
    let cases = [
        "/data/out",
        "my dir",
        "it's",
        "'",
        "''",
        "$(touch /tmp/capsa-quoting-pwned)",
        "`id`",
        "a;b|c&d>e<f",
        "*",
        "~root",
        "a\nb",
        "\\",
        "\u{1b}[2K\r",
        "\"$HOME\"",
        "-n",
        "%s",
    ];
    for v in cases {
        assert_eq!(through_sh(&quote_flag_value(v)), v.as_bytes(), "{v:?}");
    }
    assert!(std::fs::symlink_metadata("/tmp/capsa-quoting-pwned").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_value_survives_the_shell(v in "[^\\x00]{0,24}") {
        prop_assert_eq!(through_sh(&quote_flag_value(&v)), v.as_bytes());
    }
}
