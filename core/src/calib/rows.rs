//! Row quantizers with given channel scales: the pieces RTN-with-clipping and GPTQ share.

use rayon::prelude::*;

use crate::format::{Granularity, MAX_GROUP_SCALE};
use crate::quantize::{Kernel, dispatch, rne_small};

/// Largest int4 magnitude used for scale selection (`absmax / 7` maps the largest weight onto ±7).
pub(crate) const QMAX: f32 = 7.0;

/// `clamp(rne(w / step), -8, 7)`, 0 for a zero step.
#[inline(always)]
pub(crate) fn quantize_value(w: f32, step: f32) -> i8 {
    quantize_value_f32(w, step) as i8
}

/// [`quantize_value`] as an f32 (an integer in [-8, 7]; `-0.0` for small negative `w`, which every
/// use below multiplies or casts to the same result as `0`). Clamping before rounding gives the same
/// integer as rounding first, and lets [`rne_small`] (vectorizable) stand in for `round_ties_even`
/// (a libm call on baseline x86-64).
#[inline(always)]
pub(crate) fn quantize_value_f32(w: f32, step: f32) -> f32 {
    if step == 0.0 { 0.0 } else { rne_small((w / step).clamp(-8.0, 7.0)) }
}

/// Squared error of one weight `w` on the grid of step `t`, in f64, times the column weight `c`: the
/// term [`best_group_scale`] sums. (An exact f64 product of two f32 values, then f64 arithmetic.)
#[inline(always)]
pub(crate) fn weighted_error(w: f32, t: f32, c: f64) -> f64 {
    let d = w as f64 - t as f64 * quantize_value_f32(w, t) as f64;
    d * d * c
}

/// The integer group scale in 1..=16 whose grid `s_ch · s_g · [-8, 7]` reconstructs `vals` with the least
/// (optionally per-element weighted) squared error. Ties keep the smaller scale.
///
/// Each of the 16 candidates sums its errors over `vals` in order, in f64; the candidates are the
/// vector lanes (16 divisions and 16 × 6 f64 flops per value).
#[cfg_attr(
    not(feature = "learn"),
    allow(dead_code, reason = "used by omniquant (feature `learn`) and tests")
)]
pub(crate) fn best_group_scale(vals: &[f32], weights: Option<&[f64]>, s_ch: f32) -> u8 {
    dispatch(GroupScaleSearch { vals, weights, s_ch })
}

/// [`best_group_scale`] as a [`Kernel`].
struct GroupScaleSearch<'a> {
    vals: &'a [f32],
    weights: Option<&'a [f64]>,
    s_ch: f32,
}

impl Kernel for GroupScaleSearch<'_> {
    type Output = u8;
    #[inline(always)]
    fn run(self) -> u8 {
        group_scale_search(self.vals, self.weights, self.s_ch)
    }
}

/// The body of [`best_group_scale`], inlined into the kernels that call it.
#[inline(always)]
fn group_scale_search(vals: &[f32], weights: Option<&[f64]>, s_ch: f32) -> u8 {
    if s_ch == 0.0 {
        return 1;
    }
    let mut step = [0.0f32; SG];
    for (s, t) in (1..=MAX_GROUP_SCALE).zip(step.iter_mut()) {
        *t = s_ch * s as f32;
    }
    let mut err = [0.0f64; SG];
    for (i, &w) in vals.iter().enumerate() {
        let c = weights.map_or(1.0, |c| c[i]);
        for j in 0..SG {
            err[j] += weighted_error(w, step[j], c);
        }
    }
    pick_group_scale(&err)
}

/// The first `s_g` (1-based) with the least error; `1` if none is below infinity.
#[inline(always)]
pub(crate) fn pick_group_scale(err: &[f64; SG]) -> u8 {
    let (mut best, mut best_err) = (1u8, f64::INFINITY);
    for (s, &e) in (1..=MAX_GROUP_SCALE).zip(err) {
        if e < best_err {
            (best, best_err) = (s, e);
        }
    }
    best
}

/// Number of group scales searched, `s_g` ∈ 1..=16.
pub(crate) const SG: usize = MAX_GROUP_SCALE as usize;

/// Quantizes every row of W (N×K row-major) with the given channel scales: per channel `q = rne(w / s_ch)`,
/// per group with each `s_g` chosen by [`best_group_scale`] (weighted by `col_weights[k]` when given).
/// Returns `(q` N×K row-major`, s_g` N×(K/g) row-major`)`.
pub(crate) fn quantize_rows(
    w: &[f32],
    k: usize,
    granularity: Granularity,
    s_ch: &[f32],
    col_weights: Option<&[f64]>,
) -> (Vec<i8>, Vec<u8>) {
    let groups = granularity.groups(k);
    let mut q = vec![0i8; w.len()];
    // Per channel there are no group scales; one dummy byte per row keeps the zip aligned.
    let mut sg = vec![0u8; s_ch.len() * groups.max(1)];
    q.par_chunks_mut(k)
        .zip(sg.par_chunks_mut(groups.max(1)))
        .zip(w.par_chunks(k).zip(s_ch.par_iter()))
        .for_each(|((q, sg), (row, &s))| dispatch(QuantizeRow { row, s, granularity, col_weights, q, sg }));
    if groups == 0 {
        sg.clear();
    }
    (q, sg)
}

/// One row of [`quantize_rows`].
struct QuantizeRow<'a> {
    row: &'a [f32],
    s: f32,
    granularity: Granularity,
    col_weights: Option<&'a [f64]>,
    q: &'a mut [i8],
    sg: &'a mut [u8],
}

