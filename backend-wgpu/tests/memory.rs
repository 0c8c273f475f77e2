//! The backend's count of live device bytes, and the memory budget that turns an allocation past it
//! into `Error::OutOfMemory` before anything reaches the driver.

mod common;

use common::*;
use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{BackendKind, Error, Gemm, Granularity};
use w4a8_wgpu::WgpuOptions;

#[test]
fn live_bytes_follow_the_handles_and_return_to_zero() {
    let Some(b) = backend() else { return };
    assert_eq!(b.device_bytes(), 0, "a fresh backend holds no buffers");
    let mut rng = Rng::new(40);
    let w = random_weights(&mut rng, 200, 256, Granularity::PerGroup { group_size: 64 }, true);
    let x = random_activations(&mut rng, 5, 256);
    let wd = b.prepare(&w).unwrap();
    let after_prepare = b.device_bytes();
    assert!(after_prepare >= w.storage_bytes() as u64, "{after_prepare} < {}", w.storage_bytes());
    let xd = b.upload_activations(&x).unwrap();
    let mut y = b.alloc_output(5, 200, f16::NAN).unwrap();
    let handles = b.device_bytes();
    assert!(handles > after_prepare);
    // A GEMM and a read allocate transient buffers (uniforms, placeholders, staging) and free them.
    b.gemm_into(&xd, &wd, &mut y).unwrap();
    assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), 200, "gemm");
    assert_eq!(b.device_bytes(), handles, "transient buffers outlived their call");
    drop((xd, y));
    assert_eq!(b.device_bytes(), after_prepare);
    drop(wd);
    assert_eq!(b.device_bytes(), 0);
}

#[test]
fn allocations_past_the_budget_are_out_of_memory_and_release_what_they_took() {
    // A 64 KiB binding cap splits these weights (K = 256: 128 bytes per column) into four chunks,
    // so the budget runs out in the middle of prepare, after some chunks were uploaded.
    let options = WgpuOptions {
        max_device_bytes: Some(96 << 10),
        max_binding_bytes: Some(64 << 10),
        ..Default::default()
    };
    let Some(b) = backend_with(options) else { return };
    let mut rng = Rng::new(41);
    let small = random_weights(&mut rng, 64, 256, Granularity::PerChannel, false);
    let big = random_weights(&mut rng, 1600, 256, Granularity::PerChannel, false);
    let kept = b.prepare(&small).unwrap();
    let live = b.device_bytes();
    match b.prepare(&big) {
        Err(Error::OutOfMemory { backend: Some(BackendKind::Wgpu), what, requested, reason }) => {
            assert!(
                what.contains("qweight") && requested > 0 && reason.contains("budget"),
                "{what}: {reason}"
            );
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
    }
    assert_eq!(b.device_bytes(), live, "the chunks uploaded before the refusal were not released");
    // Outputs and activations are held to the same budget.
    assert!(matches!(b.alloc_output(300, 300, f16::ZERO), Err(Error::OutOfMemory { .. })));
    assert_eq!(b.device_bytes(), live);
    // What was prepared before still computes.
    let x = random_activations(&mut rng, 3, 256);
    let y = b.gemm(&b.upload_activations(&x).unwrap(), &kept).unwrap();
    assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &small).unwrap(), 64, "after refusal");
}

#[test]
fn threads_racing_for_the_last_bytes_never_pass_the_budget() {
    let budget = 256 << 10;
    let Some(b) = backend_with(WgpuOptions { max_device_bytes: Some(budget), ..Default::default() }) else {
        return;
    };
    let mut rng = Rng::new(42);
    let w = random_weights(&mut rng, 256, 256, Granularity::PerGroup { group_size: 128 }, false);
    let (mut ok, mut refused) = (0, 0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut held = Vec::new();
                    let (mut ok, mut refused) = (0, 0);
                    for _ in 0..20 {
                        match b.prepare(&w) {
                            Ok(p) => {
                                ok += 1;
                                held.push(p);
                            }
                            Err(Error::OutOfMemory { .. }) => {
                                refused += 1;
                                held.clear();
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }
                        assert!(b.device_bytes() <= budget, "{} live bytes", b.device_bytes());
                    }
                    (ok, refused)
                })
            })
            .collect();
        for w in workers {
            let (o, r) = w.join().unwrap();
            ok += o;
            refused += r;
        }
    });
    assert!(ok > 0 && refused > 0, "{ok} prepared, {refused} refused");
    assert_eq!(b.device_bytes(), 0);
}
