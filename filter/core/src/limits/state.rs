//! One stored value holding the state of every limit that counts the same
//! thing (a tenant, or one key value inside it), so that one compare-and-swap
//! admits or refuses them together and a refusal writes nothing.
//!
//! The payload (after the key tag, `crate::store::locate`) is a list of
//! 20-byte entries, little-endian: the limit's id (`LimitPolicy::id`, 4
//! bytes) and two words. A rate limit keeps its GCRA theoretical arrival time
//! (ns) and the emission interval it was computed with (ns); a calendar quota
//! the end of its window (Unix ns) and the requests counted in it. Both
//! first words are times: past them, an entry holds nothing. Anything else
//! reads as absent.

use crate::config::{LimitPolicy, Window};
use crate::ratelimit::{self, State, Verdict};

use super::calendar;

const ENTRY_LEN: usize = 20;
/// Entries one value holds at most; idle ones make room for new ones.
pub const MAX_ENTRIES: usize = 64;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// One limit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    pub first: u64,
    pub second: u64,
}

impl Entry {
    /// Nothing to remember: a rate limit whose bucket is full again, a
    /// quota whose window is over.
    pub fn idle(&self, now_ns: u64) -> bool {
        self.first <= now_ns
    }
}

/// The entries of a stored value; `None` for a value that is not such a list.
pub fn decode(payload: &[u8]) -> Option<Vec<Entry>> {
    if !payload.len().is_multiple_of(ENTRY_LEN) || payload.len() / ENTRY_LEN > MAX_ENTRIES {
        return None;
    }
    let word = |bytes: &[u8]| bytes.try_into().map(u64::from_le_bytes).ok();
    payload
        .chunks_exact(ENTRY_LEN)
        .map(|chunk| {
            let (id, rest) = chunk.split_at(4);
            let (first, second) = rest.split_at(8);
            Some(Entry {
                id: u32::from_le_bytes(id.try_into().ok()?),
                first: word(first)?,
                second: word(second)?,
            })
        })
        .collect()
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(entries));
    encode_into(entries, &mut out);
    out
}

/// The bytes [`encode_into`] appends.
pub fn encoded_len(entries: &[Entry]) -> usize {
    entries.len() * ENTRY_LEN
}

/// Appends the encoded entries to `out`.
pub fn encode_into(entries: &[Entry], out: &mut Vec<u8>) {
    for entry in entries {
        out.extend_from_slice(&entry.id.to_le_bytes());
        out.extend_from_slice(&entry.first.to_le_bytes());
        out.extend_from_slice(&entry.second.to_le_bytes());
    }
}

/// `window` at `percent` of its size (a gateway enforcing its share alone
/// while the cluster store is away); at least one request.
pub fn share(window: Window, percent: u8) -> Window {
    if percent >= 100 {
        return window;
    }
    let part = |value: u64| (value.saturating_mul(u64::from(percent)) / 100).max(1);
    match window {
        Window::Rate(rate) => Window::Rate(crate::ratelimit::RateParams::new(
            part(rate.requests),
            rate.per_seconds,
            part(rate.burst),
        )),
        Window::Calendar { period, requests } => Window::Calendar {
            period,
            requests: part(requests),
        },
    }
}

/// Decides one request taking `cost` from `policy` (at `percent` of its
/// size) given its stored entry; the verdict and the entry to store if it
/// is admitted.
pub fn decide(
    policy: &LimitPolicy,
    stored: Option<Entry>,
    now_ns: u64,
    percent: u8,
    cost: u64,
) -> (Verdict, Entry) {
    match share(policy.window, percent) {
        Window::Rate(rate) => {
            let state = stored.map(|entry| State {
                tat_ns: entry.first,
                emission_ns: entry.second,
            });
            let (verdict, tat) = ratelimit::decide_cost(&rate, state, now_ns, cost);
            let entry = Entry {
                id: policy.id,
                first: tat,
                second: rate.emission_ns(),
            };
            (verdict, entry)
        }
        Window::Calendar { period, requests } => {
            let now = now_ns / NANOS_PER_SECOND;
            let span = calendar::span(period, now);
            let end_ns = span.end.saturating_mul(NANOS_PER_SECOND);
            let used = stored
                .filter(|entry| entry.first == end_ns)
                .map_or(0, |entry| entry.second);
            let left = span.seconds_left(now);
            let after = used.saturating_add(cost.max(1));
            let verdict = if after <= requests {
                Verdict {
                    allowed: true,
                    remaining: requests - after,
                    reset_seconds: left,
                    retry_after_seconds: 0,
                }
            } else {
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_seconds: left,
                    retry_after_seconds: left,
                }
            };
            let entry = Entry {
                id: policy.id,
                first: end_ns,
                second: after,
            };
            (verdict, entry)
        }
    }
}

