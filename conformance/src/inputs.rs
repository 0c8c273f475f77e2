//! Test data: shapes from proptest, values from a seeded generator (fast for large M·K, and the
//! shrinker still minimizes the shape, which is what a failure report needs).

use half::f16;
use proptest::prelude::*;
use w4a8_core::quantize::quantize_activations;
use w4a8_core::{GROUP_SIZES, Granularity, QuantizedActivations, W4A8Weights};

pub use w4a8_core::rng::SplitMix64 as Rng;

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
    (m, n, gran, 1..=max_groups, 1..=(max_groups * 128), any::<bool>(), any::<u64>()).prop_map(
        |(m, n, granularity, groups, free_k, bias, seed)| {
            let k = match granularity {
                Granularity::PerChannel => free_k,
                Granularity::PerGroup { group_size } => group_size * groups,
            };
            GemmShape { m, n, k, granularity, bias, seed }
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

/// The inputs of a [`GemmShape`].
pub fn gemm_inputs(s: &GemmShape) -> (QuantizedActivations, W4A8Weights) {
    let mut rng = Rng::new(s.seed);
    (activations(&mut rng, s.m, s.k), weights(&mut rng, s.n, s.k, s.granularity, s.bias))
}

/// f16 activations for the on-device quantizer, with an optional smoothing vector 2^[-3, 3].
pub fn f16_activations(rng: &mut Rng, m: usize, k: usize, smooth: bool) -> (Vec<f16>, Option<Vec<f32>>) {
    let x = float_activations(rng, m, k).into_iter().map(f16::from_f32).collect();
    let s = smooth.then(|| (0..k).map(|_| rng.range(-3.0, 3.0).exp2()).collect());
    (x, s)
}
