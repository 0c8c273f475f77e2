//! Random benchmark inputs: deterministic, never zero, generated in parallel.
//!
//! Benchmarks must not time zeros (a kernel or a memory system may shortcut them) and must be
//! reproducible, so every generator takes a seed and splits its output into fixed-size chunks, each
//! with its own stream derived from (seed, chunk index): the result does not depend on the number of
//! threads.

use half::f16;
use rayon::prelude::*;
use w4a8_core::pack::words_per_row;
pub use w4a8_core::rng::SplitMix64;
use w4a8_core::{Granularity, MAX_GROUP_SCALE, QuantizedActivations, Result, W4A8Weights};

/// Elements per independently seeded chunk.
const CHUNK: usize = 1 << 16;

/// Top 32 bits of the next output (the better-mixed half).
fn next_u32(r: &mut SplitMix64) -> u32 {
    (r.next_u64() >> 32) as u32
}

/// Uniform integer in [0, n).
fn below(r: &mut SplitMix64, n: u64) -> u64 {
    r.int(0, n as i64 - 1) as u64
}

/// Fills `len` elements in parallel; element `i` comes from chunk `i / CHUNK`'s own stream.
fn fill<T: Copy + Default + Send>(len: usize, seed: u64, f: impl Fn(&mut SplitMix64) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64::with_stream(seed, c as u64);
        chunk.iter_mut().for_each(|v| *v = f(&mut rng));
    });
    out
}

/// Random non-zero int8 activations in [-127, 127] with per-token scales in [2⁻⁸, 2⁻⁶): what
/// [`w4a8_core::quantize::quantize_activations`] produces, without paying for it on huge M·K.
pub fn random_quantized_activations(m: usize, k: usize, seed: u64) -> Result<QuantizedActivations> {
    // 254 values: [-127, -1] ∪ [1, 127]; never 0, never -128.
    let values = fill(m * k, seed, |r| {
        let v = below(r, 254) as i16 - 127;
        (if v >= 0 { v + 1 } else { v }) as i8
    });
    let scales = fill(m, seed ^ 0x5CA1E, |r| r.range(1.0 / 256.0, 1.0 / 64.0));
    QuantizedActivations::new(m, k, values, scales)
}

/// Random int4 weights in canonical storage: every nibble uniform in [-8, 7], channel scales in
/// [2⁻⁹, 2⁻⁷), group scales uniform in [1, 16], no bias (LLaMA's linear layers have none).
pub fn random_weights(n: usize, k: usize, granularity: Granularity, seed: u64) -> Result<W4A8Weights> {
    let wpr = words_per_row(k);
    // Nibbles past K in a row's last word must be zero: mask them off.
    let tail_mask = if k.is_multiple_of(8) { u32::MAX } else { (1u32 << (4 * (k % 8))) - 1 };
    let mut qweight = fill(n * wpr, seed, next_u32);
    if tail_mask != u32::MAX {
        qweight.par_chunks_mut(wpr).for_each(|row| row[wpr - 1] &= tail_mask);
    }
    let channel_scales = fill(n, seed ^ 0xC4A7, |r| r.range(1.0 / 512.0, 1.0 / 128.0));
    let group_scales =
        fill(granularity.groups(k) * n, seed ^ 0x6A0F, |r| 1 + below(r, MAX_GROUP_SCALE as u64) as u8);
    W4A8Weights::new(n, k, granularity, qweight, channel_scales, group_scales, None)
}

/// Random f32 values uniform in ±[0.25, 1) (never zero), length `len`.
pub fn random_f32(len: usize, seed: u64) -> Vec<f32> {
    fill(len, seed, |r| {
        let v = r.range(0.25, 1.0);
        if next_u32(r) & 1 == 0 { v } else { -v }
    })
}

/// Random f16 values uniform in ±[0.25, 1) (never zero), length `len`.
pub fn random_f16(len: usize, seed: u64) -> Vec<f16> {
    fill(len, seed, |r| {
        let v = f16::from_f32(r.range(0.25, 1.0));
        if next_u32(r) & 1 == 0 { v } else { -v }
    })
}

/// Random non-zero int8 values in [-127, 127], length `len`.
pub fn random_i8(len: usize, seed: u64) -> Vec<i8> {
    fill(len, seed, |r| {
        let v = below(r, 254) as i16 - 127;
        (if v >= 0 { v + 1 } else { v }) as i8
    })
}

/// `count` distinct-enough output positions (row, column) of an M×N output to check: the four corners
/// (first and last rows and columns catch tail handling) and the rest uniformly at random.
pub fn sample_positions(m: usize, n: usize, count: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut out = vec![(0, 0), (0, n - 1), (m - 1, 0), (m - 1, n - 1)];
    out.dedup();
    let mut rng = SplitMix64::with_stream(seed, u64::MAX);
    while out.len() < count.max(4) {
        out.push((below(&mut rng, m as u64) as usize, below(&mut rng, n as u64) as usize));
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_thread_independent() {
        let a = random_f32(3 * CHUNK + 17, 7);
        let b = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| random_f32(3 * CHUNK + 17, 7));
        assert_eq!(a, b);
        assert_ne!(a, random_f32(3 * CHUNK + 17, 8));
    }

    #[test]
    fn data_is_never_zero() {
        assert!(random_f32(10_000, 1).iter().all(|&v| v != 0.0 && v.abs() < 1.0));
        assert!(random_f16(10_000, 1).iter().all(|&v| v.to_f32() != 0.0));
        let i = random_i8(100_000, 2);
        assert!(i.iter().all(|&v| v != 0 && v != i8::MIN));
        // Both extremes are drawn.
        assert!(i.contains(&127) && i.contains(&-127));
        let x = random_quantized_activations(5, 300, 3).unwrap();
        assert!(x.values().iter().all(|&v| v != 0) && x.scales().iter().all(|&s| s > 0.0));
    }

    #[test]
    fn random_weights_cover_the_format() {
        let w = random_weights(33, 256, Granularity::PerGroup { group_size: 128 }, 4).unwrap();
        let q = w.int4();
        for v in -8..=7 {
            assert!(q.contains(&v), "nibble {v} never drawn");
        }
        assert!(w.group_scales().contains(&1) && w.group_scales().contains(&16));
        // A K that is not a multiple of 8 has zero padding nibbles (W4A8Weights::new checks it).
        random_weights(3, 13, Granularity::PerChannel, 5).unwrap();
    }

    #[test]
    fn sample_positions_include_corners_and_stay_in_range() {
        let p = sample_positions(3, 1000, 64, 9);
        assert!(p.contains(&(0, 0)) && p.contains(&(2, 999)));
        assert!(p.iter().all(|&(r, c)| r < 3 && c < 1000));
        assert_eq!(sample_positions(1, 1, 64, 9), vec![(0, 0)]);
    }
}
