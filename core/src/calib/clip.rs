//! Weight clipping search: OmniQuant's learnable weight clipping, done as a grid search.
//!
//! OmniQuant learns, per output channel, how far to shrink the quantization range below the row's
//! absmax by gradient descent on the layer's output error. Here the same objective is minimized
//! exactly over a grid of ratios: for each row and each ratio `c`, the row is round-to-nearest
//! quantized with channel scale `c · s₀` (per group, each `s_g` re-searched under that `s_ch`, weighted
//! by the input's per-channel energy `H[k,k]`), and the output error over the calibration set,
//! `e H eᵀ` with `e` the row's weight error and `H = 2XᵀX / tokens`, decides. The error of all rows
//! for one ratio is one GEMM `E · H`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rayon::prelude::*;

use super::rows::{QMAX, clear_upper_simd_state, dequantize_rows, quantize_rows};
use crate::format::{Granularity, MAX_GROUP_SCALE};

/// Ratios of the base channel scale tried by the search, largest first (1.0 = no clipping).
pub const CLIP_RATIOS: [f32; 11] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5];

/// Per-row output error `e_r H e_rᵀ` of the weight error E (N×K row-major) under H (K×K symmetric).
pub(crate) fn output_errors(e: &[f32], n: usize, k: usize, h: &Mat<f64>) -> Vec<f64> {
    let e64: Vec<f64> = e.iter().map(|&v| v as f64).collect();
    // Row-major N×K is column-major K×N: the view is Eᵀ, so (E·H)ᵀ = H·Eᵀ (H symmetric).
    let et = MatRef::from_column_major_slice(&e64, k, n);
    let mut he = Mat::<f64>::zeros(k, n);
    matmul(he.as_mut(), Accum::Replace, h.as_ref(), et, 1.0, faer::get_global_parallelism());
    clear_upper_simd_state();
    (0..n)
        .into_par_iter()
        .map(|r| {
            let col = he.col(r);
            (0..k).map(|c| col[c] * e64[r * k + c]).sum::<f64>()
        })
        .collect()
}

/// Chooses each row's channel scale from [`CLIP_RATIOS`] × the unclipped base scale for the least output
/// error under Hessian `h` (K×K). W is N×K row-major. Returns `s_ch` per row.
///
/// Base scale: `absmax / 7` per channel; `absmax / (7 · 16)` per group (the largest group then just fits
/// `s_g = 16`).
pub fn search_clipped_channel_scales(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    h: &[f64],
) -> Vec<f32> {
    let hm = Mat::<f64>::from_fn(k, k, |a, b| h[a * k + b]);
    let diag: Vec<f64> = (0..k).map(|j| h[j * k + j]).collect();
    let base: Vec<f32> = w
        .chunks(k)
        .map(|row| {
            let absmax = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            match granularity {
                Granularity::PerChannel => absmax / QMAX,
                Granularity::PerGroup { .. } => absmax / (QMAX * MAX_GROUP_SCALE as f32),
            }
        })
        .collect();
    let mut best: Vec<(f64, f32)> = base.iter().map(|&b| (f64::INFINITY, b)).collect();
    for ratio in CLIP_RATIOS {
        let s: Vec<f32> = base.iter().map(|&b| b * ratio).collect();
        let (q, sg) = quantize_rows(w, k, granularity, &s, Some(&diag));
        let deq = dequantize_rows(&q, &sg, k, granularity, &s);
        let e: Vec<f32> = w.iter().zip(&deq).map(|(a, b)| a - b).collect();
        for (r, err) in output_errors(&e, n, k, &hm).into_iter().enumerate() {
            if err < best[r].0 {
                best[r] = (err, s[r]);
            }
        }
    }
    best.into_iter().map(|(_, s)| s).collect()
}
