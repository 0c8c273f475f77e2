//! What a run measures: shapes, token counts, granularities, and how many runs of each case are
//! timed. Plain data, recorded in the JSON beside the figures.

use serde::{Deserialize, Serialize};
use w4a8_core::Granularity;

use crate::shapes::{M_VALUES, QUICK_M_VALUES, Shape, llama_shapes, quick_shapes};

/// Everything that decides what a run measures. Recorded in the JSON beside the figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Weight shapes N×K.
    pub shapes: Vec<Shape>,
    /// Token counts M.
    pub m_values: Vec<usize>,
    /// W4A8 granularities, as printed (`per-channel`, `g128`, …).
    pub granularities: Vec<String>,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Timed samples per case, for each of the two times: kernel-time batches and whole calls
    /// (fewer if `max_case_seconds` runs out after `min_iters`).
    pub iters: usize,
    /// Timed samples always taken, whatever the time budget.
    pub min_iters: usize,
    /// Runs queued back to back per kernel-time sample; the sample is their mean.
    pub batch: usize,
    /// Stop sampling one time of a case after this much wall time once `min_iters` samples are in.
    pub max_case_seconds: f64,
    /// The rotating input sets of a case together hold at least this many bytes (≥ 2 × L2).
    pub rotate_bytes: usize,
    /// At most this many rotating sets (bounds memory for tiny shapes).
    pub max_sets: usize,
    /// Outputs checked against the reference per case.
    pub check_samples: usize,
    /// Bytes per device-to-device copy for the bandwidth ceiling.
    pub copy_bytes: usize,
    /// M = N = K of the f16 GEMM that measures the matrix peak.
    pub peak_size: usize,
    /// Seed of all random data.
    pub seed: u64,
    /// `--quick`: tiny shapes, few runs; timings labelled meaningless.
    pub quick: bool,
}

impl RunConfig {
    /// The full run of DESIGN.md: LLaMA-2 shapes, M from 1 to 4096, per-channel and g128.
    pub fn full() -> Self {
        RunConfig {
            shapes: llama_shapes(),
            m_values: M_VALUES.to_vec(),
            granularities: vec!["per-channel".into(), "g128".into()],
            warmup: 10,
            iters: 50,
            min_iters: 10,
            batch: 16,
            max_case_seconds: 2.0,
            rotate_bytes: 2 * 50 * 1_000_000,
            max_sets: 32,
            check_samples: 64,
            copy_bytes: 512 << 20,
            peak_size: 8192,
            seed: 0x5EED_04A8,
            quick: false,
        }
    }

    /// `--quick`: tiny shapes, three M values, a handful of runs; seconds on the CPU oracle even in a
    /// debug build.
    pub fn quick() -> Self {
        RunConfig {
            shapes: quick_shapes(),
            m_values: QUICK_M_VALUES.to_vec(),
            warmup: 1,
            iters: 5,
            min_iters: 3,
            batch: 2,
            max_case_seconds: 0.5,
            rotate_bytes: 1 << 20,
            max_sets: 3,
            check_samples: 32,
            copy_bytes: 8 << 20,
            peak_size: 128,
            quick: true,
            ..RunConfig::full()
        }
    }

    /// The granularities, parsed.
    pub fn parsed_granularities(&self) -> Result<Vec<Granularity>, String> {
        self.granularities.iter().map(|g| parse_granularity(g)).collect()
    }
}

/// Parses `per-channel` (or `pc`) and `gN` (N ∈ 32, 64, 128, 256).
pub fn parse_granularity(s: &str) -> Result<Granularity, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "per-channel" || t == "pc" || t == "channel" {
        return Ok(Granularity::PerChannel);
    }
    let g: usize = t
        .strip_prefix('g')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("granularity `{s}`: expected per-channel or g32/g64/g128/g256"))?;
    if !w4a8_core::GROUP_SIZES.contains(&g) {
        return Err(format!("granularity `{s}`: group size must be 32, 64, 128 or 256"));
    }
    Ok(Granularity::PerGroup { group_size: g })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_granularities() {
        assert_eq!(parse_granularity("per-channel"), Ok(Granularity::PerChannel));
        assert_eq!(parse_granularity("G64"), Ok(Granularity::PerGroup { group_size: 64 }));
        assert!(parse_granularity("g100").is_err());
        assert!(parse_granularity("x").is_err());
    }

    #[test]
    fn quick_config_parses_and_batches() {
        for c in [RunConfig::full(), RunConfig::quick()] {
            assert_eq!(c.parsed_granularities().unwrap().len(), 2);
            assert!(c.batch >= 2 && c.min_iters <= c.iters);
        }
    }
}
