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
//!
//! Work, for N = K = 4096 and B = 128 (`core/examples/quantizer_speed.rs` measures it): the f64
//! Cholesky and triangular inverse, K³/3 flops each (faer, 46 Gflop together); the lazy GEMMs, N·K²
//! f32 flops (67 Gflop); the in-block updates, N·K·B (2 Gflop); at each group entry the search of 16
//! `s_g` over the group's values (16·N·K weighted errors in all); and a few O(N·K) passes into and out
//! of processing order. Within a block, each thread carries a band of rows through all of the block's
//! columns ([`BandBlock`], compiled for the widest vector unit); a band's rows are the vector lanes,
//! and every row does the arithmetic of the column-by-column description above, in its order.
//!
//! Rejected, to keep results bit for bit: the factorization in f32 (half the flops of the f64 one,
//! but less precision than the statistics carry); the left-looking form with the Cholesky factor
//! itself, which skips the triangular inverse but changes the partially updated weights that the
//! group-scale search sees at a group's entry; and the in-block updates as small GEMMs, which
//! reassociate their sums for a few percent of the time.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef};
use rayon::prelude::*;

use super::rows::{
    SG, clear_upper_simd_state, group_scales_canonical, pick_group_scale, quantize_value, weighted_error,
};
use crate::error::{Error, Result};
use crate::format::{Granularity, W4A8Weights, check_len};
use crate::quantize::{Kernel, dispatch, pack_int4_rows};

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

