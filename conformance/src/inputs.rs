//! Test data: shapes from proptest, values from a seeded generator (fast for large M·K, and the
//! shrinker still minimizes the shape, which is what a failure report needs).

use half::f16;
use proptest::prelude::*;
use w4a8_core::oracle::dot_i8;
use w4a8_core::quantize::quantize_activations;
use w4a8_core::{GROUP_SIZES, Granularity, QuantizedActivations, W4A8Weights};

pub use w4a8_core::rng::SplitMix64 as Rng;

/// Which values fill a problem: the typical spread, or a spread aimed at one way GPU float
/// arithmetic can drift from the oracle's single correctly rounded f32 operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Outlier channels, zero rows, the whole int4 range, channel scales 2^[-16, -8], bias in [-2, 2].
    Typical,
    /// Typical, except that each column's bias cancels `(f32(acc) · s_x) · s_ch` of one row to within
    /// a few f32 ulps: the output is the rounding residue, so an epilogue contracted into an FMA (or
    /// with its products reassociated) differs at once.
    CancellingBias,
    /// Activation scales and some channel scales and biases in or near the f32 subnormal range: a
    /// driver that flushes subnormals changes outputs (signed zeros included).
    Subnormal,
}

/// A GEMM problem: dimensions, granularity and a seed for the values.
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    /// Rows of X.
    pub m: usize,
    /// Rows of W.
    pub n: usize,
    /// The reduction dimension.
    pub k: usize,
    /// Per-channel or per-group.
    pub granularity: Granularity,
    /// Whether W carries a bias.
    pub bias: bool,
    /// Seed of the values.
    pub seed: u64,
    /// Which values.
    pub values: Values,
}

/// Shapes with M ∈ [1, max_m] (M = 1 and odd M weighted up), N and K tails, every granularity.
pub fn gemm_shapes(max_m: usize, max_n: usize, max_groups: usize) -> impl Strategy<Value = GemmShape> {
    let m = prop_oneof![Just(1usize), 1..=16usize, 1..=max_m];
    let n = prop_oneof![1..=8usize, 1..=max_n];
    let gran = prop_oneof![
        Just(Granularity::PerChannel),
        proptest::sample::select(GROUP_SIZES.to_vec())
            .prop_map(|group_size| Granularity::PerGroup { group_size }),
    ];
    let values = prop_oneof![3 => Just(Values::Typical), 1 => Just(Values::CancellingBias), 1 => Just(Values::Subnormal)];
    (m, n, gran, 1..=max_groups, 1..=(max_groups * 128), any::<bool>(), any::<u64>(), values).prop_map(
        |(m, n, granularity, groups, free_k, bias, seed, values)| {
            let k = match granularity {
                Granularity::PerChannel => free_k,
                Granularity::PerGroup { group_size } => group_size * groups,
            };
            // A cancelling bias needs a bias.
            let bias = bias || values == Values::CancellingBias;
            GemmShape { m, n, k, granularity, bias, seed, values }
        },
    )
}

/// Float activations M×K with outlier channels (×20..100), all-zero rows and single-spike rows.
pub fn float_activations(rng: &mut Rng, m: usize, k: usize) -> Vec<f32> {
    let channel_gain: Vec<f32> =
        (0..k).map(|_| if rng.chance(0.03) { rng.range(20.0, 100.0) } else { 1.0 }).collect();
    let mut x = vec![0.0f32; m * k];
    for row in x.chunks_mut(k) {
        match rng.int(0, 19) {
            0 => {} // all-zero row: s_x = 0
            1 => row[rng.int(0, k as i64 - 1) as usize] = rng.range(-3.0, 3.0),
            _ => row.iter_mut().zip(&channel_gain).for_each(|(v, g)| *v = rng.range(-1.0, 1.0) * g),
        }
    }
    x
}

/// Quantized activations drawn from [`float_activations`] through the core quantizer.
pub fn activations(rng: &mut Rng, m: usize, k: usize) -> QuantizedActivations {
    quantize_activations(&float_activations(rng, m, k), m, k, None).expect("generated activations are valid")
}

