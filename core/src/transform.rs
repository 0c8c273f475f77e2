//! What the activation quantizer does to a row before the per-token int8 rules: smoothing, then an
//! online Walsh–Hadamard rotation (QuaRot-style), both folded into the weights offline.
//!
//! ```text
//!   x (f16) ──► x' = f32(x) · smooth[k]        one rounded f32 product (absent: x' = x)
//!           ──► y  = x' · H_b, per block of b   log2(b) butterfly stages, f32 adds and subtracts
//!           ──► s_x = max|y| / 127, q = clamp(rne(y / s_x), −127, 127)
//! ```
//!
//! `H_b` is the *unnormalized* Sylvester Hadamard matrix of order b (entries ±1, b a power of two,
//! `H_1 = [1]`, `H_2b = [[H_b, H_b], [H_b, −H_b]]`), applied to each block of b consecutive
//! channels. Since `H_b H_bᵀ = b·I`, `x · Wᵀ = (x · H) · (W · H / b)ᵀ`: the weights absorb `H / b`
//! exactly (1/b is a power of two), and the online transform needs no irrational `1/√b`, only
//! additions and subtractions. The per-token scale `s_x` absorbs the factor √b in magnitude.
//!
//! The transform is computed in a fixed butterfly order, the same on every backend: stages
//! `h = 1, 2, 4, …, b/2`; at each stage every pair `(i, i + h)` of a block, `i` with bit h clear,
//! becomes `(u + v, u − v)`. Each element of each stage is one correctly rounded f32 addition or
//! subtraction of two values of the previous stage, so a backend that computes stage by stage with
//! correctly rounded adds (subnormals kept) matches the oracle bit for bit.

use half::f16;

use crate::error::{Error, Result};

/// The largest Hadamard block: one block of f32 fills 16 KiB, WebGPU's default workgroup memory,
/// which the online transform keeps a whole block in.
pub const MAX_HADAMARD_BLOCK: usize = 4096;

/// How activations are transformed before per-token quantization (see the module docs).
///
/// `ActivationTransform::default()` is the identity: no smoothing, no rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActivationTransform<'a> {
    /// Per-channel multiplier, length K (SmoothQuant/QQQ smoothing), applied first.
    pub smooth: Option<&'a [f32]>,
    /// Block size b of the online Walsh–Hadamard rotation applied after smoothing: a power of two
    /// in `2..=`[`MAX_HADAMARD_BLOCK`] that divides K. `None`: no rotation.
    pub hadamard_block: Option<usize>,
}

impl<'a> ActivationTransform<'a> {
    /// The identity transform.
    pub const NONE: ActivationTransform<'static> = ActivationTransform { smooth: None, hadamard_block: None };

    /// Smoothing only (what `quantize_activations(x, m, k, smooth)` applies).
    pub fn smoothed(smooth: Option<&'a [f32]>) -> Self {
        ActivationTransform { smooth, hadamard_block: None }
    }

    /// The same transform with the rotation block set (or removed with `None`).
    pub fn with_hadamard_block(self, hadamard_block: Option<usize>) -> Self {
        ActivationTransform { hadamard_block, ..self }
    }

    /// Checks the transform against K: the smoothing vector's length and finiteness, the block.
    pub fn check(&self, k: usize) -> Result<()> {
        if let Some(s) = self.smooth {
            crate::format::check_len("smoothing vector (K)", k, s.len())?;
            crate::format::check_finite("smoothing vector", s)?;
        }
        match self.hadamard_block {
            Some(b) => check_hadamard_block(b, k),
            None => Ok(()),
        }
    }

    /// Row `row` of the transformed activations, `xs` (length K) in, the transformed row out: x'
    /// then y. A non-finite x' is [`Error::NonFinite`] `"activations"` (the input itself) or
    /// `"smoothed activations"` (scaled to infinity); a finite x' that the rotation takes to ±inf
    /// (or NaN after an infinity) is `"rotated activations"`. Indices are flat (`row · K + k`).
    pub fn apply_row(&self, row: usize, xs: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let k = xs.len();
        out.clear();
        match self.smooth {
            Some(s) => out.extend(xs.iter().zip(s).map(|(&v, &s)| v * s)),
            None => out.extend_from_slice(xs),
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            let what = if xs[i].is_finite() { "smoothed activations" } else { "activations" };
            return Err(Error::NonFinite { what, index: row * k + i, value: out[i] });
        }
        if let Some(b) = self.hadamard_block {
            fwht_blocks(out, b);
            if let Some(i) = out.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: "rotated activations",
                    index: row * k + i,
                    value: out[i],
                });
            }
        }
        Ok(())
    }
}

