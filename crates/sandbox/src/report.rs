//! Every capability decision goes through here: denials are printed once on
//! stderr with the narrowest flag that would allow them, and with `--audit`
//! every decision, allowed or denied, is written as one JSON line.

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
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashSet<(Kind, String, String)>,
    audit: Option<std::io::BufWriter<Box<dyn Write + Send>>>,
}

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
            inner: Mutex::new(Inner {
                seen: HashSet::new(),
                audit,
            }),
        }
    }

    pub fn record(&self, d: &Decision<'_>) {
        // A poisoned lock only means another thread panicked mid-report; the
        // set and writer are still usable.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = inner.audit.as_mut() {
            let line = serde_json::json!({
                "time": timestamp(),
                "kind": d.kind.as_str(),
                "op": d.op,
                "target": d.target,
                "decision": if d.allowed { "allow" } else { "deny" },
                "rule": d.rule,
                "reason": d.reason,
            });
            // Audit output failing (a full disk) must not kill the guest.
            let _ = writeln!(w, "{line}");
        }
        // A limit is reported by the run's own closing message, not as a denial.
        if d.allowed || self.quiet || d.kind == Kind::Limit {
            return;
        }
        let key = (d.kind, d.op.to_string(), d.target.to_string());
        if !inner.seen.insert(key) {
            return;
        }
        let mut msg = format!("capsa: denied: {} {}", d.op, d.target);
        if let Some(r) = d.reason {
            msg.push_str(&format!(" ({r})"));
        }
        if let Some(h) = d.hint {
            msg.push_str(&format!("\n  hint: {h}"));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{msg}");
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

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