/// Random int4 weights over the whole range (so -8 · 16 = -128 occurs), channel scales 2^[-16, -8] with
/// some zero rows' scales, every group scale 1..=16, optional bias.
pub fn weights(rng: &mut Rng, n: usize, k: usize, granularity: Granularity, bias: bool) -> W4A8Weights {
    let q: Vec<i8> = (0..n * k).map(|_| rng.int(-8, 7) as i8).collect();
    let s_ch: Vec<f32> =
        (0..n).map(|_| if rng.chance(0.05) { 0.0 } else { rng.range(-16.0, -8.0).exp2() }).collect();
    let s_g: Vec<u8> = (0..granularity.groups(k) * n).map(|_| rng.int(1, 16) as u8).collect();
    let b = bias.then(|| (0..n).map(|_| rng.range(-2.0, 2.0)).collect());
    W4A8Weights::from_int4(n, k, granularity, &q, s_ch, s_g, b).expect("generated weights are valid")
}

/// The oracle's `(f32(acc) · s_x) · s_ch` of one output, before any bias.
fn product(x: &QuantizedActivations, w: &W4A8Weights, row: usize, col: usize) -> f32 {
    let acc = dot_i8(&x.values()[row * x.k()..(row + 1) * x.k()], &w.int8_row(col));
    (acc as f32 * x.scales()[row]) * w.channel_scales()[col]
}

/// `f` moved by `ulps` units in the last place (never across zero: callers pass normal values).
fn nudge(f: f32, ulps: i64) -> f32 {
    f32::from_bits((f.to_bits() as i64 + ulps) as u32)
}

/// A bias per column from the product of one random row of that column.
fn bias_from_products(
    rng: &mut Rng,
    x: &QuantizedActivations,
    w: &W4A8Weights,
    mut pick: impl FnMut(&mut Rng, f32) -> f32,
) -> Vec<f32> {
    (0..w.n())
        .map(|col| {
            let row = rng.int(0, x.m() as i64 - 1) as usize;
            let p = product(x, w, row, col);
            pick(rng, p)
        })
        .collect()
}

/// [`Values::CancellingBias`]: bias = −p moved by up to 3 ulps, p the product of a random row.
fn cancelling_inputs(rng: &mut Rng, s: &GemmShape) -> (QuantizedActivations, W4A8Weights) {
    let x = activations(rng, s.m, s.k);
    let w = weights(rng, s.n, s.k, s.granularity, false);
    let bias = bias_from_products(rng, &x, &w, |rng, p| {
        if p.is_normal() { nudge(-p, rng.int(-3, 3)) } else { rng.range(-2.0, 2.0) }
    });
    (x, w.with_bias(Some(bias)).expect("generated bias is finite"))
}

/// [`Values::Subnormal`]: activation scales 2^[-149, -100] (about half of them subnormal), channel
/// scales 2^[-30, 20] (a tenth subnormal), biases that cancel, tiny biases and zero biases.
fn subnormal_inputs(rng: &mut Rng, s: &GemmShape) -> (QuantizedActivations, W4A8Weights) {
    let typical = activations(rng, s.m, s.k);
    let sx = typical
        .scales()
        .iter()
        .map(|&v| if v == 0.0 { 0.0 } else { rng.range(-149.0, -100.0).exp2() })
        .collect();
    let x = QuantizedActivations::new(s.m, s.k, typical.values().to_vec(), sx).expect("scales are valid");
    let w = weights(rng, s.n, s.k, s.granularity, false);
    let s_ch =
        (0..s.n)
            .map(|_| {
                if rng.chance(0.1) { rng.range(-149.0, -127.0).exp2() } else { rng.range(-30.0, 20.0).exp2() }
            })
            .collect();
    let w = W4A8Weights::from_int4(s.n, s.k, s.granularity, &w.int4(), s_ch, w.group_scales().to_vec(), None)
        .expect("generated weights are valid");
    let bias = s.bias.then(|| {
        bias_from_products(rng, &x, &w, |rng, p| match rng.int(0, 2) {
            0 => -p,
            1 => rng.range(-1.0, 1.0) * rng.range(-149.0, -120.0).exp2(),
            _ => 0.0,
        })
    });
    (x, w.with_bias(bias).expect("generated bias is finite"))
}

