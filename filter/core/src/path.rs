//! The one request path every path-dependent decision reads (route limits,
//! `If-Match` rules, the idempotency fingerprint): the raw `:path` bytes from
//! the host, validated and normalised the way RFC 3986 §6 says two paths name
//! the same resource. Without this, `PUT //orders/1`, `/./orders/1` or
//! `/%6Frders/1` would miss a rule on `/orders` while the upstream serves them
//! as `/orders/1`.
//!
//! Normalisation: percent-encoded unreserved characters are decoded (§6.2.2.2),
//! other escapes keep their byte but get upper-case hex (§6.2.2.1), runs of `/`
//! are merged, dot segments are removed (§5.2.4), and the query is split off.
//! `%2F` and `%5C` (and a raw `\`) are rejected unless configured: upstreams
//! disagree on whether they separate segments, so no single normal form is safe.

use std::fmt;

/// A request path as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NormalizedPath {
    /// Normalised path without the query: starts with `/` (or is `*` / empty).
    pub path: String,
    /// The query after the first `?`, as sent (validated, not normalised).
    pub query: Option<String>,
}

impl NormalizedPath {
    /// Path and query as one string (what the idempotency fingerprint hashes).
    pub fn with_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a path was refused (400 `invalid-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A byte outside visible ASCII, or `#`.
    InvalidByte(u8),
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `\` while `paths.allow_encoded_slashes` is off.
    EncodedSlash,
    /// Neither `/`-rooted nor `*`.
    NotAbsolute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidByte(byte) => write!(
                f,
                "the request path contains byte 0x{byte:02x}; only visible ASCII (percent-encode the rest) is accepted"
            ),
            Self::BadEscape => f.write_str("the request path has a `%` not followed by two hex digits"),
            Self::EncodedSlash => f.write_str(
                "the request path contains an encoded slash or backslash (`%2F`, `%5C` or `\\`)",
            ),
            Self::NotAbsolute => f.write_str("the request path must start with `/`"),
        }
    }
}

/// Validates and normalises a raw `:path`. An empty input (the host did not
/// read the path) stays empty.
pub fn normalize(raw: &[u8], allow_encoded_slashes: bool) -> Result<NormalizedPath, PathError> {
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(at) => (raw.get(..at).unwrap_or_default(), raw.get(at + 1..)),
        None => (raw, None),
    };
    let query = query.map(validate_query).transpose()?;
    if path.is_empty() && query.is_none() {
        return Ok(NormalizedPath::default());
    }
    if path == b"*" {
        return Ok(NormalizedPath {
            path: "*".to_owned(),
            query,
        });
    }
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(path, allow_encoded_slashes)?;
    Ok(NormalizedPath {
        path: remove_dot_segments(&decoded),
        query,
    })
}

fn is_visible(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte) && byte != b'#'
}

fn validate_query(query: &[u8]) -> Result<String, PathError> {
    match query.iter().find(|&&b| !is_visible(b)) {
        Some(&byte) => Err(PathError::InvalidByte(byte)),
        // Visible ASCII is UTF-8.
        None => Ok(query.iter().map(|&b| char::from(b)).collect()),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes, upper-cases the others, merges `/` runs.
fn decode(path: &[u8], allow_encoded_slashes: bool) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut bytes = path.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.next().and_then(hex_value),
                    bytes.next().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = (high << 4) | low;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else if matches!(value, b'/' | b'\\') && !allow_encoded_slashes {
                    return Err(PathError::EncodedSlash);
                } else {
                    out.push('%');
                    out.push(upper_hex(high));
                    out.push(upper_hex(low));
                }
            }
            b'\\' if !allow_encoded_slashes => return Err(PathError::EncodedSlash),
            b'/' if out.ends_with('/') => {}
            byte if is_visible(byte) => out.push(char::from(byte)),
            byte => return Err(PathError::InvalidByte(byte)),
        }
    }
    Ok(out)
}

fn upper_hex(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16)
        .unwrap_or('0')
        .to_ascii_uppercase()
}

/// RFC 3986 §5.2.4 for a `/`-rooted path without empty inner segments.
fn remove_dot_segments(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            segment => out.push(segment),
        }
        // A final dot segment names the directory: keep its trailing slash.
        if index == last && matches!(segment, "." | "..") {
            out.push("");
        }
    }
    let mut normalized = String::with_capacity(path.len());
    normalized.push('/');
    normalized.push_str(&out.join("/"));
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize(raw.as_bytes(), false).map(|p| p.with_query())
    }

    #[test]
    fn spellings_of_one_resource_normalise_alike() {
        for raw in [
            "/orders/1",
            "//orders/1",
            "/orders//1",
            "///orders///1",
            "/./orders/1",
            "/orders/./1",
            "/x/../orders/1",
            "/../orders/1",
            "/%6Frders/1",
            "/%6frders/%31",
            "/%2E/orders/1",
            "/a/%2e%2E/orders/1",
            "/orders/1/.",
        ] {
            let expected = if raw.ends_with("/.") {
                "/orders/1/"
            } else {
                "/orders/1"
            };
            assert_eq!(norm(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn rfc3986_dot_segment_examples() {
        // RFC 3986 §5.4 results, as absolute paths.
        for (raw, expected) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/b/c/../..", "/a/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/.c", "/a/..b/.c"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn query_is_split_off_and_kept() {
        let path = normalize(b"//orders/./1?x=/../y&z=%2F", false).unwrap();
        assert_eq!(path.path, "/orders/1");
        assert_eq!(path.query.as_deref(), Some("x=/../y&z=%2F"));
        assert_eq!(path.with_query(), "/orders/1?x=/../y&z=%2F");
        assert_eq!(norm("/a?").as_deref(), Ok("/a?"));
    }

    #[test]
    fn other_escapes_keep_their_byte_with_upper_case_hex() {
        assert_eq!(norm("/a%20b%3a%c3%a9").as_deref(), Ok("/a%20b%3A%C3%A9"));
    }

    #[test]
    fn encoded_slashes_are_refused_unless_allowed() {
        for raw in ["/orders%2F1", "/orders%2f1", "/a%5Cb", "/a%5cb", "/a\\b"] {
            assert_eq!(norm(raw), Err(PathError::EncodedSlash), "{raw}");
        }
        let allowed = normalize(b"/orders%2f1/%5c/a\\b", true).unwrap();
        assert_eq!(allowed.path, "/orders%2F1/%5C/a\\b");
        // An encoded slash is data, not a separator: no dot-segment collapse across it.
        assert_eq!(normalize(b"/a%2F..%2Fb", true).unwrap().path, "/a%2F..%2Fb");
    }

    #[test]
    fn hostile_bytes_are_refused() {
        for byte in (0u8..=0x20).chain([b'#', 0x7f]).chain(0x80..=0xff) {
            let raw = [b'/', b'a', byte, b'b'];
            assert_eq!(
                normalize(&raw, false),
                Err(PathError::InvalidByte(byte)),
                "{byte:#x}"
            );
            let in_query = [b'/', b'?', byte];
            assert_eq!(
                normalize(&in_query, true),
                Err(PathError::InvalidByte(byte)),
                "{byte:#x}"
            );
        }
        for raw in ["/%", "/%2", "/%zz", "/%2g"] {
            assert_eq!(norm(raw), Err(PathError::BadEscape), "{raw}");
        }
        for raw in ["orders/1", "http://x/orders"] {
            assert_eq!(norm(raw), Err(PathError::NotAbsolute), "{raw}");
        }
        assert_eq!(norm("*").as_deref(), Ok("*"));
        assert_eq!(norm("").as_deref(), Ok(""));
    }

    #[test]
    fn every_error_text_is_short() {
        for error in [
            PathError::InvalidByte(0xff),
            PathError::BadEscape,
            PathError::EncodedSlash,
            PathError::NotAbsolute,
        ] {
            assert!(error.to_string().len() < 120, "{error}");
        }
    }
}
