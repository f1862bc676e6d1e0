//! What a `set`, `unset` or `apply` would do: the row changes, the settings
//! set they produce, its validation by the sync's own path ([`render_parts`]
//! then [`Validator::validate_with`], every finding in one pass), and the
//! plugin-document diff it causes.
//!
//! A value equal to the stored one (compared in PostgreSQL's canonical jsonb
//! text) is no change: nothing is written for it, so no new revision follows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::address::Address;
use super::store::Stored;
use crate::dryrun;
use crate::settings::{self, render_parts, Rendered, SettingRow, Validator};
use crate::text::bounded_to;

/// Longest value text shown in a change line.
const SHOWN_VALUE_BYTES: usize = 200;

/// The row identity inside a settings set.
pub type RowKey = (Address, String);

/// One row change. Texts are PostgreSQL's canonical jsonb text.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add {
        text: String,
        value: Value,
    },
    Update {
        old: String,
        text: String,
        value: Value,
    },
    Remove {
        old: String,
    },
}

/// A change to the row at `key`; `etag` is the stored row's, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub key: RowKey,
    pub change: Change,
    pub etag: Option<String>,
}

/// All changes, in row order, and how many stored rows the input left alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub changes: Vec<Planned>,
    /// Rows absent from an `apply` file and kept because `--prune` was not given.
    pub kept: usize,
}

/// The desired value of a row: canonical text and the parsed value.
pub type Desired = BTreeMap<RowKey, Option<(String, Value)>>;

impl Plan {
    /// Changes that turn `current` into `desired` (`None`: remove the row).
    /// With `prune`, stored rows absent from `desired` are removed too.
    pub fn new(current: &[Stored], desired: &Desired, prune: bool) -> Self {
        let stored: BTreeMap<RowKey, &Stored> = current
            .iter()
            .map(|s| ((s.address.clone(), s.key.clone()), s))
            .collect();
        let mut plan = Self::default();
        for (key, want) in desired {
            let have = stored.get(key);
            let change = match (have, want) {
                (None, None) => None,
                (None, Some((text, value))) => Some(Change::Add {
                    text: text.clone(),
                    value: value.clone(),
                }),
                (Some(row), Some((text, _))) if row.text == *text => None,
                (Some(row), Some((text, value))) => Some(Change::Update {
                    old: row.text.clone(),
                    text: text.clone(),
                    value: value.clone(),
                }),
                (Some(row), None) => Some(Change::Remove {
                    old: row.text.clone(),
                }),
            };
            if let Some(change) = change {
                plan.changes.push(Planned {
                    key: key.clone(),
                    change,
                    etag: have.map(|row| row.etag.clone()),
                });
            }
        }
        for (key, row) in stored.iter().filter(|(key, _)| !desired.contains_key(*key)) {
            if prune {
                plan.changes.push(Planned {
                    key: key.clone(),
                    change: Change::Remove {
                        old: row.text.clone(),
                    },
                    etag: Some(row.etag.clone()),
                });
            } else {
                plan.kept += 1;
            }
        }
        plan.changes.sort_by(|a, b| a.key.cmp(&b.key));
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The rows of `current` after the plan, `actor` on every changed row,
    /// ordered as the sync loads them.
    pub fn resulting_rows(&self, current: &[Stored], actor: &str) -> Vec<SettingRow> {
        let mut rows: BTreeMap<RowKey, SettingRow> = current
            .iter()
            .map(|s| ((s.address.clone(), s.key.clone()), s.to_row()))
            .collect();
        for planned in &self.changes {
            let (address, key) = &planned.key;
            match &planned.change {
                Change::Remove { .. } => {
                    rows.remove(&planned.key);
                }
                Change::Add { value, .. } | Change::Update { value, .. } => {
                    let row = SettingRow::new(
                        address.scope(),
                        &address.tenant,
                        &address.route,
                        key,
                        value.clone(),
                        actor,
                    );
                    rows.insert(planned.key.clone(), row);
                }
            }
        }
        let mut rows: Vec<SettingRow> = rows.into_values().collect();
        // `db::load_settings` order: scope text, tenant, route, key.
        rows.sort_by(|a, b| {
            (a.scope.as_str(), &a.tenant, &a.route, &a.key).cmp(&(
                b.scope.as_str(),
                &b.tenant,
                &b.route,
                &b.key,
            ))
        });
        rows
    }

    /// `added, changed, removed` counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for planned in &self.changes {
            match planned.change {
                Change::Add { .. } => counts.0 += 1,
                Change::Update { .. } => counts.1 += 1,
                Change::Remove { .. } => counts.2 += 1,
            }
        }
        counts
    }

    /// The changes grouped per tenant (`@global` first, plans last), one line per key:
    /// `+` added, `~` changed, `-` removed; route keys as `ROUTE/KEY`.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let mut group: Option<String> = None;
        for planned in &self.changes {
            let (address, key) = &planned.key;
            let this = address.group();
            if group.as_deref() != Some(this.as_str()) {
                let _ = writeln!(text, "{this}");
                group = Some(this);
            }
            let name = if address.route.is_empty() {
                key.clone()
            } else {
                format!("{}/{key}", address.route)
            };
            let _ = match &planned.change {
                Change::Add { text: new, .. } => writeln!(text, "  + {name} = {}", shown(new)),
                Change::Update { old, text: new, .. } => {
                    writeln!(text, "  ~ {name}: {} -> {}", shown(old), shown(new))
                }
                Change::Remove { old } => writeln!(text, "  - {name} (was {})", shown(old)),
            };
        }
        text
    }
}

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    bounded_to(text, SHOWN_VALUE_BYTES)
}

