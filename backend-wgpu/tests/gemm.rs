//! The W4A8 GEMM on the device against the CPU oracle, bit for bit: both kernels, M = 1, odd M,
//! N and K tails, both granularities, every group size, weight splitting, 2-D dispatch folding.

mod common;

use common::*;
use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Gemm, Granularity};
use w4a8_wgpu::{GemmKernel, WgpuBackend, WgpuOptions};

const ALL_GRANULARITIES: [Granularity; 5] = [
    Granularity::PerChannel,
    Granularity::PerGroup { group_size: 32 },
    Granularity::PerGroup { group_size: 64 },
    Granularity::PerGroup { group_size: 128 },
    Granularity::PerGroup { group_size: 256 },
];

/// Runs one case through `kernel` and compares with the oracle; the output is poisoned with NaN
/// first so that an unwritten element shows.
fn check_case(
    b: &WgpuBackend,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    gran: Granularity,
    bias: bool,
    kernel: GemmKernel,
) {
    let w = random_weights(rng, n, k, gran, bias);
    let x = random_activations(rng, m, k);
    let want = reference_gemm(&x, &w).unwrap();
    let wd = b.prepare(&w).unwrap();
    let xd = b.upload_activations(&x).unwrap();
    let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
    b.gemm_with(&xd, &wd, &mut y, kernel).unwrap();
    let got = b.read_output(&y).unwrap();
    assert_bits_eq(&got, &want, n, &format!("M={m} N={n} K={k} {gran} bias={bias} {kernel:?}"));
}

#[test]
fn decode_kernel_matches_oracle() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(1);
    for gran in ALL_GRANULARITIES {
        let ks: &[usize] = match gran.group_size() {
            None => &[1, 45, 100, 256],
            Some(g) => &[g, 2 * g + if g == 32 { 32 } else { 0 }],
        };
        for &k in ks {
            for (m, n) in [(1, 1), (1, 67), (3, 130), (16, 33)] {
                check_case(&b, &mut rng, (m, n, k), gran, m % 2 == 1, GemmKernel::Auto);
            }
        }
    }
}

#[test]
fn tiled_kernel_matches_oracle() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(2);
    for gran in ALL_GRANULARITIES {
        let k = match gran.group_size() {
            None => 77,
            Some(g) => 2 * g,
        };
        for (m, n) in [(17, 5), (65, 129), (130, 64)] {
            check_case(&b, &mut rng, (m, n, k), gran, n % 2 == 1, GemmKernel::Auto);
        }
    }
}

#[test]
fn kernels_forced_outside_their_usual_range_match_oracle() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(3);
    // Decode kernel over 37 rows (three row blocks of at most 16), tiled kernel at M = 1.
    check_case(
        &b,
        &mut rng,
        (37, 70, 96),
        Granularity::PerGroup { group_size: 32 },
        true,
        GemmKernel::Decode,
    );
    check_case(&b, &mut rng, (37, 70, 33), Granularity::PerChannel, false, GemmKernel::Decode);
    check_case(&b, &mut rng, (1, 70, 96), Granularity::PerGroup { group_size: 32 }, true, GemmKernel::Tiled);
    check_case(&b, &mut rng, (2, 3, 9), Granularity::PerChannel, false, GemmKernel::Tiled);
}

#[test]
fn weights_split_across_bindings_and_folded_dispatches_match_oracle() {
    // A binding cap of 64 columns of K = 256 (64 · 128 bytes) splits N = 200 into four chunks; a
    // cap of 3 workgroups per dimension folds every dispatch into 2-D.
    let options = WgpuOptions {
        max_binding_bytes: Some(64 * 128),
        max_workgroups_per_dimension: Some(3),
        ..Default::default()
    };
    let Some(b) = backend_with(options) else { return };
    let mut rng = Rng::new(4);
    let gran = Granularity::PerGroup { group_size: 64 };
    let w = random_weights(&mut rng, 200, 256, gran, true);
    let wd = b.prepare(&w).unwrap();
    assert_eq!(wd.chunk_count(), 4);
    assert_eq!(b.read_weights(&wd).unwrap(), w);
    for (m, kernel) in [(1, GemmKernel::Auto), (5, GemmKernel::Auto), (15, GemmKernel::Tiled)] {
        let x = random_activations(&mut rng, m, 256);
        let mut y = b.alloc_output(m, 200, f16::NAN).unwrap();
        b.gemm_with(&b.upload_activations(&x).unwrap(), &wd, &mut y, kernel).unwrap();
        assert_bits_eq(
            &b.read_output(&y).unwrap(),
            &reference_gemm(&x, &w).unwrap(),
            200,
            &format!("chunked M={m}"),
        );
    }
    // 30 output rows of N = 200 (400 bytes each) exceed the 8 KiB binding, and splitting M
    // needs binding offsets at multiples of 128 rows: refused, naming the limit.
    let x = b.upload_activations(&random_activations(&mut rng, 30, 256)).unwrap();
    let mut y = b.alloc_output(30, 200, f16::NAN).unwrap();
    match b.gemm_with(&x, &wd, &mut y, GemmKernel::Tiled) {
        Err(w4a8_core::Error::OverDeviceLimit { limit_name, limit, .. }) => {
            assert_eq!((limit_name, limit), ("max_storage_buffer_binding_size", 64 * 128));
        }
        other => panic!("expected OverDeviceLimit, got {:?}", other.map(|_| ())),
    }
    // The tiled kernel also splits M when a binding cannot hold all output rows: 128 rows of
    // N = 20 (40 bytes each) fit the 8 KiB cap, 300 rows do not.
    let w = random_weights(&mut rng, 20, 32, Granularity::PerChannel, false);
    let x = random_activations(&mut rng, 300, 32);
    let wd = b.prepare(&w).unwrap();
    let mut y = b.alloc_output(300, 20, f16::NAN).unwrap();
    b.gemm_with(&b.upload_activations(&x).unwrap(), &wd, &mut y, GemmKernel::Tiled).unwrap();
    assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), 20, "row-chunked M=300");
}

