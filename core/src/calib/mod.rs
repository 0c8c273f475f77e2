//! Calibrated W4A8 quantization: statistics, smoothing, rotation, GPTQ and clipping, behind one entry
//! point, [`quantize_layer`] ([`quantize_layer_rotated`] with a Walsh–Hadamard rotation).
//!
//! ```text
//!   activations ──► CalibStats (absmax, H = 2XᵀX/T in f64, sample rows)   [streamed, any batch sizes]
//!                          │
//!   W (N×K f32) ──► smoothing s (adaptive α search | log equalization    W·s,  H → H/(s sᵀ)
//!                          │     | OmniQuant: s and clipping learned)
//!                          │
//!                   rotation (Hadamard blocks R): W·R/b, H → RᵀHR           (optional)
//!                          │
//!                   clipping: per-row s_ch by a ratio grid on e H eᵀ      (optional)
//!                          │
//!                   RTN  or  GPTQ (blocked, lazy batch, act-order)  ──► W4A8Weights + smooth = 1/s
//! ```
//!
//! Every step runs on the CPU, multi-threaded (rayon; dense linear algebra through faer; the learned
//! calibration on candle with feature `learn`).

mod clip;
mod file;
mod gptq;
#[cfg(feature = "learn")]
mod omniquant;
mod rotate;
mod rows;
mod smooth;
mod stats;

pub use clip::{CLIP_RATIOS, search_clipped_channel_scales};
pub use file::{calibration_tensor, layer_calibration};
pub use gptq::GptqConfig;
#[cfg(feature = "learn")]
pub use omniquant::{LearnedTransform, OmniQuantConfig, learn_omniquant};
pub use rotate::{adaptive_smoothing_rotated, rotate_activations, rotate_hessian, rotate_weights};
pub use smooth::{
    ALPHA_STEP, adaptive_smoothing, log_equalization_scales, smoothing_scales, weight_column_absmax,
};
pub use stats::{CalibStats, DEFAULT_MAX_SAMPLES};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{Granularity, W4A8Weights, check_finite, check_k, check_len, check_nonzero};
use crate::oracle::reference_gemm;
#[cfg(test)]
use crate::quantize::quantize_activations; // tests.rs takes it through `use super::*`
use crate::quantize::{quantize_activations_with, quantize_weights_rtn};
use crate::transform::ActivationTransform;
use rows::{default_channel_scale, group_scales_canonical, quantize_rows};

/// How the int4 values are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Round to nearest, row by row (no calibration needed unless smoothing or clipping asks for it).
    Rtn,
    /// GPTQ: Hessian-aware error compensation across columns (needs calibration statistics).
    Gptq,
}

/// Which smoothing vector moves activation outliers into the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Smoothing {
    /// No smoothing: the layer's activation multiplier is absent.
    None,
    /// QQQ's adaptive smoothing: α searched per layer for the least W4A8 output error.
    Adaptive,
    /// FPTQ's logarithmic activation equalization.
    Log,
    /// OmniQuant's learned equivalent transformation (per-channel scales) and learned weight clipping
    /// (per-row), learned jointly on the layer's W4A8 output error from adaptive smoothing's scales
    /// ([`learn_omniquant`] with its default settings). The learned clipping replaces `clip`'s grid.
    /// Needs the `learn` feature (candle); without it, [`quantize_layer`] returns an error.
    OmniQuant,
}

impl Method {
    /// The CLI name: `rtn` or `gptq`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
        }
    }
    /// Parses [`Method::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [Method::Rtn, Method::Gptq].into_iter().find(|m| m.name() == s.trim().to_ascii_lowercase())
    }
}

impl Smoothing {
    /// The CLI name: `none`, `adaptive`, `log` or `omniquant`.
    pub fn name(self) -> &'static str {
        match self {
            Smoothing::None => "none",
            Smoothing::Adaptive => "adaptive",
            Smoothing::Log => "log",
            Smoothing::OmniQuant => "omniquant",
        }
    }
    /// Parses [`Smoothing::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [Smoothing::None, Smoothing::Adaptive, Smoothing::Log, Smoothing::OmniQuant]
            .into_iter()
            .find(|m| m.name() == s.trim().to_ascii_lowercase())
    }
}

