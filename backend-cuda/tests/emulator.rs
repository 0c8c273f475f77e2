//! The packing ↔ dequant invariant, tested end to end without a GPU: the prepared (repacked)
//! weights go through a lane-by-lane emulation of the GEMM kernel — its stage copies through the
//! cp.async ring buffer's slots (prologue, waits, barriers, refills), swizzle, 128-bit B loads,
//! dequantization bit operations, ldmatrix and the PTX m16n8k32 fragment map — and the result must
//! equal the CPU oracle bit for bit, for every kernel configuration and split count, both
//! granularities and every group size, with tails in M, N and K, and with K long enough that every
//! pipeline slot is recycled many times.

use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Granularity, QuantizedActivations, W4A8Weights, f16};
use w4a8_cuda::emulate::{Schedule, emulate_gemm, emulate_gemm_with};
use w4a8_cuda::layout::{BK, CONFIGS, LaunchPlan, pack_weights, padded_k, padded_n, unpack_weights};

use w4a8_core::rng::SplitMix64 as Rng;

/// Uniform in [0, n).
fn below(rng: &mut Rng, n: u32) -> u32 {
    rng.int(0, n as i64 - 1) as u32
}

fn activations(rng: &mut Rng, m: usize, k: usize, extreme: bool) -> QuantizedActivations {
    let values = (0..m * k)
        .map(|_| if extreme { if below(rng, 2) == 0 { 127 } else { -127 } } else { below(rng, 255) as i32 - 127 } as i8)
        .collect();
    // One all-zero-scale row when M > 2 (s_x = 0 → outputs ±0), the rest spread over magnitudes.
    let scales =
        (0..m).map(|r| if r == 1 && m > 2 { 0.0 } else { (below(rng, 10_000) + 1) as f32 * 1e-5 }).collect();
    QuantizedActivations::new(m, k, values, scales).unwrap()
}

fn weights(rng: &mut Rng, n: usize, k: usize, gran: Granularity, bias: bool, extreme: bool) -> W4A8Weights {
    let q: Vec<i8> = (0..n * k).map(|_| if extreme { -8 } else { below(rng, 16) as i8 - 8 }).collect();
    let s_ch = (0..n).map(|_| (below(rng, 1000) + 1) as f32 * 3e-4).collect();
    let s_g = (0..gran.groups(k) * n).map(|_| if extreme { 16 } else { below(rng, 16) as u8 + 1 }).collect();
    let b = bias.then(|| (0..n).map(|_| below(rng, 2001) as f32 * 1e-3 - 1.0).collect());
    W4A8Weights::from_int4(n, k, gran, &q, s_ch, s_g, b).unwrap()
}

fn bits(v: &[f16]) -> Vec<u16> {
    v.iter().map(|h| h.to_bits()).collect()
}

/// The launch the backend makes for this M: `blocks` forced, or the default grid when `resident`
/// blocks fit on the device (an H100 holds 132 SMs × 4 small-configuration blocks).
fn plan(x: &QuantizedActivations, w: &W4A8Weights, blocks: Option<usize>) -> LaunchPlan {
    LaunchPlan::new(x.m(), padded_n(w.n()), padded_k(w.k()), 528, blocks).unwrap()
}

/// `plan` with every block owning whole tiles (the longest pipelines, no partial sums).
fn whole_tiles(x: &QuantizedActivations, w: &W4A8Weights) -> LaunchPlan {
    let p = plan(x, w, None);
    plan(x, w, Some(p.tiles()))
}

fn check(x: &QuantizedActivations, w: &W4A8Weights, plan: LaunchPlan) {
    let order: Vec<usize> = (0..plan.blocks).collect();
    check_ordered(x, w, plan, &order);
}

/// Runs the emulator with the blocks arriving in `order` and holds it to the oracle bit for bit.
fn check_ordered(x: &QuantizedActivations, w: &W4A8Weights, plan: LaunchPlan, order: &[usize]) {
    let want = reference_gemm(x, w).unwrap();
    let packed = pack_weights(w);
    let schedule = Schedule::kernel(plan.config.stages);
    let got = emulate_gemm_with(x, &packed, &plan, schedule, order)
        .unwrap_or_else(|e| panic!("pipeline fault: {e}"));
    let (m, n, k) = (x.m(), w.n(), w.k());
    if let Some(i) = (0..want.len()).find(|&i| want[i].to_bits() != got[i].to_bits()) {
        panic!(
            "M={m} N={n} K={k} {} {plan:?}: first mismatch at ({}, {}): oracle {} emulator {}",
            w.granularity(),
            i / n,
            i % n,
            want[i],
            got[i]
        );
    }
    assert_eq!(bits(&want), bits(&got));
    assert_eq!(unpack_weights(&packed).unwrap(), *w, "read_weights must invert prepare");
}

