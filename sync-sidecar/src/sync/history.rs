//! `history`: the recorded revisions as a text table, one line each.

use crate::db::Revision;
use crate::text::bounded_to;

/// `history` as a text table, newest first.
pub fn format_history(revisions: &[Revision]) -> String {
    let mut out = format!(
        "{:>5}  {:<22}  {:<7}  {:<10}  {:<18}  {:<16}  {}\n",
        "REV", "CREATED", "TARGET", "STATUS", "REVISION", "ACTORS", "CHANGES / NOTE"
    );
    for rev in revisions {
        let mut note = rev.changed_keys.join(", ");
        if let Some(to) = rev.rollback_of {
            note = format!("rollback to revision {to}");
        }
        if let Some(error) = &rev.error {
            // One line per revision: the full text is in tg_revisions.error.
            let error = bounded_to(&error.replace('\n', " "), 300).into_owned();
            note = if note.is_empty() {
                format!("error: {error}")
            } else {
                format!("{note}; error: {error}")
            };
        }
        out.push_str(&format!(
            "{:>5}  {:<22}  {:<7}  {:<10}  {:<18}  {:<16}  {}\n",
            rev.id,
            rev.created_at.get(..22).unwrap_or(&rev.created_at),
            rev.target,
            rev.status,
            rev.revision,
            rev.actors.join(","),
            note
        ));
    }
    out
}
