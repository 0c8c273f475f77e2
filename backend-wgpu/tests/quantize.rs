//! Activation quantization on the device against `w4a8_core::quantize::quantize_activations`,
//! through both reductions (subgroupMax and workgroup memory), with and without smoothing.

mod common;

use common::*;
use half::f16;
use w4a8_core::{ActivationTransform, Error, Gemm};
use w4a8_wgpu::WgpuOptions;

fn check_quantizer(use_subgroups: bool) {
    let Some(b) = backend_with(WgpuOptions { use_subgroups, ..Default::default() }) else { return };
    if use_subgroups && !b.uses_subgroups() {
        eprintln!("SKIPPED: adapter has no subgroups; the subgroup quantizer is not exercised");
        return;
    }
    assert_eq!(b.uses_subgroups(), use_subgroups);
    let mut rng = Rng::new(10);
    for (m, k) in [(1, 1), (3, 45), (4, 300), (2, 1000)] {
        let mut xf: Vec<f32> = (0..m * k).map(|_| rng.unit() * 6.0 - 3.0).collect();
        // An outlier channel, f16 subnormals, and (when M > 2) an all-zero row.
        xf[k / 2] = 300.0;
        if k > 3 {
            xf[1] = 3.0e-6;
            xf[2] = -6.0e-8;
        }
        if m > 2 {
            xf[2 * k..3 * k].fill(0.0);
        }
        let x: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        let x32: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let smooth: Vec<f32> = (0..k).map(|_| 0.25 + rng.unit() * 2.0).collect();
        for s in [None, Some(&smooth[..])] {
            let want = w4a8_core::quantize::quantize_activations(&x32, m, k, s).unwrap();
            let got = b.read_activations(&b.quantize_activations(&x, m, k, s).unwrap()).unwrap();
            let ctx = format!("M={m} K={k} smooth={} subgroups={use_subgroups}", s.is_some());
            let sbits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(sbits(got.scales()), sbits(want.scales()), "{ctx}: scales");
            assert_eq!(got.values(), want.values(), "{ctx}: values");
        }
    }
}

#[test]
fn subgroup_quantizer_matches_cpu() {
    check_quantizer(true);
}

#[test]
fn workgroup_memory_quantizer_matches_cpu() {
    check_quantizer(false);
}

/// The rotated quantizer against the CPU oracle through both chunk sizes: 4096 channels (16 KiB of
/// workgroup memory) and, on a device capped at 8 KiB, 2048, where a block of 4096 is refused with
/// the limit named. Rows span several chunks (K = 9216) and a tail chunk (K = 4100 at b = 4).
#[test]
fn rotated_quantizer_matches_cpu_in_both_chunk_sizes() {
    for cap in [None, Some(8192)] {
        let Some(b) = backend_with(WgpuOptions { max_workgroup_storage_bytes: cap, ..Default::default() })
        else {
            return;
        };
        let mut rng = Rng::new(12);
        let largest = if cap.is_some() { 2048 } else { 4096 };
        for (m, k, block) in [(3, 8, 2), (2, 4100, 4), (4, 384, 128), (2, 9216, 1024), (1, largest, largest)]
        {
            let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.unit() * 6.0 - 3.0)).collect();
            let x32: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let smooth: Vec<f32> = (0..k).map(|_| 0.25 + rng.unit() * 2.0).collect();
            for s in [None, Some(&smooth[..])] {
                let t = ActivationTransform { smooth: s, hadamard_block: Some(block) };
                let want = w4a8_core::quantize::quantize_activations_with(&x32, m, k, &t).unwrap();
                let got = b.read_activations(&b.quantize_activations_with(&x, m, k, &t).unwrap()).unwrap();
                let ctx = format!("cap {cap:?}: M={m} K={k} b={block} smooth={}", s.is_some());
                let sbits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(sbits(got.scales()), sbits(want.scales()), "{ctx}: scales");
                assert_eq!(got.values(), want.values(), "{ctx}: values");
            }
        }
        if cap.is_some() {
            let t = ActivationTransform { smooth: None, hadamard_block: Some(4096) };
            match b.quantize_activations_with(&vec![f16::ONE; 4096], 1, 4096, &t) {
                Err(Error::OverDeviceLimit { limit: 8192, requested: 16384, .. }) => {}
                other => panic!("expected OverDeviceLimit, got {:?}", other.map(|_| ())),
            }
        }
    }
}

#[test]
fn non_finite_input_is_an_error_and_the_backend_stays_usable() {
    let Some(b) = backend() else { return };
    let (m, k) = (2, 10);
    let mut x = vec![f16::from_f32(1.0); m * k];
    x[13] = f16::NAN;
    match b.quantize_activations(&x, m, k, None) {
        Err(Error::NonFinite { index: 13, what: "activations", .. }) => {}
        other => panic!("expected NonFinite at 13, got {:?}", other.map(|_| ())),
    }
    x[13] = f16::INFINITY;
    assert!(matches!(b.quantize_activations(&x, m, k, None), Err(Error::NonFinite { index: 13, .. })));
    // Finite input that the smoothing vector scales to infinity.
    x[13] = f16::MAX;
    let mut smooth = vec![1.0f32; k];
    smooth[3] = 1.0e36;
    match b.quantize_activations(&x, m, k, Some(&smooth)) {
        Err(Error::NonFinite { index: 13, what: "smoothed activations", value }) => {
            assert!(value.is_infinite())
        }
        other => panic!("expected NonFinite at 13, got {:?}", other.map(|_| ())),
    }
    // Still usable.
    x[13] = f16::from_f32(2.0);
    let q = b.read_activations(&b.quantize_activations(&x, m, k, None).unwrap()).unwrap();
    assert_eq!(q.values()[13], 127);
    assert_eq!(q.scales()[1], 2.0 / 127.0);
}

#[test]
fn upload_then_read_activations_round_trips() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(11);
    let x = random_activations(&mut rng, 5, 37);
    assert_eq!(b.read_activations(&b.upload_activations(&x).unwrap()).unwrap(), x);
}