#[test]
fn emulated_kernel_equals_oracle_over_random_shapes() {
    let mut rng = Rng::new(0x5eed);
    let grans = [
        Granularity::PerChannel,
        Granularity::PerGroup { group_size: 32 },
        Granularity::PerGroup { group_size: 64 },
        Granularity::PerGroup { group_size: 128 },
        Granularity::PerGroup { group_size: 256 },
    ];
    for case in 0..40 {
        let gran = grans[case % grans.len()];
        let g = gran.group_size().unwrap_or(1);
        // K: a multiple of the group size, with tails against the 128 k-tile (e.g. 32, 96, 160…).
        let k = match gran {
            Granularity::PerChannel => 1 + below(&mut rng, 400) as usize,
            _ => g * (1 + below(&mut rng, (512 / g) as u32) as usize),
        };
        let n = 1 + below(&mut rng, 300) as usize;
        let cfg = CONFIGS[case % CONFIGS.len()];
        let lo = CONFIGS.iter().rev().find(|c| c.max_m < cfg.max_m).map_or(1, |c| c.max_m + 1);
        let m = lo + below(&mut rng, (cfg.max_m.min(150) + 1 - lo) as u32) as usize;
        let x = activations(&mut rng, m, k, false);
        let w = weights(&mut rng, n, k, gran, case % 3 != 0, false);
        // Any grid from one block doing everything to one block per k-tile.
        let iters = plan(&x, &w, None).iterations();
        let blocks = 1 + below(&mut rng, iters as u32) as usize;
        check(&x, &w, plan(&x, &w, Some(blocks)));
    }
}

#[test]
fn every_configuration_handles_m_tails() {
    let mut rng = Rng::new(7);
    // 1100 rows: 9 tile rows of the large configuration, two raster bands (8 + 1 rows).
    for m in [1, 2, 15, 16, 17, 33, 63, 64, 65, 129, 1100] {
        let x = activations(&mut rng, m, 200, false);
        let w = weights(&mut rng, 45, 200, Granularity::PerChannel, true, false);
        check(&x, &w, plan(&x, &w, None));
        let x = activations(&mut rng, m, 256, false);
        let w = weights(&mut rng, 33, 256, Granularity::PerGroup { group_size: 64 }, false, false);
        check(&x, &w, whole_tiles(&x, &w));
    }
}

#[test]
fn extreme_values_at_the_largest_k_stay_exact() {
    // |acc| reaches 127·128·K (per group, s_g = 16, q = -8) and 16·127·8·K inside the per-channel
    // mma: both < 2³¹ at K = 65 536. One row and 8 columns keep the emulation quick.
    let mut rng = Rng::new(11);
    let k = 65_536;
    let x = activations(&mut rng, 1, k, true);
    for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 256 }] {
        let w = weights(&mut rng, 8, k, gran, true, true);
        check(&x, &w, plan(&x, &w, Some(3)));
    }
}

/// One M per configuration: the smallest that selects it, and a ragged one.
fn m_per_config() -> Vec<usize> {
    let mut ms = vec![1, 13];
    for pair in CONFIGS.windows(2) {
        ms.extend([pair[0].max_m + 1, pair[0].max_m + 7]);
    }
    ms
}