/// The block a layer of input width `k` gets when a model is rotated by blocks of at most `max_block`:
/// `max_block`, or the largest power of two dividing K when that is smaller (K = 384 = 3 · 128 takes
/// blocks of up to 128, SmolLM2's K = 576 = 9 · 64 up to 64). Check the result with
/// [`check_hadamard_block`]: an odd K gives 1, which is no block.
pub fn block_for_width(max_block: usize, k: usize) -> usize {
    max_block.min(1 << k.trailing_zeros().min(usize::BITS - 1))
}

/// Checks a Hadamard block size: a power of two in `2..=`[`MAX_HADAMARD_BLOCK`] that divides K.
/// Anything else is [`Error::InvalidValue`] saying which rule it breaks.
pub fn check_hadamard_block(b: usize, k: usize) -> Result<()> {
    let reason = if !b.is_power_of_two() || b < 2 {
        format!("{b} is not a power of two ≥ 2")
    } else if b > MAX_HADAMARD_BLOCK {
        format!("{b} exceeds the largest block, {MAX_HADAMARD_BLOCK}")
    } else if !k.is_multiple_of(b) {
        format!("{b} does not divide K = {k}")
    } else {
        return Ok(());
    };
    Err(Error::InvalidValue { what: "Hadamard block", index: 0, reason })
}

/// `y ← y · H_b` on each block of b consecutive elements (y.len() a multiple of b, b a power of two),
/// in the fixed butterfly order of the module docs: stages h = 1, 2, …, b/2, pairs `(i, i + h)` with
/// bit h of i clear becoming `(u + v, u − v)`, one rounded f32 operation each.
pub fn fwht_blocks(y: &mut [f32], b: usize) {
    debug_assert!(b.is_power_of_two() && y.len().is_multiple_of(b));
    for block in y.chunks_exact_mut(b) {
        let mut h = 1;
        while h < b {
            // Pairs (i, i + h): i runs over the first half of every 2h-run.
            for run in block.chunks_exact_mut(2 * h) {
                let (lo, hi) = run.split_at_mut(h);
                for (u, v) in lo.iter_mut().zip(hi) {
                    let (a, c) = (*u, *v);
                    *u = a + c;
                    *v = a - c;
                }
            }
            h *= 2;
        }
    }
}

/// The f64 counterpart of [`fwht_blocks`] (the offline weight and Hessian folds).
pub fn fwht_blocks_f64(y: &mut [f64], b: usize) {
    debug_assert!(b.is_power_of_two() && y.len().is_multiple_of(b));
    for block in y.chunks_exact_mut(b) {
        let mut h = 1;
        while h < b {
            for run in block.chunks_exact_mut(2 * h) {
                let (lo, hi) = run.split_at_mut(h);
                for (u, v) in lo.iter_mut().zip(hi) {
                    let (a, c) = (*u, *v);
                    *u = a + c;
                    *v = a - c;
                }
            }
            h *= 2;
        }
    }
}

