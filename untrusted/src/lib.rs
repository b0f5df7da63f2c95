//! Hygiene for untrusted bytes, the one leaf both verifier crates (`providers`, `attestation`)
//! share, so neither depends on the other:
//!
//! - [`json::parse_object`]: strict JSON (a duplicate member name is an error);
//! - [`escape_untrusted`]: an untrusted string made safe to put in a message or a log line;
//! - [`is_hidden_char`]: characters that make two strings look alike;
//! - [`hex`]: lower-case hex.

#![forbid(unsafe_code)]

pub mod json;

/// Escapes an untrusted string for a message or log line: printable ASCII stays, everything
/// else becomes `\u{..}`, and the result is cut at `max` characters.
pub fn escape_untrusted(s: &str, max: usize) -> String {
    escape_untrusted_also(s, max, &[])
}

/// [`escape_untrusted`], escaping the characters of `also` too (a message that quotes values in
/// them).
pub fn escape_untrusted_also(s: &str, max: usize, also: &[char]) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() && c != '"' && c != '\\' && !also.contains(&c) || c == ' ' {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// Control characters, zero-width and direction marks, the word joiner family, the BOM and the
/// soft hyphen: what makes two strings look alike.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}')
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
    }

    #[test]
    fn escaping_keeps_printable_ascii_and_cuts() {
        assert_eq!(escape_untrusted("a b\"c\\d\u{e9}", 64), "a b\\u{22}c\\u{5c}d\\u{e9}");
        assert_eq!(escape_untrusted("abcdef", 3), "abc...");
        assert_eq!(escape_untrusted("a`b", 8), "a`b");
        assert_eq!(escape_untrusted_also("a`b", 8, &['`']), "a\\u{60}b");
    }

    #[test]
    fn hidden_characters_and_hex() {
        assert!(is_hidden_char('\u{200b}') && is_hidden_char('\n') && !is_hidden_char('é'));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