#[test]
fn recycled_pipeline_slots_stay_exact_at_long_k_in_whole_tiles() {
    // Whole tiles and ≥ 32 k-tiles: each block runs the whole K, so every slot of every
    // configuration's ring buffer (4 or 6 stages) is refilled 5 to 8 times.
    let mut rng = Rng::new(0x51075);
    for (i, m) in m_per_config().into_iter().enumerate() {
        let gran = [Granularity::PerChannel, Granularity::PerGroup { group_size: 32 }][i % 2];
        let k = 32 * BK + if gran == Granularity::PerChannel { 77 } else { 64 };
        let x = activations(&mut rng, m, k, false);
        let w = weights(&mut rng, 40, k, gran, i % 3 == 0, false);
        let p = whole_tiles(&x, &w);
        assert!(p.min_segment_k_tiles() >= 32 && p.min_segment_k_tiles() > 4 * p.config.stages);
        check(&x, &w, p);
    }
    // And stream-K with every segment long enough to recycle its slots.
    let (x, w) = (
        activations(&mut rng, 3, 40 * BK, false),
        weights(&mut rng, 64, 40 * BK, Granularity::PerGroup { group_size: 128 }, true, false),
    );
    let p = plan(&x, &w, Some(5));
    assert!(p.is_stream_k() && p.min_segment_k_tiles() > p.config.stages);
    check(&x, &w, p);
}

#[test]
fn a_broken_pipeline_schedule_fails_here() {
    // The same data through a schedule that refills the slot about to be read, and one that reads
    // before its copy has landed: both are refused, not silently right or wrong.
    let mut rng = Rng::new(5);
    let x = activations(&mut rng, 2, 12 * BK, false);
    let w = weights(&mut rng, 32, 12 * BK, Granularity::PerChannel, false, false);
    let (p, packed) = (whole_tiles(&x, &w), pack_weights(&w));
    let kernel = Schedule::kernel(p.config.stages);
    for bad in [
        Schedule { refill_ahead: kernel.stages, ..kernel },
        Schedule { wait_pending: kernel.stages - 1, ..kernel },
        Schedule { prologue: kernel.stages, ..kernel },
    ] {
        let order: Vec<usize> = (0..p.blocks).collect();
        let fault = emulate_gemm_with(&x, &packed, &p, bad, &order).expect_err("a broken schedule ran");
        assert!(!fault.0.is_empty());
    }
    assert!(emulate_gemm(&x, &packed, &p).is_ok());
}

#[test]
fn stream_k_tiles_finish_the_same_whichever_block_arrives_last() {
    // Tiles cut between 2..many blocks, finished by whichever block takes the last ticket: the
    // blocks run forwards, backwards and shuffled, so each shared tile is finished by different
    // blocks, and every order must give the oracle's bits.
    let mut rng = Rng::new(0xfade);
    for (m, n, k, gran) in [
        (1, 200, 1000, Granularity::PerChannel),
        (16, 130, 2048, Granularity::PerGroup { group_size: 128 }),
        (40, 70, 768, Granularity::PerGroup { group_size: 32 }),
        (150, 129, 1024, Granularity::PerChannel),
    ] {
        let x = activations(&mut rng, m, k, false);
        let w = weights(&mut rng, n, k, gran, true, false);
        let p = plan(&x, &w, None);
        for blocks in [p.tiles() + 1, 2 * p.tiles() + 3, p.iterations() / 3 + 1, p.iterations()] {
            let p = plan(&x, &w, Some(blocks));
            assert!(p.is_stream_k(), "{p:?}");
            let forward: Vec<usize> = (0..blocks).collect();
            let mut shuffled = forward.clone();
            for i in (1..blocks).rev() {
                shuffled.swap(i, below(&mut rng, i as u32 + 1) as usize);
            }
            for order in [forward.clone(), forward.iter().rev().copied().collect(), shuffled] {
                check_ordered(&x, &w, p, &order);
            }
        }
    }
}

#[test]
fn the_default_decode_grid_is_one_wave_of_stream_k_blocks() {
    // M = 1 on a 4096×4096 layer: 64 tiles of 32 k-tiles on 528 resident blocks; every tile is
    // shared, every block gets 3 or 4 k-tiles, and the emulated result is the oracle's.
    let mut rng = Rng::new(0xdec0);
    let x = activations(&mut rng, 1, 4096, false);
    let w = weights(&mut rng, 4096, 4096, Granularity::PerGroup { group_size: 128 }, true, false);
    let p = plan(&x, &w, None);
    assert_eq!((p.tiles(), p.blocks), (64, 528));
    assert!((0..p.blocks).map(|b| p.range(b)).all(|(lo, hi)| (3..=4).contains(&(hi - lo))));
    check(&x, &w, p);
}