impl Kernel for QuantizeRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let QuantizeRow { row, s, granularity, col_weights, q, sg } = self;
        match granularity.group_size() {
            None => q.iter_mut().zip(row).for_each(|(q, &v)| *q = quantize_value(v, s)),
            Some(g) => {
                for (gi, (vals, qg)) in row.chunks(g).zip(q.chunks_mut(g)).enumerate() {
                    let cw = col_weights.map(|c| &c[gi * g..(gi + 1) * g]);
                    let best = group_scale_search(vals, cw, s);
                    let step = s * best as f32;
                    qg.iter_mut().zip(vals).for_each(|(q, &v)| *q = quantize_value(v, step));
                    sg[gi] = best;
                }
            }
        }
    }
}

/// Dequantizes rows produced by [`quantize_rows`] into f32, N×K row-major.
pub(crate) fn dequantize_rows(
    q: &[i8],
    sg: &[u8],
    k: usize,
    granularity: Granularity,
    s_ch: &[f32],
) -> Vec<f32> {
    let groups = granularity.groups(k);
    q.par_chunks(k)
        .enumerate()
        .flat_map_iter(|(r, row)| {
            let s = s_ch[r];
            row.iter().enumerate().map(move |(c, &v)| match granularity.group_size() {
                None => v as f32 * s,
                Some(g) => v as f32 * (s * sg[r * groups + c / g] as f32),
            })
        })
        .collect()
}

/// Transposes row-major N×(K/g) group scales into the canonical (K/g)×N layout.
pub(crate) fn group_scales_canonical(sg_rows: &[u8], n: usize, groups: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * groups];
    for r in 0..n {
        for j in 0..groups {
            out[j * n + r] = sg_rows[r * groups + j];
        }
    }
    out
}

/// The default channel scale of a row before any clipping: `absmax / 7` per channel; per group the
/// channel scale that core's RTN search picks.
pub(crate) fn default_channel_scale(row: &[f32], granularity: Granularity) -> f32 {
    match granularity.group_size() {
        None => row.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / QMAX,
        Some(g) => crate::quantize::search_group_scales(row, g).0,
    }
}

/// Clears the upper halves of the vector registers on this thread and on every rayon worker.
///
/// faer's x86 GEMM microkernels (AVX-512, via `private-gemm-x86`) return without `vzeroupper`. Until
/// a thread next clears that state, every legacy-SSE instruction it runs — all code of this crate
/// built for baseline x86-64 — is slowed by the SSE/AVX transition penalty: measured here, the RTN
/// search of a 4096×4096 layer went from 2.8 s to 16.6 s after one `CalibStats::update`. Calling this
/// after each use of faer restores full speed for whatever runs next (our own hot loops are also
/// compiled as AVX code by [`dispatch`], which is immune). Costs one rayon broadcast, a few µs.
pub(crate) fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        fn vzeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: the CPU supports AVX (checked above), all that `vzeroupper` needs; it only zeroes
        // register bits that no live Rust value occupies across this call.
        let clear = || unsafe { vzeroupper() };
        rayon::broadcast(|_| clear());
        clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The group-scale search as first written, one candidate at a time.
    fn reference_best_group_scale(vals: &[f32], weights: Option<&[f64]>, s_ch: f32) -> u8 {
        fn quantize(w: f32, step: f32) -> i8 {
            if step == 0.0 { 0 } else { (w / step).round_ties_even().clamp(-8.0, 7.0) as i8 }
        }
        if s_ch == 0.0 {
            return 1;
        }
        let (mut best, mut best_err) = (1u8, f64::INFINITY);
        for s in 1..=MAX_GROUP_SCALE {
            let step = s_ch * s as f32;
            let err: f64 = vals
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let d = w as f64 - step as f64 * quantize(w, step) as f64;
                    d * d * weights.map_or(1.0, |c| c[i])
                })
                .sum();
            if err < best_err {
                (best, best_err) = (s, err);
            }
        }
        best
    }

    #[test]
    fn vectorized_group_scale_search_equals_the_scalar_reference() {
        let mut rng = SplitMix64::new(77);
        for g in [32, 64, 128, 256] {
            for trial in 0..200 {
                let spread = [1e-3f32, 1.0, 30.0][trial % 3];
                let vals: Vec<f32> = (0..g)
                    .map(|_| match trial % 4 {
                        0 => rng.normal() * spread,
                        1 => rng.int(-20, 20) as f32 * 0.125,
                        2 => rng.normal().powi(3) * spread,
                        _ => {
                            if rng.chance(0.5) {
                                0.0
                            } else {
                                rng.normal()
                            }
                        }
                    })
                    .collect();
                let absmax = vals.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let s_ch = absmax / 112.0 * [1.0, 0.7, 0.31][trial % 3];
                let cw: Vec<f64> = (0..g).map(|_| rng.unit() as f64 * 4.0).collect();
                for weights in [None, Some(&cw[..])] {
                    assert_eq!(
                        best_group_scale(&vals, weights, s_ch),
                        reference_best_group_scale(&vals, weights, s_ch),
                        "g={g} trial {trial}"
                    );
                    assert_eq!(
                        group_scale_search(&vals, weights, s_ch),
                        best_group_scale(&vals, weights, s_ch)
                    );
                }
            }
        }
        assert_eq!(best_group_scale(&[1.0, 2.0], None, 0.0), 1);
    }
}