/// `U` (K×K, upper, f32) with `UᵀU = Hp⁻¹`, where `Hp = H[perm][:, perm] + λI` and H's diagonal is
/// `diag` (H with its dead channels' diagonal set to 1).
///
/// Work: one f64 Cholesky and one triangular inverse, K³/3 flops each (faer, all threads); building
/// `J Hp J` reads H once. It is gathered row-major — row a is row π(a) = perm[K−1−a] of H, permuted by
/// π — because a row of H is contiguous, while column-major order would read H at a stride of K·8
/// bytes (a cache and TLB miss per element); a tiled parallel transpose then gives faer the lower
/// triangle in the zeroed column-major matrix that `Llt::new` would build, factored by the same
/// `cholesky_in_place` call with the same settings: the factor is `Llt`'s, bit for bit.
fn inverse_hessian_factor(h: &[f64], diag: &[f64], k: usize, perm: &[usize], damp: f64) -> Result<Mat<f32>> {
    let mean_diag = diag.iter().sum::<f64>() / k as f64;
    let mut lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    let pi = |a: usize| perm[k - 1 - a];
    // J Hp J, row-major (without λ): row a is row π(a) of H gathered by π.
    let mut jhj = vec![0.0f64; k * k];
    jhj.par_chunks_mut(k).enumerate().for_each(|(a, row)| {
        let src = &h[pi(a) * k..(pi(a) + 1) * k];
        for (b, v) in row.iter_mut().enumerate() {
            *v = src[pi(b)];
        }
    });
    let par = faer::get_global_parallelism();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(k, par, Default::default()));
    for _ in 0..=DAMP_RETRIES {
        for a in 0..k {
            jhj[a * k + a] = diag[pi(a)] + lambda;
        }
        // What `Llt::new(·, Side::Lower)` factors: the lower triangle of J Hp J in a zeroed faer matrix,
        // here transposed from the row-major buffer in parallel, 64 columns per task and 64 rows at a
        // time (faer's own copy reads it element by element at a stride of K·8 bytes).
        let mut l = Mat::<f64>::zeros(k, k);
        l.par_col_chunks_mut(TILE).enumerate().for_each(|(cb, mut cols)| {
            let b0 = cb * TILE;
            for a0 in (b0..k).step_by(TILE) {
                for a in a0..(a0 + TILE).min(k) {
                    let row = &jhj[a * k..(a + 1) * k];
                    for bb in 0..cols.ncols().min(a + 1 - b0) {
                        cols[(a, bb)] = row[b0 + bb];
                    }
                }
            }
        });
        let factored = cholesky_in_place(
            l.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        );
        clear_upper_simd_state();
        if factored.is_ok() {
            // L⁻¹ (faer reads only the lower triangle of `l`, and writes and reads back only the lower
            // triangle of its destination) into the buffer of J Hp J, which is no longer needed.
            let mut linv = MatMut::from_column_major_slice_mut(&mut jhj, k, k);
            invert_lower_triangular(linv.as_mut(), l.as_ref(), par);
            clear_upper_simd_state();
            // U = J L⁻¹ J: column b of U is column K−1−b of L⁻¹ reversed, zero below the diagonal.
            let linv = linv.as_ref();
            let mut u = Mat::<f32>::zeros(k, k);
            u.par_col_chunks_mut(1).enumerate().for_each(|(b, mut col)| {
                for a in 0..=b {
                    col[(a, 0)] = linv[(k - 1 - a, k - 1 - b)] as f32;
                }
            });
            return Ok(u);
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

/// Side of the tiles of the transposes below: 64 rows or columns at a time, so that the lines a tile
/// touches stay in cache until it is done with them.
const TILE: usize = 64;

/// W (N×K row-major) as GPTQ's working copy: N×K column-major in processing order, column i holding
/// canonical column `perm[i]`, zero for dead channels.
///
/// A permuted transpose: each task fills 64 processing columns, 64 rows at a time, so its writes are
/// 64 contiguous floats per column and its reads stay within 64 rows of W (1 MiB at K = 4096, in L2),
/// rather than one read per element at a stride of K·4 bytes across all of W.
fn working_copy(w: &[f32], n: usize, k: usize, perm: &[usize], dead: &[bool]) -> Vec<f32> {
    let mut wp = vec![0.0f32; n * k];
    wp.par_chunks_mut(TILE * n).enumerate().for_each(|(cb, cols)| {
        let cs = &perm[cb * TILE..cb * TILE + cols.len() / n];
        for r0 in (0..n).step_by(TILE) {
            for (col, &c) in cols.chunks_exact_mut(n).zip(cs) {
                if !dead[c] {
                    for (r, v) in col.iter_mut().enumerate().take((r0 + TILE).min(n)).skip(r0) {
                        *v = w[r * k + c];
                    }
                }
            }
        }
    });
    wp
}

/// The int4 values back in canonical row-major order from column-major processing order
/// (`q_proc[i·N + r]` is row r, canonical column `perm[i]`): per band of 64 rows, one contiguous
/// 64-byte read per column.
fn canonical_int4(q_proc: &[i8], n: usize, k: usize, invperm: &[usize]) -> Vec<i8> {
    let mut q = vec![0i8; n * k];
    q.par_chunks_mut(TILE * k).enumerate().for_each(|(t, rows)| {
        let r0 = t * TILE;
        let nr = rows.len() / k;
        for (c, &i) in invperm.iter().enumerate() {
            for (rr, &v) in q_proc[i * n + r0..i * n + r0 + nr].iter().enumerate() {
                rows[rr * k + c] = v;
            }
        }
    });
    q
}

/// One band of rows' private state across the blocks.
struct Band {
    /// First row.
    r0: usize,
    /// Rows.
    nr: usize,
    /// The block's columns of these rows, updated in place (nr × B, column-major).
    buf: Vec<f32>,
    /// Scaled quantization errors of the block (nr × B, column-major).
    err: Vec<f32>,
    /// The block's int4 values (nr × B, column-major).
    q: Vec<i8>,
    /// Group-scale search: squared error per candidate s_g and row (16 × nr).
    search: Vec<f64>,
}

/// Everything the bands share while processing one block.
struct Block<'a> {
    n: usize,
    i1: usize,
    i2: usize,
    /// The not yet processed columns (column-major N×K in processing order, lazily updated).
    wp: &'a [f32],
    /// `U[i1.., i1..]` of the block, B×B row-major.
    ublk: &'a [f32],
    perm: &'a [usize],
    invperm: &'a [usize],
    group_entry: &'a [Option<usize>],
    group: Option<usize>,
    gstride: usize,
    s_ch: &'a [f32],
    sg_col_weights: Option<&'a [f64]>,
}

/// One band through one block: the columns i1..i2 of rows r0..r0+nr, column by column.
struct BandBlock<'a> {
    blk: &'a Block<'a>,
    band: &'a mut Band,
    /// The band's group scales, row-major nr × max(groups, 1).
    sg_band: &'a mut [u8],
}

