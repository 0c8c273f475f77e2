//! The packing ↔ dequant invariant, tested end to end without a GPU: the prepared (repacked)
//! weights go through a lane-by-lane emulation of the GEMM kernel — its stage copies, swizzle,
//! 128-bit B loads, dequantization bit operations, ldmatrix and the PTX m16n8k32 fragment map — and
//! the result must equal the CPU oracle bit for bit, for every kernel configuration and split count,
//! both granularities and every group size, with tails in M, N and K.

use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Granularity, QuantizedActivations, W4A8Weights, f16};
use w4a8_cuda::emulate::emulate_gemm;
use w4a8_cuda::layout::{CONFIGS, GemmConfig, pack_weights, unpack_weights};

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

fn check(x: &QuantizedActivations, w: &W4A8Weights, cfg: GemmConfig, splits: usize) {
    let want = reference_gemm(x, w).unwrap();
    let packed = pack_weights(w);
    let got = emulate_gemm(x, &packed, cfg, splits);
    let (m, n, k) = (x.m(), w.n(), w.k());
    if let Some(i) = (0..want.len()).find(|&i| want[i].to_bits() != got[i].to_bits()) {
        panic!(
            "M={m} N={n} K={k} {} bm={} splits={splits}: first mismatch at ({}, {}): oracle {} emulator {}",
            w.granularity(),
            cfg.bm,
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
        let m = 1 + below(&mut rng, cfg.max_m.min(150) as u32) as usize;
        let kts = k.div_ceil(128);
        let splits = 1 + below(&mut rng, kts.min(4) as u32) as usize;
        let x = activations(&mut rng, m, k, false);
        let w = weights(&mut rng, n, k, gran, case % 3 != 0, false);
        check(&x, &w, cfg, splits);
    }
}

#[test]
fn every_configuration_handles_m_tails() {
    let mut rng = Rng::new(7);
    for cfg in CONFIGS {
        for m in [1, 2, 15, 16, 17, 33, 63, 64, 65, 129] {
            if m > cfg.max_m.max(130) {
                continue;
            }
            let x = activations(&mut rng, m, 200, false);
            let w = weights(&mut rng, 45, 200, Granularity::PerChannel, true, false);
            check(&x, &w, cfg, 1);
            let x = activations(&mut rng, m, 256, false);
            let w = weights(&mut rng, 33, 256, Granularity::PerGroup { group_size: 64 }, false, false);
            check(&x, &w, cfg, 2);
        }
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
        check(&x, &w, GemmConfig::for_m(1), 3);
    }
}
