//! The summary statistics the reports print: median, (min, max), percentiles.

use std::time::Duration;

/// The median (the mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (sorted.get(n / 2 - 1).copied().unwrap_or(0.0)
                + sorted.get(n / 2).copied().unwrap_or(0.0))
                / 2.0
        }
    }
}

/// The `p`-quantile (0–1) of `sorted` latencies, in µs: the value at rank
/// round((n − 1) p); 0 when empty.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let index = (sorted.len().saturating_sub(1) as f64 * p).round() as usize;
    sorted
        .get(index)
        .map_or(0.0, |duration| duration.as_secs_f64() * 1e6)
}

/// `(min, max)`; `(∞, 0)` when empty.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    })
}