impl Kernel for BandBlock<'_> {
    type Output = ();

    /// Per column: the group-scale search when a group starts (16·g·nr weighted errors, the rows as
    /// vector lanes, each row summing its group in canonical column order exactly as the scalar search
    /// did), quantize (nr divisions), the scaled error, and the in-block update of the later columns of
    /// the block (contiguous axpys of nr: N·K·B flops over the whole layer).
    #[inline(always)]
    fn run(self) {
        let BandBlock { blk, band, sg_band } = self;
        let Block { n, i1, i2, wp, ublk, perm, invperm, group_entry, group, gstride, s_ch, sg_col_weights } =
            *blk;
        let Band { r0, nr, buf, err, q, search } = band;
        let (r0, nr) = (*r0, *nr);
        let bw = i2 - i1;
        // The last block may be narrower than the buffers.
        let (buf, err, q) = (&mut buf[..nr * bw], &mut err[..nr * bw], &mut q[..nr * bw]);
        let s_band = &s_ch[r0..r0 + nr];
        for ii in 0..bw {
            buf[ii * nr..(ii + 1) * nr].copy_from_slice(&wp[(i1 + ii) * n + r0..(i1 + ii) * n + r0 + nr]);
        }
        for ii in 0..bw {
            let i = i1 + ii;
            let c = perm[i];
            if let (Some(g), Some(gi)) = (group, group_entry[i]) {
                search.fill(0.0);
                for cc in gi * g..(gi + 1) * g {
                    let p = invperm[cc];
                    // p ≥ i: no column of this group has been processed yet.
                    let col = if p < i2 {
                        &buf[(p - i1) * nr..(p - i1 + 1) * nr]
                    } else {
                        &wp[p * n + r0..p * n + r0 + nr]
                    };
                    let cw = sg_col_weights.map_or(1.0, |wts| wts[cc]);
                    for (s, acc) in search.chunks_exact_mut(nr).enumerate() {
                        let sf = (s + 1) as f32;
                        for ((a, &v), &sc) in acc.iter_mut().zip(col).zip(s_band) {
                            *a += weighted_error(v, sc * sf, cw);
                        }
                    }
                }
                for (rr, &sc) in s_band.iter().enumerate() {
                    let e: [f64; SG] = std::array::from_fn(|s| search[s * nr + rr]);
                    sg_band[rr * gstride + gi] = if sc == 0.0 { 1 } else { pick_group_scale(&e) };
                }
            }
            let d = ublk[ii * bw + ii];
            let (done, rest) = buf.split_at_mut((ii + 1) * nr);
            let col = &done[ii * nr..];
            let ecol = &mut err[ii * nr..(ii + 1) * nr];
            let qcol = &mut q[ii * nr..(ii + 1) * nr];
            for rr in 0..nr {
                let step = match group {
                    None => s_band[rr],
                    Some(g) => s_band[rr] * sg_band[rr * gstride + c / g] as f32,
                };
                let qv = quantize_value(col[rr], step);
                qcol[rr] = qv;
                ecol[rr] = (col[rr] - qv as f32 * step) / d;
            }
            // In-block update of the columns after i (contiguous axpys, vectorized).
            for (jj, target) in rest.chunks_exact_mut(nr).enumerate() {
                let hij = ublk[ii * bw + ii + 1 + jj];
                if hij != 0.0 {
                    for (t, &e) in target.iter_mut().zip(ecol.iter()) {
                        *t -= e * hij;
                    }
                }
            }
        }
    }
}

