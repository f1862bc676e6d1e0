//! Usage the upstream reports after the response (`usage_header`, as LLM
//! APIs report tokens): each value parsed strictly, then what a request
//! used beyond the cost taken at admission is taken from the limits that
//! asked for it, whatever is left (a spent quota refuses the next request).
//!
//! A value is a decimal integer of 1–16 digits, at most the limit's
//! `usage_max`, sent once; anything else (a sign, a space inside, a second
//! header line, bytes that are not digits) debits nothing and is counted.

use crate::config::{CompiledConfig, MAX_USAGE_HEADERS};
use crate::ratelimit::CheckError;
use crate::store::{CasOutcome, SharedStore};
use crate::tenant::TenantId;

use super::admit::{group_key, groups, locate_group, Group, KeyHashes};
use super::state;
use crate::config::Applied;

/// The values of [`CompiledConfig::usage_headers`] a response carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// Per usage header: the value, `None` when absent.
    pub values: [Option<u64>; MAX_USAGE_HEADERS],
    /// Headers present but malformed (ignored).
    pub malformed: u8,
    /// Bit `i`: usage header `i` was present (it is removed from the response).
    pub present: u8,
}

impl Reported {
    /// Parses the raw header values (each the header's lines, in order;
    /// the glue hands over the first line and whether there were more).
    pub fn parse(raw: &[(Option<&[u8]>, bool)]) -> Self {
        let mut reported = Self::default();
        for (index, (slot, (value, repeated))) in reported.values.iter_mut().zip(raw).enumerate() {
            let Some(value) = value else { continue };
            reported.present |= 1u8 << index;
            match parse_value(value) {
                Some(units) if !repeated => *slot = Some(units),
                _ => reported.malformed = reported.malformed.saturating_add(1),
            }
        }
        reported
    }

    /// No usage header was present.
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }
}

/// A decimal integer of 1–16 ASCII digits (optional surrounding spaces or
/// tabs, which HTTP allows around a field value).
fn parse_value(raw: &[u8]) -> Option<u64> {
    let trimmed = crate::headers::trim_ows(raw);
    if trimmed.is_empty() || trimmed.len() > 16 || !trimmed.iter().all(u8::is_ascii_digit) {
        return None;
    }
    trimmed.iter().try_fold(0u64, |total, digit| {
        total.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// What a response's usage takes from one request's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debit {
    pub tenant: TenantId,
    pub applied: Applied,
    pub keys: KeyHashes,
    pub reported: Reported,
    pub now_unix_ns: u64,
}

impl Debit {
    /// What `policy` takes beyond its cost at admission, or nothing; `None`
    /// for a limit that asked for no usage, or whose value is over its
    /// `usage_max` (counted as malformed by the caller).
    pub fn units(&self, policy: &crate::config::LimitPolicy) -> Option<u64> {
        let usage = policy.usage?;
        let value = (*self.reported.values.get(usize::from(usage.header))?)?;
        if value > usage.max {
            return None;
        }
        Some(value.saturating_sub(self.applied.cost_of(policy)))
    }

    /// Reported values over the `usage_max` of a limit they were meant for.
    pub fn over_max(&self, config: &CompiledConfig) -> bool {
        config
            .tenant_settings(&self.tenant)
            .into_iter()
            .flat_map(|settings| settings.applied_policies(self.applied))
            .any(|policy| {
                policy.usage.is_some_and(|usage| {
                    self.reported
                        .values
                        .get(usize::from(usage.header))
                        .copied()
                        .flatten()
                        .is_some_and(|value| value > usage.max)
                })
            })
    }
}

/// Takes `debit` from shared data: each group that has limits with usage
/// to take, with a compare-and-swap (retried), never refused.
pub fn debit_local(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    debit: &Debit,
) -> Result<(), CheckError> {
    let Some(settings) = config.tenant_settings(&debit.tenant) else {
        return Ok(());
    };
    let (groups, _) = groups(settings, debit.applied, &debit.keys);
    let now = debit.now_unix_ns;
    for group in groups.iter().flatten() {
        let charged: Vec<(&crate::config::LimitPolicy, u64)> = settings
            .applied_policies(debit.applied)
            .filter(|policy| Group::of(policy, &debit.keys) == *group)
            .filter_map(|policy| Some((policy, debit.units(policy).filter(|u| *u > 0)?)))
            .collect();
        if charged.is_empty() {
            continue;
        }
        let key = group_key(config, &debit.tenant, *group);
        let mut written = false;
        for _ in 0..config.store.max_cas_retries {
            let located = locate_group(store, &key, now)?;
            let mut entries = located
                .payload()
                .and_then(state::decode)
                .unwrap_or_default();
            for (policy, units) in &charged {
                let stored = entries.iter().find(|entry| entry.id == policy.id).copied();
                let entry = state::debit(policy, stored, now, *units);
                // A value full of live limits keeps what it has: usage lost,
                // never a crash (MAX_ENTRIES is far above a scope's limits).
                let _ = state::upsert(&mut entries, entry, now);
            }
            let outcome = located.write_with(store, state::encoded_len(&entries), |out| {
                state::encode_into(&entries, out)
            })?;
            if outcome == CasOutcome::Written {
                written = true;
                break;
            }
        }
        if !written {
            return Err(CheckError::Contention {
                attempts: config.store.max_cas_retries,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn only_plain_integers_sent_once_are_usage() {
        let cases: [(&[u8], bool, Option<u64>); 14] = [
            (b"1834", false, Some(1834)),
            (b" 7\t", false, Some(7)),
            (b"0", false, Some(0)),
            (b"9999999999999999", false, Some(9_999_999_999_999_999)),
            (b"99999999999999999", false, None),
            (b"-5", false, None),
            (b"+5", false, None),
            (b"5 5", false, None),
            (b"0x10", false, None),
            (b"", false, None),
            (b"12\xff", false, None),
            (b"1e3", false, None),
            (b"12", true, None),
            (b"\xff\xfe", false, None),
        ];
        for (raw, repeated, expected) in cases {
            let reported = Reported::parse(&[(Some(raw), repeated)]);
            assert_eq!(reported.values[0], expected, "{raw:?}");
            assert_eq!(reported.malformed, u8::from(expected.is_none()), "{raw:?}");
        }
        assert!(Reported::parse(&[(None, false)]).is_empty());
    }
}
