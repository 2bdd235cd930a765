//! Quoting untrusted text for error messages and logs: at most
//! `QUOTE_MAX` characters, control characters escaped, so that hostile
//! input can neither flood a reply or a log nor forge log lines.

/// The most characters of one input an error message or a log line quotes.
pub const QUOTE_MAX: usize = 64;

/// `s` in double quotes, control characters (newlines too) escaped, cut to
/// `QUOTE_MAX` characters with an ellipsis.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(QUOTE_MAX * 4) + 2);
    out.push('"');
    out.push_str(&escape(s, QUOTE_MAX));
    out.push('"');
    out
}

/// `s` with control characters, quotes and backslashes escaped as Rust
/// does (`\n`, `\u{1b}`), cut to `max` characters of `s` with an ellipsis.
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_escaped_and_bounded() {
        assert_eq!(quote("firefox"), "\"firefox\"");
        assert_eq!(quote("a\nb\u{1b}[31m\"\\"), r#""a\nb\u{1b}[31m\"\\""#);
        let long = quote(&"x".repeat(30 << 20));
        assert_eq!(long, format!("\"{}…\"", "x".repeat(QUOTE_MAX)));
        assert!(!quote("\r\n\t\0").chars().any(char::is_control));
    }
}
