//! Text that leaves the sidecar: error chains printed once and bounded in size.
//!
//! Every error text that is stored (`tg_revisions.error`), logged, answered over
//! HTTP (`POST /sync`) or printed goes through [`error_text`] or [`bounded`], so a
//! hostile settings value or a chatty gateway cannot blow up the audit table, the
//! log or an HTTP answer. Error types keep their cause in `source()` and out of
//! their own message; [`error_chain`] joins the chain, each cause once.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Upper bound (bytes) of an error text, marker included.
pub const MAX_ERROR_BYTES: usize = 4096;

/// Upper bound (bytes) of one validation finding inside an error text.
pub const MAX_ISSUE_BYTES: usize = 512;

/// `text` cut to at most `max` bytes (on a character boundary), ending in
/// `… [truncated, N bytes]` (N: the original length) when it was longer.
pub fn bounded_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = format!("… [truncated, {} bytes]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + marker.len());
    out.push_str(text.get(..end).unwrap_or_default());
    out.push_str(&marker);
    Cow::Owned(out)
}

/// [`bounded_to`] with [`MAX_ERROR_BYTES`]: for stored errors, log lines and HTTP answers.
pub fn bounded(text: &str) -> Cow<'_, str> {
    bounded_to(text, MAX_ERROR_BYTES)
}

/// `error: cause: cause…`, each cause once (a cause whose text is already
/// contained in what came before is skipped).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The bounded [`error_chain`] of `error`: the one form errors leave the process in.
pub fn error_text(error: &dyn std::error::Error) -> String {
    bounded(&error_chain(error)).into_owned()
}

/// A database URL fit for messages: the password (URL userinfo or a
/// `password=` pair) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}{tail}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_short_text_and_marks_long_text() {
        assert_eq!(bounded_to("short", 100), "short");
        let long = "é".repeat(10_000);
        let cut = bounded_to(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("… [truncated, 20000 bytes]"), "{cut}");
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn chain_prints_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("inner cause"));
        assert_eq!(error_chain(&error), "outer: inner cause");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
    }
}
