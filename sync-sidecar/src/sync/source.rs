//! The settings as one sync sees them: the loaded rows (oversized values
//! stripped), what they render to with every finding of the settings check,
//! the hash that identifies that result, and what changed since the deployed
//! revision.

use std::collections::{BTreeMap, BTreeSet};

use crate::db::{Change, Revision};
use crate::files;
use crate::settings::{self, Issue, Rendered, SettingRow};

/// Loaded settings, rendered and hashed.
#[derive(Debug)]
pub(super) struct Source {
    pub rows: Vec<SettingRow>,
    pub rendered: Rendered,
    /// Findings of the settings check (the schema and the filter's parser run later).
    pub issues: Vec<Issue>,
    /// What the settings render to (with the findings when they do not render
    /// cleanly): equal hashes mean nothing to deliver.
    pub hash: String,
}

impl Source {
    pub fn new(mut rows: Vec<SettingRow>, max_value_bytes: usize) -> Self {
        settings::strip_oversized(&mut rows, max_value_bytes);
        let (rendered, issues) = settings::render_parts(&rows, max_value_bytes);
        let hash = source_hash(&rendered, &issues);
        Self {
            rows,
            rendered,
            issues,
            hash,
        }
    }

    /// The rows changed since `deployed`'s settings snapshot, who changed
    /// them, and the snapshot of these rows.
    pub fn change_since(&self, deployed: Option<&Revision>) -> Change {
        let (changed_keys, actors) = changes(deployed, &self.rows);
        Change {
            actors,
            changed_keys,
            settings: self.snapshot(),
        }
    }

    /// The rows as recorded with a revision.
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.rows).ok()
    }
}

/// Hash identifying what the settings render to (with the findings when they
/// do not render cleanly).
fn source_hash(rendered: &Rendered, issues: &[Issue]) -> String {
    if issues.is_empty() {
        return rendered.content_hash();
    }
    let findings: Vec<String> = issues.iter().map(ToString::to_string).collect();
    files::sha256_hex(
        format!(
            "render-error:{}\n{}",
            findings.join("; "),
            rendered.document
        )
        .as_bytes(),
    )
}

/// Keys changed since the deployed revision's settings snapshot, and who changed them.
fn changes(deployed: Option<&Revision>, rows: &[SettingRow]) -> (Vec<String>, Vec<String>) {
    let before: BTreeMap<String, SettingRow> = deployed
        .and_then(|d| d.settings.clone())
        .and_then(|s| serde_json::from_value::<Vec<SettingRow>>(s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.identity(), row))
        .collect();
    let mut changed = Vec::new();
    let mut actors = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for row in rows {
        let identity = row.identity();
        match before.get(&identity) {
            Some(old) if old.value == row.value => {}
            _ => {
                changed.push(identity.clone());
                actors.insert(row.updated_by.clone());
            }
        }
        seen.insert(identity);
    }
    for identity in before.keys().filter(|k| !seen.contains(*k)) {
        changed.push(format!("-{identity}"));
    }
    (changed, actors.into_iter().collect())
}
