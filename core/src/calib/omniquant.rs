//! OmniQuant's two learned calibrations, learned jointly by gradient descent on one layer's W4A8
//! output error (feature `learn`, on candle's CPU tensors and autograd):
//! - **LET** (learnable equivalent transformation), its scaling part: a factor `s_k` per input channel,
//!   `X·Wᵀ = (X / s)·(W · s)ᵀ`, so activation outliers move into the weights. The layer keeps `1/s` as
//!   its smoothing vector, which the activation quantizer applies on the fly.
//! - **LWC** (learnable weight clipping): a clipping strength `σ(θ_n)` per output channel that shrinks
//!   the row's quantization range below its absmax.
//!
//! The loss is the relative squared error of the fake-quantized layer, `‖Q_a(X/s)·Q_w(W·s)ᵀ − X·Wᵀ‖² /
//! ‖X·Wᵀ‖²`, on the calibration sample rows, with every rounding passed straight through
//! (`t + (round(t) − t)` with the bracket detached from the graph). The fake quantizers follow the
//! format: per-token int8 activations, int4 weights per channel, or per group with the integer group
//! scale `s_g ∈ [1, 16]` (chosen as the quantizer chooses it) under a channel scale
//! `σ(θ)·absmax / (7·16)`.
//!
//! Two deliberate limits, as this library has to serve any model: the objective is the layer's own
//! output (OmniQuant learns block by block, which needs the model's forward pass in the same tensor
//! library), and LET's shift is left out, since `X − δ` has no place in a per-token quantizer that takes
//! activations straight from the application (OmniQuant folds it into the preceding LayerNorm).
//!
//! The learned `s` and channel scales then go through RTN or GPTQ like any other smoothing vector and
//! clipping: [`super::quantize_layer`] with [`super::Smoothing::OmniQuant`].

use candle_core::{D, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::CalibStats;
use super::rows::best_group_scale;
use crate::error::{Error, Result};
use crate::format::{Granularity, MAX_GROUP_SCALE, check_len};

/// The largest int4 magnitude on the positive side: the per-channel step is `absmax / 7`.
const QMAX_W: f64 = 7.0;
/// The largest int8 activation code.
const QMAX_A: f64 = 127.0;
/// OmniQuant's initial clipping logit: `σ(4) ≈ 0.982`, just inside the unclipped range.
const THETA_INIT: f32 = 4.0;

/// Optimizer settings of [`learn_omniquant`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OmniQuantConfig {
    /// Gradient steps (AdamW). 0 returns the starting point.
    pub steps: usize,
    /// Learning rate of `ln s`.
    pub lr: f64,
    /// Learning rate of the clipping logits `θ` (larger: `σ'(4) ≈ 0.018`, so `θ` must travel far).
    pub clip_lr: f64,
    /// Sample rows per step (the calibration samples are taken in turn, a fixed order). With all the
    /// rows (the default; at most [`super::DEFAULT_MAX_SAMPLES`] are kept) the best point seen is
    /// returned, otherwise the last.
    pub batch: usize,
}

impl Default for OmniQuantConfig {
    /// 100 full-batch steps, learning rates 0.003 (`ln s`) and 0.03 (`θ`): the best of a sweep on a
    /// synthetic layer with outlier channels (the unit test's), at both granularities.
    fn default() -> Self {
        OmniQuantConfig { steps: 100, lr: 0.003, clip_lr: 0.03, batch: usize::MAX }
    }
}

/// What [`learn_omniquant`] learned for one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedTransform {
    /// `s` per input channel: the weights are multiplied by `s`, the activations by `1/s`.
    pub scales: Vec<f32>,
    /// The clipped channel scale per output row (per channel `σ(θ)·absmax/7`, per group
    /// `σ(θ)·absmax/(7·16)`, of the row of `W · s`).
    pub channel_scales: Vec<f32>,
    /// The fake-quantized loss over all sample rows at the starting point and after the last step.
    pub loss: (f64, f64),
}

fn learn_err(e: candle_core::Error) -> Error {
    Error::InvalidValue { what: "learned calibration", index: 0, reason: e.to_string() }
}

/// `t` rounded to nearest in the forward pass, the identity in the backward pass.
fn ste_round(t: &Tensor) -> candle_core::Result<Tensor> {
    t + (t.round()? - t)?.detach()
}

