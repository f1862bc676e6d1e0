//! The tenant id: one type and one rule for every place a tenant is named (a
//! trusted header, a token claim, a config key, a settings row). A tenant id
//! becomes part of storage keys and upstream headers, so the rule is strict.

use std::fmt;

/// The longest tenant id.
pub const MAX_LEN: usize = 128;

/// The rule, as error messages state it.
pub const RULE: &str = "1-128 characters of [A-Za-z0-9._-]";

/// A validated tenant id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// The id, if `text` follows [`RULE`].
    pub fn parse(text: &str) -> Option<TenantId> {
        is_valid(text).then(|| TenantId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `text` follows [`RULE`].
pub fn is_valid(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl std::ops::Deref for TenantId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TenantId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for TenantId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_rule_admits_exactly_its_alphabet_and_length() {
        assert!(TenantId::parse("acme.eu-1_x").is_some());
        assert!(TenantId::parse(&"a".repeat(MAX_LEN)).is_some());
        for bad in ["", "a b", "ä", "a/b", "a:b", "a\u{0}"] {
            assert!(TenantId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(TenantId::parse(&"a".repeat(MAX_LEN + 1)).is_none());
        assert_eq!(TenantId::parse("acme").unwrap(), "acme");
    }
}
