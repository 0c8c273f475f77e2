//! The W4A8 number format: quantized activations and int4 weights in canonical storage.
//!
//! Every constructor validates every invariant, so a value of these types is always well formed
//! and backends may rely on it without checking again.

use crate::error::{Error, Result};
use crate::pack::{pack_int4, unpack_int4_row, words_per_row};

/// Largest K for which `Σ_k q_x · w8` is exact in int32: 127 · 128 · 65 536 < 2³¹.
pub const MAX_K: usize = 65_536;

/// The group sizes the per-group format supports.
pub const GROUP_SIZES: [usize; 4] = [32, 64, 128, 256];

/// The default group size.
pub const DEFAULT_GROUP_SIZE: usize = 128;

/// Largest integer group scale: `s_g · q_w ∈ [-128, 112]` must fit int8.
pub const MAX_GROUP_SCALE: u8 = 16;

/// How the int4 weights are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One f32 scale per output channel: `W[n,k] ≈ s_ch[n] · q_w[n,k]`.
    PerChannel,
    /// Two-level scales over groups of `group_size` consecutive k:
    /// `W[n,k] ≈ s_ch[n] · s_g[k / g, n] · q_w[n,k]`, with `s_g` an integer in [1, 16].
    PerGroup {
        /// One of [`GROUP_SIZES`].
        group_size: usize,
    },
}

impl Granularity {
    /// The group size, or `None` per channel.
    pub fn group_size(self) -> Option<usize> {
        match self {
            Granularity::PerChannel => None,
            Granularity::PerGroup { group_size } => Some(group_size),
        }
    }

    /// Checks the group size and that it divides `k`.
    pub fn validate(self, k: usize) -> Result<()> {
        if let Granularity::PerGroup { group_size } = self {
            if !GROUP_SIZES.contains(&group_size) {
                return Err(Error::UnsupportedGroupSize { group_size });
            }
            if !k.is_multiple_of(group_size) {
                return Err(Error::KNotMultipleOfGroup { k, group_size });
            }
        }
        Ok(())
    }

    /// Number of groups along K (0 per channel).
    pub fn groups(self, k: usize) -> usize {
        self.group_size().map_or(0, |g| k / g)
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granularity::PerChannel => f.write_str("per-channel"),
            Granularity::PerGroup { group_size } => write!(f, "g{group_size}"),
        }
    }
}

/// Checks that a dimension is at least 1.
pub fn check_nonzero(what: &'static str, value: usize) -> Result<()> {
    if value == 0 { Err(Error::EmptyDimension { what }) } else { Ok(()) }
}

/// Checks `K` against [`MAX_K`].
pub fn check_k(k: usize) -> Result<()> {
    check_nonzero("K", k)?;
    if k > MAX_K { Err(Error::KTooLarge { k, max: MAX_K }) } else { Ok(()) }
}

/// Checks a buffer length.
pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got { Ok(()) } else { Err(Error::ShapeMismatch { what, expected, got }) }
}

/// Returns an error naming the first non-finite element of `values`.
pub fn check_finite(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { what, index, value: values[index] }),
        None => Ok(()),
    }
}

fn check_scales(what: &'static str, values: &[f32]) -> Result<()> {
    check_finite(what, values)?;
    match values.iter().position(|&v| v < 0.0) {
        Some(index) => {
            Err(Error::InvalidValue { what, index, reason: format!("scale {} is negative", values[index]) })
        }
        None => Ok(()),
    }
}

/// Per-token symmetric int8 activations: `X[m,k] ≈ scales[m] · values[m,k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    m: usize,
    k: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedActivations {
    /// Builds activations from `values` (M×K row-major, each in [-127, 127]) and `scales` (M, finite,
    /// non-negative).
    pub fn new(m: usize, k: usize, values: Vec<i8>, scales: Vec<f32>) -> Result<Self> {
        check_nonzero("M", m)?;
        check_k(k)?;
        check_len("activation values (M·K)", m.saturating_mul(k), values.len())?;
        check_len("activation scales (M)", m, scales.len())?;
        if let Some(index) = values.iter().position(|&v| v == i8::MIN) {
            return Err(Error::InvalidValue {
                what: "activation values",
                index,
                reason: "-128 is outside the symmetric range [-127, 127]".into(),
            });
        }
        check_scales("activation scales", &scales)?;
        Ok(QuantizedActivations { m, k, values, scales })
    }

    /// Rows (tokens).
    pub fn m(&self) -> usize {
        self.m
    }
    /// Columns (input features).
    pub fn k(&self) -> usize {
        self.k
    }
    /// The int8 values, M×K row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }
    /// The per-token scales, length M.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// `scales[m] · values[m,k]` as f32, M×K row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .chunks(self.k)
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&q| q as f32 * s))
            .collect()
    }
}

/// Int4 weights in canonical storage, N×K (PyTorch `Linear.weight` layout), with their scales and an
/// optional bias.
///
/// `qweight` holds N rows of ⌈K/8⌉ u32 words; nibble j of word w of row n is `q_w[n, 8w + j]`
/// (bits 4j..4j+3, two's complement), padding nibbles past K are zero. `group_scales` is (K/g)×N.
#[derive(Clone, Debug, PartialEq)]
pub struct W4A8Weights {
    n: usize,
    k: usize,
    granularity: Granularity,
    qweight: Vec<u32>,
    channel_scales: Vec<f32>,
    group_scales: Vec<u8>,
    bias: Option<Vec<f32>>,
}

