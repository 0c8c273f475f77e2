//! Calibration statistics of one linear layer's input, accumulated over batches.
//!
//! What the quantizers need from the calibration activations X (tokens × K):
//! - the per-channel absmax `max_t |X[t,k]|` (smoothing rules),
//! - the Gram matrix `XᵀX`, summed in f64 so that any number of tokens streams through
//!   (GPTQ's Hessian is `H = 2XᵀX / tokens`; the clipping search's output error is `e H eᵀ`),
//! - a bounded, uniformly drawn sample of rows (the adaptive smoothing search runs the real per-token
//!   int8 quantizer on them, which no second-order statistic can stand in for).
//!
//! Feeding the same rows in any batching gives the same absmax, token count and sample, and the same
//! Gram matrix up to f64 summation order.
//!
//! Cost: the lower triangle of `XᵀX` is T·K² f64 flops (69 Gflop for 4096 tokens at K = 4096), one
//! faer GEMM per batch; reading it back ([`CalibStats::hessian`]) is one pass over K²·8 bytes.
//! Accumulating blocks of tokens in f32 and only their sums in f64 would halve the GEMM's cost, but
//! round every product to 24 bits: GPTQ's results would change, so it stays f64.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, MatMut, MatRef};

use rayon::prelude::*;

use super::rows::clear_upper_simd_state;
use crate::error::{Error, Result};
use crate::format::{check_finite, check_k, check_len, check_nonzero};

/// Default number of token rows kept for the adaptive smoothing search.
pub const DEFAULT_MAX_SAMPLES: usize = 512;

/// Rows converted to f64 at a time while accumulating `XᵀX` (bounds the temporary copy).
const GRAM_CHUNK_ROWS: usize = 1024;

/// Streaming calibration statistics of a K-wide activation (see the module docs).
#[derive(Clone, Debug)]
pub struct CalibStats {
    k: usize,
    tokens: usize,
    absmax: Vec<f32>,
    /// Σ xᵀx over all tokens, K×K column-major; only the lower triangle is accumulated.
    gram_lower: Vec<f64>,
    samples: Vec<f32>,
    max_samples: usize,
    rng: u64,
}

