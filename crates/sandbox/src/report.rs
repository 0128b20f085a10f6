//! Every capability decision goes through here: denials are printed once on
//! stderr with the narrowest flag that would allow them, and with `--audit`
//! every decision, allowed or denied, is written as one JSON line.

use crate::output::line_start;
use capsa_policy::Verdict;
use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What area of the policy a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Fs,
    Net,
    Dns,
    Env,
    Limit,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Fs => "fs",
            Kind::Net => "net",
            Kind::Dns => "dns",
            Kind::Env => "env",
            Kind::Limit => "limit",
        }
    }
}

/// One capability decision.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub kind: Kind,
    /// The verb as the user reads it: `read`, `write to`, `connect to`, ...
    pub op: &'a str,
    pub target: &'a str,
    pub allowed: bool,
    /// The flag that decided, if one did.
    pub rule: Option<&'a str>,
    /// Why it was refused (shown in parentheses).
    pub reason: Option<&'a str>,
    /// The narrowest flag that would allow it.
    pub hint: Option<&'a str>,
}

/// Where audit lines go.
pub enum AuditSink {
    Stderr,
    File(std::fs::File),
}

pub struct Reporter {
    quiet: bool,
    auditing: bool,
    inner: Mutex<Inner>,
}

/// Distinct denial lines printed in one run; a guest varying a name must
/// not flood the terminal or grow this set without end.
const MAX_DENIAL_LINES: usize = 100;

/// Bytes of a name a denial line shows: a guest's names may be megabytes
/// long, and each line is kept to be said only once.
const MAX_TARGET_BYTES: usize = 512;

/// `target` cut to [`MAX_TARGET_BYTES`] at a character boundary, and
/// whether it was cut.
fn clip(target: &str) -> (&str, bool) {
    if target.len() <= MAX_TARGET_BYTES {
        return (target, false);
    }
    let mut end = MAX_TARGET_BYTES;
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    (&target[..end], true)
}

/// Bytes of audit log one run may write; a guest must not fill the disk.
pub const MAX_AUDIT_BYTES: u64 = 64 << 20;

struct Inner {
    seen: HashSet<(Kind, String, String)>,
    /// Denials not printed because [`MAX_DENIAL_LINES`] were.
    unshown: u64,
    audit: Option<std::io::BufWriter<Box<dyn Write + Send>>>,
    audit_bytes: u64,
    /// Denials recorded after the audit file reached its size (each
    /// distinct one once), so that a program cannot hide one behind a
    /// flood of allowed operations; the limits that ended the run too.
    late: HashSet<(Kind, String, String)>,
}

/// Distinct denials recorded past [`MAX_AUDIT_BYTES`].
const MAX_LATE_DENIALS: usize = 1000;

impl Reporter {
    pub fn new(quiet: bool, audit: Option<AuditSink>) -> Self {
        let audit = audit.map(|sink| {
            let w: Box<dyn Write + Send> = match sink {
                AuditSink::Stderr => Box::new(std::io::stderr()),
                AuditSink::File(f) => Box::new(f),
            };
            std::io::BufWriter::new(w)
        });
        Reporter {
            quiet,
            auditing: audit.is_some(),
            inner: Mutex::new(Inner {
                seen: HashSet::new(),
                unshown: 0,
                audit,
                audit_bytes: 0,
                late: HashSet::new(),
            }),
        }
    }

