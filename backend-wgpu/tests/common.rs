//! Shared helpers of the device tests: backend discovery with a printed skip, deterministic inputs.

#![allow(dead_code)]

use w4a8_core::{Granularity, QuantizedActivations, W4A8Weights};
use w4a8_wgpu::{WgpuBackend, WgpuOptions};

/// The backend, or `None` with a printed reason when this machine has no usable adapter — unless
/// `W4A8_REQUIRE` names `wgpu`, then a missing device fails the test.
pub fn backend_with(options: WgpuOptions) -> Option<WgpuBackend> {
    match WgpuBackend::new_with(options) {
        Ok(b) => Some(b),
        Err(e) => {
            let required =
                std::env::var("W4A8_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == "wgpu"));
            assert!(!required, "W4A8_REQUIRE names wgpu but it is unavailable: {e}");
            eprintln!("SKIPPED: wgpu backend unavailable: {e}");
            None
        }
    }
}

pub fn backend() -> Option<WgpuBackend> {
    backend_with(WgpuOptions::default())
}

/// The shared deterministic generator, so failures reproduce.
pub use w4a8_core::rng::SplitMix64 as Rng;

pub fn random_weights(rng: &mut Rng, n: usize, k: usize, gran: Granularity, bias: bool) -> W4A8Weights {
    let q: Vec<i8> = (0..n * k).map(|_| rng.int(-8, 7) as i8).collect();
    let cs: Vec<f32> = (0..n).map(|_| 1e-3 + rng.unit() * 0.05).collect();
    let gs: Vec<u8> = (0..gran.groups(k) * n).map(|_| rng.int(1, 16) as u8).collect();
    let b = bias.then(|| (0..n).map(|_| rng.unit() * 4.0 - 2.0).collect());
    W4A8Weights::from_int4(n, k, gran, &q, cs, gs, b).unwrap()
}

pub fn random_activations(rng: &mut Rng, m: usize, k: usize) -> QuantizedActivations {
    let v: Vec<i8> = (0..m * k).map(|_| rng.int(-127, 127) as i8).collect();
    // One all-zero-scale row when there are several, as an all-zero token gives.
    let s: Vec<f32> = (0..m).map(|i| if m > 2 && i == 1 { 0.0 } else { 1e-3 + rng.unit() * 0.02 }).collect();
    QuantizedActivations::new(m, k, v, s).unwrap()
}

/// Asserts bit equality (f16 bit patterns), printing the first mismatch with its position.
pub fn assert_bits_eq(got: &[half::f16], want: &[half::f16], n: usize, ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        let bad = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        panic!(
            "{ctx}: {bad} of {} outputs differ; first at (m={}, n={}): got {} ({:#06x}), oracle {} ({:#06x})",
            got.len(),
            i / n,
            i % n,
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}
