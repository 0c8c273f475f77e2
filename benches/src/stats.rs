//! Run statistics: medians of device times, and how many rotating input sets defeat the L2 cache.

use serde::{Deserialize, Serialize};

/// Summary of repeated timings of one operation, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of timed runs (after warm-up).
    pub runs: usize,
    /// Median: the figure every ratio is computed from.
    pub median_s: f64,
    /// Fastest run.
    pub min_s: f64,
    /// Slowest run.
    pub max_s: f64,
    /// Median absolute deviation relative to the median: a noise gauge.
    pub mad_rel: f64,
}

impl Summary {
    /// Summarizes `times` (seconds); `None` when empty or when any time is not finite and positive.
    pub fn of(times: &[f64]) -> Option<Summary> {
        if times.is_empty() || times.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return None;
        }
        let mut t = times.to_vec();
        t.sort_by(f64::total_cmp);
        let median_s = median_sorted(&t);
        let mut dev: Vec<f64> = t.iter().map(|x| (x - median_s).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad_rel = if median_s > 0.0 { median_sorted(&dev) / median_s } else { 0.0 };
        Some(Summary { runs: t.len(), median_s, min_s: t[0], max_s: t[t.len() - 1], mad_rel })
    }
}

fn median_sorted(t: &[f64]) -> f64 {
    let n = t.len();
    if n % 2 == 1 { t[n / 2] } else { 0.5 * (t[n / 2 - 1] + t[n / 2]) }
}

/// How many input sets to rotate through so that together they exceed `rotate_bytes` (a multiple of
/// the L2 size): at least 2, so that consecutive runs never reuse the same buffers, and at most
/// `max_sets`, which bounds memory for tiny shapes. A set larger than `rotate_bytes` still gets 2.
pub fn rotation_sets(set_bytes: usize, rotate_bytes: usize, max_sets: usize) -> usize {
    rotate_bytes.div_ceil(set_bytes.max(1)).clamp(2, max_sets.max(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_outliers() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 100.0, 2.5]).unwrap();
        assert_eq!((s.median_s, s.min_s, s.max_s, s.runs), (2.5, 1.0, 100.0, 5));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median_s, 2.5);
        // deviations 1.5, 0.5, 0.5, 97.5, 0 → sorted 0, .5, .5, 1.5, 97.5 → MAD 0.5
        assert!((s.mad_rel - 0.5 / 2.5).abs() < 1e-12);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn rotation_exceeds_l2_within_bounds() {
        // 8.4 MB sets (4096×4096 int4 + scales) → 12 sets for 100 MB.
        assert_eq!(rotation_sets(8_400_000, 100_000_000, 64), 12);
        assert!(rotation_sets(8_400_000, 100_000_000, 64) * 8_400_000 >= 100_000_000);
        assert_eq!(rotation_sets(235_000_000, 100_000_000, 64), 2);
        assert_eq!(rotation_sets(10, 100_000_000, 16), 16);
        assert_eq!(rotation_sets(0, 100, 1), 2);
    }
}
