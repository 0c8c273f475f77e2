//! The W4A8 weight-file reader (`io::layers_from_bytes`) on arbitrary bytes.
//!
//! Properties: no panic, no abort, no allocation the input does not pay for; what the reader accepts
//! is well formed, so it writes back and reads back to the same layers, and it runs through the CPU
//! oracle's GEMM with the layer's own transform (smoothing and rotation; hostile-but-valid scales
//! included) without a panic.

#![no_main]

use half::f16;
use libfuzzer_sys::fuzz_target;
use w4a8_core::io::{layers_from_bytes, layers_to_bytes};
use w4a8_core::{CpuOracle, Gemm};

fuzz_target!(|data: &[u8]| {
    let Ok(layers) = layers_from_bytes(data) else { return };
    let bytes = layers_to_bytes(&layers).expect("layers the reader accepted serialize");
    assert_eq!(layers_from_bytes(&bytes).expect("a file we wrote reads back"), layers);
    let oracle = CpuOracle::new();
    for layer in layers.values() {
        let (n, k) = (layer.weights.n(), layer.weights.k());
        if n * k > 1 << 14 {
            continue; // keep each execution fast; the reader itself saw every layer
        }
        let x: Vec<f16> = (0..2 * k).map(|i| f16::from_f32((i % 7) as f32 - 3.0)).collect();
        let w = oracle.prepare(&layer.weights).expect("valid weights prepare");
        let y = oracle.linear_with(&x, 2, &w, &layer.transform());
        // Smoothing (and the rotation's sums after it) can take a finite input past f32: a typed
        // NonFinite; anything else succeeds.
        match y {
            Ok(y) => assert_eq!(y.len(), 2 * n),
            Err(e) => assert!(matches!(e, w4a8_core::Error::NonFinite { .. }), "{e}"),
        }
    }
});
