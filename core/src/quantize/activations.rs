use rayon::prelude::*;

use super::rne_small;

use crate::error::Result;
use crate::format::QuantizedActivations;
use crate::gemm::check_transform_args;
use crate::transform::ActivationTransform;

/// Quantizes activations X (M×K row-major, f32) per token, after multiplying column k by `smooth[k]`
/// when a smoothing vector is given:
/// `x' = x · smooth[k]`, `s_x[m] = max_k |x'| / 127`, `q = clamp(rne(x' / s_x), -127, 127)`.
///
/// All arithmetic is single f32 operations, so a GPU that rounds each operation correctly matches it
/// bit for bit. An all-zero row gets `s_x = 0` and `q = 0`. A non-finite input, or an input that the
/// smoothing vector scales to infinity, is an [`Error::NonFinite`](crate::Error::NonFinite).
///
/// The same as [`quantize_activations_with`] with [`ActivationTransform::smoothed`]`(smooth)`.
pub fn quantize_activations(
    x: &[f32],
    m: usize,
    k: usize,
    smooth: Option<&[f32]>,
) -> Result<QuantizedActivations> {
    quantize_activations_with(x, m, k, &ActivationTransform::smoothed(smooth))
}

/// Quantizes activations X (M×K row-major, f32) per token after the transform `t`: smoothing
/// `x' = x · smooth[k]`, then, with a Hadamard block b, `y = x' · H_b` per block of b channels in the
/// fixed butterfly order of [`crate::transform`]; then `s_x[m] = max_k |y| / 127`,
/// `q = clamp(rne(y / s_x), -127, 127)`.
///
/// Every step is one correctly rounded f32 operation (products, butterfly additions and
/// subtractions, the division), so a backend that rounds each one correctly, subnormals kept,
/// matches it bit for bit. Errors: the shape checks, a bad block ([`Error::InvalidValue`]
/// "Hadamard block"), and [`Error::NonFinite`] for a non-finite input, one the smoothing vector
/// scales to infinity ("smoothed activations"), or one the rotation takes there ("rotated
/// activations"); the first failing row decides.
///
/// [`Error::InvalidValue`]: crate::Error::InvalidValue
/// [`Error::NonFinite`]: crate::Error::NonFinite
pub fn quantize_activations_with(
    x: &[f32],
    m: usize,
    k: usize,
    t: &ActivationTransform<'_>,
) -> Result<QuantizedActivations> {
    check_transform_args(x.len(), m, k, t)?;
    let rows: Vec<Result<(f32, Vec<i8>)>> = x
        .par_chunks(k)
        .enumerate()
        .map(|(row, xs)| {
            let mut y = Vec::with_capacity(k);
            t.apply_row(row, xs, &mut y)?;
            let absmax = y.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let scale = absmax / 127.0;
            let q = if scale == 0.0 {
                vec![0; k]
            } else {
                // |v / scale| ≤ 127 (within an ulp), well inside rne_small's range; clamping first is exact.
                y.iter().map(|&v| rne_small((v / scale).clamp(-127.0, 127.0)) as i8).collect()
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
