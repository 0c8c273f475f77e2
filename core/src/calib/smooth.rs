//! Smoothing: moving activation outliers into the weights before quantization.
//!
//! A per-input-channel vector `s` rescales the layer without changing it in exact arithmetic,
//! `X Wᵀ = (X diag(s)⁻¹) (W diag(s))ᵀ`. Dividing an outlier channel of X by a large `s_j` shrinks the
//! per-token int8 range that every other channel shares; the weights absorb the factor. Our kernels
//! take the activation side as a per-channel multiplier applied before quantization, so what a layer
//! stores is `smooth[k] = 1 / s_k`, and its weights are quantized from `W[:,k] · s_k`.
//!
//! Two rules for `s`:
//! - adaptive (QQQ, after SmoothQuant): `s_j = max|X_j|^α / max|W_j|^(1-α)` with α searched over a grid for
//!   the least W4A8 output error on calibration tokens (real per-token int8 activations, RTN int4
//!   weights, compared with the FP32 layer output); "no smoothing" is a candidate too;
//! - logarithmic activation equalization (FPTQ): `s_j = max|X_j| / log2(2 + max|X_j|)`, no search.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::rows::clear_upper_simd_state;
use super::stats::CalibStats;
use crate::error::Result;
use crate::format::{Granularity, check_finite, check_k, check_len, check_nonzero};
use crate::quantize::{quantize_activations, rtn_dequantized};

/// Grid step of the adaptive α search (α = 0, 0.05, …, 1).
pub const ALPHA_STEP: f32 = 0.05;

/// Smoothing factors are kept within [1/LIMIT, LIMIT] so that neither side over- or underflows.
const LIMIT: f32 = 1e4;

fn sanitize(s: f32) -> f32 {
    if s.is_finite() && s > 0.0 { s.clamp(1.0 / LIMIT, LIMIT) } else { 1.0 }
}

/// Per-input-channel `max_n |W[n,k]|` of W (N×K row-major).
pub fn weight_column_absmax(w: &[f32], k: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; k];
    for row in w.chunks(k) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a = a.max(v.abs());
        }
    }
    m
}

/// SmoothQuant's `s_j = max|X_j|^α / max|W_j|^(1-α)`; a channel with a zero maximum on either side gets 1.
pub fn smoothing_scales(act_absmax: &[f32], w_col_absmax: &[f32], alpha: f32) -> Vec<f32> {
    act_absmax
        .iter()
        .zip(w_col_absmax)
        .map(|(&a, &w)| if a > 0.0 && w > 0.0 { sanitize(a.powf(alpha) / w.powf(1.0 - alpha)) } else { 1.0 })
        .collect()
}

/// FPTQ's logarithmic activation equalization, `s_j = max|X_j| / log2(2 + max|X_j|)`; 1 for a silent channel.
pub fn log_equalization_scales(act_absmax: &[f32]) -> Vec<f32> {
    act_absmax.iter().map(|&a| if a > 0.0 { sanitize(a / (2.0 + a).log2()) } else { 1.0 }).collect()
}

/// `Y = X · Wᵀ` for row-major X (M×K) and W (N×K), into `y` (M×N), on `par` threads.
fn matmul_xwt(y: MatMut<'_, f32>, x: &[f32], m: usize, k: usize, w: &[f32], n: usize, par: Par) {
    let xt = MatRef::from_column_major_slice(x, k, m);
    let wt = MatRef::from_column_major_slice(w, k, n);
    matmul(y, Accum::Replace, xt.transpose(), wt, 1.0, par);
    clear_upper_simd_state();
}

/// Calibration tokens and the float layer's output on them.
pub(crate) struct SampleSet<'a> {
    /// Tokens, M×K row-major.
    pub x: &'a [f32],
    /// M.
    pub m: usize,
    /// `X · Wᵀ` of the float layer, M×N.
    pub y_ref: Mat<f32>,
    /// `‖Y‖²`, summed in f64 column by column.
    y_ref_sq: f64,
}

impl<'a> SampleSet<'a> {
    pub(crate) fn new(x: &'a [f32], m: usize, w: &[f32], n: usize, k: usize) -> Self {
        let mut y_ref = Mat::<f32>::zeros(m, n);
        matmul_xwt(y_ref.as_mut(), x, m, k, w, n, faer::get_global_parallelism());
        let mut y_ref_sq = 0.0f64;
        for j in 0..n {
            for i in 0..m {
                let b = y_ref[(i, j)] as f64;
                y_ref_sq += b * b;
            }
        }
        SampleSet { x, m, y_ref, y_ref_sq }
    }
}

/// Buffers of one candidate of the α search, reused by the next candidate on the same thread (each
/// fresh N×K or M×N allocation would otherwise cost its page faults again).
#[derive(Default)]
pub(crate) struct Scratch {
    ws: Vec<f32>,
    wd: Vec<f32>,
    y: Option<Mat<f32>>,
}

