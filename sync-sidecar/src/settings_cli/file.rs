//! The settings file of `settings export` / `settings apply`: every row of
//! `tg_settings` as one YAML or JSON document, keys sorted so that an export is
//! byte-stable and diffs well in git.
//!
//! ```yaml
//! version: 1
//! global:
//!   gateway.tenant.trust_header_without_jwt: true
//! plans:
//!   gold:
//!     gateway.rate_limits: [{name: month, per: month, requests: 1000000}]
//! tenants:
//!   acme:
//!     settings:
//!       gateway.plan: gold
//!       gateway.rate_limit: {per_seconds: 60, requests: 100}
//!     routes:
//!       orders:
//!         gateway.route.prefix: /orders
//! ```
//!
//! Values are the JSON values of the `value` column. Unknown fields and
//! duplicate keys are errors: a key silently overwritten by a later copy of
//! itself is the kind of mistake a reviewed file must not hide.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::address::Address;

/// The file format version this sidecar reads and writes.
pub const FILE_VERSION: u32 = 1;

/// Serialisation of a settings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `explicit`, else JSON for a `.json` path, else YAML.
    pub fn for_path(explicit: Option<Self>, path: Option<&Path>) -> Self {
        explicit.unwrap_or_else(|| {
            let json = path
                .and_then(Path::extension)
                .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
            if json {
                Self::Json
            } else {
                Self::Yaml
            }
        })
    }
}

/// Why a settings file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("file version {0} is not supported: this sidecar reads version {FILE_VERSION}")]
    Version(u32),
    #[error("{0}")]
    Shape(String),
    #[error("cannot serialise the settings: {0}")]
    Serialise(String),
}

/// A map whose keys must be unique in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<V> UniqueMap<V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Unique<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate key `{}`",
                            crate::text::bounded_to(&key, 100)
                        )));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(Unique(PhantomData))
    }
}

/// One tenant: its tenant-scope settings and its routes' settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    #[serde(default, skip_serializing_if = "UniqueMap::is_empty")]
    pub settings: UniqueMap<Value>,
    #[serde(default, skip_serializing_if = "UniqueMap::is_empty")]
    pub routes: UniqueMap<UniqueMap<Value>>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "UniqueMap::is_empty")]
    pub global: UniqueMap<Value>,
    /// Plan name → its settings.
    #[serde(default, skip_serializing_if = "UniqueMap::is_empty")]
    pub plans: UniqueMap<UniqueMap<Value>>,
    #[serde(default, skip_serializing_if = "UniqueMap::is_empty")]
    pub tenants: UniqueMap<TenantFile>,
}

/// One row as the file holds it.
pub type Entry = (Address, String, Value);

