//! Validation of a rendered document, twice: against the published JSON
//! Schema (draft 4, every finding) and then with the filter's own parser (its
//! first finding), each finding mapped back to the settings row that produced
//! the offending value.

use serde_json::Value;

use super::{Issue, Rendered, SettingsError};

/// The compiled draft-4 validator of the filter's published schema.
#[derive(Debug)]
pub struct Validator {
    schema: jsonschema::Validator,
}

impl Validator {
    pub fn new() -> Result<Self, SettingsError> {
        let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA)
            .map_err(|e| SettingsError::Schema(e.to_string()))?;
        let schema =
            jsonschema::draft4::new(&schema).map_err(|e| SettingsError::Schema(e.to_string()))?;
        Ok(Self { schema })
    }

    /// Validates `document_text` (the exact bytes to deliver) with the JSON
    /// Schema and then with the filter's parser; issues name the settings rows.
    pub fn validate(&self, rendered: &Rendered, document_text: &str) -> Result<(), SettingsError> {
        self.validate_with(rendered, document_text, Vec::new())
    }

    /// [`Self::validate`] adding the schema's findings to `issues` (those of
    /// [`super::render_parts`]), so one pass reports them all; the filter's parser,
    /// which stops at its first finding, runs only when there is none.
    pub fn validate_with(
        &self,
        rendered: &Rendered,
        document_text: &str,
        mut issues: Vec<Issue>,
    ) -> Result<(), SettingsError> {
        let instance: Value = serde_json::from_str(document_text).map_err(|e| {
            SettingsError::one(None, "", format!("rendered document is not JSON: {e}"))
        })?;
        // A "none of the alternatives" finding says little; the filter's
        // parser, on the same value, says what is wrong with it.
        let parsed = std::cell::OnceCell::new();
        let precise = |path: &str| {
            let error = parsed
                .get_or_init(|| tenant_guard_core::config::parse(document_text.as_bytes()).err())
                .as_ref()?;
            let below = error.path == path || error.path.starts_with(&format!("{path}."));
            below.then(|| error.message.clone())
        };
        issues.extend(self.schema.iter_errors(&instance).map(|error| {
            let segments = pointer_segments(error.instance_path.as_str());
            let path = segments.join(".");
            let alternatives = matches!(
                error.kind,
                jsonschema::error::ValidationErrorKind::OneOfNotValid
                    | jsonschema::error::ValidationErrorKind::OneOfMultipleValid
                    | jsonschema::error::ValidationErrorKind::AnyOf
            );
            let message = alternatives
                .then(|| precise(&path))
                .flatten()
                .unwrap_or_else(|| error.to_string());
            Issue {
                origin: rendered.origin_of(&segments),
                path,
                message,
                check: "schema",
            }
        }));
        if !issues.is_empty() {
            return Err(SettingsError::Invalid(issues));
        }
        tenant_guard_core::config::parse(document_text.as_bytes()).map_err(|error| {
            SettingsError::Invalid(vec![Issue {
                origin: rendered.origin_of_dotted(&error.path),
                path: error.path.clone(),
                message: error.message.clone(),
                check: "filter",
            }])
        })?;
        Ok(())
    }
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}