/// Everything [`quantize_layer`] needs to know besides the weights and the calibration data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeConfig {
    /// Per channel or per group (two-level integer scales).
    pub granularity: Granularity,
    /// RTN or GPTQ.
    pub method: Method,
    /// Smoothing rule.
    pub smoothing: Smoothing,
    /// Search a clipping ratio per row on the layer's output error.
    pub clip: bool,
    /// GPTQ settings (ignored by RTN).
    pub gptq: GptqConfig,
}

impl Default for QuantizeConfig {
    /// GPTQ at g128, no smoothing, no clipping.
    fn default() -> Self {
        QuantizeConfig {
            granularity: Granularity::PerGroup { group_size: crate::format::DEFAULT_GROUP_SIZE },
            method: Method::Gptq,
            smoothing: Smoothing::None,
            clip: false,
            gptq: GptqConfig::default(),
        }
    }
}

impl QuantizeConfig {
    /// Whether this configuration needs calibration statistics (GPTQ, any smoothing, clipping).
    pub fn needs_calibration(&self) -> bool {
        self.method == Method::Gptq || self.smoothing != Smoothing::None || self.clip
    }
}

/// A quantized layer: the weights, and the multiplier to apply to its input before per-token
/// quantization (`Gemm::quantize_activations(x, m, k, smooth)`), present when smoothing was used.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// The int4 weights (no bias; attach one with [`W4A8Weights::with_bias`]).
    pub weights: W4A8Weights,
    /// `smooth[k] = 1 / s_k`, length K, or `None` without smoothing.
    pub smooth: Option<Vec<f32>>,
    /// The α the adaptive search chose (`None` for other rules, or when no smoothing won).
    pub alpha: Option<f32>,
    /// The online rotation's block (the `rotate` of [`quantize_layer_rotated`]): pass it to the
    /// quantizer with the smoothing vector, `ActivationTransform { smooth, hadamard_block }`.
    pub hadamard_block: Option<usize>,
}

/// Quantizes one linear layer W (N×K row-major f32, PyTorch `Linear.weight` layout) to W4A8.
///
/// `calib` holds the statistics of the layer's input ([`CalibStats`], K wide); it is required when
/// [`QuantizeConfig::needs_calibration`]. Steps: smoothing (W·s; the input multiplier 1/s is returned),
/// then the per-row channel scales (clipping search or the default), then RTN or GPTQ.
///
/// Errors: shape mismatches, non-finite weights, a bad group size, missing or mismatched calibration
/// ([`Error::InvalidValue`] / [`Error::ShapeMismatch`]), a Hessian that stays singular after
/// dampening.
///
/// ```
/// use w4a8_core::calib::{quantize_layer, CalibStats, QuantizeConfig};
/// let (n, k) = (8, 64);
/// let w: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
/// let x: Vec<f32> = (0..32 * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
/// let mut stats = CalibStats::new(k).unwrap();
/// stats.update(&x, 32).unwrap();
/// let cfg = QuantizeConfig { granularity: w4a8_core::Granularity::PerGroup { group_size: 32 }, ..Default::default() };
/// let layer = quantize_layer(&w, n, k, &cfg, Some(&stats)).unwrap();
/// assert_eq!((layer.weights.n(), layer.weights.k()), (n, k));
/// ```
pub fn quantize_layer(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &QuantizeConfig,
    calib: Option<&CalibStats>,
) -> Result<QuantizedLayer> {
    quantize_layer_rotated(w, n, k, cfg, None, calib)
}