/// The error the oracle's quantizer returns for these f16 activations under `t`, if any, found on
/// the host for a backend that checks before it launches (wgpu) or after its kernel flagged a
/// non-finite value (CUDA). Rows are scanned in order, so the first failing row decides, as in the
/// oracle. Shapes and `t` must already be checked.
///
/// Cheap on the common path: a rotation can only overflow a row whose `b · max|x'|` exceeds
/// `f32::MAX` (each butterfly output is at most twice the previous stage's largest magnitude, and
/// round-to-nearest is monotonic, so the stage-s values stay ≤ 2^s · max|x'| while that is finite);
/// only such rows are transformed here.
pub fn first_transform_error(x: &[f16], m: usize, k: usize, t: &ActivationTransform<'_>) -> Option<Error> {
    let mut row_f32 = Vec::new();
    let mut out = Vec::new();
    for (row, xs) in x.chunks_exact(k).take(m).enumerate() {
        let mut absmax = 0.0f32;
        for (i, &v) in xs.iter().enumerate() {
            let raw = v.to_f32();
            let value = t.smooth.map_or(raw, |s| raw * s[i]);
            if !value.is_finite() {
                let what = if raw.is_finite() { "smoothed activations" } else { "activations" };
                return Some(Error::NonFinite { what, index: row * k + i, value });
            }
            absmax = absmax.max(value.abs());
        }
        if let Some(b) = t.hadamard_block
            && b as f64 * absmax as f64 > f32::MAX as f64
        {
            row_f32.clear();
            row_f32.extend(xs.iter().map(|v| v.to_f32()));
            if let Err(e) = t.apply_row(row, &row_f32, &mut out) {
                return Some(e);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H_b by Sylvester's construction, as ±1 in f64.
    fn sylvester(b: usize) -> Vec<f64> {
        (0..b * b)
            .map(|i| if ((i / b) & (i % b)).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 })
            .collect()
    }

    #[test]
    fn butterflies_compute_the_sylvester_product() {
        let mut rng = crate::rng::SplitMix64::new(3);
        for b in [2, 4, 8, 64, 512] {
            let h = sylvester(b);
            let x: Vec<f32> = (0..3 * b).map(|_| rng.range(-2.0, 2.0)).collect();
            let mut y = x.clone();
            fwht_blocks(&mut y, b);
            for (blk, (xb, yb)) in x.chunks(b).zip(y.chunks(b)).enumerate() {
                for j in 0..b {
                    let want: f64 = (0..b).map(|i| xb[i] as f64 * h[i * b + j]).sum();
                    let tol = 1e-5 * (b as f64);
                    assert!(
                        (yb[j] as f64 - want).abs() <= tol,
                        "b={b} block {blk} j={j}: {} vs {want}",
                        yb[j]
                    );
                }
            }
        }
    }

    #[test]
    fn a_small_example_by_hand() {
        // [a, b, c, d] · H_4: stage 1 (a+b, a−b, c+d, c−d), stage 2 (a+b+c+d, a−b+c−d, a+b−c−d, a−b−c+d).
        let mut y = [1.0f32, 2.0, 4.0, 8.0, 3.0, 0.0, 0.0, -3.0];
        fwht_blocks(&mut y, 4);
        assert_eq!(y, [15.0, -5.0, -9.0, 3.0, 0.0, 6.0, 6.0, 0.0]);
        // The order is fixed: stage 1 rounds 1 + 2^-24 to 1 before stage 2 adds −1 (the other
        // order, (x0 + x2) + (x1 + x3), would give 2^-24).
        let mut z = [1.0f32, 2f32.powi(-24), -1.0, 0.0];
        fwht_blocks(&mut z, 4);
        assert_eq!(z[0], 0.0);
    }

    #[test]
    fn blocks_are_checked() {
        for (b, k) in [(0, 8), (1, 8), (3, 9), (6, 12), (8192, 8192), (8, 12)] {
            assert!(
                matches!(check_hadamard_block(b, k), Err(Error::InvalidValue { what: "Hadamard block", .. })),
                "b={b} k={k}"
            );
        }
        for (b, k) in [(2, 2), (4, 12), (4096, 8192), (128, 384)] {
            check_hadamard_block(b, k).unwrap();
        }
    }

    #[test]
    fn an_overflowing_rotation_is_found_on_the_host() {
        let k = 4;
        let x = vec![f16::MAX; 2 * k];
        let smooth = [2e33f32; 4]; // x' = 1.3e38 is finite; 4 · x' is not
        let t = ActivationTransform { smooth: Some(&smooth), hadamard_block: Some(4) };
        match first_transform_error(&x, 2, k, &t) {
            Some(Error::NonFinite { what: "rotated activations", index: 0, value }) => {
                assert!(value.is_infinite())
            }
            other => panic!("{other:?}"),
        }
        let t = t.with_hadamard_block(None);
        assert!(first_transform_error(&x, 2, k, &t).is_none());
    }
}