#[test]
fn epilogue_rounding_edges_match_oracle() {
    // Overflow to ±inf, values near f16 subnormals, and -0.0 kept without a bias.
    let Some(b) = backend() else { return };
    let n = 6;
    let k = 8;
    let q: Vec<i8> = (0..n * k).map(|i| if i / k % 2 == 0 { 7 } else { -8 }).collect();
    let cs = vec![1.0e3, 1.0e3, 1.0e-9, 1.0e-9, 3.0e-12, 3.0e-12];
    for bias in [None, Some(vec![0.0, -0.0, 1e-8, -1e-8, 0.0, -0.0])] {
        let w =
            w4a8_core::W4A8Weights::from_int4(n, k, Granularity::PerChannel, &q, cs.clone(), vec![], bias)
                .unwrap();
        let x = w4a8_core::QuantizedActivations::new(2, k, vec![127; 2 * k], vec![0.9, 1.0e-3]).unwrap();
        let want = reference_gemm(&x, &w).unwrap();
        assert!(want.iter().any(|v| v.is_infinite()), "the case must reach overflow");
        for kernel in [GemmKernel::Decode, GemmKernel::Tiled] {
            let mut y = b.alloc_output(2, n, f16::NAN).unwrap();
            b.gemm_with(&b.upload_activations(&x).unwrap(), &b.prepare(&w).unwrap(), &mut y, kernel).unwrap();
            assert_bits_eq(&b.read_output(&y).unwrap(), &want, n, &format!("edges {kernel:?}"));
        }
    }
}

#[test]
fn prepare_then_read_weights_is_lossless() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(5);
    for gran in ALL_GRANULARITIES {
        let k = gran.group_size().unwrap_or(13) * 2;
        for bias in [false, true] {
            let w = random_weights(&mut rng, 67, k, gran, bias);
            assert_eq!(b.read_weights(&b.prepare(&w).unwrap()).unwrap(), w, "{gran} bias={bias}");
        }
    }
}

#[test]
fn linear_quantizes_and_multiplies_like_the_oracle() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(6);
    let (m, n, k) = (5, 40, 64);
    let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.unit() * 8.0 - 4.0)).collect();
    let w = random_weights(&mut rng, n, k, Granularity::PerGroup { group_size: 32 }, true);
    let wd = b.prepare(&w).unwrap();
    let got = b.linear(&x, m, &wd, None).unwrap();
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let xq = w4a8_core::quantize::quantize_activations(&xf, m, k, None).unwrap();
    assert_bits_eq(&got, &reference_gemm(&xq, &w).unwrap(), n, "linear");
}

#[test]
fn decode_plan_is_one_dispatch_sized_by_its_tile() {
    let Some(b) = backend() else { return };
    let g128 = Granularity::PerGroup { group_size: 128 };
    let plan = b.kernel_plan(1, 4096, 4096, g128).unwrap();
    assert_eq!(plan.kernels, [w4a8_wgpu::shaders::entry::GEMM_DECODE], "{plan}");
    assert_eq!(plan.get("weight chunks"), Some("1"), "{plan}");
    // 16 columns per workgroup: 256 workgroups at N = 4096, 688 at N = 11008.
    assert_eq!(plan.get("workgroups"), Some("256"), "{plan}");
    assert_eq!(b.kernel_plan(1, 11008, 4096, g128).unwrap().get("workgroups"), Some("688"));
    // Workgroup memory follows the row tile (512 bytes per row), not the 16-row maximum.
    for (m, rows, bytes) in [(1, "1", "512"), (3, "4", "2048"), (16, "16", "8192")] {
        let plan = b.kernel_plan(m, 4096, 4096, Granularity::PerChannel).unwrap();
        assert_eq!(
            (plan.get("rows"), plan.get("workgroup memory bytes")),
            (Some(rows), Some(bytes)),
            "{plan}"
        );
    }
}

