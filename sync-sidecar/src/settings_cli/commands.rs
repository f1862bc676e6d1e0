//! The `settings` subcommands: reads print rows with their ETags; writes run
//! in one transaction that plans, validates the resulting set, and writes only
//! when every check passed (`--dry-run`: a read-only session that prints and
//! rolls back).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use serde_json::Value;
use tokio_postgres::{Client, Transaction};

use super::address::Address;
use super::args::{ApplyArgs, ExportArgs, GetArgs, ListArgs, SetArgs, UnsetArgs, WriteArgs};
use super::file::{Format, SettingsFile};
use super::plan::{document_diff, Change, Checked, Desired, Plan, Planned};
use super::store::{self, Stored};
use super::SettingsCliError;
use crate::cli::{emit, emit_err, CliError};
use crate::db::DbError;
use crate::settings::{SettingRow, Validator};
use crate::text::bounded_to;

/// Longest value shown by `list`.
const LIST_VALUE_BYTES: usize = 200;

pub async fn list(client: &Client, args: &ListArgs) -> Result<(), CliError> {
    let rows: Vec<Stored> = store::load(client)
        .await?
        .into_iter()
        .filter(|row| {
            args.tenant
                .as_ref()
                .is_none_or(|t| *t == row.address.tenant)
        })
        .collect();
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            [
                row.address.to_string(),
                row.key.clone(),
                row.etag.clone(),
                row.updated_by.clone(),
                bounded_to(&row.text, LIST_VALUE_BYTES).into_owned(),
            ]
        })
        .collect();
    let header = ["TARGET", "KEY", "ETAG", "UPDATED_BY", "VALUE"].map(str::to_owned);
    let mut widths = [0usize; 4];
    for line in std::iter::once(&header).chain(&table) {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for line in std::iter::once(&header).chain(&table) {
        for (width, cell) in widths.iter().zip(line) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.push_str(&line[4]);
        text.push('\n');
    }
    emit(&text)
}

pub async fn get(client: &Client, args: &GetArgs) -> Result<(), CliError> {
    let address = Address::parse(&args.target).map_err(SettingsCliError::Usage)?;
    let row = store::load(client)
        .await?
        .into_iter()
        .find(|row| row.address == address && row.key == args.key)
        .ok_or_else(|| SettingsCliError::NotFound {
            target: address.to_string(),
            key: args.key.clone(),
        })?;
    emit(&format!(
        "target: {}\nkey: {}\nvalue: {}\netag: {}\nupdated_by: {}\nupdated_at: {}\n",
        row.address, row.key, row.text, row.etag, row.updated_by, row.updated_at
    ))
}

pub async fn export(client: &Client, args: &ExportArgs, schema: &str) -> Result<(), CliError> {
    let rows = store::load(client).await?;
    let count = rows.len();
    let file = SettingsFile::from_entries(
        rows.into_iter()
            .map(|row| (row.address, row.key, row.value)),
    );
    let to_stdout = args.output.as_deref().is_none_or(|p| p == Path::new("-"));
    let format = Format::for_path(args.format, args.output.as_deref());
    let header = format!(
        "tenant-guard settings of schema `{schema}` ({count} rows).\n\
         `tenant-guard-sidecar settings apply -f FILE [--dry-run] [--prune]` makes the table equal to this file."
    );
    let path_label = || {
        args.output
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".to_owned())
    };
    let text = file
        .render(format, &header)
        .map_err(|source| SettingsCliError::File {
            path: path_label(),
            source,
        })?;
    match args.output.as_deref() {
        Some(path) if !to_stdout => {
            std::fs::write(path, text).map_err(|source| SettingsCliError::Write {
                path: path.display().to_string(),
                source,
            })?;
            emit_err(&format!("exported {count} rows to {}\n", path.display()));
            Ok(())
        }
        _ => emit(&text),
    }
}

fn validator() -> Result<Validator, SettingsCliError> {
    Validator::new().map_err(|e| SettingsCliError::Schema(e.to_string()))
}

fn usage(message: String) -> CliError {
    SettingsCliError::Usage(message).into()
}

fn check_key(key: &str) -> Result<(), CliError> {
    if key.is_empty() {
        return Err(usage("KEY is empty".to_owned()));
    }
    warn_foreign_key(key);
    Ok(())
}

/// The sidecar reads only `gateway.` keys and ignores the rest, so a
/// misspelt prefix would pass every check: say so.
fn warn_foreign_key(key: &str) {
    if !key.starts_with(crate::settings::KEY_PREFIX) {
        emit_err(&format!(
            "warning: `{}` does not start with `{}`: the sidecar ignores it (stored as is)\n",
            bounded_to(key, 100),
            crate::settings::KEY_PREFIX
        ));
    }
}

pub async fn set(
    client: &mut Client,
    args: &SetArgs,
    max_value_bytes: usize,
) -> Result<(), CliError> {
    let address = Address::parse(&args.target).map_err(usage)?;
    check_key(&args.key)?;
    let value: Value = serde_json::from_str(&args.value).map_err(|e| {
        usage(format!(
            "VALUE `{}` is not JSON ({e}); a string needs its quotes, e.g. '\"shadow\"'",
            bounded_to(&args.value, 100)
        ))
    })?;
    one_row(
        client,
        address,
        &args.key,
        Some(value),
        args.if_match.as_deref(),
        &args.write,
        max_value_bytes,
    )
    .await
}