/// The per-token fake quantizer of the activations: `q·s_x`, `s_x = max|x| / 127` per row.
fn fake_quant_activations(x: &Tensor) -> candle_core::Result<Tensor> {
    // A tiny floor keeps an all-zero row at 0 instead of 0/0.
    let sx = (x.abs()?.max_keepdim(D::Minus1)? / QMAX_A)?.clamp(1e-30f32, f32::MAX)?;
    let q = ste_round(&x.broadcast_div(&sx)?)?.clamp(-QMAX_A as f32, QMAX_A as f32)?;
    q.broadcast_mul(&sx)
}

/// The channel scale per row (`[n, 1]`) for clipping strengths `ratio` (`[n, 1]`).
fn channel_scales(ws: &Tensor, ratio: &Tensor, granularity: Granularity) -> candle_core::Result<Tensor> {
    let absmax = ws.abs()?.max_keepdim(D::Minus1)?;
    let levels = match granularity {
        Granularity::PerChannel => QMAX_W,
        Granularity::PerGroup { .. } => QMAX_W * MAX_GROUP_SCALE as f64,
    };
    // A tiny floor keeps an all-zero row finite; its codes are 0 whatever the step.
    (absmax * ratio)?.affine(1.0 / levels, 0.0)?.clamp(1e-30f32, f32::MAX)
}

/// The int4 fake quantizer of the weights `ws` (`[n, k]`) under channel scales `s_ch` (`[n, 1]`).
///
/// Per group, each integer group scale is the one the quantizer itself would pick for these values
/// ([`best_group_scale`]: the least squared error over 1..=16), held constant within the step: a
/// surrogate with a rule of its own learned scales that the real quantizer then undid.
fn fake_quant_weights(ws: &Tensor, s_ch: &Tensor, granularity: Granularity) -> candle_core::Result<Tensor> {
    let (n, k) = ws.dims2()?;
    match granularity {
        Granularity::PerChannel => {
            let q = ste_round(&ws.broadcast_div(s_ch)?)?.clamp(-8f32, 7f32)?;
            q.broadcast_mul(s_ch)
        }
        Granularity::PerGroup { group_size } => {
            let groups = k / group_size;
            let (w_now, s_now) = (ws.to_vec2::<f32>()?, s_ch.flatten_all()?.to_vec1::<f32>()?);
            let sg: Vec<f32> = w_now
                .iter()
                .zip(&s_now)
                .flat_map(|(row, &s)| {
                    row.chunks(group_size).map(move |g| best_group_scale(g, None, s) as f32)
                })
                .collect();
            let sg = Tensor::from_vec(sg, (n, groups, 1), ws.device())?;
            let step = sg.broadcast_mul(&s_ch.unsqueeze(2)?)?;
            let q =
                ste_round(&ws.reshape((n, groups, group_size))?.broadcast_div(&step)?)?.clamp(-8f32, 7f32)?;
            q.broadcast_mul(&step)?.reshape((n, k))
        }
    }
}

/// The state being learned and the loss it gives.
struct Problem<'a> {
    w: Tensor,
    log_s: Var,
    theta: Var,
    granularity: Granularity,
    x: &'a [f32],
    k: usize,
}

impl Problem<'_> {
    /// The relative squared output error on sample rows `rows`.
    fn loss(&self, rows: std::ops::Range<usize>) -> candle_core::Result<Tensor> {
        let m = rows.len();
        let x =
            Tensor::from_slice(&self.x[rows.start * self.k..rows.end * self.k], (m, self.k), &Device::Cpu)?;
        let y_ref = x.matmul(&self.w.t()?)?;
        let s = self.log_s.as_tensor().exp()?.unsqueeze(0)?;
        let ratio = candle_nn::ops::sigmoid(self.theta.as_tensor())?.unsqueeze(1)?;
        let ws = self.w.broadcast_mul(&s)?;
        let wq = fake_quant_weights(&ws, &channel_scales(&ws, &ratio, self.granularity)?, self.granularity)?;
        let xq = fake_quant_activations(&x.broadcast_div(&s)?)?;
        let y = xq.matmul(&wq.t()?)?;
        (y - &y_ref)?.sqr()?.sum_all()? / y_ref.sqr()?.sum_all()?.clamp(1e-30f32, f32::MAX)?
    }

    fn scalar(t: &Tensor) -> candle_core::Result<f64> {
        Ok(t.to_scalar::<f32>()? as f64)
    }
}

