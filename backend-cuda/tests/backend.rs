//! The backend on whatever this machine has. Without a driver (CI, developer machines),
//! `CudaBackend::new()` must return `Error::Unavailable` naming what is missing — never panic. With
//! a GPU it must match the CPU oracle bit for bit. `W4A8_REQUIRE` naming `cuda` turns a missing
//! device into a failure.

use w4a8_core::oracle::reference_gemm;
use w4a8_core::quantize::quantize_activations;
use w4a8_core::{BackendKind, Error, Gemm, Granularity, W4A8Weights, f16};
use w4a8_cuda::CudaBackend;

fn required() -> bool {
    std::env::var("W4A8_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == "cuda"))
}

fn backend_or_skip() -> Option<CudaBackend> {
    match std::panic::catch_unwind(CudaBackend::new) {
        Err(_) => panic!("CudaBackend::new() panicked instead of returning an error"),
        Ok(Ok(b)) => Some(b),
        Ok(Err(Error::Unavailable { backend: BackendKind::Cuda, reason })) => {
            assert!(!reason.is_empty());
            assert!(!required(), "W4A8_REQUIRE names cuda but: {reason}");
            eprintln!("SKIPPED: CUDA unavailable: {reason}");
            None
        }
        Ok(Err(e)) => panic!("CudaBackend::new() failed with a non-Unavailable error: {e}"),
    }
}

#[test]
fn new_never_panics_and_unavailability_names_the_cause() {
    let first = std::panic::catch_unwind(CudaBackend::new).expect("no panic");
    // Asking twice gives the same answer (nothing half-initialized is left behind).
    let second = std::panic::catch_unwind(|| CudaBackend::with_ordinal(0)).expect("no panic");
    assert_eq!(first.is_ok(), second.is_ok());
    if w4a8_cuda::probe_driver().is_err() {
        match first {
            Err(Error::Unavailable { reason, .. }) => assert!(reason.contains("libcuda"), "{reason}"),
            other => panic!("expected Unavailable, got {:?}", other.map(|_| ())),
        }
    }
    // An ordinal that cannot exist is Unavailable too, never a panic.
    let far = std::panic::catch_unwind(|| CudaBackend::with_ordinal(4096)).expect("no panic");
    assert!(matches!(far, Err(Error::Unavailable { .. })));
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[test]
fn gpu_matches_the_oracle_when_present() {
    let Some(b) = backend_or_skip() else { return };
    let mut seed = 3u64;
    for (m, n, k, gran) in [
        (1, 4096, 4096, Granularity::PerChannel),
        (5, 300, 200, Granularity::PerGroup { group_size: 32 }),
        (16, 1000, 1024, Granularity::PerGroup { group_size: 128 }),
        (37, 513, 384, Granularity::PerChannel),
        (200, 640, 768, Granularity::PerGroup { group_size: 256 }),
        (1000, 257, 96, Granularity::PerGroup { group_size: 32 }),
    ] {
        let q: Vec<i8> = (0..n * k).map(|_| ((lcg(&mut seed) + 1.0) * 7.99) as i8 - 8).collect();
        let s_ch = (0..n).map(|_| lcg(&mut seed).abs() * 0.01).collect();
        let s_g = (0..gran.groups(k) * n).map(|i| (i % 16) as u8 + 1).collect();
        let bias = Some((0..n).map(|_| lcg(&mut seed)).collect());
        let w = W4A8Weights::from_int4(n, k, gran, &q, s_ch, s_g, bias).unwrap();
        let xf: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 4.0).collect();
        let xh: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        let xr: Vec<f32> = xh.iter().map(|h| h.to_f32()).collect();
        let want_x = quantize_activations(&xr, m, k, None).unwrap();
        let pw = b.prepare(&w).unwrap();
        assert_eq!(b.read_weights(&pw).unwrap(), w);
        let xq = b.quantize_activations(&xh, m, k, None).unwrap();
        assert_eq!(b.read_activations(&xq).unwrap(), want_x, "device quantization M={m} K={k}");
        let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
        b.gemm_into(&xq, &pw, &mut y).unwrap();
        let got = b.read_output(&y).unwrap();
        let want = reference_gemm(&want_x, &w).unwrap();
        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "GEMM M={m} N={n} K={k} {gran} differs from the oracle");
    }
    // A non-finite input is an error, and the backend still works afterwards.
    let mut xh = vec![f16::ONE; 2 * 64];
    xh[70] = f16::INFINITY;
    match b.quantize_activations(&xh, 2, 64, None) {
        Err(Error::NonFinite { index: 70, .. }) => {}
        other => panic!("expected NonFinite at 70, got {:?}", other.map(|_| ())),
    }
    xh[70] = f16::ONE;
    assert!(b.quantize_activations(&xh, 2, 64, None).is_ok());
}