/// Gives back what an admitted entry took (`cost`; a request refused by a
/// limit stored elsewhere, after this one was written).
pub fn undo(policy: &LimitPolicy, entry: &mut Entry, cost: u64) {
    match policy.window {
        Window::Rate(_) => {
            entry.first = entry
                .first
                .saturating_sub(entry.second.saturating_mul(cost.max(1)))
        }
        Window::Calendar { .. } => entry.second = entry.second.saturating_sub(cost.max(1)),
    }
}

/// Takes `units` more from `policy` after the fact (usage the upstream
/// reported), whatever is left: a rate's backlog grows past its burst (the
/// next requests wait), a quota's count past its requests (refused until
/// the window ends). The entry to store.
pub fn debit(policy: &LimitPolicy, stored: Option<Entry>, now_ns: u64, units: u64) -> Entry {
    match policy.window {
        Window::Rate(rate) => {
            let state = stored.map(|entry| State {
                tat_ns: entry.first,
                emission_ns: entry.second,
            });
            let tat = state
                .map(|state| ratelimit::rescaled_tat(&rate, state, now_ns))
                .unwrap_or(0)
                .max(now_ns);
            Entry {
                id: policy.id,
                first: tat.saturating_add(rate.emission_ns().saturating_mul(units)),
                second: rate.emission_ns(),
            }
        }
        Window::Calendar { period, .. } => {
            let span = calendar::span(period, now_ns / NANOS_PER_SECOND);
            let end_ns = span.end.saturating_mul(NANOS_PER_SECOND);
            let used = stored
                .filter(|entry| entry.first == end_ns)
                .map_or(0, |entry| entry.second);
            Entry {
                id: policy.id,
                first: end_ns,
                second: used.saturating_add(units),
            }
        }
    }
}

/// Puts `entry` into `entries` (replacing its earlier state); drops idle
/// entries of other limits when the value would hold more than [`MAX_ENTRIES`].
/// `false` when it is full of live entries.
pub fn upsert(entries: &mut Vec<Entry>, entry: Entry, now_ns: u64) -> bool {
    if let Some(slot) = entries.iter_mut().find(|known| known.id == entry.id) {
        *slot = entry;
        return true;
    }
    if entries.len() >= MAX_ENTRIES {
        entries.retain(|known| !known.idle(now_ns));
        if entries.len() >= MAX_ENTRIES {
            return false;
        }
    }
    entries.push(entry);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn entries_round_trip_and_garbage_reads_as_absent() {
        let entries = vec![
            Entry {
                id: 7,
                first: u64::MAX,
                second: 3,
            },
            Entry {
                id: 9,
                first: 1,
                second: 0,
            },
        ];
        assert_eq!(decode(&encode(&entries)), Some(entries));
        assert_eq!(decode(&[1, 2, 3]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
        assert_eq!(decode(&[0; ENTRY_LEN * (MAX_ENTRIES + 1)]), None);
    }

    #[test]
    fn a_full_value_makes_room_from_idle_entries_only() {
        let live = |id| Entry {
            id,
            first: u64::MAX,
            second: 1,
        };
        let mut entries: Vec<Entry> = (0..MAX_ENTRIES as u32).map(live).collect();
        assert!(!upsert(&mut entries, live(1000), 10));
        entries[3].first = 5;
        assert!(upsert(&mut entries, live(1000), 10));
        assert_eq!(entries.len(), MAX_ENTRIES);
        assert!(entries.iter().any(|e| e.id == 1000));
    }
}