/// Learns OmniQuant's per-channel scales (LET) and per-row clipping (LWC) for the layer W (N×K
/// row-major) on the sample rows of `stats`, starting from `init_scales` (e.g. adaptive smoothing's `s`;
/// `None` starts at `s = 1`) and clipping strength `σ(4)`.
///
/// Errors: shape mismatches, no sample rows, a non-positive or non-finite starting scale.
///
/// ```
/// use w4a8_core::calib::{CalibStats, OmniQuantConfig, learn_omniquant};
/// use w4a8_core::Granularity;
/// let (n, k) = (16, 64);
/// let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let x: Vec<f32> = (0..64 * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * if i % k == 3 { 20.0 } else { 1.0 }).collect();
/// let mut stats = CalibStats::new(k).unwrap();
/// stats.update(&x, 64).unwrap();
/// let learned = learn_omniquant(&w, n, k, Granularity::PerChannel, &stats, None, &OmniQuantConfig::default()).unwrap();
/// assert!(learned.loss.1 < learned.loss.0);
/// ```
pub fn learn_omniquant(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    stats: &CalibStats,
    init_scales: Option<&[f32]>,
    cfg: &OmniQuantConfig,
) -> Result<LearnedTransform> {
    check_len("weights (N·K)", n * k, w.len())?;
    check_len("calibration width (K)", k, stats.k())?;
    granularity.validate(k)?;
    let (x, m) = stats.samples();
    if m == 0 {
        return Err(Error::InvalidValue {
            what: "calibration statistics",
            index: 0,
            reason: "learned calibration needs sample rows; none were kept".into(),
        });
    }
    let log_s: Vec<f32> = match init_scales {
        Some(s) => {
            check_len("initial scales (K)", k, s.len())?;
            if let Some(i) = s.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
                return Err(Error::InvalidValue {
                    what: "initial scales",
                    index: i,
                    reason: format!("{} is not a positive finite factor", s[i]),
                });
            }
            s.iter().map(|v| v.ln()).collect()
        }
        None => vec![0.0; k],
    };
    let dev = Device::Cpu;
    let p = Problem {
        w: Tensor::from_slice(w, (n, k), &dev).map_err(learn_err)?,
        log_s: Var::from_vec(log_s, k, &dev).map_err(learn_err)?,
        theta: Var::from_vec(vec![THETA_INIT; n], n, &dev).map_err(learn_err)?,
        granularity,
        x,
        k,
    };
    let run = || -> candle_core::Result<LearnedTransform> {
        let adam = |var: &Var, lr| {
            AdamW::new(vec![var.clone()], ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })
        };
        let (mut opt_s, mut opt_theta) = (adam(&p.log_s, cfg.lr)?, adam(&p.theta, cfg.clip_lr)?);
        let batch = cfg.batch.clamp(1, m);
        let whole = batch == m;
        let start = Problem::scalar(&p.loss(0..m)?)?;
        // The loss is piecewise smooth (every rounding jumps), so Adam wanders: keep the best point seen.
        let mut best = (start, p.log_s.as_tensor().copy()?, p.theta.as_tensor().copy()?);
        for step in 0..cfg.steps {
            // Batches walk through the samples in order, wrapping around: deterministic.
            let first = (step * batch) % m;
            let loss = p.loss(first..(first + batch).min(m))?;
            if whole && step > 0 {
                // With whole batches this step's loss is the loss of the point the last step made.
                let l = Problem::scalar(&loss)?;
                if l < best.0 {
                    best = (l, p.log_s.as_tensor().copy()?, p.theta.as_tensor().copy()?);
                }
            }
            let grads = loss.backward()?;
            opt_s.step(&grads)?;
            opt_theta.step(&grads)?;
        }
        let last = Problem::scalar(&p.loss(0..m)?)?;
        if last >= best.0 {
            p.log_s.set(&best.1)?;
            p.theta.set(&best.2)?;
        }
        let end = last.min(best.0);
        let s = p.log_s.as_tensor().exp()?;
        let ratio = candle_nn::ops::sigmoid(p.theta.as_tensor())?.unsqueeze(1)?;
        let ws = p.w.broadcast_mul(&s.unsqueeze(0)?)?;
        let s_ch = channel_scales(&ws, &ratio, granularity)?.flatten_all()?;
        Ok(LearnedTransform { scales: s.to_vec1()?, channel_scales: s_ch.to_vec1()?, loss: (start, end) })
    };
    let learned = run().map_err(learn_err)?;
    if let Some(i) = learned.scales.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(Error::InvalidValue {
            what: "learned scales",
            index: i,
            reason: format!("the optimizer left {} (lower the learning rate)", learned.scales[i]),
        });
    }
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::relative_output_error;
    use crate::calib::rows::{group_scales_canonical, quantize_rows};
    use crate::calib::smooth::adaptive_smoothing;
    use crate::format::W4A8Weights;
    use crate::rng::SplitMix64;

    /// A layer whose input has a few outlier channels (the case smoothing exists for) and calibration
    /// statistics over 256 tokens.
    fn outlier_layer(n: usize, k: usize) -> (Vec<f32>, CalibStats, Vec<f32>, usize) {
        let mut rng = SplitMix64::new(7);
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
        let m = 256;
        let x: Vec<f32> =
            (0..m * k).map(|i| rng.normal() * if i % k % 37 == 5 { 25.0 } else { 1.0 }).collect();
        let mut stats = CalibStats::new(k).unwrap();
        stats.update(&x, m).unwrap();
        (w, stats, x, m)
    }

    /// The exact W4A8 error (oracle) of RTN with smoothing factors `s` and channel scales `s_ch`.
    #[allow(clippy::too_many_arguments)]
    fn exact_error(
        w: &[f32],
        n: usize,
        k: usize,
        g: Granularity,
        s: &[f32],
        s_ch: &[f32],
        x: &[f32],
        m: usize,
    ) -> f64 {
        let ws: Vec<f32> = w.chunks(k).flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b)).collect();
        let (q, sg) = quantize_rows(&ws, k, g, s_ch, None);
        let gs = group_scales_canonical(&sg, n, g.groups(k));
        let q = W4A8Weights::from_int4(n, k, g, &q, s_ch.to_vec(), gs, None).unwrap();
        let smooth: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
        relative_output_error(x, m, w, None, &q, Some(&smooth)).unwrap()
    }

    /// Learning from adaptive smoothing's scales lowers the exact W4A8 output error below that starting
    /// point, at both granularities; with no steps it cannot, so the test fails if the optimizer idles.
    #[test]
    fn learning_lowers_the_exact_error_below_adaptive_smoothing() {
        let (n, k) = (64, 256);
        let (w, stats, x, m) = outlier_layer(n, k);
        for g in [Granularity::PerChannel, Granularity::PerGroup { group_size: 64 }] {
            let (init, _) = adaptive_smoothing(&w, n, k, g, &stats).unwrap();
            let init = init.unwrap_or_else(|| vec![1.0; k]);
            let start = learn_omniquant(
                &w,
                n,
                k,
                g,
                &stats,
                Some(&init),
                &OmniQuantConfig { steps: 0, ..Default::default() },
            )
            .unwrap();
            let learned =
                learn_omniquant(&w, n, k, g, &stats, Some(&init), &OmniQuantConfig::default()).unwrap();
            assert_eq!(start.scales, init.iter().map(|v| v.ln().exp()).collect::<Vec<_>>());
            let before = exact_error(&w, n, k, g, &start.scales, &start.channel_scales, &x, m);
            let after = exact_error(&w, n, k, g, &learned.scales, &learned.channel_scales, &x, m);
            eprintln!(
                "{g:?}: surrogate {:.5} -> {:.5}, exact {before:.5} -> {after:.5}",
                learned.loss.0, learned.loss.1
            );
            assert!(learned.loss.1 < 0.9 * learned.loss.0, "{:?}", learned.loss);
            assert!(after < 0.95 * before, "{g:?}: exact error {before} -> {after}");
        }
    }

    /// Bad inputs are typed errors.
    #[test]
    fn bad_inputs_are_errors() {
        let (n, k) = (8, 64);
        let (w, stats, _, _) = outlier_layer(n, k);
        let cfg = OmniQuantConfig::default();
        let g = Granularity::PerChannel;
        assert!(matches!(
            learn_omniquant(&w[1..], n, k, g, &stats, None, &cfg),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut bad = vec![1.0; k];
        bad[3] = 0.0;
        assert!(matches!(
            learn_omniquant(&w, n, k, g, &stats, Some(&bad), &cfg),
            Err(Error::InvalidValue { index: 3, .. })
        ));
        let empty = CalibStats::with_max_samples(k, 0).unwrap();
        assert!(matches!(learn_omniquant(&w, n, k, g, &empty, None, &cfg), Err(Error::InvalidValue { .. })));
    }
}