#[test]
fn decode_kernel_k_tails_odd_n_and_repeated_runs_match_oracle() {
    // One workgroup round is 16 slices × 4 blocks = 64 blocks (2048 k). K covers: fewer blocks
    // than slices, exactly one round, and rounds plus tails ending at each of the four unrolled
    // loads; N odd with a partial last tile of 16 columns and the padding column.
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(7);
    let cases = [
        (Granularity::PerGroup { group_size: 32 }, 96), // 3 blocks: tail only
        (Granularity::PerChannel, 2048),                // 64 blocks: one full round, no tail
        (Granularity::PerChannel, 2048 + 9),            // 65 blocks: tail load 0 of slice 0
        (Granularity::PerGroup { group_size: 32 }, 3232), // 101 = 64 + 37: tail loads 0..2
        (Granularity::PerGroup { group_size: 64 }, 3648), // 114 = 64 + 50: tail loads 0..3
        (Granularity::PerGroup { group_size: 256 }, 6144), // 192 = 3 rounds, no tail
    ];
    for (gran, k) in cases {
        for (m, n) in [(1, 37), (7, 16), (16, 51)] {
            let w = random_weights(&mut rng, n, k, gran, m != 7);
            let x = random_activations(&mut rng, m, k);
            let want = reference_gemm(&x, &w).unwrap();
            let (wd, xd) = (b.prepare(&w).unwrap(), b.upload_activations(&x).unwrap());
            let mut first = None;
            for run in 0..3 {
                let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
                b.gemm_with(&xd, &wd, &mut y, GemmKernel::Auto).unwrap();
                let got = b.read_output(&y).unwrap();
                let ctx = format!("M={m} N={n} K={k} {gran} run {run}");
                assert_bits_eq(&got, &want, n, &ctx);
                let bits: Vec<u16> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(first.get_or_insert_with(|| bits.clone()), &bits, "{ctx}: not deterministic");
            }
        }
    }
}

#[test]
fn decode_over_weight_chunks_with_an_odd_last_chunk_matches_oracle() {
    // A cap of 64 columns of K = 256 (64 · 128 bytes) splits N = 131 into 64 + 64 + 3 columns: one
    // dispatch per chunk, the padding column written by the last one.
    let options = WgpuOptions { max_binding_bytes: Some(64 * 128), ..Default::default() };
    let Some(b) = backend_with(options) else { return };
    let mut rng = Rng::new(8);
    let (n, k) = (131, 256);
    let plan = b.kernel_plan(4, n, k, Granularity::PerChannel).unwrap();
    assert_eq!((plan.kernels.len(), plan.get("weight chunks")), (1, Some("3")), "{plan}");
    for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
        for m in [1, 4, 16] {
            check_case(&b, &mut rng, (m, n, k), gran, m == 4, GemmKernel::Auto);
        }
    }
}

#[test]
fn decode_workgroup_memory_over_the_limit_is_refused_by_row_tile() {
    // 512 bytes per row of the tile: under a 4 KiB - 1 cap, TM = 8 and 16 are refused with the
    // limit's name (plan and GEMM alike), TM ≤ 4 still runs, and so does the backend afterwards.
    let cap = 4095;
    let Some(b) = backend_with(WgpuOptions { max_workgroup_storage_bytes: Some(cap), ..Default::default() })
    else {
        return;
    };
    let mut rng = Rng::new(9);
    let w = random_weights(&mut rng, 40, 64, Granularity::PerChannel, true);
    let wd = b.prepare(&w).unwrap();
    for (m, fits) in [(16, false), (5, false), (4, true), (1, true)] {
        let x = random_activations(&mut rng, m, 64);
        let mut y = b.alloc_output(m, 40, f16::NAN).unwrap();
        let ran = b.gemm_with(&b.upload_activations(&x).unwrap(), &wd, &mut y, GemmKernel::Decode);
        let planned = b.kernel_plan(m, 40, 64, Granularity::PerChannel).map(|_| ());
        if fits {
            ran.unwrap();
            planned.unwrap();
            assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), 40, "M={m}");
            continue;
        }
        for r in [ran, planned] {
            match r {
                Err(w4a8_core::Error::OverDeviceLimit { limit_name, limit, requested, .. }) => {
                    assert_eq!((limit_name, limit), ("max_compute_workgroup_storage_size", cap as u64));
                    assert_eq!(
                        requested,
                        w4a8_wgpu::shaders::decode_workgroup_bytes(m.next_power_of_two() as u32)
                    );
                }
                other => panic!("M={m}: expected OverDeviceLimit, got {other:?}"),
            }
        }
    }
}