/// SplitMix64: a fixed-seed generator so that the drawn sample is reproducible.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CalibStats {
    /// Empty statistics for a K-wide input, keeping up to [`DEFAULT_MAX_SAMPLES`] sample rows.
    pub fn new(k: usize) -> Result<Self> {
        Self::with_max_samples(k, DEFAULT_MAX_SAMPLES)
    }

    /// Empty statistics keeping up to `max_samples` rows (reservoir sampling, fixed seed).
    ///
    /// The Gram matrix takes K²·8 bytes (32 GiB at K = 65 536): when the allocator cannot provide
    /// it, or K² overflows `usize` (32-bit targets), this is [`Error::OutOfMemory`], not an abort.
    pub fn with_max_samples(k: usize, max_samples: usize) -> Result<Self> {
        check_k(k)?;
        let elems = k.checked_mul(k);
        let bytes = (k as u64) * (k as u64) * 8;
        let mut gram_lower = Vec::new();
        elems.and_then(|e| gram_lower.try_reserve_exact(e).ok()).ok_or_else(|| Error::OutOfMemory {
            backend: None,
            what: "calibration Gram matrix XᵀX (K²·8 bytes)",
            requested: bytes,
            reason: format!("K = {k}"),
        })?;
        gram_lower.resize(k * k, 0.0);
        Ok(CalibStats {
            k,
            tokens: 0,
            absmax: vec![0.0; k],
            gram_lower,
            samples: Vec::new(),
            max_samples,
            rng: 0x5EED_CA11_B8A7_E000,
        })
    }

    /// Adds a batch of `m` tokens, X row-major m×K. A non-finite value is an error and leaves the
    /// statistics unchanged.
    pub fn update(&mut self, x: &[f32], m: usize) -> Result<()> {
        check_nonzero("M", m)?;
        // Saturating: an M·K past usize matches no slice length, and must not overflow.
        check_len("calibration activations (M·K)", m.saturating_mul(self.k), x.len())?;
        check_finite("calibration activations", x)?;
        let k = self.k;
        for row in x.chunks_exact(k) {
            for (a, &v) in self.absmax.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
            // Reservoir sampling (Algorithm R): every token seen so far is kept with equal probability.
            let t = self.tokens;
            if self.samples.len() < self.max_samples.saturating_mul(k) {
                self.samples.extend_from_slice(row);
            } else if self.max_samples > 0 {
                let j = (splitmix64(&mut self.rng) % (t as u64 + 1)) as usize;
                if j < self.max_samples {
                    self.samples[j * k..(j + 1) * k].copy_from_slice(row);
                }
            }
            self.tokens += 1;
        }
        let mut gram = MatMut::from_column_major_slice_mut(&mut self.gram_lower, k, k);
        for chunk in x.chunks(GRAM_CHUNK_ROWS * k) {
            let rows = chunk.len() / k;
            let x64: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
            // Row-major rows×K is column-major K×rows: this view is Xᵀ.
            let xt = MatRef::from_column_major_slice(&x64, k, rows);
            // Lower triangle of XᵀX only: half the flops of a full product; symmetrized on read.
            matmul(
                gram.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                xt,
                BlockStructure::Rectangular,
                xt.transpose(),
                BlockStructure::Rectangular,
                1.0,
                faer::get_global_parallelism(),
            );
            clear_upper_simd_state();
        }
        Ok(())
    }

    /// Input width K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Tokens seen so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Per-channel `max_t |X[t,k]|`, length K.
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    /// The kept sample rows, row-major `rows × K`, and their count.
    pub fn samples(&self) -> (&[f32], usize) {
        (&self.samples, self.samples.len() / self.k)
    }

    /// `XᵀX` summed over all tokens, K×K, symmetric (row-major and column-major alike).
    pub fn gram(&self) -> Vec<f64> {
        self.symmetric(None)
    }

    /// GPTQ's Hessian of the layer's squared output error, `H = 2XᵀX / tokens`, K×K symmetric.
    /// All zeros before the first update.
    pub fn hessian(&self) -> Vec<f64> {
        let scale = if self.tokens == 0 { 0.0 } else { 2.0 / self.tokens as f64 };
        self.symmetric(Some(scale))
    }

    /// The full symmetric matrix from the accumulated lower triangle, each entry times `scale`.
    ///
    /// Row r of the result is column r of the lower triangle (entries c < r, a strided read) followed by
    /// row r of it (entries c ≥ r, contiguous). Bands of 64 output rows (2 MiB at K = 4096) are filled
    /// in parallel; within a band the strided part is read column by column, 64 contiguous values at
    /// a time, so every cache line of the K² f64 is read once rather than once per element.
    fn symmetric(&self, scale: Option<f64>) -> Vec<f64> {
        const BAND: usize = 64;
        let k = self.k;
        let lower = &self.gram_lower;
        let f = |v: f64| scale.map_or(v, |s| v * s);
        let mut out = vec![0.0f64; k * k];
        out.par_chunks_mut(BAND * k).enumerate().for_each(|(b, rows)| {
            let (r0, nr) = (b * BAND, rows.len() / k);
            // c ≥ r: entry (c, r) of the lower triangle, stored at r·k + c (column-major).
            for rr in 0..nr {
                let r = r0 + rr;
                for (d, &v) in rows[rr * k + r..(rr + 1) * k].iter_mut().zip(&lower[r * k + r..(r + 1) * k]) {
                    *d = f(v);
                }
            }
            // c < r: entry (r, c), stored at c·k + r; column c holds rows r0.. contiguously.
            for c in 0..r0 + nr - 1 {
                let first = (c + 1).max(r0);
                for r in first..r0 + nr {
                    rows[(r - r0) * k + c] = f(lower[c * k + r]);
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..m * k).map(|_| (splitmix64(&mut s) % 2001) as f32 / 100.0 - 10.0).collect()
    }

    #[test]
    fn streaming_equals_one_shot() {
        let (m, k) = (700, 24);
        let x = data(m, k, 3);
        let mut one = CalibStats::with_max_samples(k, 50).unwrap();
        one.update(&x, m).unwrap();
        let mut streamed = CalibStats::with_max_samples(k, 50).unwrap();
        let mut start = 0;
        for batch in [1, 7, 100, 92, 300, 200] {
            streamed.update(&x[start * k..(start + batch) * k], batch).unwrap();
            start += batch;
        }
        assert_eq!(start, m);
        assert_eq!(one.tokens(), streamed.tokens());
        assert_eq!(one.absmax(), streamed.absmax());
        assert_eq!(one.samples(), streamed.samples());
        let (a, b) = (one.hessian(), streamed.hessian());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "H[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn hessian_matches_definition() {
        let (m, k) = (37, 9);
        let x = data(m, k, 11);
        let mut st = CalibStats::new(k).unwrap();
        st.update(&x, m).unwrap();
        let h = st.hessian();
        for a in 0..k {
            for b in 0..k {
                let want: f64 =
                    (0..m).map(|t| x[t * k + a] as f64 * x[t * k + b] as f64).sum::<f64>() * 2.0 / m as f64;
                assert!((h[a * k + b] - want).abs() <= 1e-9 * want.abs().max(1.0));
            }
        }
        let want_max: Vec<f32> =
            (0..k).map(|c| (0..m).map(|t| x[t * k + c].abs()).fold(0.0, f32::max)).collect();
        assert_eq!(st.absmax(), &want_max[..]);
        assert_eq!(st.samples().1, m);
    }

    #[test]
    fn gram_and_hessian_mirror_the_lower_triangle_exactly() {
        // K = 131: three bands of the parallel fill, the last one partial.
        let (m, k) = (40, 131);
        let mut st = CalibStats::new(k).unwrap();
        st.update(&data(m, k, 5), m).unwrap();
        let (g, h) = (st.gram(), st.hessian());
        let scale = 2.0 / m as f64;
        for i in 0..k {
            for j in 0..k {
                let lower = st.gram_lower[i.min(j) * k + i.max(j)];
                assert_eq!(g[i * k + j].to_bits(), lower.to_bits(), "gram ({i},{j})");
                assert_eq!(h[i * k + j].to_bits(), (lower * scale).to_bits(), "hessian ({i},{j})");
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let mut st = CalibStats::new(4).unwrap();
        assert!(st.update(&[1.0; 7], 2).is_err());
        assert!(st.update(&[1.0, f32::NAN, 0.0, 0.0], 1).is_err());
        assert_eq!(st.tokens(), 0);
        assert!(st.hessian().iter().all(|&v| v == 0.0));
        st.update(&[1.0, 2.0, 3.0, 4.0], 1).unwrap();
        assert_eq!(st.tokens(), 1);
    }
}
