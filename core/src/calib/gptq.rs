//! GPTQ (Frantar et al., 2022) for the W4A8 weight format: column-by-column quantization in which
//! each column's rounding error is pushed onto the columns not yet quantized, weighted by the inverse
//! Hessian of the layer's squared output error, so later columns compensate for earlier ones.
//!
//! ```text
//!   processing order i = 0 .. K (canonical order, or act-order: diag(H) descending)
//!
//!        i1        i2                      K
//!   ┌────┬─────────┬───────────────────────┐
//!   │done│  block  │  tail: one lazy GEMM  │   W (N×K, column-major in processing order)
//!   └────┴─────────┴───────────────────────┘
//!   inside the block, column by column (rows split across threads, rows are independent):
//!     q     = quant(w_i)                       with the row's fixed s_ch (and s_g of its group)
//!     err   = (w_i − deq(q)) / U[i,i]
//!     w_j  -= err · U[i,j]            j in (i, i2)
//!   after the block:  W[:, i2..] -= Err(N×B) · U[i1..i2, i2..]   (faer GEMM, the only O(N·K²) work)
//! ```
//!
//! `U` is the upper Cholesky factor of the damped inverse Hessian, `H⁻¹ = UᵀU`. It is computed without
//! forming `H⁻¹`: with J the reversal permutation and `J H J = L Lᵀ`, `U = J L⁻¹ J` (one Cholesky, one
//! triangular inverse; `H⁻¹ = J L⁻ᵀ L⁻¹ J = UᵀU` and `J L⁻¹ J` is upper triangular).
//!
//! Scales: `s_ch` of each row is fixed before the loop (from the whole row, or given by the clipping
//! search); per group, the integer `s_g` of a group is chosen when processing enters the group, from
//! the group's weights as updated so far. With act-order a group's columns are scattered: its columns
//! inside the current block are fully updated then, those in later blocks lack only the current
//! block's pending lazy update. Results are stored in canonical column order either way.

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Side};
use rayon::prelude::*;

use super::rows::{best_group_scale, group_scales_canonical, quantize_value};
use crate::error::{Error, Result};
use crate::format::{Granularity, W4A8Weights, check_len};

/// GPTQ settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqConfig {
    /// Columns per lazy batch (128 in the paper). Raised to the group size when that is larger.
    pub block_size: usize,
    /// Dampening added to the Hessian's diagonal, as a fraction of its mean diagonal (0.01).
    pub damp: f64,
    /// Quantize columns in order of decreasing Hessian diagonal ("act-order"); results are stored in
    /// canonical order.
    pub act_order: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig { block_size: 128, damp: 0.01, act_order: true }
    }
}

/// Hessian damping retries: multiply `damp` by 10 up to this many times if Cholesky fails.
const DAMP_RETRIES: usize = 4;

/// `U` (K×K, upper, f32) with `UᵀU = Hp⁻¹`, where `Hp = H[perm][:, perm] + λI`.
fn inverse_hessian_factor(h: &[f64], k: usize, perm: &[usize], damp: f64) -> Result<Mat<f32>> {
    let mean_diag = (0..k).map(|j| h[j * k + j]).sum::<f64>() / k as f64;
    let mut lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    for _ in 0..=DAMP_RETRIES {
        // J Hp J, built directly: entry (a, b) is Hp[K-1-a, K-1-b].
        let hr = Mat::<f64>::from_fn(k, k, |a, b| {
            let (pa, pb) = (perm[k - 1 - a], perm[k - 1 - b]);
            h[pa * k + pb] + if a == b { lambda } else { 0.0 }
        });
        if let Ok(llt) = hr.llt(Side::Lower) {
            let mut linv = Mat::<f64>::zeros(k, k);
            invert_lower_triangular(linv.as_mut(), llt.L(), faer::get_global_parallelism());
            return Ok(Mat::from_fn(
                k,
                k,
                |a, b| if a <= b { linv[(k - 1 - a, k - 1 - b)] as f32 } else { 0.0 },
            ));
        }
        lambda = if lambda > 0.0 { lambda * 10.0 } else { 1e-6 };
    }
    Err(Error::InvalidValue {
        what: "calibration Hessian",
        index: 0,
        reason: format!("not positive definite even with dampening {lambda:e}"),
    })
}