impl W4A8Weights {
    /// Builds weights from canonical packed storage, checking every invariant.
    pub fn new(
        n: usize,
        k: usize,
        granularity: Granularity,
        qweight: Vec<u32>,
        channel_scales: Vec<f32>,
        group_scales: Vec<u8>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_nonzero("N", n)?;
        check_k(k)?;
        granularity.validate(k)?;
        let wpr = words_per_row(k);
        check_len("qweight (N·⌈K/8⌉ words)", n.saturating_mul(wpr), qweight.len())?;
        if !k.is_multiple_of(8) {
            // Padding nibbles (k..8·⌈K/8⌉) of the last word of each row must be zero.
            let pad_mask = !0u32 << (4 * (k % 8));
            for row in 0..n {
                let index = row * wpr + wpr - 1;
                if qweight[index] & pad_mask != 0 {
                    return Err(Error::InvalidValue {
                        what: "qweight",
                        index,
                        reason: format!("padding nibbles past K = {k} must be zero"),
                    });
                }
            }
        }
        check_len("channel scales (N)", n, channel_scales.len())?;
        check_scales("channel scales", &channel_scales)?;
        check_len("group scales ((K/g)·N)", granularity.groups(k).saturating_mul(n), group_scales.len())?;
        if let Some(index) = group_scales.iter().position(|&s| s == 0 || s > MAX_GROUP_SCALE) {
            return Err(Error::InvalidValue {
                what: "group scales",
                index,
                reason: format!("{} is outside [1, {MAX_GROUP_SCALE}]", group_scales[index]),
            });
        }
        if let Some(b) = &bias {
            check_len("bias (N)", n, b.len())?;
            check_finite("bias", b)?;
        }
        Ok(W4A8Weights { n, k, granularity, qweight, channel_scales, group_scales, bias })
    }

    /// Builds weights from unpacked int4 values (N×K row-major, each in [-8, 7]).
    pub fn from_int4(
        n: usize,
        k: usize,
        granularity: Granularity,
        q: &[i8],
        channel_scales: Vec<f32>,
        group_scales: Vec<u8>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_nonzero("N", n)?;
        check_k(k)?;
        check_len("int4 weights (N·K)", n.saturating_mul(k), q.len())?;
        let qweight = pack_int4(q, n, k)?;
        Self::new(n, k, granularity, qweight, channel_scales, group_scales, bias)
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Per-channel or per-group.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
    /// Packed nibbles, N × ⌈K/8⌉ words.
    pub fn qweight(&self) -> &[u32] {
        &self.qweight
    }
    /// `s_ch`, length N.
    pub fn channel_scales(&self) -> &[f32] {
        &self.channel_scales
    }
    /// `s_g`, (K/g)×N row-major; empty per channel.
    pub fn group_scales(&self) -> &[u8] {
        &self.group_scales
    }
    /// The bias, length N, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }
    /// Returns the same weights with `bias` attached (or removed).
    pub fn with_bias(self, bias: Option<Vec<f32>>) -> Result<Self> {
        let W4A8Weights { n, k, granularity, qweight, channel_scales, group_scales, .. } = self;
        Self::new(n, k, granularity, qweight, channel_scales, group_scales, bias)
    }

    /// The int4 values of row `n`, length K.
    pub fn int4_row(&self, n: usize) -> Vec<i8> {
        let wpr = words_per_row(self.k);
        unpack_int4_row(&self.qweight[n * wpr..(n + 1) * wpr], self.k)
    }

    /// All int4 values, N×K row-major.
    pub fn int4(&self) -> Vec<i8> {
        (0..self.n).flat_map(|n| self.int4_row(n)).collect()
    }

    /// The int8 operand of the GEMM for row `n`: `q_w` per channel, `s_g · q_w` per group.
    pub fn int8_row(&self, n: usize) -> Vec<i8> {
        let mut row = self.int4_row(n);
        if let Some(g) = self.granularity.group_size() {
            for (k, v) in row.iter_mut().enumerate() {
                // s_g ≤ 16 and q ∈ [-8, 7]: the product lies in [-128, 112], inside i8.
                *v = (*v as i16 * self.group_scales[(k / g) * self.n + n] as i16) as i8;
            }
        }
        row
    }

    /// All int8 operands, N×K row-major.
    pub fn int8(&self) -> Vec<i8> {
        (0..self.n).flat_map(|n| self.int8_row(n)).collect()
    }

    /// The dequantized weights `s_ch · (s_g ·) q_w` in f64, N×K row-major.
    pub fn dequantize_f64(&self) -> Vec<f64> {
        (0..self.n)
            .flat_map(|n| {
                let s = self.channel_scales[n] as f64;
                self.int8_row(n).into_iter().map(move |q| q as f64 * s)
            })
            .collect()
    }

    /// Bytes of the packed weights and scales as a kernel reads them.
    pub fn storage_bytes(&self) -> usize {
        self.qweight.len() * 4
            + self.channel_scales.len() * 4
            + self.group_scales.len()
            + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
}
