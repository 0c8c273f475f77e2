//! Bad input, foreign handles, device limits and device loss: typed errors, never panics, and the
//! backend keeps working afterwards (except after loss, where every call reports the loss).

mod common;

use common::*;
use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Error, Gemm, Granularity};
use w4a8_wgpu::{GemmKernel, TimerKind, WgpuOptions};

#[test]
fn handles_from_another_device_are_refused() {
    let (Some(a), Some(b)) = (backend(), backend()) else { return };
    let mut rng = Rng::new(20);
    let w = random_weights(&mut rng, 8, 32, Granularity::PerChannel, false);
    let x = random_activations(&mut rng, 2, 32);
    let (wa, xa) = (a.prepare(&w).unwrap(), a.upload_activations(&x).unwrap());
    let (wb, xb) = (b.prepare(&w).unwrap(), b.upload_activations(&x).unwrap());
    let mut yb = b.alloc_output(2, 8, f16::NAN).unwrap();
    let ida = a.info().id;
    let idb = b.info().id;
    match b.gemm_into(&xb, &wa, &mut yb) {
        Err(Error::ForeignBuffer { what: "weights", owner, this }) => assert_eq!((owner, this), (ida, idb)),
        other => panic!("expected ForeignBuffer, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(b.gemm_into(&xa, &wb, &mut yb), Err(Error::ForeignBuffer { what: "activations", .. })));
    assert!(matches!(b.read_weights(&wa), Err(Error::ForeignBuffer { .. })));
    assert!(matches!(a.read_output(&yb), Err(Error::ForeignBuffer { .. })));
    // b still works.
    b.gemm_into(&xb, &wb, &mut yb).unwrap();
    assert_bits_eq(&b.read_output(&yb).unwrap(), &reference_gemm(&x, &w).unwrap(), 8, "after refusals");
}

#[test]
fn shape_errors_are_typed() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(21);
    let w = b.prepare(&random_weights(&mut rng, 8, 32, Granularity::PerChannel, false)).unwrap();
    let x = b.upload_activations(&random_activations(&mut rng, 3, 64)).unwrap();
    let mut y = b.alloc_output(3, 8, f16::ZERO).unwrap();
    assert!(matches!(b.gemm_into(&x, &w, &mut y), Err(Error::ShapeMismatch { .. })));
    let x = b.upload_activations(&random_activations(&mut rng, 3, 32)).unwrap();
    let mut y = b.alloc_output(4, 8, f16::ZERO).unwrap();
    assert!(matches!(b.gemm_into(&x, &w, &mut y), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(b.alloc_output(0, 8, f16::ZERO), Err(Error::EmptyDimension { .. })));
    assert!(matches!(b.quantize_activations(&[f16::ONE; 5], 2, 3, None), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(b.quantize_activations(&[], 0, 3, None), Err(Error::EmptyDimension { .. })));
    let too_big_k = w4a8_core::MAX_K + 1;
    assert!(matches!(
        b.quantize_activations(&[f16::ONE; 65537], 1, too_big_k, None),
        Err(Error::KTooLarge { .. })
    ));
}

#[test]
fn over_binding_limit_is_refused_with_the_limit_name() {
    let Some(b) = backend_with(WgpuOptions { max_binding_bytes: Some(1024), ..Default::default() }) else {
        return;
    };
    let x = vec![f16::ONE; 4 * 300];
    match b.quantize_activations(&x, 4, 300, None) {
        Err(Error::OverDeviceLimit {
            limit_name: "max_storage_buffer_binding_size", limit: 1024, ..
        }) => {}
        other => panic!("expected OverDeviceLimit, got {:?}", other.map(|_| ())),
    }
    // Weights whose 64 columns do not fit one binding.
    let mut rng = Rng::new(22);
    let w = random_weights(&mut rng, 64, 64, Granularity::PerChannel, false);
    assert!(matches!(b.prepare(&w), Err(Error::OverDeviceLimit { .. })));
    // Small enough still works.
    let q = b.read_activations(&b.quantize_activations(&x[..30], 3, 10, None).unwrap()).unwrap();
    assert_eq!(q.values()[0], 127);
}

#[test]
fn destroyed_device_reports_device_lost() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(23);
    let w = b.prepare(&random_weights(&mut rng, 8, 32, Granularity::PerChannel, false)).unwrap();
    let x = b.upload_activations(&random_activations(&mut rng, 2, 32)).unwrap();
    let mut y = b.alloc_output(2, 8, f16::ZERO).unwrap();
    b.device().destroy();
    let lost = |r: Result<(), Error>| {
        matches!(r, Err(Error::DeviceLost { backend: w4a8_core::BackendKind::Wgpu, .. }))
    };
    assert!(lost(b.gemm_into(&x, &w, &mut y)), "gemm after destroy");
    assert!(lost(b.read_output(&y).map(|_| ())), "read after destroy");
    assert!(lost(b.synchronize()), "synchronize after destroy");
    assert!(lost(b.quantize_activations(&[f16::ONE; 4], 1, 4, None).map(|_| ())), "quantize after destroy");
}

#[test]
fn f16_baseline_matches_an_f32_reference() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(24);
    for (m, n, k) in [(1, 3, 5), (70, 65, 33), (5, 130, 64)] {
        let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.unit() * 2.0 - 1.0)).collect();
        let w: Vec<f16> = (0..n * k).map(|_| f16::from_f32(rng.unit() * 2.0 - 1.0)).collect();
        let (xd, wd) = (b.upload_f16(&x, m, k).unwrap(), b.upload_f16(&w, n, k).unwrap());
        let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
        b.f16_gemm(&xd, &wd, &mut y).unwrap();
        let got = b.read_output(&y).unwrap();
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|t| x[i * k + t].to_f64() * w[j * k + t].to_f64()).sum();
                let g = got[i * n + j].to_f64();
                // f32 accumulation of k products (relative k·2⁻²⁴ of Σ|x·w| ≤ k) plus the f16 rounding.
                let tol = exact.abs() * 2f64.powi(-11) + k as f64 * k as f64 * 2f64.powi(-24) + 1e-6;
                assert!((g - exact).abs() <= tol, "({m},{n},{k}) at ({i},{j}): {g} vs {exact}");
            }
        }
    }
}

