//! `sync --dry-run`: what a sync would change on the gateway, read-only.
//!
//! The settings are rendered and validated exactly as a sync would (every
//! finding in one pass); the result is diffed against what the gateway has —
//! the ECDS file in `--ecds-dir` for Envoy, the filter configuration Kong's
//! Admin API reports — or, without `--ecds-dir`, against the sidecar's own
//! record of the last delivered revision. The report names which one it used.
//! Rows with a finding are left out of the rendered side, so the diff shows
//! only what the settings change, never the whole document as deleted.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use tokio_postgres::Client;

use crate::db;
use crate::delivery::envoy;
use crate::delivery::KongTarget;
use crate::settings::{self, Validator};
use crate::sync::{SetupError, SyncError};
use crate::text::error_text;

/// What the rendered settings are compared against.
#[derive(Debug, Clone, Copy)]
pub enum Against<'a> {
    /// The ECDS file ([`envoy::ECDS_FILE_NAME`]) in this directory.
    EcdsDir(&'a Path),
    /// The filter configuration on Kong's route, read through the Admin API.
    Kong(&'a KongTarget),
    /// The last revision the sidecar recorded as delivered to this target
    /// (`envoy`, `kong`): its belief, not what the gateway has.
    Record(&'a str),
}

/// The `sync --dry-run` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The report for stdout: what was compared, the findings, the diff.
    pub text: String,
    /// A sync would deliver something.
    pub changed: bool,
    /// The settings pass every check.
    pub valid: bool,
    /// Warnings about valid but risky settings (for stderr).
    pub warnings: Vec<String>,
}

/// What the gateway has: the document (without `revision`) and its description.
struct Current {
    document: Option<Value>,
    /// What was compared against (`… (revision r3-…)` when there is a document).
    label: String,
    /// Where nothing was found, for `nothing deployed {nowhere}`.
    nowhere: String,
}

/// Renders and validates the settings and diffs them against `against`.
pub async fn dry_run(
    client: &Client,
    against: Against<'_>,
    max_value_bytes: usize,
) -> Result<DryRun, SyncError> {
    let validator = Validator::new().map_err(SetupError::from)?;
    let mut rows = db::load_settings(client, max_value_bytes).await?;
    settings::strip_oversized(&mut rows, max_value_bytes);
    let (rendered, issues) = settings::render_parts(&rows, max_value_bytes);
    let validation = validator.validate_with(&rendered, &rendered.with_revision("r0"), issues);
    let current = current(client, against).await?;

    let mut text = format!("compared against: {}\n", current.label);
    if let Err(error) = &validation {
        let findings = error.lines();
        let _ = writeln!(
            text,
            "INVALID: {} finding(s); a sync would record a failed revision and deliver nothing:",
            findings.len()
        );
        for finding in findings {
            let _ = writeln!(text, "  - {finding}");
        }
    }
    let old_text = current.document.as_ref().map(pretty).unwrap_or_default();
    let new_text = pretty(&rendered.document);
    let changed = old_text != new_text;
    let nothing_deployed = current.document.is_none();
    if nothing_deployed {
        let verb = if validation.is_ok() {
            "would write"
        } else {
            "once valid, would write"
        };
        let _ = writeln!(text, "nothing deployed {}; {verb}:", current.nowhere);
    }
    if changed {
        let new_label = if validation.is_ok() {
            "rendered from current settings".to_owned()
        } else {
            "rendered from current settings (rows with findings left out)".to_owned()
        };
        let old_label = if nothing_deployed {
            "nothing deployed".to_owned()
        } else {
            current.label.clone()
        };
        text.push_str(&unified_diff(&old_text, &new_text, &old_label, &new_label));
    } else {
        let _ = writeln!(
            text,
            "no changes: the settings render to what {} has",
            current.label
        );
    }
    Ok(DryRun {
        text,
        changed,
        valid: validation.is_ok(),
        warnings: if validation.is_ok() {
            settings::warnings(&rendered)
        } else {
            Vec::new()
        },
    })
}

async fn current(client: &Client, against: Against<'_>) -> Result<Current, SyncError> {
    match against {
        Against::EcdsDir(dir) => {
            let file = dir.join(envoy::ECDS_FILE_NAME);
            let document = envoy::read_deployed(&file).map_err(SyncError::Gateway)?;
            let what = format!("the ECDS file {}", file.display());
            Ok(labelled(
                document,
                &what,
                format!("{what} (not there)"),
                format!("at {}", file.display()),
            ))
        }
        Against::Kong(kong) => {
            let document = kong.current_document().await.map_err(|error| {
                SyncError::Gateway(format!(
                    "cannot read the current configuration from Kong's Admin API: {}",
                    error_text(&error)
                ))
            })?;
            let what = format!(
                "Kong at {} (route `{}`)",
                kong.admin_label(),
                kong.layout.route_name
            );
            Ok(labelled(
                document,
                &what,
                format!("{what}: no tenant-guard filter there"),
                format!("on {what}"),
            ))
        }
        Against::Record(target) => {
            let deployed = db::latest_revision(client, target, true).await?;
            let document = deployed
                .as_ref()
                .and_then(|d| d.document.as_deref())
                .and_then(|text| serde_json::from_str(text).ok());
            let what = deployed
                .as_ref()
                .map(|d| {
                    format!(
                        "the sidecar's record of revision {} delivered to {target} \
                         (no --ecds-dir given, so not read from the gateway)",
                        d.id
                    )
                })
                .unwrap_or_default();
            Ok(labelled(
                document,
                &what,
                format!(
                    "the sidecar's records: no revision delivered to {target} \
                     (no --ecds-dir given, so not read from the gateway)"
                ),
                format!("to {target} according to the sidecar's records"),
            ))
        }
    }
}

/// Strips `revision` from `document` and names it in the label; `absent` and
/// `nowhere` describe the case without a document.
fn labelled(document: Option<Value>, what: &str, absent: String, nowhere: String) -> Current {
    match document {
        Some(mut document) => {
            let revision = match &mut document {
                Value::Object(map) => map.remove("revision"),
                _ => None,
            };
            let label = match revision.as_ref().and_then(Value::as_str) {
                Some(revision) => format!(
                    "{what} (revision {})",
                    crate::text::bounded_to(revision, 100)
                ),
                None => what.to_owned(),
            };
            Current {
                document: Some(document),
                label,
                nowhere,
            }
        }
        None => Current {
            document: None,
            label: absent,
            nowhere,
        },
    }
}

/// A unified diff of two plugin documents' texts (3 lines of context), as
/// every dry run shows it.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}

/// A document as its diffs show it: pretty JSON, ending in a newline.
pub fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
