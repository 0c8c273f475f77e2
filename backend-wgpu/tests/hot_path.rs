//! The GEMM hot path (no error scopes, no polls, pipelines and uniform blocks made once): faults
//! still surface as typed errors, and repeated calls allocate nothing.

mod common;

use common::*;
use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{BackendKind, Error, Gemm, Granularity};

#[test]
fn every_pipeline_is_created_at_start_up() {
    let Some(b) = backend() else { return };
    let pipelines = b.info().details.iter().find(|(k, _)| k == "pipelines").map(|(_, v)| v.clone());
    let pipelines = pipelines.expect("DeviceInfo lists the pipelines");
    assert!(pipelines.contains(" 0 refused"), "{pipelines}");
    eprintln!("{pipelines}");
}

/// The decode kernel runs without wgpu's bounds checks only while its source is the one whose
/// indexing was reviewed (`TRUSTED_SHADERS` in `src/pipelines.rs` pins its hash). An edit to the
/// kernel or to any file appended to it silently restores the checks; this test makes it loud, so
/// that the edit comes with a fresh review and a new hash.
#[test]
fn the_reviewed_decode_kernel_runs_without_runtime_checks() {
    let Some(b) = backend() else { return };
    let unchecked = b.info().details.iter().find(|(k, _)| k == "shader modules without runtime checks");
    let unchecked = unchecked.map(|(_, v)| v.as_str()).expect("DeviceInfo lists the unchecked modules");
    assert!(
        unchecked.split(", ").any(|m| m == "w4a8_gemm_decode"),
        "w4a8_gemm_decode is compiled with runtime checks ({unchecked}): its source changed since its \
         bounds review; re-read it and update its hash in TRUSTED_SHADERS (src/pipelines.rs)"
    );
}

#[test]
fn a_warm_gemm_after_destroy_reports_device_lost() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(60);
    let w = b.prepare(&random_weights(&mut rng, 64, 128, Granularity::PerChannel, false)).unwrap();
    let x = b.upload_activations(&random_activations(&mut rng, 1, 128)).unwrap();
    let mut y = b.alloc_output(1, 64, f16::ZERO).unwrap();
    // Warm: the pipeline, the uniform block and the placeholder all exist before the loss.
    b.gemm_into(&x, &w, &mut y).unwrap();
    b.synchronize().unwrap();
    b.device().destroy();
    // wgpu drops calls on a destroyed device silently until the loss is reported, so the first
    // call may still return Ok; the loss must be reported by the next wait, and from then on by
    // every GEMM.
    let first = b.gemm_into(&x, &w, &mut y);
    eprintln!("first GEMM after destroy: {:?}", first.as_ref().err());
    assert!(matches!(b.synchronize(), Err(Error::DeviceLost { backend: BackendKind::Wgpu, .. })));
    assert!(matches!(b.gemm_into(&x, &w, &mut y), Err(Error::DeviceLost { .. })));
}

#[test]
fn repeated_gemms_allocate_nothing_and_stay_exact() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(61);
    for (m, gran, bias) in [
        (1, Granularity::PerChannel, false),
        (3, Granularity::PerGroup { group_size: 64 }, true),
        (40, Granularity::PerChannel, true),
    ] {
        let hw = random_weights(&mut rng, 130, 192, gran, bias);
        let hx = random_activations(&mut rng, m, 192);
        let (w, x) = (b.prepare(&hw).unwrap(), b.upload_activations(&hx).unwrap());
        let mut y = b.alloc_output(m, 130, f16::NAN).unwrap();
        let live = b.device_bytes();
        for _ in 0..5 {
            b.gemm_into(&x, &w, &mut y).unwrap();
            assert_eq!(b.device_bytes(), live, "M = {m}: a GEMM held device memory past its call");
        }
        assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&hx, &hw).unwrap(), 130, "repeated");
    }
}