pub async fn unset(
    client: &mut Client,
    args: &UnsetArgs,
    max_value_bytes: usize,
) -> Result<(), CliError> {
    let address = Address::parse(&args.target).map_err(usage)?;
    check_key(&args.key)?;
    one_row(
        client,
        address,
        &args.key,
        None,
        args.if_match.as_deref(),
        &args.write,
        max_value_bytes,
    )
    .await
}

/// A planned and checked transaction: the stored rows, the plan, and the
/// settings before and after it.
struct Prepared<'a> {
    tx: Transaction<'a>,
    current: Vec<Stored>,
    plan: Plan,
    before: Checked,
    after: Checked,
}

/// Opens the transaction (locked unless a dry run), loads the rows and checks
/// both the current and the resulting settings set.
async fn prepare<'a>(
    client: &'a mut Client,
    desired: Desired,
    prune: bool,
    write: &WriteArgs,
    max_value_bytes: usize,
) -> Result<Prepared<'a>, CliError> {
    let validator = validator()?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    if !write.dry_run {
        store::prepare_write(&tx, &write.actor).await?;
    }
    let current = store::load(&tx).await?;
    let plan = Plan::new(&current, &desired, prune);
    let current_rows: Vec<SettingRow> = current.iter().map(Stored::to_row).collect();
    let before = Checked::new(&current_rows, &validator, max_value_bytes);
    let after = Checked::new(
        &plan.resulting_rows(&current, &write.actor),
        &validator,
        max_value_bytes,
    );
    Ok(Prepared {
        tx,
        current,
        plan,
        before,
        after,
    })
}

impl Prepared<'_> {
    /// The plugin-document diff, or a line saying it does not change.
    fn diff(&self) -> String {
        document_diff(&self.before.rendered, &self.after.rendered)
            .unwrap_or_else(|| "the plugin document would not change\n".to_owned())
    }

    /// Prints every finding to stderr; the refusal when there is any.
    fn refuse_if_invalid(&self, dry_run: bool) -> Result<(), CliError> {
        if self.after.is_valid() {
            // Only what this change introduces: the rest was said when it was written.
            let known = self.before.warnings();
            for warning in self
                .after
                .warnings()
                .into_iter()
                .filter(|w| !known.contains(w))
            {
                emit_err(&format!("warning: {}\n", crate::text::bounded(&warning)));
            }
            return Ok(());
        }
        for finding in &self.after.findings {
            emit_err(&format!("invalid: {finding}\n"));
        }
        if !self.before.is_valid() {
            emit_err(&format!(
                "note: the stored settings were already invalid ({} finding(s)); a sync delivers \
                 nothing until all are fixed (`settings apply` changes several rows at once)\n",
                self.before.findings.len()
            ));
        }
        Err(SettingsCliError::Invalid {
            count: self.after.findings.len(),
            dry_run,
        }
        .into())
    }

    fn etag_of(&self, address: &Address, key: &str) -> Option<&str> {
        self.current
            .iter()
            .find(|row| row.address == *address && row.key == key)
            .map(|row| row.etag.as_str())
    }
}

fn stale(address: &Address, key: &str, expected: &str, now: Option<&str>) -> CliError {
    SettingsCliError::Stale {
        target: address.to_string(),
        key: key.to_owned(),
        expected: expected.to_owned(),
        now: now.map_or_else(
            || "does not exist".to_owned(),
            |etag| format!("is at ETag {etag}"),
        ),
    }
    .into()
}