/// [`quantize_layer`] with the layer's input rotated by blockwise Walsh–Hadamard transforms of
/// block `rotate` (a power of two in 2..=[`crate::MAX_HADAMARD_BLOCK`] dividing K; QuaRot takes
/// b = K), after smoothing. With H the block-diagonal unnormalized Hadamard matrix (H Hᵀ = b·I),
/// `x · Wᵀ = (x · H) · (W · H / b)ᵀ`: the weights are quantized from `(W · diag(s)) · H / b`
/// ([`rotate_weights`]), GPTQ and the clipping search use the Hessian of the
/// rotated input, the adaptive α search scores each candidate with the rotation in the loop
/// ([`adaptive_smoothing_rotated`]), and the returned [`QuantizedLayer::hadamard_block`] tells the
/// activation quantizer to rotate online. A rotation needs no calibration by itself (RTN rotates
/// without statistics). `rotate = None` is [`quantize_layer`].
///
/// Errors: those of [`quantize_layer`], a bad block ([`Error::InvalidValue`] "Hadamard block"), and
/// OmniQuant smoothing, which learns its scales without the rotation.
///
/// (The rotation is a parameter rather than a [`QuantizeConfig`] field so that configurations
/// written as struct literals elsewhere keep compiling.)
pub fn quantize_layer_rotated(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &QuantizeConfig,
    rotate: Option<usize>,
    calib: Option<&CalibStats>,
) -> Result<QuantizedLayer> {
    check_nonzero("N", n)?;
    check_k(k)?;
    cfg.granularity.validate(k)?;
    check_len("weights (N·K)", n * k, w.len())?;
    check_finite("weights", w)?;
    if let Some(b) = rotate {
        crate::transform::check_hadamard_block(b, k)?;
        if cfg.smoothing == Smoothing::OmniQuant {
            return Err(Error::InvalidValue {
                what: "smoothing",
                index: 0,
                reason: "omniquant learns its scales on the unrotated layer; rotate with none, log or \
                         adaptive smoothing"
                    .into(),
            });
        }
    }
    let stats = match calib {
        Some(s) => {
            check_len("calibration statistics width (K)", k, s.k())?;
            Some(s)
        }
        None if cfg.needs_calibration() => {
            return Err(Error::InvalidValue {
                what: "calibration statistics",
                index: 0,
                reason: format!(
                    "method {} / smoothing {} / clip {} needs activation statistics of the layer input",
                    cfg.method.name(),
                    cfg.smoothing.name(),
                    cfg.clip
                ),
            });
        }
        None => None,
    };
    if !cfg.needs_calibration() {
        let weights = match rotate {
            Some(b) => quantize_weights_rtn(&rotate_weights(w, n, k, b)?, n, k, cfg.granularity, None)?,
            None => quantize_weights_rtn(w, n, k, cfg.granularity, None)?,
        };
        return Ok(QuantizedLayer { weights, smooth: None, alpha: None, hadamard_block: rotate });
    }
    let stats = stats.expect("checked above");
    if stats.tokens() == 0 {
        return Err(Error::InvalidValue {
            what: "calibration statistics",
            index: 0,
            reason: "no tokens were accumulated".into(),
        });
    }

    // 1. Smoothing: s per input channel (OmniQuant learns the channel scales with it).
    let mut learned_s_ch = None;
    let (s, alpha) = match cfg.smoothing {
        Smoothing::None => (None, None),
        Smoothing::Log => (Some(log_equalization_scales(stats.absmax())), None),
        Smoothing::Adaptive => match rotate {
            Some(b) => adaptive_smoothing_rotated(w, n, k, cfg.granularity, stats, b)?,
            None => adaptive_smoothing(w, n, k, cfg.granularity, stats)?,
        },
        Smoothing::OmniQuant => {
            let (s, s_ch) = omniquant_scales(w, n, k, cfg.granularity, stats)?;
            learned_s_ch = Some(s_ch);
            (Some(s), None)
        }
    };
    let mut h = stats.hessian();
    let ws: Vec<f32> = match &s {
        Some(s) => {
            // X' = X / s  ⇒  H' = diag(1/s) H diag(1/s).
            h.par_chunks_mut(k).enumerate().for_each(|(a, row)| {
                for (b, v) in row.iter_mut().enumerate() {
                    *v /= s[a] as f64 * s[b] as f64;
                }
            });
            w.chunks(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect()
        }
        None => w.to_vec(),
    };
    check_finite("smoothed weights", &ws)?;
    // 1b. Rotation, after smoothing: W' = W·H/b, and the Hessian of the rotated input x·H.
    let ws = match rotate {
        Some(b) => {
            rotate_hessian(&mut h, k, b)?;
            rotate_weights(&ws, n, k, b)?
        }
        None => ws,
    };

    // 2. Channel scales, fixed before quantization.
    let s_ch: Vec<f32> = if let Some(s_ch) = learned_s_ch {
        s_ch
    } else if cfg.clip {
        search_clipped_channel_scales(&ws, n, k, cfg.granularity, &h)
    } else {
        ws.par_chunks(k).map(|row| default_channel_scale(row, cfg.granularity)).collect()
    };
    // With clipping, group scales are searched weighted by each input channel's energy H[k,k].
    let diag: Vec<f64> = (0..k).map(|j| h[j * k + j]).collect();
    let sg_weights = cfg.clip.then_some(&diag[..]);

    // 3. The int4 values.
    let weights = match cfg.method {
        Method::Gptq => {
            let scales =
                gptq::RowScales { granularity: cfg.granularity, s_ch: &s_ch, sg_col_weights: sg_weights };
            gptq::gptq_quantize(&ws, n, k, &h, &scales, &cfg.gptq)?
        }
        Method::Rtn => {
            let (q, sg) = quantize_rows(&ws, k, cfg.granularity, &s_ch, sg_weights);
            let gs = group_scales_canonical(&sg, n, cfg.granularity.groups(k));
            W4A8Weights::from_int4(n, k, cfg.granularity, &q, s_ch, gs, None)?
        }
    };
    let smooth = s.map(|s| s.iter().map(|v| 1.0 / v).collect());
    Ok(QuantizedLayer { weights, smooth, alpha, hadamard_block: rotate })
}

/// OmniQuant's learned scales `s` and channel scales, started from adaptive smoothing's `s`.
#[cfg(feature = "learn")]
fn omniquant_scales(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    stats: &CalibStats,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (init, _) = adaptive_smoothing(w, n, k, granularity, stats)?;
    let learned = learn_omniquant(w, n, k, granularity, stats, init.as_deref(), &OmniQuantConfig::default())?;
    Ok((learned.scales, learned.channel_scales))
}

/// Without the `learn` feature there is no autograd to learn with: a typed error, not a silent fallback.
#[cfg(not(feature = "learn"))]
fn omniquant_scales(
    _w: &[f32],
    _n: usize,
    _k: usize,
    _granularity: Granularity,
    _stats: &CalibStats,
) -> Result<(Vec<f32>, Vec<f32>)> {
    Err(Error::InvalidValue {
        what: "smoothing",
        index: 0,
        reason: "omniquant learns with candle: build with the `learn` feature".into(),
    })
}

/// Relative Frobenius error `‖Y_q − Y‖ / ‖Y‖` of a quantized layer on activations X (M×K row-major),
/// where `Y = X Wᵀ (+ bias)` in f64 from the float weights W (N×K) and `Y_q` is the oracle's W4A8 output
/// (per-token int8 quantization of `X · smooth`, exact int32 GEMM, f16 epilogue with `q`'s bias).
pub fn relative_output_error(
    x: &[f32],
    m: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    q: &W4A8Weights,
    smooth: Option<&[f32]>,
) -> Result<f64> {
    relative_output_error_with(x, m, w, bias, q, &ActivationTransform::smoothed(smooth))
}

/// [`relative_output_error`] with any activation transform: the quantized layer's activations go
/// through `t` (smoothing, then the online rotation of a rotated layer) before per-token
/// quantization; `w` is the float layer as it was before smoothing and rotation.
pub fn relative_output_error_with(
    x: &[f32],
    m: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    q: &W4A8Weights,
    t: &ActivationTransform<'_>,
) -> Result<f64> {
    let (n, k) = (q.n(), q.k());
    check_len("float weights (N·K)", n * k, w.len())?;
    let xq = quantize_activations_with(x, m, k, t)?;
    let yq = reference_gemm(&xq, q)?;
    let (num, den) = x
        .par_chunks(k)
        .zip(yq.par_chunks(n))
        .map(|(xr, yr)| {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (j, wr) in w.chunks(k).enumerate() {
                let y: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                    + bias.map_or(0.0, |b| b[j] as f64);
                let d = yr[j].to_f64() - y;
                num += d * d;
                den += y * y;
            }
            (num, den)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

#[cfg(test)]
mod tests;