/// How each row is scaled: the granularity, the fixed per-row channel scales, and optional per-column
/// weights (canonical order) for the group-scale search.
pub(crate) struct RowScales<'a> {
    pub granularity: Granularity,
    pub s_ch: &'a [f32],
    pub sg_col_weights: Option<&'a [f64]>,
}

/// Runs GPTQ on W (N×K row-major f32) with Hessian `h` (K×K symmetric), fixed per-row channel scales
/// `s_ch`, and optional per-column weights for the group-scale search (canonical order). Returns the
/// quantized weights without bias.
pub(crate) fn gptq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    scales: &RowScales<'_>,
    cfg: &GptqConfig,
) -> Result<W4A8Weights> {
    let RowScales { granularity, s_ch, sg_col_weights } = *scales;
    check_len("weights (N·K)", n * k, w.len())?;
    check_len("Hessian (K·K)", k * k, h.len())?;
    check_len("channel scales (N)", n, s_ch.len())?;
    granularity.validate(k)?;
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "calibration Hessian", index: i, value: h[i] as f32 });
    }

    // Channels never activated during calibration carry no information: give them a unit diagonal
    // (so H stays invertible) and drop their weights, as the reference implementation does.
    let mut h = h.to_vec();
    let dead: Vec<bool> = (0..k).map(|j| h[j * k + j] == 0.0).collect();
    for j in (0..k).filter(|&j| dead[j]) {
        h[j * k + j] = 1.0;
    }

    let mut perm: Vec<usize> = (0..k).collect();
    if cfg.act_order {
        // Stable sort: equal diagonals keep canonical order, so the result is deterministic.
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
    }
    let mut invperm = vec![0usize; k];
    for (i, &c) in perm.iter().enumerate() {
        invperm[c] = i;
    }
    let u = inverse_hessian_factor(&h, k, &perm, cfg.damp)?;

    // Working copy: column-major N×K in processing order, so a column is a contiguous slice and the
    // not-yet-processed tail is one contiguous matrix for the lazy GEMM.
    let mut wp = vec![0.0f32; n * k];
    for (i, &c) in perm.iter().enumerate() {
        if !dead[c] {
            for r in 0..n {
                wp[i * n + r] = w[r * k + c];
            }
        }
    }

    let group = granularity.group_size();
    let groups = granularity.groups(k);
    // group_entry[i]: the group whose first processed column is i.
    let mut group_entry: Vec<Option<usize>> = vec![None; k];
    if let Some(g) = group {
        for gi in 0..groups {
            let first = (gi * g..(gi + 1) * g).map(|c| invperm[c]).min().expect("g ≥ 1");
            group_entry[first] = Some(gi);
        }
    }
    let block = cfg.block_size.max(group.unwrap_or(1)).max(1);

    let mut q = vec![0i8; n * k];
    // Per channel there are no group scales; one dummy byte per row keeps the band zip aligned.
    let gstride = groups.max(1);
    let mut sg_rows = vec![1u8; n * gstride];
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = n.div_ceil(threads * 4).clamp(1, 256);

    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + block).min(k);
        let bw = i2 - i1;
        let wp_ref = &wp;
        let u_ref = u.as_ref();
        // Each task owns a band of rows: their q, s_g and a private copy of the block's columns.
        let errs: Vec<Vec<f32>> = q
            .par_chunks_mut(chunk_rows * k)
            .zip(sg_rows.par_chunks_mut(chunk_rows * gstride))
            .enumerate()
            .map(|(ci, (q_band, sg_band))| {
                let r0 = ci * chunk_rows;
                let nr = q_band.len() / k;
                let mut buf = vec![0.0f32; nr * bw];
                for ii in 0..bw {
                    buf[ii * nr..(ii + 1) * nr]
                        .copy_from_slice(&wp_ref[(i1 + ii) * n + r0..(i1 + ii) * n + r0 + nr]);
                }
                let mut err = vec![0.0f32; nr * bw];
                let mut vals = Vec::with_capacity(group.unwrap_or(0));
                let mut cw = Vec::with_capacity(group.unwrap_or(0));
                for ii in 0..bw {
                    let i = i1 + ii;
                    let c = perm[i];
                    if let (Some(g), Some(gi)) = (group, group_entry[i]) {
                        for rr in 0..nr {
                            vals.clear();
                            cw.clear();
                            for cc in gi * g..(gi + 1) * g {
                                let p = invperm[cc];
                                // p ≥ i: no column of this group has been processed yet.
                                let v =
                                    if p < i2 { buf[(p - i1) * nr + rr] } else { wp_ref[p * n + r0 + rr] };
                                vals.push(v);
                                if let Some(wts) = sg_col_weights {
                                    cw.push(wts[cc]);
                                }
                            }
                            let weights = sg_col_weights.map(|_| &cw[..]);
                            sg_band[rr * gstride + gi] = best_group_scale(&vals, weights, s_ch[r0 + rr]);
                        }
                    }
                    let d = u_ref[(i, i)];
                    let (done, rest) = buf.split_at_mut((ii + 1) * nr);
                    let col = &done[ii * nr..];
                    let ecol = &mut err[ii * nr..(ii + 1) * nr];
                    for rr in 0..nr {
                        let step = match group {
                            None => s_ch[r0 + rr],
                            Some(g) => s_ch[r0 + rr] * sg_band[rr * gstride + c / g] as f32,
                        };
                        let qv = quantize_value(col[rr], step);
                        q_band[rr * k + c] = qv;
                        ecol[rr] = (col[rr] - qv as f32 * step) / d;
                    }
                    // In-block update of the columns after i (contiguous axpys, vectorized).
                    for (jj, target) in rest.chunks_exact_mut(nr).enumerate() {
                        let hij = u_ref[(i, i + 1 + jj)];
                        if hij != 0.0 {
                            for (t, &e) in target.iter_mut().zip(ecol.iter()) {
                                *t -= e * hij;
                            }
                        }
                    }
                }
                err
            })
            .collect();
        if i2 < k {
            // Assemble Err (N×B column-major) from the bands, then W[:, i2..] -= Err · U[i1..i2, i2..].
            let mut err_all = vec![0.0f32; n * bw];
            for (ci, e) in errs.iter().enumerate() {
                let r0 = ci * chunk_rows;
                let nr = e.len() / bw;
                for ii in 0..bw {
                    err_all[ii * n + r0..ii * n + r0 + nr].copy_from_slice(&e[ii * nr..(ii + 1) * nr]);
                }
            }
            let err_m = MatRef::from_column_major_slice(&err_all, n, bw);
            let tail = MatMut::from_column_major_slice_mut(&mut wp[i2 * n..], n, k - i2);
            matmul(
                tail,
                Accum::Add,
                err_m,
                u.as_ref().submatrix(i1, i2, bw, k - i2),
                -1.0f32,
                faer::get_global_parallelism(),
            );
        }
        i1 = i2;
    }
    let group_scales = if groups == 0 { Vec::new() } else { group_scales_canonical(&sg_rows, n, groups) };
    W4A8Weights::from_int4(n, k, granularity, &q, s_ch.to_vec(), group_scales, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_factor_reproduces_the_inverse() {
        let k = 13;
        // A well-conditioned SPD matrix: A Aᵀ + I.
        let a: Vec<f64> = (0..k * k).map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0).collect();
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] =
                    (0..k).map(|t| a[i * k + t] * a[j * k + t]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let perm: Vec<usize> = (0..k).rev().collect();
        let u = inverse_hessian_factor(&h, k, &perm, 0.0).unwrap();
        // (UᵀU) · Hp must be the identity.
        for i in 0..k {
            for j in 0..k {
                let mut acc = 0.0f64;
                for t in 0..k {
                    let utu: f64 = (0..k).map(|s| u[(s, i)] as f64 * u[(s, t)] as f64).sum();
                    acc += utu * h[perm[t] * k + perm[j]];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((acc - want).abs() < 1e-4, "({i},{j}) = {acc}");
            }
            for j in 0..i {
                assert_eq!(u[(i, j)], 0.0);
            }
        }
    }
}