/// Runs GPTQ on W (N×K row-major f32) with Hessian `h` (K×K symmetric), fixed per-row channel scales
/// `s_ch`, and optional per-column weights for the group-scale search (canonical order). Returns the
/// quantized weights without bias.
///
/// Work for N = K = 4096, g128: the Cholesky and triangular inverse (2·K³/3 f64 flops), the lazy
/// tail updates (N·K² f32 flops, faer GEMMs), the in-block updates (N·K·B flops), the group-scale
/// searches (16·N·K weighted errors) and the copies in and out of processing order (a few passes over
/// N·K). Every row's arithmetic is that of the column-by-column algorithm above, in the same order.
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
    if let Some(i) = h.par_iter().position_first(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "calibration Hessian", index: i, value: h[i] as f32 });
    }

    // Channels never activated during calibration carry no information: give them a unit diagonal
    // (so H stays invertible) and drop their weights, as the reference implementation does.
    let dead: Vec<bool> = (0..k).map(|j| h[j * k + j] == 0.0).collect();
    let diag: Vec<f64> = (0..k).map(|j| if dead[j] { 1.0 } else { h[j * k + j] }).collect();

    let mut perm: Vec<usize> = (0..k).collect();
    if cfg.act_order {
        // Stable sort: equal diagonals keep canonical order, so the result is deterministic.
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let mut invperm = vec![0usize; k];
    for (i, &c) in perm.iter().enumerate() {
        invperm[c] = i;
    }
    let u = inverse_hessian_factor(h, &diag, k, &perm, cfg.damp)?;

    // Working copy: column-major N×K in processing order, so a column is a contiguous slice and the
    // not-yet-processed tail is one contiguous matrix for the lazy GEMM.
    let mut wp = working_copy(w, n, k, &perm, &dead);

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

    // int4 values, column-major N×K in processing order.
    let mut q_proc = vec![0i8; n * k];
    // Per channel there are no group scales; one dummy byte per row keeps the band zip aligned.
    let gstride = groups.max(1);
    let mut sg_rows = vec![1u8; n * gstride];
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = n.div_ceil(threads * 4).clamp(1, 256);
    let mut bands: Vec<Band> = (0..n)
        .step_by(chunk_rows)
        .map(|r0| {
            let nr = chunk_rows.min(n - r0);
            Band {
                r0,
                nr,
                buf: vec![0.0; nr * block],
                err: vec![0.0; nr * block],
                q: vec![0; nr * block],
                search: vec![0.0; if group.is_some() { SG * nr } else { 0 }],
            }
        })
        .collect();
    let mut err_all = vec![0.0f32; n * block];

    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + block).min(k);
        let bw = i2 - i1;
        let ublk: Vec<f32> = (0..bw * bw).map(|x| u[(i1 + x / bw, i1 + x % bw)]).collect();
        let blk = Block {
            n,
            i1,
            i2,
            wp: &wp,
            ublk: &ublk,
            perm: &perm,
            invperm: &invperm,
            group_entry: &group_entry,
            group,
            gstride,
            s_ch,
            sg_col_weights,
        };
        bands
            .par_iter_mut()
            .zip(sg_rows.par_chunks_mut(chunk_rows * gstride))
            .for_each(|(band, sg_band)| dispatch(BandBlock { blk: &blk, band, sg_band }));

        // Gather the bands' errors (Err, N×B column-major) and int4 values, column by column.
        err_all[..n * bw]
            .par_chunks_mut(n)
            .zip(q_proc[i1 * n..i2 * n].par_chunks_mut(n))
            .enumerate()
            .for_each(|(ii, (ecol, qcol))| {
                for b in &bands {
                    let src = ii * b.nr..(ii + 1) * b.nr;
                    ecol[b.r0..b.r0 + b.nr].copy_from_slice(&b.err[src.clone()]);
                    qcol[b.r0..b.r0 + b.nr].copy_from_slice(&b.q[src]);
                }
            });
        if i2 < k {
            // W[:, i2..] -= Err · U[i1..i2, i2..].
            let err_m = MatRef::from_column_major_slice(&err_all[..n * bw], n, bw);
            let tail = MatMut::from_column_major_slice_mut(&mut wp[i2 * n..], n, k - i2);
            matmul(
                tail,
                Accum::Add,
                err_m,
                u.as_ref().submatrix(i1, i2, bw, k - i2),
                -1.0f32,
                faer::get_global_parallelism(),
            );
            clear_upper_simd_state();
        }
        i1 = i2;
    }
    let qweight = pack_int4_rows(&canonical_int4(&q_proc, n, k, &invperm), k)?;
    let group_scales = if groups == 0 { Vec::new() } else { group_scales_canonical(&sg_rows, n, groups) };
    W4A8Weights::new(n, k, granularity, qweight, s_ch.to_vec(), group_scales, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Side;

    /// The group-scale search as first written (one candidate at a time, `round_ties_even`).
    fn reference_quantize(w: f32, step: f32) -> i8 {
        if step == 0.0 { 0 } else { (w / step).round_ties_even().clamp(-8.0, 7.0) as i8 }
    }

    fn reference_group_scale(vals: &[f32], weights: Option<&[f64]>, s_ch: f32) -> u8 {
        if s_ch == 0.0 {
            return 1;
        }
        let (mut best, mut best_err) = (1u8, f64::INFINITY);
        for s in 1..=crate::format::MAX_GROUP_SCALE {
            let step = s_ch * s as f32;
            let err: f64 = vals
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let d = w as f64 - step as f64 * reference_quantize(w, step) as f64;
                    d * d * weights.map_or(1.0, |c| c[i])
                })
                .sum();
            if err < best_err {
                (best, best_err) = (s, err);
            }
        }
        best
    }

    // GPTQ as first written: the factor gathered column by column from H, one task per band of rows
    // writing q row-major, the group-scale search one row at a time on gathered values. The
    // restructured `gptq_quantize` must reproduce it bit for bit.
    fn reference_factor(h: &[f64], k: usize, perm: &[usize], damp: f64) -> Result<Mat<f32>> {
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
                return Ok(Mat::from_fn(k, k, |a, b| {
                    if a <= b { linv[(k - 1 - a, k - 1 - b)] as f32 } else { 0.0 }
                }));
            }
            lambda = if lambda > 0.0 { lambda * 10.0 } else { 1e-6 };
        }
        Err(Error::InvalidValue {
            what: "calibration Hessian",
            index: 0,
            reason: format!("not positive definite even with dampening {lambda:e}"),
        })
    }
    fn reference_gptq(
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
        let u = reference_factor(&h, k, &perm, cfg.damp)?;

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
                                    let v = if p < i2 {
                                        buf[(p - i1) * nr + rr]
                                    } else {
                                        wp_ref[p * n + r0 + rr]
                                    };
                                    vals.push(v);
                                    if let Some(wts) = sg_col_weights {
                                        cw.push(wts[cc]);
                                    }
                                }
                                let weights = sg_col_weights.map(|_| &cw[..]);
                                sg_band[rr * gstride + gi] =
                                    reference_group_scale(&vals, weights, s_ch[r0 + rr]);
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
                            let qv = reference_quantize(col[rr], step);
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

    #[test]
    fn restructured_gptq_equals_the_first_implementation() {
        use crate::rng::SplitMix64;
        let mut rng = SplitMix64::new(2024);
        // Odd sizes on purpose: N not a multiple of the band height, K of 64 with 3 blocks of 96.
        // K = 101: faer pads its matrices' columns, our buffers do not.
        for &(n, k, m) in &[(37usize, 192usize, 300usize), (70, 128, 90), (9, 64, 40), (11, 101, 150)] {
            // Correlated inputs (rank 6 plus noise) with uneven channel energies and one dead channel.
            let a: Vec<f32> = (0..6 * k).map(|_| rng.normal()).collect();
            let mut x = vec![0.0f32; m * k];
            for t in 0..m {
                let z: Vec<f32> = (0..6).map(|_| rng.normal()).collect();
                for j in 0..k {
                    let v: f32 = (0..6).map(|r| z[r] * a[r * k + j]).sum::<f32>() + 0.1 * rng.normal();
                    x[t * k + j] = if j == 5 { 0.0 } else { v * (1.0 + (j * 7 % 5) as f32) };
                }
            }
            let mut stats = super::super::CalibStats::new(k).unwrap();
            stats.update(&x, m).unwrap();
            let h = stats.hessian();
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.1).collect();
            let diag: Vec<f64> = (0..k).map(|j| h[j * k + j] + 0.5).collect();
            for granularity in [
                Granularity::PerChannel,
                Granularity::PerGroup { group_size: 32 },
                Granularity::PerGroup { group_size: 64 },
            ] {
                if granularity.validate(k).is_err() {
                    continue;
                }
                let s_ch: Vec<f32> = w
                    .chunks(k)
                    .map(|row| super::super::rows::default_channel_scale(row, granularity) * 0.9)
                    .collect();
                for sg_col_weights in [None, Some(&diag[..])] {
                    for cfg in [
                        GptqConfig::default(),
                        GptqConfig { act_order: false, ..Default::default() },
                        GptqConfig { block_size: 96, ..Default::default() },
                    ] {
                        let scales = RowScales { granularity, s_ch: &s_ch, sg_col_weights };
                        let fast = gptq_quantize(&w, n, k, &h, &scales, &cfg).unwrap();
                        let slow = reference_gptq(&w, n, k, &h, &scales, &cfg).unwrap();
                        let what =
                            format!("{n}x{k} {granularity} weights={} {cfg:?}", sg_col_weights.is_some());
                        assert_eq!(fast.int4(), slow.int4(), "int4, {what}");
                        assert_eq!(fast.group_scales(), slow.group_scales(), "group scales, {what}");
                        assert_eq!(fast.channel_scales(), slow.channel_scales(), "{what}");
                    }
                }
            }
        }
    }

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
        let diag: Vec<f64> = (0..k).map(|j| h[j * k + j]).collect();
        let u = inverse_hessian_factor(&h, &diag, k, &perm, 0.0).unwrap();
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