#[test]
fn timers_return_positive_durations() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(25);
    let w = random_weights(&mut rng, 64, 128, Granularity::PerGroup { group_size: 128 }, false);
    let x = random_activations(&mut rng, 4, 128);
    let (wd, xd) = (b.prepare(&w).unwrap(), b.upload_activations(&x).unwrap());
    let mut y = b.alloc_output(4, 64, f16::NAN).unwrap();
    let times = b.time_gemm(&xd, &wd, &mut y, GemmKernel::Auto, 3).unwrap();
    assert_eq!(times.len(), 3);
    assert!(times.iter().all(|&t| t > 0.0 && t < 10.0), "{:?} ({:?})", times, b.timer_kind());
    // The timed runs computed the real result.
    assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), 64, "timed");
    let f = b.upload_f16(&[f16::ONE; 4 * 128], 4, 128).unwrap();
    let g = b.upload_f16(&[f16::ONE; 64 * 128], 64, 128).unwrap();
    let t = b.time_f16_gemm(&f, &g, &mut y, 2).unwrap();
    assert!(t.iter().all(|&t| t > 0.0));
    assert!(b.read_output(&y).unwrap().iter().all(|&v| v == f16::from_f32(128.0)));
    eprintln!("timer: {:?}", b.timer_kind() == TimerKind::DeviceTimestamps);
}

#[test]
fn device_info_describes_the_adapter() {
    let Some(b) = backend() else { return };
    let info = b.info();
    assert_eq!(info.backend, w4a8_core::BackendKind::Wgpu);
    assert!(!info.name.is_empty());
    for key in
        ["adapter", "backend API", "driver", "subgroup sizes", "max storage binding", "max workgroup memory"]
    {
        assert!(info.details.iter().any(|(k, _)| k == key), "missing {key}");
    }
    eprintln!("{}: {:?}", info.name, info.details);
}