/// `set` (`value` given) or `unset` of one row.
async fn one_row(
    client: &mut Client,
    address: Address,
    key: &str,
    value: Option<Value>,
    if_match: Option<&str>,
    write: &WriteArgs,
    max_value_bytes: usize,
) -> Result<(), CliError> {
    let wanted = match value {
        Some(value) => store::normalize(&*client, &[value])
            .await?
            .into_iter()
            .next(),
        None => None,
    };
    let removing = wanted.is_none();
    let mut desired = Desired::new();
    desired.insert((address.clone(), key.to_owned()), wanted);
    let prepared = prepare(client, desired, false, write, max_value_bytes).await?;
    let current_etag = prepared.etag_of(&address, key).map(str::to_owned);
    let planned: Option<Planned> = prepared.plan.changes.first().cloned();

    if write.dry_run {
        if let Some(expected) = if_match {
            if current_etag.as_deref() != Some(expected) {
                return Err(stale(&address, key, expected, current_etag.as_deref()));
            }
        }
        let mut text = match &planned {
            Some(_) => format!(
                "dry run, nothing written; would change:\n{}",
                prepared.plan.describe()
            ),
            None => format!("dry run: {address} `{key}` would not change\n"),
        };
        if planned.is_some() {
            text.push_str(&prepared.diff());
        }
        emit(&text)?;
        return prepared.refuse_if_invalid(true);
    }
    prepared.refuse_if_invalid(false)?;

    let Some(planned) = planned else {
        if let Some(expected) = if_match {
            if current_etag.as_deref() != Some(expected) {
                return Err(stale(&address, key, expected, current_etag.as_deref()));
            }
        }
        return emit(&if removing {
            format!("unchanged: {address} `{key}` is not set; nothing to remove\n")
        } else {
            format!(
                "unchanged: {address} `{key}` already has this value (ETag {}); nothing written\n",
                current_etag.as_deref().unwrap_or("-")
            )
        });
    };
    let tx = &prepared.tx;
    let actor = write.actor.as_str();
    let done = match &planned.change {
        Change::Add { text, .. } => {
            if let Some(expected) = if_match {
                return Err(stale(&address, key, expected, None));
            }
            let etag = store::insert(tx, &address, key, text, actor).await?;
            format!(
                "added {address} `{key}` = {} (ETag {etag})\n",
                bounded_to(text, 200)
            )
        }
        Change::Update { old, text, .. } => {
            match store::update(tx, &address, key, text, actor, if_match).await? {
                Some(etag) => format!(
                    "changed {address} `{key}`: {} -> {} (ETag {etag})\n",
                    bounded_to(old, 200),
                    bounded_to(text, 200)
                ),
                None => {
                    let expected = if_match.unwrap_or_default();
                    return Err(stale(&address, key, expected, current_etag.as_deref()));
                }
            }
        }
        Change::Remove { old } => {
            if !store::delete(tx, &address, key, if_match).await? {
                let expected = if_match.unwrap_or_default();
                return Err(stale(&address, key, expected, current_etag.as_deref()));
            }
            format!("removed {address} `{key}` (was {})\n", bounded_to(old, 200))
        }
    };
    prepared.tx.commit().await.map_err(DbError::from)?;
    emit(&done)
}

/// The file's text and a label for messages (`-`: stdin).
fn read_input(path: &Path) -> Result<(String, String), SettingsCliError> {
    let label = path.display().to_string();
    let read = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map(|text| (label.clone(), text))
        .map_err(|source| SettingsCliError::Read {
            path: label,
            source,
        })
}

pub async fn apply(
    client: &mut Client,
    args: &ApplyArgs,
    max_value_bytes: usize,
) -> Result<(), CliError> {
    let (label, text) = read_input(&args.file)?;
    let format = Format::for_path(args.format, Some(&args.file));
    let file_error = |source| SettingsCliError::File {
        path: label.clone(),
        source,
    };
    let entries = SettingsFile::parse(&text, format)
        .and_then(|file| file.entries())
        .map_err(file_error)?;
    let values: Vec<Value> = entries.iter().map(|(_, _, value)| value.clone()).collect();
    let normalized = store::normalize(&*client, &values).await?;
    let desired: Desired = entries
        .into_iter()
        .zip(normalized)
        .map(|((address, key, _), wanted)| ((address, key), Some(wanted)))
        .collect();
    let prepared = prepare(client, desired, args.prune, &args.write, max_value_bytes).await?;
    let plan = &prepared.plan;
    for planned in &plan.changes {
        if !matches!(planned.change, Change::Remove { .. }) {
            warn_foreign_key(&planned.key.1);
        }
    }
    let (added, changed, removed) = plan.counts();
    let kept = if plan.kept > 0 {
        format!(
            "; {} row(s) not in the file kept (--prune removes them)",
            plan.kept
        )
    } else {
        String::new()
    };

    if args.write.dry_run {
        let text = if plan.is_empty() {
            format!("dry run: no changes, the table already matches {label}{kept}\n")
        } else {
            format!(
                "{}dry run, nothing written: {added} to add, {changed} to change, {removed} to remove{kept}\n{}",
                plan.describe(),
                prepared.diff()
            )
        };
        emit(&text)?;
        return prepared.refuse_if_invalid(true);
    }
    prepared.refuse_if_invalid(false)?;
    if plan.is_empty() {
        // No statement ran: no trigger fired, so no NOTIFY and no new revision.
        return emit(&format!(
            "no changes: the table already matches {label}{kept}\n"
        ));
    }
    let tx = &prepared.tx;
    let actor = args.write.actor.as_str();
    for planned in &plan.changes {
        let (address, key) = &planned.key;
        let etag = planned.etag.as_deref();
        // The table is locked since it was read: the ETags still hold, and
        // the checks say so should that ever change.
        let written = match &planned.change {
            Change::Add { text, .. } => {
                store::insert(tx, address, key, text, actor).await?;
                true
            }
            Change::Update { text, .. } => store::update(tx, address, key, text, actor, etag)
                .await?
                .is_some(),
            Change::Remove { .. } => store::delete(tx, address, key, etag).await?,
        };
        if !written {
            return Err(stale(address, key, etag.unwrap_or_default(), None));
        }
    }
    let described = plan.describe();
    prepared.tx.commit().await.map_err(DbError::from)?;
    emit(&format!(
        "{described}applied {label}: {added} added, {changed} changed, {removed} removed{kept}\n"
    ))
}