/// The inputs of a [`GemmShape`].
pub fn gemm_inputs(s: &GemmShape) -> (QuantizedActivations, W4A8Weights) {
    let mut rng = Rng::new(s.seed);
    match s.values {
        Values::Typical => {
            (activations(&mut rng, s.m, s.k), weights(&mut rng, s.n, s.k, s.granularity, s.bias))
        }
        Values::CancellingBias => cancelling_inputs(&mut rng, s),
        Values::Subnormal => subnormal_inputs(&mut rng, s),
    }
}

/// f16 activations for the on-device quantizer, with an optional smoothing vector 2^[-3, 3].
pub fn f16_activations(rng: &mut Rng, m: usize, k: usize, smooth: bool) -> (Vec<f16>, Option<Vec<f32>>) {
    let x = float_activations(rng, m, k).into_iter().map(f16::from_f32).collect();
    let s = smooth.then(|| (0..k).map(|_| rng.range(-3.0, 3.0).exp2()).collect());
    (x, s)
}

/// Which values the on-device quantizer gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationValues {
    /// [`f16_activations`].
    Typical,
    /// Quotients `x' / s_x` within a few f32 ulps of `n + 0.5`, many exactly on it: a division that is
    /// not correctly rounded (WGSL, Vulkan and Metal allow 2.5 ulp), or a rounding that is not ties
    /// to even, changes codes. Built through the smoothing vector, which sets each x' to any f32.
    Ties,
    /// Smoothing factors that make x' subnormal (some rows entirely, so s_x is subnormal too).
    Subnormal,
}

/// f16 activations and a smoothing vector for [`ActivationValues`] (`Typical` smooths or not at random).
pub fn quantizer_inputs(
    rng: &mut Rng,
    m: usize,
    k: usize,
    values: ActivationValues,
) -> (Vec<f16>, Option<Vec<f32>>) {
    match values {
        ActivationValues::Typical => {
            let smooth = rng.chance(0.5);
            f16_activations(rng, m, k, smooth)
        }
        ActivationValues::Ties => {
            // Column 0 sets the row maximum r, so s_x = fl(r / 127) (times the row's power of two);
            // column j > 0 holds t · s_x for a t near a tie, which makes fl(x' / s_x) land on or next
            // to t. Rows scale by exact powers of two and flip signs, which keeps the quotients.
            let r = rng.range(0.5, 4.0);
            let s0 = r / 127.0;
            let smooth: Vec<f32> = (0..k)
                .map(|j| {
                    if j == 0 {
                        return r;
                    }
                    let t = rng.int(0, 126) as f32 + 0.5;
                    nudge(t * s0, rng.int(-2, 2)).min(r)
                })
                .collect();
            let x = (0..m)
                .flat_map(|_| {
                    let row_scale = (rng.int(-8, 8) as f32).exp2();
                    let signs: Vec<f32> = (0..k).map(|_| if rng.chance(0.5) { -1.0 } else { 1.0 }).collect();
                    signs.into_iter().map(move |sgn| f16::from_f32(sgn * row_scale))
                })
                .collect();
            (x, Some(smooth))
        }
        ActivationValues::Subnormal => {
            let x = float_activations(rng, m, k).into_iter().map(f16::from_f32).collect();
            let all_tiny = rng.chance(0.5);
            let smooth = (0..k)
                .map(|_| {
                    if all_tiny || rng.chance(0.5) {
                        rng.range(-150.0, -126.0).exp2()
                    } else {
                        rng.range(-3.0, 3.0).exp2()
                    }
                })
                .collect();
            (x, Some(smooth))
        }
    }
}