/// A settings set rendered and validated as the sync would.
#[derive(Debug)]
pub struct Checked {
    pub rendered: Rendered,
    /// Every finding, one line each; empty when valid.
    pub findings: Vec<String>,
}

impl Checked {
    pub fn new(rows: &[SettingRow], validator: &Validator, max_value_bytes: usize) -> Self {
        let mut rows = rows.to_vec();
        settings::strip_oversized(&mut rows, max_value_bytes);
        let (rendered, issues) = render_parts(&rows, max_value_bytes);
        let findings =
            match validator.validate_with(&rendered, &rendered.with_revision("r0"), issues) {
                Ok(()) => Vec::new(),
                Err(error) => error.lines(),
            };
        Self { rendered, findings }
    }

    pub fn is_valid(&self) -> bool {
        self.findings.is_empty()
    }

    /// Warnings about valid but risky settings.
    pub fn warnings(&self) -> Vec<String> {
        if self.is_valid() {
            settings::warnings(&self.rendered)
        } else {
            Vec::new()
        }
    }
}

/// Unified diff of the plugin document (pretty JSON, no `revision`) from
/// `before` to `after`; `None` when they are equal.
pub fn document_diff(before: &Rendered, after: &Rendered) -> Option<String> {
    let old = dryrun::pretty(&before.document);
    let new = dryrun::pretty(&after.document);
    (old != new).then(|| {
        dryrun::unified_diff(
            &old,
            &new,
            "plugin document now",
            "plugin document after the change",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(address: Address, key: &str, value: Value) -> Stored {
        Stored {
            address,
            key: key.to_owned(),
            text: value.to_string(),
            value,
            updated_by: "alice".to_owned(),
            updated_at: String::new(),
            etag: "7".to_owned(),
        }
    }

    fn want(value: Value) -> Option<(String, Value)> {
        Some((value.to_string(), value))
    }

    #[test]
    fn equal_values_are_no_change_and_prune_removes_the_rest() {
        let current = vec![
            stored(Address::global(), "gateway.mode", json!("shadow")),
            stored(Address::tenant("acme"), "gateway.mode", json!("enforce")),
            stored(
                Address::route("acme", "o"),
                "gateway.route.prefix",
                json!("/o"),
            ),
        ];
        let mut desired = Desired::new();
        desired.insert(
            (Address::global(), "gateway.mode".into()),
            want(json!("shadow")),
        );
        desired.insert(
            (Address::tenant("acme"), "gateway.mode".into()),
            want(json!("shadow")),
        );
        desired.insert(
            (Address::tenant("beta"), "gateway.enabled".into()),
            want(json!(true)),
        );
        let plan = Plan::new(&current, &desired, false);
        assert_eq!((plan.counts(), plan.kept), ((1, 1, 0), 1));
        assert_eq!(
            plan.describe(),
            "acme\n  ~ gateway.mode: \"enforce\" -> \"shadow\"\nbeta\n  + gateway.enabled = true\n"
        );
        let rows = plan.resulting_rows(&current, "bob");
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].scope, settings::Scope::Global);
        assert!(rows
            .iter()
            .any(|r| r.tenant == "beta" && r.updated_by == "bob"));
        let pruned = Plan::new(&current, &desired, true);
        assert_eq!((pruned.counts(), pruned.kept), ((1, 1, 1), 0));
        assert!(pruned
            .describe()
            .contains("  - o/gateway.route.prefix (was \"/o\")"));
        let same: Desired = current
            .iter()
            .map(|s| ((s.address.clone(), s.key.clone()), want(s.value.clone())))
            .collect();
        assert!(Plan::new(&current, &same, true).is_empty());
    }
}
