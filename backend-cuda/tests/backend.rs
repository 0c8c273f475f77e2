//! The backend on whatever this machine has. Without a driver (CI, developer machines),
//! `CudaBackend::new()` must return `Error::Unavailable` naming what is missing — never panic. With
//! a GPU it must match the CPU oracle bit for bit. `W4A8_REQUIRE` naming `cuda` turns a missing
//! device into a failure.

use w4a8_core::oracle::reference_gemm;
use w4a8_core::quantize::quantize_activations;
use w4a8_core::{BackendKind, Error, Gemm, Granularity, W4A8Weights, f16};
use w4a8_cuda::CudaBackend;
use w4a8_cuda::layout::BK;

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

/// Random weights and f16 activations for one case, the oracle's answer, and the device handles.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    gran: Granularity,
    want: Vec<f16>,
    x: <CudaBackend as Gemm>::Activations,
    w: <CudaBackend as Gemm>::Weights,
}

fn case(b: &CudaBackend, seed: &mut u64, m: usize, n: usize, k: usize, gran: Granularity) -> Case {
    let q: Vec<i8> = (0..n * k).map(|_| ((lcg(seed) + 1.0) * 7.99) as i8 - 8).collect();
    let s_ch = (0..n).map(|_| lcg(seed).abs() * 0.01).collect();
    let s_g = (0..gran.groups(k) * n).map(|i| (i * 7 % 16) as u8 + 1).collect();
    let bias = Some((0..n).map(|_| lcg(seed)).collect());
    let w = W4A8Weights::from_int4(n, k, gran, &q, s_ch, s_g, bias).unwrap();
    let xh: Vec<f16> = (0..m * k).map(|_| f16::from_f32(lcg(seed) * 4.0)).collect();
    let xr: Vec<f32> = xh.iter().map(|h| h.to_f32()).collect();
    let xq = quantize_activations(&xr, m, k, None).unwrap();
    let want = reference_gemm(&xq, &w).unwrap();
    Case { m, n, k, gran, want, x: b.upload_activations(&xq).unwrap(), w: b.prepare(&w).unwrap() }
}

/// Runs `c` on `blocks` persistent blocks and checks every output bit against the oracle; twice,
/// so that the second launch finds the tile semaphores the first one left (they must be zero).
fn run_forced(b: &CudaBackend, c: &Case, blocks: usize) {
    let plan = b.launch_plan(c.m, c.n, c.k, Some(blocks)).unwrap();
    for _ in 0..2 {
        let mut y = b.alloc_output(c.m, c.n, f16::NAN).unwrap();
        b.gemm_into_with_blocks(&c.x, &c.w, &mut y, blocks).unwrap();
        let got = b.read_output(&y).unwrap();
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != c.want[i].to_bits()) {
            panic!(
                "M={} N={} K={} {} {plan:?}: first mismatch at ({}, {}): GPU {} oracle {}",
                c.m,
                c.n,
                c.k,
                c.gran,
                i / c.n,
                i % c.n,
                got[i],
                c.want[i]
            );
        }
    }
}

/// One M per configuration (the smallest that selects it, and one more ragged), per channel and
/// per group: the shapes the long-K and stream-K tests (and compute-sanitizer) run.
fn long_k_cases(b: &CudaBackend) -> Vec<Case> {
    let mut seed = 17u64;
    let k = 32 * BK + 64; // 33 k-tiles: every slot of a 4- or 6-stage ring is refilled ≥ 5 times
    [
        (1, Granularity::PerChannel),
        (13, Granularity::PerGroup { group_size: 32 }),
        (17, Granularity::PerGroup { group_size: 64 }),
        (64, Granularity::PerChannel),
        (65, Granularity::PerGroup { group_size: 32 }),
        (200, Granularity::PerChannel),
    ]
    .into_iter()
    .map(|(m, gran)| case(b, &mut seed, m, 160, k, gran))
    .collect()
}

#[test]
fn long_k_in_whole_tiles_recycles_every_pipeline_slot_on_the_gpu() {
    let Some(b) = backend_or_skip() else { return };
    for c in long_k_cases(&b) {
        let tiles = b.launch_plan(c.m, c.n, c.k, None).unwrap().tiles();
        run_forced(&b, &c, tiles);
    }
}

#[test]
fn stream_k_grids_match_the_oracle_on_the_gpu() {
    let Some(b) = backend_or_skip() else { return };
    for c in long_k_cases(&b) {
        // The default grid, one block doing everything, tiles cut in two or three (long segments),
        // and one block per k-tile (every tile shared by 33 blocks).
        let p = b.launch_plan(c.m, c.n, c.k, None).unwrap();
        for blocks in [p.blocks, 1, 2 * p.tiles() + 1, 3 * p.tiles() - 1, p.iterations()] {
            run_forced(&b, &c, blocks);
        }
    }
    // Out of range is a typed error, and the backend still works.
    let c = &long_k_cases(&b)[0];
    let iters = b.launch_plan(c.m, c.n, c.k, None).unwrap().iterations();
    let mut y = b.alloc_output(c.m, c.n, f16::NAN).unwrap();
    for bad in [0, iters + 1] {
        assert!(matches!(b.gemm_into_with_blocks(&c.x, &c.w, &mut y, bad), Err(Error::InvalidValue { .. })));
    }
    run_forced(&b, c, 7);
}

#[test]
fn the_plan_names_the_kernel_and_its_grid_without_a_gpu() {
    use w4a8_cuda::describe_plan;
    use w4a8_cuda::layout::LaunchPlan;
    // Decode on an H100-sized machine: 64 tiles of 32 k-tiles shared by 528 resident blocks.
    let decode = LaunchPlan::new(1, 4096, 4096, 528, None).unwrap();
    let text = describe_plan(&decode, Granularity::PerGroup { group_size: 128 }).to_string();
    assert!(text.starts_with("w4a8_gemm_small_per_group ("), "{text}");
    assert!(
        text.contains("tile 16x64x128") && text.contains("528 persistent (stream-K, 3-4 k-tiles each)"),
        "{text}"
    );
    // Prefill: more tiles than resident blocks, so every block owns whole tiles.
    let prefill = LaunchPlan::new(4096, 4096, 4096, 264, None).unwrap();
    let text = describe_plan(&prefill, Granularity::PerChannel).to_string();
    assert!(
        text.contains("w4a8_gemm_large_per_channel") && text.contains("1024 (whole tiles, 1 each)"),
        "{text}"
    );
}
