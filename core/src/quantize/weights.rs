use rayon::prelude::*;

use super::rne_small;

use crate::error::Result;
use crate::format::{
    Granularity, MAX_GROUP_SCALE, W4A8Weights, check_finite, check_k, check_len, check_nonzero,
};

/// Largest int4 magnitude used for scale selection: `[-8, 7]` is asymmetric, so a scale of
/// `absmax / 7` maps the largest weight onto ±7 without clipping either sign.
const QMAX: f32 = 7.0;

/// Candidate channel scales for per-group quantization, as fractions of `absmax / (7 · 16)`. Smaller
/// channel scales give groups a finer integer grid at the price of clipping the largest group.
const CHANNEL_SCALE_CANDIDATES: [f32; 8] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6];

fn quantize_value(w: f32, scale: f32) -> i8 {
    if scale == 0.0 { 0 } else { rne_small((w / scale).clamp(-8.0, 7.0)) as i8 }
}

/// Squared error of quantizing `group` with step `step` (the search's inner loop, kept to f32
/// multiply-adds so it vectorizes; the chosen step is then applied with [`quantize_value`]).
fn group_error(group: &[f32], step: f32) -> f32 {
    let inv = 1.0 / step;
    group
        .iter()
        .map(|&w| {
            // Clamping before rounding is exact here: the grid ends -8 and 7 are integers.
            let d = w - step * rne_small((w * inv).clamp(-8.0, 7.0));
            d * d
        })
        .sum()
}

/// For one row and a given channel scale: the best integer group scale of every group (searched over
/// 1..=16 for the least squared error), the int4 values, and the row's total squared error.
fn quantize_row_groups(row: &[f32], s_ch: f32, g: usize) -> (Vec<u8>, Vec<i8>, f64) {
    let mut scales = Vec::with_capacity(row.len() / g);
    let mut q = Vec::with_capacity(row.len());
    let mut total = 0.0f64;
    for group in row.chunks(g) {
        let (mut best_s, mut best_err) = (1u8, f32::INFINITY);
        for s in 1..=MAX_GROUP_SCALE {
            let err = group_error(group, s_ch * s as f32);
            if err < best_err {
                (best_s, best_err) = (s, err);
            }
        }
        let step = s_ch * best_s as f32;
        q.extend(group.iter().map(|&w| quantize_value(w, step)));
        scales.push(best_s);
        total += best_err as f64;
    }
    (scales, q, total)
}

/// For one row of per-group weights: the channel scale from [`CHANNEL_SCALE_CANDIDATES`] and the group
/// scales that together minimize the squared reconstruction error. Returns `(s_ch, s_g per group, q)`.
///
/// Searching the integer `s_g` rather than rounding the float ratio matters: on MiniLM's weights at g128
/// the relative error drops from 0.127 (naive rounding) to 0.110.
pub fn search_group_scales(row: &[f32], g: usize) -> (f32, Vec<u8>, Vec<i8>) {
    let absmax = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    if absmax == 0.0 {
        return (0.0, vec![1; row.len() / g], vec![0; row.len()]);
    }
    let base = absmax / (QMAX * MAX_GROUP_SCALE as f32);
    let mut best: Option<(f64, f32, Vec<u8>, Vec<i8>)> = None;
    for c in CHANNEL_SCALE_CANDIDATES {
        let s_ch = base * c;
        let (sg, q, err) = quantize_row_groups(row, s_ch, g);
        if best.as_ref().is_none_or(|b| err < b.0) {
            best = Some((err, s_ch, sg, q));
        }
    }
    let (_, s_ch, sg, q) = best.expect("at least one candidate");
    (s_ch, sg, q)
}

/// Round-to-nearest weight quantization of W (N×K row-major, f32).
///
/// Per channel: `s_ch = max|W[n,:]| / 7`, `q = clamp(rne(W / s_ch), -8, 7)`. Per group: the channel
/// scale and integer group scales are searched for the least squared error ([`search_group_scales`]).
pub fn quantize_weights_rtn(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    bias: Option<Vec<f32>>,
) -> Result<W4A8Weights> {
    check_nonzero("N", n)?;
    check_k(k)?;
    granularity.validate(k)?;
    check_len("weights (N·K)", n.saturating_mul(k), w.len())?;
    check_finite("weights", w)?;
    let rows: Vec<(f32, Vec<u8>, Vec<i8>)> = w
        .par_chunks(k)
        .map(|row| match granularity.group_size() {
            None => {
                let absmax = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let s = absmax / QMAX;
                (s, Vec::new(), row.iter().map(|&v| quantize_value(v, s)).collect())
            }
            Some(g) => search_group_scales(row, g),
        })
        .collect();
    let groups = granularity.groups(k);
    let mut channel_scales = Vec::with_capacity(n);
    let mut group_scales = vec![0u8; groups * n];
    let mut q = Vec::with_capacity(n * k);
    for (row, (s, sg, qr)) in rows.into_iter().enumerate() {
        channel_scales.push(s);
        // Canonical group scales are (K/g)×N: transpose from the row-major search output.
        for (j, v) in sg.into_iter().enumerate() {
            group_scales[j * n + row] = v;
        }
        q.extend(qr);
    }
    W4A8Weights::from_int4(n, k, granularity, &q, channel_scales, group_scales, bias)
}