/// Relative Frobenius error `‖Y_q − Y‖ / ‖Y‖` of the W4A8 layer on `set`, where the layer is: activations
/// X times `1/s` quantized per token to int8, weights `W · s` (N×K) round-to-nearest int4 at
/// `granularity`. `s = None` is no smoothing.
///
/// The GEMM runs on `par` threads; faer splits the output among threads, never the sum over K, so the
/// result does not depend on `par`.
#[cfg(test)]
pub(crate) fn w4a8_relative_error(
    set: &SampleSet<'_>,
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    s: Option<&[f32]>,
    par: Par,
) -> Result<f64> {
    relative_error_with(&mut Scratch::default(), set, w, n, k, granularity, s, par)
}

/// [`w4a8_relative_error`] with reused buffers. Per candidate: W·s (N·K multiplies), RTN of it
/// (`search_group_scales` per row), dequantization, per-token int8 quantization of the M samples, the
/// M×K×N GEMM (2·M flops per weight), and the error (M·N).
#[allow(clippy::too_many_arguments, reason = "the arguments of w4a8_relative_error, plus its buffers")]
fn relative_error_with(
    scratch: &mut Scratch,
    set: &SampleSet<'_>,
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    s: Option<&[f32]>,
    par: Par,
) -> Result<f64> {
    let (x, m, y_ref) = (set.x, set.m, &set.y_ref);
    check_len("activations (M·K)", m * k, x.len())?;
    let ws = &mut scratch.ws;
    ws.clear();
    match s {
        Some(s) => ws.extend(w.chunks(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b))),
        None => ws.extend_from_slice(w),
    }
    let inv: Option<Vec<f32>> = s.map(|s| s.iter().map(|v| 1.0 / v).collect());
    // What `quantize_weights_rtn(&ws, …)?.dequantize_f64()` would give, without packing and unpacking.
    check_nonzero("N", n)?;
    check_k(k)?;
    granularity.validate(k)?;
    check_len("weights (N·K)", n.saturating_mul(k), ws.len())?;
    check_finite("weights", ws)?;
    scratch.wd.resize(ws.len(), 0.0);
    rtn_dequantized(ws, k, granularity, &mut scratch.wd);
    let xd = quantize_activations(x, m, k, inv.as_deref())?.dequantize();
    let yq = match &mut scratch.y {
        Some(y) if (y.nrows(), y.ncols()) == (m, n) => y,
        y => y.insert(Mat::zeros(m, n)),
    };
    matmul_xwt(yq.as_mut(), &xd, m, k, &scratch.wd, n, par);
    let mut num = 0.0f64;
    for j in 0..n {
        for i in 0..m {
            let (a, b) = (yq[(i, j)] as f64, y_ref[(i, j)] as f64);
            num += (a - b) * (a - b);
        }
    }
    let den = set.y_ref_sq;
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

/// One candidate of the α search: its relative error, `s` (None: no smoothing) and α.
type Candidate = (f64, Option<Vec<f32>>, Option<f32>);

/// The adaptive search: returns the best `s` (None if no smoothing beats all α) and its α.
pub fn adaptive_smoothing(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    stats: &CalibStats,
) -> Result<(Option<Vec<f32>>, Option<f32>)> {
    check_len("calibration width (K)", k, stats.k())?;
    let (x, m) = stats.samples();
    if m == 0 {
        return Ok((None, None));
    }
    let set = SampleSet::new(x, m, w, n, k);
    let w_max = weight_column_absmax(w, k);
    let steps = (1.0 / ALPHA_STEP).round() as usize;
    // Candidate 0 is no smoothing, candidate i + 1 is α = i · ALPHA_STEP. Each candidate costs an RTN
    // of W·s (the group-scale search, a few hundred flops per weight) and an M×K×N GEMM (2·M = 1 024
    // flops per weight at 512 samples), 22 times per layer; the candidates are independent, so they
    // run in parallel, each GEMM on the thread that asked for it (a MiniLM-sized GEMM is too small to
    // split without faer's threads spinning idle). They are compared in candidate order, as a
    // sequential search would.
    let candidates: Vec<Result<Candidate>> = (0..=steps + 1)
        .into_par_iter()
        .map_init(Scratch::default, |scratch, c| {
            let (s, alpha) = match c {
                0 => (None, None),
                _ => {
                    let alpha = (c - 1) as f32 * ALPHA_STEP;
                    (Some(smoothing_scales(stats.absmax(), &w_max, alpha)), Some(alpha))
                }
            };
            let err = relative_error_with(scratch, &set, w, n, k, granularity, s.as_deref(), Par::Seq)?;
            Ok((err, s, alpha))
        })
        .collect();
    let mut best: Option<Candidate> = None;
    for cand in candidates {
        let cand = cand?;
        if best.as_ref().is_none_or(|b| cand.0 < b.0) {
            best = Some(cand);
        }
    }
    let (_, s, alpha) = best.expect("the unsmoothed candidate is always there");
    Ok((s, alpha))
}