    pub fn record(&self, d: &Decision<'_>) {
        // A poisoned lock only means another thread panicked mid-report; the
        // set and writer are still usable.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // The limit that ended a run is always recorded: there is one (or
        // a few) a run, each once.
        let late = inner.audit_bytes >= MAX_AUDIT_BYTES
            && !d.allowed
            && (d.kind == Kind::Limit || inner.late.len() < MAX_LATE_DENIALS)
            && inner
                .late
                .insert((d.kind, d.op.to_string(), clip(d.target).0.to_string()));
        if inner.audit.is_some() && (inner.audit_bytes < MAX_AUDIT_BYTES || late) {
            let line = serde_json::json!({
                "time": timestamp(),
                "kind": d.kind.as_str(),
                "op": d.op,
                "target": d.target,
                "decision": if d.allowed { "allow" } else { "deny" },
                "rule": d.rule,
                "reason": d.reason,
                // The flag that would allow it, as the denial line gives it.
                "hint": d.hint.filter(|_| !clip(d.target).1).and_then(hint_text),
            });
            let mut line = json_for_terminal(&line.to_string());
            line.push('\n');
            let before = inner.audit_bytes;
            inner.audit_bytes += line.len() as u64;
            if before < MAX_AUDIT_BYTES && inner.audit_bytes >= MAX_AUDIT_BYTES {
                line = serde_json::json!({
                    "time": timestamp(),
                    "kind": "limit",
                    "op": "reach",
                    "target": format!("audit size limit of {} MiB; later decisions are not recorded, but for the first {MAX_LATE_DENIALS} distinct denials", MAX_AUDIT_BYTES >> 20),
                    "decision": "deny",
                    "rule": null,
                    "reason": null,
                })
                .to_string()
                    + "\n"
                    // A denial that reached the limit is recorded after it.
                    + if d.allowed { "" } else { &line };
            }
            if let Some(w) = inner.audit.as_mut() {
                // Audit output failing (a full disk) must not kill the guest.
                let _ = w.write_all(line.as_bytes());
                // A denial is read while the program goes on (by `capsa
                // serve`, after each call of a session); what was allowed
                // may wait for the end of the run.
                if !d.allowed {
                    let _ = w.flush();
                }
            }
        }
        // A limit is reported by the run's own closing message, not as a denial.
        if d.allowed || self.quiet || d.kind == Kind::Limit {
            return;
        }
        let target = clip(d.target).0;
        let key = (d.kind, d.op.to_string(), target.to_string());
        if inner.seen.contains(&key) {
            return;
        }
        if inner.seen.len() >= MAX_DENIAL_LINES {
            inner.unshown += 1;
            if inner.unshown == 1 {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "{}capsa: further denials not shown (the first {MAX_DENIAL_LINES} were; --audit=FILE records them)",
                    line_start()
                );
            }
            return;
        }
        inner.seen.insert(key);
        let hint = d.hint.and_then(hint_text);
        let msg = denial_text(d.op, d.target, d.reason, hint.as_deref());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}capsa: {msg}", line_start());
    }

    /// Whether allowed decisions are recorded at all (`--audit`).
    pub fn audits(&self) -> bool {
        self.auditing
    }

    /// A one-line notice that is not a decision (said once, at start).
    pub fn note(&self, message: &str) {
        if !self.quiet {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{}capsa: note: {}",
                line_start(),
                escape(message)
            );
        }
    }

    /// Records a decision the policy made.
    pub fn verdict(&self, kind: Kind, op: &str, target: &str, verdict: &Verdict) {
        self.record(&match verdict {
            Verdict::Allow { rule } => Decision {
                kind,
                op,
                target,
                allowed: true,
                rule: Some(rule),
                reason: None,
                hint: None,
            },
            Verdict::Deny { rule, reason, hint } => Decision {
                kind,
                op,
                target,
                allowed: false,
                rule: rule.as_deref(),
                reason: Some(reason),
                hint: hint.as_deref(),
            },
        });
    }

    /// Records that a limit ended the run (`message` names it).
    pub fn limit(&self, message: &str) {
        self.record(&Decision {
            kind: Kind::Limit,
            op: "reach",
            target: message,
            allowed: false,
            rule: None,
            reason: None,
            hint: None,
        });
    }

    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = inner.audit.as_mut() {
            let _ = w.flush();
        }
    }
}

pub use capsa_policy::escape_for_terminal as escape;

/// A denial as capsa words it, without `capsa: ` (the line on stderr, and
/// `capsa serve`'s answers). The target and the reason carry names the
/// guest chose: escaped, they cannot move the cursor, erase lines or forge
/// a line of capsa's; cut at [`MAX_TARGET_BYTES`]. `hint` is a flag as
/// [`hint_text`] gives it, on a line of its own, and left out for a name
/// cut short (it would grant another one).
pub fn denial_text(op: &str, target: &str, reason: Option<&str>, hint: Option<&str>) -> String {
    let (target, cut) = clip(target);
    let mut msg = format!("denied: {} {}", escape(op), escape(target));
    if cut {
        msg.push_str("...");
    }
    if let Some(r) = reason {
        msg.push_str(&format!(" ({})", escape(clip(r).0)));
    }
    if let Some(h) = hint.filter(|_| !cut) {
        msg.push_str(&format!("\n  hint: {}", escape(h)));
    }
    msg
}

/// A hint as the user may paste it: `--flag=VALUE` with the value quoted
/// for the shell where it needs it, or no hint at all where the value could
/// not be given as exactly one grant (a `,` splits a list; a control
/// character cannot be typed).
fn hint_text(hint: &str) -> Option<String> {
    let (flag, value) = hint.split_once('=')?;
    if value.contains(',') || value.chars().any(capsa_policy::is_terminal_unsafe) {
        return None;
    }
    Some(format!("{flag}={}", capsa_policy::quote_flag_value(value)))
}

