//! Resource limits of one run, and the parsers for sizes and durations.

use crate::PolicyError;
use std::time::Duration;

/// The largest memory a 32-bit WebAssembly program can address.
pub const MAX_MEMORY: u64 = 4 << 30;

/// Limits of one run. `None` means the user explicitly turned that limit off;
/// memory cannot be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of linear memory the program may hold, over all its memories.
    pub memory: u64,
    /// Wall-clock time for the whole run.
    pub timeout: Option<Duration>,
    /// Fuel units (roughly WebAssembly instructions); off by default because
    /// metering slows every loop.
    pub fuel: Option<u64>,
    /// Bytes the program may write to stdout and stderr together.
    pub max_output: Option<u64>,
    /// Bytes the program may write to files (see [`Limits::ENTRY_COST`]);
    /// none by default: a granted folder is the user's own.
    pub max_write: Option<u64>,
}

impl Limits {
    pub const DEFAULT_MEMORY: u64 = 1 << 30;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
    pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 30;
    /// What making a name (a file, a directory, a link) counts against
    /// `max_write`: a file system spends a block or an inode on each, so a
    /// flood of empty files is bounded too.
    pub const ENTRY_COST: u64 = 4096;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: Self::DEFAULT_MEMORY,
            timeout: Some(Self::DEFAULT_TIMEOUT),
            fuel: None,
            max_output: Some(Self::DEFAULT_MAX_OUTPUT),
            max_write: None,
        }
    }
}

/// Parses `1024`, `64K`, `256M`, `1G`, `512MiB`, `2GB`: K, M, G and KiB, MiB,
/// GiB are powers of 1024; KB, MB, GB are powers of 1000.
pub fn parse_size(input: &str) -> Result<u64, PolicyError> {
    let err = |reason: &str| PolicyError::Size {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err(
            "expected a number with an optional unit, such as 256M or 2G",
        ));
    }
    let n: u64 = digits.parse().map_err(|_| err("number too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(err(
                "unknown unit (use K, M, G, KiB, MiB, GiB, KB, MB or GB)",
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| err("number too large"))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, PolicyError> {
    let err = |reason: &str| PolicyError::Duration {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(err(
            "expected a number with a unit, such as 500ms, 30s, 5m or 1h",
        ));
    }
    let value: f64 = num.parse().map_err(|_| err("not a number"))?;
    let secs_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        _ => return Err(err("unknown unit (use ms, s, m or h)")),
    };
    let secs = value * secs_per_unit;
    // Bounded so the conversion below cannot overflow or panic.
    if !(secs.is_finite() && secs <= 366.0 * 24.0 * 3600.0) {
        return Err(err("too long (at most a year)"));
    }
    // To the nearest nanosecond, so that what format_duration writes reads
    // back as the same duration.
    let d = Duration::from_nanos((secs * 1e9).round() as u64);
    if d.is_zero() {
        return Err(err("must be longer than zero"));
    }
    Ok(d)
}

/// Formats a byte count the way a user would type it (`256M`, `1G`, `1000`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Formats a duration the way a user would type it (`30s`, `1500ms`, `5m`,
/// `1.5ms`): exactly, so a limit is never shown shorter or longer than it is.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if !ns.is_multiple_of(1_000_000) {
        let frac = format!("{:06}", ns % 1_000_000);
        return format!("{}.{}ms", ns / 1_000_000, frac.trim_end_matches('0'));
    }
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1024", Some(1024)),
            ("64K", Some(64 << 10)),
            ("256M", Some(256 << 20)),
            ("1G", Some(1 << 30)),
            ("512MiB", Some(512 << 20)),
            ("2GB", Some(2_000_000_000)),
            ("10 MB", Some(10_000_000)),
            ("lots", None),
            ("", None),
            ("M", None),
            ("-1M", None),
            ("1.5G", None),
            ("99999999999999999999", None),
            ("99999999999T", None),
            ("12X", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("500ms", Some(Duration::from_millis(500))),
            ("30s", Some(Duration::from_secs(30))),
            ("30", Some(Duration::from_secs(30))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("1.5ms", Some(Duration::from_micros(1500))),
            ("0.000001ms", Some(Duration::from_nanos(1))),
            ("0.0000001ms", None),
            ("0s", None),
            ("soon", None),
            ("", None),
            ("1.2.3s", None),
            (".5s", None),
            ("1e9h", None),
            ("99999999999999h", None),
            ("5d", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for bytes in [1u64, 1000, 1024, 64 << 10, 256 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes);
        }
        for ms in [1u64, 500, 1000, 1500, 60_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        for (d, text) in [
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_micros(500), "0.5ms"),
            (Duration::from_nanos(2_000_001), "2.000001ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }
}
