use rayon::prelude::*;

use super::rne_small;

use crate::error::{Error, Result};
use crate::format::QuantizedActivations;
use crate::gemm::check_activation_args;

/// Quantizes activations X (M×K row-major, f32) per token, after multiplying column k by `smooth[k]`
/// when a smoothing vector is given:
/// `x' = x · smooth[k]`, `s_x[m] = max_k |x'| / 127`, `q = clamp(rne(x' / s_x), -127, 127)`.
///
/// All arithmetic is single f32 operations, so a GPU that rounds each operation correctly matches it
/// bit for bit. An all-zero row gets `s_x = 0` and `q = 0`. A non-finite input, or an input that the
/// smoothing vector scales to infinity, is an [`Error::NonFinite`].
pub fn quantize_activations(
    x: &[f32],
    m: usize,
    k: usize,
    smooth: Option<&[f32]>,
) -> Result<QuantizedActivations> {
    check_activation_args(x.len(), m, k, smooth)?;
    let rows: Vec<Result<(f32, Vec<i8>)>> = x
        .par_chunks(k)
        .enumerate()
        .map(|(row, xs)| {
            let scaled: Vec<f32> = match smooth {
                Some(s) => xs.iter().zip(s).map(|(&v, &s)| v * s).collect(),
                None => xs.to_vec(),
            };
            if let Some(i) = scaled.iter().position(|v| !v.is_finite()) {
                let what = if xs[i].is_finite() { "smoothed activations" } else { "activations" };
                return Err(Error::NonFinite { what, index: row * k + i, value: scaled[i] });
            }
            let absmax = scaled.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let scale = absmax / 127.0;
            let q = if scale == 0.0 {
                vec![0; k]
            } else {
                // |v / scale| ≤ 127 (within an ulp), well inside rne_small's range; clamping first is exact.
                scaled.iter().map(|&v| rne_small((v / scale).clamp(-127.0, 127.0)) as i8).collect()
            };
            Ok((scale, q))
        })
        .collect();
    let mut values = Vec::with_capacity(m * k);
    let mut scales = Vec::with_capacity(m);
    for r in rows {
        let (s, q) = r?;
        scales.push(s);
        values.extend_from_slice(&q);
    }
    QuantizedActivations::new(m, k, values, scales)
}