/// RFC 3339 UTC with milliseconds, without pulling in a date crate.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// `json` (serialized) with every [terminal-unsafe](capsa_policy::is_terminal_unsafe)
/// character written as a JSON escape (`\u009b`), as serde_json writes only
/// C0 controls: a C1 control or a bidirectional override in a file name
/// then reaches no terminal that shows the log (`tail -f`), and the log
/// still reads back as the same strings. Such characters are never part of
/// JSON's own syntax, only of strings.
pub(crate) fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if capsa_policy::is_terminal_unsafe(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that fills the audit file with allowed operations cannot
    /// hide a denial made after: past the size limit, each distinct denial
    /// is still recorded (and the same one only once), and the limit's own
    /// line is written once.
    #[test]
    fn denials_are_recorded_past_the_audit_limit() {
        let path = std::env::temp_dir().join(format!("capsa-audit-{}.jsonl", std::process::id()));
        let r = Reporter::new(
            true,
            Some(AuditSink::File(std::fs::File::create(&path).unwrap())),
        );
        let target = "/granted/".to_string() + &"f".repeat(400);
        let allowed = Decision {
            kind: Kind::Fs,
            op: "read",
            target: &target,
            allowed: true,
            rule: Some("--allow-read=/granted"),
            reason: None,
            hint: None,
        };
        for _ in 0..(MAX_AUDIT_BYTES / 400 + 10) {
            r.record(&allowed);
        }
        let denied = |target: &'static str| Decision {
            kind: Kind::Fs,
            op: "read",
            target,
            allowed: false,
            rule: None,
            reason: Some("not granted"),
            hint: Some("--allow-read=/etc/passwd"),
        };
        for _ in 0..3 {
            r.record(&denied("/etc/passwd"));
            r.record(&denied("/etc/shadow"));
        }
        r.record(&allowed);
        // Past the cap of distinct denials, the limit that ends the run is
        // still recorded.
        let junk: Vec<String> = (0..MAX_LATE_DENIALS)
            .map(|i| format!("/junk/{i}"))
            .collect();
        for j in &junk {
            r.record(&Decision {
                target: j,
                ..denied("")
            });
        }
        r.record(&Decision {
            kind: Kind::Limit,
            op: "reach",
            target: "file write limit of 2M",
            allowed: false,
            rule: None,
            reason: None,
            hint: None,
        });
        r.record(&denied("/etc/hidden"));
        r.flush();
        drop(r);
        let log = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let full = |v: &serde_json::Value| {
            v["kind"] == "limit"
                && v["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("audit size limit"))
        };
        assert_eq!(lines.iter().filter(|v| full(v)).count(), 1);
        let after: Vec<&str> = lines
            .iter()
            .skip_while(|v| !full(v))
            .skip(1)
            .map(|v| v["target"].as_str().unwrap())
            .collect();
        assert_eq!(
            after.len(),
            2 + MAX_LATE_DENIALS - 2 + 1,
            "{:?}",
            &after[..4]
        );
        assert_eq!(after[..2], ["/etc/passwd", "/etc/shadow"]);
        assert_eq!(after.last(), Some(&"file write limit of 2M"));
        // Bounded: the size limit, and a line of at most a clipped name
        // for each late denial.
        let bound = MAX_AUDIT_BYTES + 4096 + (MAX_LATE_DENIALS as u64 + 1) * 2048;
        assert!(log.len() as u64 <= bound, "{}", log.len());
    }

    /// The audit log's lines hold no character a terminal acts on, and read
    /// back as the same strings.
    #[test]
    fn audit_lines_are_json_a_terminal_can_show() {
        let target = "a\u{9b}31m\u{202e}txt\u{7f}\u{200b}\u{e0041}é\n\x1b";
        let line = super::json_for_terminal(&serde_json::json!({ "target": target }).to_string());
        assert!(
            !line.chars().any(capsa_policy::is_terminal_unsafe),
            "{line}"
        );
        assert!(
            line.contains("\\u009b") && line.contains("\\udb40\\udc41"),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["target"], target);
    }

    #[test]
    fn guest_text_is_escaped_and_hints_parse_as_one_grant() {
        assert_eq!(super::escape("a\x1b[2Kb\r\n"), "a\\u{1b}[2Kb\\u{d}\\u{a}");
        assert_eq!(super::escape("plain/ünï"), "plain/ünï");
        assert_eq!(super::escape("x\u{202e}y"), "x\\u{202e}y");
        let cases: &[(&str, Option<&str>)] = &[
            ("--allow-read=/data/a.txt", Some("--allow-read=/data/a.txt")),
            ("--allow-read=./x.py,/home,/root", None),
            ("--allow-read=/a b", Some("--allow-read='/a b'")),
            ("--allow-read=/it's", Some("--allow-read='/it'\\''s'")),
            ("--allow-read=/a\nb", None),
            (
                "--allow-read=/$(rm -rf ~)",
                Some("--allow-read='/$(rm -rf ~)'"),
            ),
        ];
        for (hint, want) in cases {
            assert_eq!(super::hint_text(hint).as_deref(), *want, "{hint}");
        }
    }

    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
