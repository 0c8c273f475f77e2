//! Sampling: how the two times of a case are taken from an adapter's timers, and the seeds of the
//! random inputs. The caller warms up first; every sample rotates to the next input sets.

use std::time::Instant;

use w4a8_core::{Error, Result};

use crate::config::RunConfig;
use crate::data::SplitMix64;
use crate::stats::Summary;

/// A seed for one piece of data: (run seed, shape, what, set) mixed through SplitMix64.
pub fn seed_for(cfg: &RunConfig, n: usize, k: usize, what: u64, set: usize) -> u64 {
    let mut r = SplitMix64::with_stream(
        cfg.seed ^ ((n as u64) << 32) ^ k as u64,
        what.wrapping_mul(1 << 20) ^ set as u64,
    );
    r.next_u64()
}

/// Takes samples `one(0)`, `one(1)`, … : `cfg.iters` of them, or fewer once `cfg.min_iters` are in
/// and `cfg.max_case_seconds` of wall time have passed.
fn sample(cfg: &RunConfig, mut one: impl FnMut(usize) -> Result<f64>) -> Result<Summary> {
    let start = Instant::now();
    let mut times = Vec::with_capacity(cfg.iters.max(1));
    for i in 0..cfg.iters.max(1) {
        times.push(one(i)?);
        if times.len() >= cfg.min_iters && start.elapsed().as_secs_f64() > cfg.max_case_seconds {
            break;
        }
    }
    Summary::of(&times).ok_or_else(|| Error::InvalidValue {
        what: "timer output",
        index: times.iter().position(|t| !t.is_finite() || *t < 0.0).unwrap_or(0),
        reason: format!("the timer returned a negative or non-finite time among {times:?}"),
    })
}

/// Kernel time: each sample is `batch(first_set, cfg.batch)`, the mean device time per run of
/// `cfg.batch` runs queued back to back; consecutive samples continue the rotation through `sets`
/// input sets where the previous one stopped (after the `cfg.warmup` warm-up runs).
pub fn kernel_time(
    cfg: &RunConfig,
    sets: usize,
    mut batch: impl FnMut(usize, usize) -> Result<f64>,
) -> Result<Summary> {
    let runs = cfg.batch.max(1);
    sample(cfg, |i| batch((cfg.warmup + i * runs) % sets.max(1), runs))
}

/// Whole-call time: each sample is `call(set)`, the host clock around one call on set `i mod sets`
/// and the wait for its completion.
pub fn call_time(
    cfg: &RunConfig,
    sets: usize,
    mut call: impl FnMut(usize) -> Result<f64>,
) -> Result<Summary> {
    sample(cfg, |i| call(i % sets.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_rotate_through_every_set_and_stop_on_budget() {
        let cfg = RunConfig { warmup: 1, iters: 4, min_iters: 2, batch: 3, ..RunConfig::quick() };
        let mut seen = Vec::new();
        let s = kernel_time(&cfg, 5, |first, runs| {
            seen.push((first, runs));
            Ok(1e-3 * (first + 1) as f64)
        })
        .unwrap();
        // Runs 1‥3, 4‥6, 7‥9, 10‥12 (mod 5): each batch starts where the last one stopped.
        assert_eq!(seen, [(1, 3), (4, 3), (2, 3), (0, 3)]);
        assert_eq!(s.runs, 4);
        let mut calls = Vec::new();
        call_time(&cfg, 3, |set| {
            calls.push(set);
            Ok(1.0)
        })
        .unwrap();
        assert_eq!(calls, [0, 1, 2, 0]);
        // With no budget left, the minimum number of samples is still taken, and no more.
        let tight = RunConfig { max_case_seconds: 0.0, ..cfg };
        assert_eq!(call_time(&tight, 1, |_| Ok(1.0)).unwrap().runs, 2);
        assert!(call_time(&tight, 1, |_| Ok(f64::NAN)).is_err());
    }
}
