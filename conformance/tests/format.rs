//! Property 4, backend independent: packing and file round trips are lossless.

use std::collections::BTreeMap;

use conformance::inputs::{GemmShape, Rng, Values, gemm_inputs, gemm_shapes};
use conformance::w4a8_core::io::{Layer, layers_from_bytes, layers_to_bytes};
use conformance::w4a8_core::pack::{pack_int4, unpack_int4};
use conformance::w4a8_core::quantize::quantize_weights_rtn;
use conformance::w4a8_core::{Granularity, W4A8Weights};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: conformance::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pack_unpack_is_lossless(n in 1usize..20, k in 1usize..300, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let q: Vec<i8> = (0..n * k).map(|_| rng.int(-8, 7) as i8).collect();
        let packed = pack_int4(&q, n, k).unwrap();
        prop_assert_eq!(packed.len(), n * k.div_ceil(8));
        prop_assert_eq!(unpack_int4(&packed, n, k).unwrap(), q);
    }

    #[test]
    fn quantize_pack_unpack_is_lossless(s in gemm_shapes(1, 40, 3)) {
        // Quantize real-valued weights, then rebuild from the unpacked int4 values: identical.
        let mut rng = Rng::new(s.seed);
        let w: Vec<f32> = (0..s.n * s.k).map(|_| rng.range(-1.0, 1.0)).collect();
        let q = quantize_weights_rtn(&w, s.n, s.k, s.granularity, None).unwrap();
        let rebuilt = W4A8Weights::from_int4(
            s.n, s.k, s.granularity, &q.int4(),
            q.channel_scales().to_vec(), q.group_scales().to_vec(), None,
        ).unwrap();
        prop_assert_eq!(rebuilt, q);
    }

    #[test]
    fn weight_files_round_trip(shapes in proptest::collection::vec(gemm_shapes(1, 24, 2), 1..4)) {
        let layers: BTreeMap<String, Layer> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let w = gemm_inputs(s).1;
                // Every other layer carries a smoothing multiplier.
                let smooth = (i % 2 == 1).then(|| (0..s.k).map(|j| 0.25 + (j % 7) as f32).collect());
                (format!("layer{i}.weight"), Layer::new(w, smooth).unwrap())
            })
            .collect();
        let bytes = layers_to_bytes(&layers).unwrap();
        prop_assert_eq!(layers_from_bytes(&bytes).unwrap(), layers);
    }
}

#[test]
fn rtn_error_is_bounded_by_half_a_step() {
    // Inside the clipping range, RTN is off by at most half a quantization step.
    let s = GemmShape {
        m: 1,
        n: 16,
        k: 256,
        granularity: Granularity::PerChannel,
        bias: false,
        seed: 3,
        values: Values::Typical,
    };
    let mut rng = Rng::new(s.seed);
    let w: Vec<f32> = (0..s.n * s.k).map(|_| rng.range(-1.0, 1.0)).collect();
    let q = quantize_weights_rtn(&w, s.n, s.k, s.granularity, None).unwrap();
    let d = q.dequantize_f64();
    for (i, (&a, &b)) in w.iter().zip(&d).enumerate() {
        let step = q.channel_scales()[i / s.k] as f64;
        assert!((a as f64 - b).abs() <= 0.5 * step * (1.0 + 1e-6), "w[{i}] = {a}, dequantized {b}");
    }
}
