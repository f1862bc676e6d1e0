//! Request header values as the host hands them over: bytes, possibly not
//! UTF-8. This module owns the byte-level rules shared by the parsers (optional
//! whitespace, visible ASCII) and the `If-Match` syntax check.

/// Strips RFC 9110 OWS (SP / HTAB) from both ends.
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |at| at + 1);
    value.get(start..end).unwrap_or_default()
}

/// The value as text when every byte is visible ASCII or SP/HTAB; `None` otherwise
/// (non-UTF-8, control characters, obs-text).
pub fn printable_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| matches!(b, b' ' | b'\t' | 0x21..=0x7e))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// At most `max` bytes of `text`, cut at a character boundary (texts that
/// quote client or config input into errors and logs stay bounded).
pub fn truncated(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Whether an `If-Match` value is RFC 9110 §13.1.1 syntax: `*`, or a
/// comma-separated list (§5.6.1, empty elements tolerated) of at least one
/// entity-tag `[W/]"<etagc>*"`, where etagc is `%x21 / %x23-7E / obs-text`.
pub fn is_valid_if_match(value: &[u8]) -> bool {
    let value = trim_ows(value);
    if value == b"*" {
        return true;
    }
    let mut tags = 0usize;
    let mut rest = value;
    loop {
        rest = trim_ows(rest);
        match rest.first() {
            None => break,
            Some(b',') => {
                rest = rest.get(1..).unwrap_or_default();
                continue;
            }
            Some(_) => {}
        }
        let Some(after) = entity_tag(rest) else {
            return false;
        };
        tags += 1;
        let after = trim_ows(after);
        match after.first() {
            None => break,
            Some(b',') => rest = after.get(1..).unwrap_or_default(),
            Some(_) => return false,
        }
    }
    tags > 0
}

/// Parses one entity-tag at the start of `value`; returns what follows it.
fn entity_tag(value: &[u8]) -> Option<&[u8]> {
    let opaque = value.strip_prefix(b"W/").unwrap_or(value);
    let inner = opaque.strip_prefix(b"\"")?;
    let close = inner.iter().position(|&b| b == b'"')?;
    let tag = inner.get(..close)?;
    tag.iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        .then(|| inner.get(close + 1..))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn if_match_syntax() {
        for valid in [
            "*",
            " * ",
            "\"abc\"",
            "W/\"abc\"",
            "\"\"",
            "\"a\", W/\"b\"",
            "\"a\",\"b\"",
            ", \"a\" ,, ",
            "\"x\u{e9}y\"",
        ] {
            assert!(is_valid_if_match(valid.as_bytes()), "{valid:?}");
        }
        assert!(is_valid_if_match(b"\"a\xffb\""), "obs-text is allowed");
        for invalid in [
            "",
            " ",
            ",",
            "garbage",
            "abc",
            "\"abc",
            "abc\"",
            "w/\"abc\"",
            "W/abc",
            "\"a\" \"b\"",
            "\"a\"b",
            "*, \"a\"",
            "**",
            "\"a b\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
        ] {
            assert!(!is_valid_if_match(invalid.as_bytes()), "{invalid:?}");
        }
        assert!(!is_valid_if_match(b"\"a\x00b\""));
    }

    #[test]
    fn ows_and_printable() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(printable_ascii(b"a b~"), Some("a b~"));
        for bad in [&b"a\xffb"[..], b"a\x00", b"\x7f", b"\xc3\xa9"] {
            assert_eq!(printable_ascii(bad), None, "{bad:?}");
        }
    }
}
