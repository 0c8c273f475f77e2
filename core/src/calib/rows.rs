//! Row quantizers with given channel scales: the pieces RTN-with-clipping and GPTQ share.

use rayon::prelude::*;

use crate::format::{Granularity, MAX_GROUP_SCALE};

/// Largest int4 magnitude used for scale selection (`absmax / 7` maps the largest weight onto ±7).
pub(crate) const QMAX: f32 = 7.0;

/// `clamp(rne(w / step), -8, 7)`, 0 for a zero step.
#[inline]
pub(crate) fn quantize_value(w: f32, step: f32) -> i8 {
    if step == 0.0 { 0 } else { (w / step).round_ties_even().clamp(-8.0, 7.0) as i8 }
}

/// The integer group scale in 1..=16 whose grid `s_ch · s_g · [-8, 7]` reconstructs `vals` with the least
/// (optionally per-element weighted) squared error. Ties keep the smaller scale.
pub(crate) fn best_group_scale(vals: &[f32], weights: Option<&[f64]>, s_ch: f32) -> u8 {
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
                let d = w as f64 - step as f64 * quantize_value(w, step) as f64;
                d * d * weights.map_or(1.0, |c| c[i])
            })
            .sum();
        if err < best_err {
            (best, best_err) = (s, err);
        }
    }
    best
}

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
    let rows: Vec<(Vec<i8>, Vec<u8>)> = w
        .par_chunks(k)
        .zip(s_ch.par_iter())
        .map(|(row, &s)| match granularity.group_size() {
            None => (row.iter().map(|&v| quantize_value(v, s)).collect(), Vec::new()),
            Some(g) => {
                let mut q = Vec::with_capacity(k);
                let mut sg = Vec::with_capacity(groups);
                for (gi, vals) in row.chunks(g).enumerate() {
                    let cw = col_weights.map(|c| &c[gi * g..(gi + 1) * g]);
                    let best = best_group_scale(vals, cw, s);
                    let step = s * best as f32;
                    q.extend(vals.iter().map(|&v| quantize_value(v, step)));
                    sg.push(best);
                }
                (q, sg)
            }
        })
        .collect();
    let mut q = Vec::with_capacity(w.len());
    let mut sg = Vec::with_capacity(rows.len() * groups);
    for (qr, sr) in rows {
        q.extend(qr);
        sg.extend(sr);
    }
    (q, sg)
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
