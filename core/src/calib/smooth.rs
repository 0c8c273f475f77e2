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
use faer::{Accum, Mat, MatRef};

use super::stats::CalibStats;
use crate::error::Result;
use crate::format::{Granularity, check_len};
use crate::quantize::{quantize_activations, quantize_weights_rtn};

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

/// `Y = X · Wᵀ` for row-major X (M×K) and W (N×K), as an M×N matrix.
pub(crate) fn matmul_xwt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Mat<f32> {
    let xt = MatRef::from_column_major_slice(x, k, m);
    let wt = MatRef::from_column_major_slice(w, k, n);
    let mut y = Mat::<f32>::zeros(m, n);
    matmul(y.as_mut(), Accum::Replace, xt.transpose(), wt, 1.0, faer::get_global_parallelism());
    y
}

/// Calibration tokens and the float layer's output on them.
pub(crate) struct SampleSet<'a> {
    /// Tokens, M×K row-major.
    pub x: &'a [f32],
    /// M.
    pub m: usize,
    /// `X · Wᵀ` of the float layer, M×N.
    pub y_ref: Mat<f32>,
}

impl<'a> SampleSet<'a> {
    pub(crate) fn new(x: &'a [f32], m: usize, w: &[f32], n: usize, k: usize) -> Self {
        SampleSet { x, m, y_ref: matmul_xwt(x, m, k, w, n) }
    }
}

/// Relative Frobenius error `‖Y_q − Y‖ / ‖Y‖` of the W4A8 layer on `set`, where the layer is: activations
/// X times `1/s` quantized per token to int8, weights `W · s` (N×K) round-to-nearest int4 at
/// `granularity`. `s = None` is no smoothing.
pub(crate) fn w4a8_relative_error(
    set: &SampleSet<'_>,
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    s: Option<&[f32]>,
) -> Result<f64> {
    let (x, m, y_ref) = (set.x, set.m, &set.y_ref);
    check_len("activations (M·K)", m * k, x.len())?;
    let (ws, inv): (Vec<f32>, Option<Vec<f32>>) = match s {
        Some(s) => (
            w.chunks(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect(),
            Some(s.iter().map(|v| 1.0 / v).collect()),
        ),
        None => (w.to_vec(), None),
    };
    let wq = quantize_weights_rtn(&ws, n, k, granularity, None)?;
    let wd: Vec<f32> = wq.dequantize_f64().into_iter().map(|v| v as f32).collect();
    let xd = quantize_activations(x, m, k, inv.as_deref())?.dequantize();
    let yq = matmul_xwt(&xd, m, k, &wd, n);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for j in 0..n {
        for i in 0..m {
            let (a, b) = (yq[(i, j)] as f64, y_ref[(i, j)] as f64);
            num += (a - b) * (a - b);
            den += b * b;
        }
    }
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

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
    let mut best = (w4a8_relative_error(&set, w, n, k, granularity, None)?, None, None);
    let steps = (1.0 / ALPHA_STEP).round() as usize;
    for i in 0..=steps {
        let alpha = i as f32 * ALPHA_STEP;
        let s = smoothing_scales(stats.absmax(), &w_max, alpha);
        let err = w4a8_relative_error(&set, w, n, k, granularity, Some(&s))?;
        if err < best.0 {
            best = (err, Some(s), Some(alpha));
        }
    }
    Ok((best.1, best.2))
}