impl SettingsFile {
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut file = Self {
            version: FILE_VERSION,
            global: UniqueMap::default(),
            plans: UniqueMap::default(),
            tenants: UniqueMap::default(),
        };
        for (address, key, value) in entries {
            if address.plan {
                file.plans
                    .0
                    .entry(address.tenant)
                    .or_default()
                    .0
                    .insert(key, value);
                continue;
            }
            if address.tenant.is_empty() {
                file.global.0.insert(key, value);
                continue;
            }
            let tenant = file.tenants.0.entry(address.tenant).or_default();
            if address.route.is_empty() {
                tenant.settings.0.insert(key, value);
            } else {
                tenant
                    .routes
                    .0
                    .entry(address.route)
                    .or_default()
                    .0
                    .insert(key, value);
            }
        }
        file
    }

    /// Every row of the file, in [`Address`] order.
    pub fn entries(&self) -> Result<Vec<Entry>, FileError> {
        let bad = |what: String| Err(FileError::Shape(what));
        let mut out = Vec::new();
        for (key, value) in &self.global.0 {
            if key.is_empty() {
                return bad("`global` has an empty key".to_owned());
            }
            out.push((Address::global(), key.clone(), value.clone()));
        }
        for (plan, keys) in &self.plans.0 {
            if plan.is_empty() {
                return bad("`plans` has an empty plan name".to_owned());
            }
            for (key, value) in &keys.0 {
                if key.is_empty() {
                    return bad(format!("plan `{plan}` has an empty key"));
                }
                out.push((Address::plan(plan), key.clone(), value.clone()));
            }
        }
        for (tenant, settings) in &self.tenants.0 {
            if tenant.is_empty() {
                return bad("`tenants` has an empty tenant id".to_owned());
            }
            for (key, value) in &settings.settings.0 {
                if key.is_empty() {
                    return bad(format!("tenant `{tenant}` has an empty key"));
                }
                out.push((Address::tenant(tenant), key.clone(), value.clone()));
            }
            for (route, keys) in &settings.routes.0 {
                if route.is_empty() {
                    return bad(format!("tenant `{tenant}` has a route with an empty name"));
                }
                for (key, value) in &keys.0 {
                    if key.is_empty() {
                        return bad(format!("route `{tenant}/{route}` has an empty key"));
                    }
                    out.push((Address::route(tenant, route), key.clone(), value.clone()));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// The file's text; `header` becomes a leading comment in YAML.
    pub fn render(&self, format: Format, header: &str) -> Result<String, FileError> {
        match format {
            Format::Json => serde_json::to_string_pretty(self)
                .map(|mut text| {
                    text.push('\n');
                    text
                })
                .map_err(|e| FileError::Serialise(e.to_string())),
            Format::Yaml => {
                let body = serde_norway::to_string(self)
                    .map_err(|e| FileError::Serialise(e.to_string()))?;
                let mut text = String::new();
                for line in header.lines() {
                    text.push_str("# ");
                    text.push_str(line);
                    text.push('\n');
                }
                text.push_str(&body);
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                Ok(text)
            }
        }
    }

    /// Parses `text` in `format` (a YAML parse also reads JSON) and checks the version.
    pub fn parse(text: &str, format: Format) -> Result<Self, FileError> {
        let file: Self = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| FileError::Syntax {
                format: "JSON",
                message: crate::text::bounded_to(&e.to_string(), 500).into_owned(),
            })?,
            Format::Yaml => serde_norway::from_str(text).map_err(|e| FileError::Syntax {
                format: "YAML",
                message: crate::text::bounded_to(&e.to_string(), 500).into_owned(),
            })?,
        };
        if file.version != FILE_VERSION {
            return Err(FileError::Version(file.version));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Vec<Entry> {
        vec![
            (Address::global(), "gateway.mode".into(), json!("shadow")),
            (
                Address::tenant("acme"),
                "gateway.rate_limit".into(),
                json!({"requests": 1.5, "per_seconds": 60}),
            ),
            (
                Address::route("acme", "orders"),
                "gateway.route.prefix".into(),
                json!("/orders"),
            ),
            (
                Address::tenant("beta"),
                "gateway.enabled".into(),
                json!("yes"),
            ),
        ]
    }

    #[test]
    fn both_formats_round_trip_in_a_stable_order() {
        let file = SettingsFile::from_entries(sample());
        for format in [Format::Yaml, Format::Json] {
            let text = file.render(format, "exported").unwrap();
            let back = SettingsFile::parse(&text, format).unwrap();
            assert_eq!(back, file, "{text}");
            assert_eq!(back.entries().unwrap(), sample());
            assert_eq!(back.render(format, "exported").unwrap(), text);
        }
        let yaml = file.render(Format::Yaml, "exported").unwrap();
        assert!(yaml.starts_with("# exported\nversion: 1\n"), "{yaml}");
        // YAML 1.2 core schema: `yes` is a string, only `true`/`false` are booleans.
        assert!(yaml.contains("gateway.enabled: yes"), "{yaml}");
    }

    #[test]
    fn duplicates_unknown_fields_and_versions_are_refused() {
        let duplicate = "version: 1\nglobal:\n  gateway.mode: shadow\n  gateway.mode: enforce\n";
        let error = SettingsFile::parse(duplicate, Format::Yaml).unwrap_err();
        assert!(
            error.to_string().contains("duplicate key `gateway.mode`"),
            "{error}"
        );
        let nested = r#"{"version": 1, "tenants": {"a": {"routes": {"r": {"k": 1, "k": 2}}}}}"#;
        let error = SettingsFile::parse(nested, Format::Json).unwrap_err();
        assert!(error.to_string().contains("duplicate key `k`"), "{error}");
        let unknown = "version: 1\ntenants:\n  acme:\n    setting: {}\n";
        let error = SettingsFile::parse(unknown, Format::Yaml).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `setting`"),
            "{error}"
        );
        let error = SettingsFile::parse("version: 2\n", Format::Yaml).unwrap_err();
        assert_eq!(error, FileError::Version(2));
        let empty_route = r#"{"version": 1, "tenants": {"a": {"routes": {"": {"k": 1}}}}}"#;
        let file = SettingsFile::parse(empty_route, Format::Json).unwrap();
        assert!(file.entries().is_err());
        assert_eq!(
            Format::for_path(None, Some(Path::new("x.JSON"))),
            Format::Json
        );
        assert_eq!(
            Format::for_path(None, Some(Path::new("x.yml"))),
            Format::Yaml
        );
    }
}
