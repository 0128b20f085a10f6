//! Text that someone else chose (a bundle's reasons, a guest's paths, a
//! host path in a hint), made safe to show on a terminal or to paste into a
//! shell.
//!
//! A terminal obeys what it prints: `\r\x1b[2K` erases the line a user is
//! reading and writes another in its place, and the bidirectional controls
//! (U+202E and friends) reorder what is shown, so `--allow-read=/tmp` can
//! display as something else. Every piece of untrusted text goes through
//! [`escape_for_terminal`] before it is printed.

use std::borrow::Cow;
use std::fmt::Write;

/// A character that changes how a terminal shows what follows it instead of
/// showing itself, or shows as nothing: a control character (C0, DEL, C1:
/// Unicode's `Cc`), a line or paragraph separator (U+2028, U+2029), which
/// some terminals and log viewers break lines on, or an [invisible
/// one](is_invisible) (the bidirectional format characters U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069 among them) other than the
/// zero-width joiner and the variation selectors, which emoji are made of;
/// or an interlinear annotation mark (U+FFF9–U+FFFB), with which text can
/// be set apart to be shown above other text, or not at all.
pub fn is_terminal_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FFF9}'..='\u{FFFB}')
        // Invisible: `main\u{200b}.py` reads as `main.py`. The zero-width
        // joiner and the variation selectors are kept, which emoji are
        // made of; bundle paths refuse them too (`is_invisible`).
        || (is_invisible(c) && !matches!(c, '\u{200D}' | '\u{FE00}'..='\u{FE0F}'))
}

/// Whether `c` is one Unicode says to draw as nothing when it is not
/// supported (`Default_Ignorable_Code_Point`, Unicode 16): bidirectional
/// marks and overrides, zero-width spaces and joiners, the soft hyphen,
/// fillers, variation selectors, tags; and the braille pattern blank
/// (U+2800), which is not one of them but draws as a blank all the same,
/// as the Hangul fillers do.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// `text` with every [terminal-unsafe](is_terminal_unsafe) character written
/// as a visible escape, as Rust's `{:?}` writes it (`\u{1b}`); the rest is
/// unchanged, and text with nothing to escape is borrowed, not copied.
///
/// The result is for reading, not for parsing back: a literal `\u{1b}` in
/// the input reads the same as an escaped ESC. Newlines are escaped too, so
/// split multi-line text the caller itself built before escaping it.
pub fn escape_for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_terminal_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_terminal_unsafe(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `value` as a POSIX shell word that stands for exactly `value`: unchanged
/// when it is made only of `A-Z a-z 0-9 / . _ : @ % + = -` (what paths,
/// hosts and rules are usually made of), else in single quotes, each `'`
/// written `'\''`. For the value part of a hint (`--allow-read=` then this).
///
/// Shell-safe, not terminal-safe: single quotes keep control characters as
/// they are, so print the result through [`escape_for_terminal`]. Nor does
/// quoting stop capsa's own list flags from splitting at `,`.
///
/// On Windows, for cmd and PowerShell: `\` is plain there, and anything
/// else is put in double quotes (`"C:\My Data\x"`), which a Windows file
/// name cannot hold.
pub fn quote_flag_value(value: &str) -> String {
    quote_flag_value_for(value, cfg!(windows))
}

/// [`quote_flag_value`] for POSIX shells, or for Windows' (`windows`).
pub fn quote_flag_value_for(value: &str, windows: bool) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"/._:@%+=-".contains(&b) || (windows && b == b'\\')
        });
    if plain {
        return value.to_string();
    }
    if windows && !value.contains('"') {
        return format!("\"{value}\"");
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            // Close the quotes, an escaped quote, open them again.
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_quoting() {
        assert_eq!(
            quote_flag_value_for(r"C:\data\x.txt", true),
            r"C:\data\x.txt"
        );
        assert_eq!(quote_flag_value_for(r"C:\My Data", true), r#""C:\My Data""#);
        assert_eq!(quote_flag_value_for(r"C:\data", false), r"'C:\data'");
        assert_eq!(quote_flag_value_for("a'b", true), r#""a'b""#);
    }

    #[test]
    fn unsafe_characters() {
        let unsafe_ones = [
            '\0',
            '\t',
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{80}',
            '\u{85}',
            '\u{9b}',
            '\u{9f}',
            '\u{61c}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{2028}',
            '\u{2029}',
            '\u{ad}',
            '\u{115f}',
            '\u{180e}',
            '\u{200b}',
            '\u{200c}',
            '\u{2060}',
            '\u{2065}',
            '\u{2800}',
            '\u{3164}',
            '\u{feff}',
            '\u{ffa0}',
            '\u{e0041}',
            '\u{fff9}',
            '\u{fffb}',
        ];
        for c in unsafe_ones {
            assert!(is_terminal_unsafe(c), "{c:?}");
        }
        let safe = [
            ' ', 'a', '~', '\\', '\u{a0}', 'é', '中', '\u{200d}', '\u{fe0f}', '\u{2070}', '😀',
            '\u{fffc}',
        ];
        for c in safe {
            assert!(!is_terminal_unsafe(c), "{c:?}");
        }
    }

    #[test]
    fn escaping() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("fetches the forecast", "fetches the forecast"),
            ("café 中文", "café 中文"),
            ("a\r\x1b[2Kb", "a\\u{d}\\u{1b}[2Kb"),
            ("x\ny", "x\\u{a}y"),
            ("\u{202e}txt.exe", "\\u{202e}txt.exe"),
            ("\u{2066}a\u{2069}", "\\u{2066}a\\u{2069}"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("nul\0", "nul\\u{0}"),
            ("del\u{7f}", "del\\u{7f}"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_for_terminal(input), *want, "{input:?}");
            assert!(
                !escape_for_terminal(input).chars().any(is_terminal_unsafe),
                "{input:?}"
            );
        }
        assert!(matches!(escape_for_terminal("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn quoting() {
        let cases: &[(&str, &str)] = &[
            ("/data/out", "/data/out"),
            ("api.example.com:443", "api.example.com:443"),
            ("a@b%c+d=e-f_g", "a@b%c+d=e-f_g"),
            ("", "''"),
            ("my dir", "'my dir'"),
            ("*.example.com", "'*.example.com'"),
            ("[::1]:80", "'[::1]:80'"),
            ("~/x", "'~/x'"),
            ("$HOME", "'$HOME'"),
            ("a;rm -rf /", "'a;rm -rf /'"),
            ("it's", "'it'\\''s'"),
            ("'", "''\\'''"),
            ("`id`", "'`id`'"),
            ("a\nb", "'a\nb'"),
            ("\u{1b}[2K", "'\u{1b}[2K'"),
            ("é", "'é'"),
        ];
        for (input, want) in cases {
            assert_eq!(quote_flag_value(input), *want, "{input:?}");
        }
        // Printing a quoted value: the composition leaves nothing unsafe.
        let quoted = quote_flag_value("/tmp/\u{202e}x\r");
        assert_eq!(escape_for_terminal(&quoted), "'/tmp/\\u{202e}x\\u{d}'");
    }
}