/// Hadamard blocks the rotated properties draw: every power of two from 2 to
/// [`w4a8_core::MAX_HADAMARD_BLOCK`].
pub fn hadamard_blocks() -> Vec<usize> {
    (1..).map(|e| 1usize << e).take_while(|&b| b <= w4a8_core::MAX_HADAMARD_BLOCK).collect()
}

/// A rotated quantizer problem: M rows, a Hadamard block b and K = b · blocks.
#[derive(Clone, Copy, Debug)]
pub struct RotatedShape {
    /// Rows.
    pub m: usize,
    /// The Hadamard block.
    pub b: usize,
    /// K, a multiple of b (K = b is QuaRot's whole-row rotation).
    pub k: usize,
    /// Which values.
    pub values: ActivationValues,
    /// Seed of the values.
    pub seed: u64,
}

/// Rotated quantizer shapes: every block size, K = b (a third of the time) or a few blocks up to
/// K ≈ 9000 (so the device kernels' 4096-channel chunks and their tails are crossed), M = 1 or up to
/// `max_m`, the three value spreads.
pub fn rotated_shapes(max_m: usize) -> impl Strategy<Value = RotatedShape> {
    let values = prop_oneof![
        2 => Just(ActivationValues::Typical),
        1 => Just(ActivationValues::Ties),
        1 => Just(ActivationValues::Subnormal),
    ];
    let m = prop_oneof![Just(1usize), 1..=max_m];
    let blocks = prop_oneof![Just(1usize), 1..=40usize];
    (m, proptest::sample::select(hadamard_blocks()), blocks, values, any::<u64>()).prop_map(
        |(m, b, blocks, values, seed)| {
            // At most ~9000 channels: a block of 4096 takes at most 2 blocks, a block of 2 up to 40.
            let k = b * blocks.min((9000 / b).max(1));
            RotatedShape { m, b, k, values, seed }
        },
    )
}

/// f16 activations and a smoothing vector for a rotated quantizer problem. `Typical` and
/// `Subnormal` are [`quantizer_inputs`]' spreads (the rotation sums subnormal x' into subnormal and
/// normal y, and cancels normals into subnormals); `Ties` builds the smoothing vector from targets
/// y near `n + 0.5` times `s_x`, run backwards through `H_b / b`, so that the *rotated* quotients
/// land within a few ulps of ties (rows are exact powers of two with one sign each, which keeps y's
/// shape).
pub fn rotated_quantizer_inputs(rng: &mut Rng, s: &RotatedShape) -> (Vec<f16>, Option<Vec<f32>>) {
    let (m, k, b) = (s.m, s.k, s.b);
    match s.values {
        ActivationValues::Typical | ActivationValues::Subnormal => quantizer_inputs(rng, m, k, s.values),
        ActivationValues::Ties => {
            let r = rng.range(0.5, 4.0) as f64;
            let s0 = r / 127.0;
            // Targets: one channel per row at r (the maximum), the others at t · s_x for t near a tie.
            let mut y: Vec<f64> = (0..k)
                .map(|j| {
                    if j == 0 {
                        r
                    } else {
                        (rng.int(0, 126) as f64 + 0.5) * s0 * (1.0 + rng.range(-4e-7, 4e-7) as f64)
                    }
                })
                .collect();
            // x' = y · H_b / b (H_b symmetric and H_b H_b = b·I), in f64, then rounded once.
            w4a8_core::transform::fwht_blocks_f64(&mut y, b);
            let smooth: Vec<f32> = y.iter().map(|&v| (v / b as f64) as f32).collect();
            let x = (0..m)
                .flat_map(|_| {
                    let sign = if rng.chance(0.5) { -1.0 } else { 1.0 };
                    let v = f16::from_f32(sign * (rng.int(-8, 8) as f32).exp2());
                    std::iter::repeat_n(v, k)
                })
                .collect();
            (x, Some(smooth))
        }
    }
}
