//! The two tiled GEMMs (W4A8 `w4a8_gemm_tiled_*`, f16 baseline `f16_gemm_tiled_*`) in both sizes:
//! M, N and K tails against the tile (128 or 64), K whose padded length is not a whole 64-k step,
//! every group size, the size picked from the workgroup-memory limit and the typed refusal below
//! the smallest. W4A8 bit for bit against the CPU oracle; f16 against an f64 reference within the
//! bound of f32 accumulation.

mod common;

use common::*;
use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Error, Gemm, Granularity};
use w4a8_wgpu::shaders::{TILED_VARIANTS, TiledVariant};
use w4a8_wgpu::{GemmKernel, WgpuBackend, WgpuOptions};

/// A backend whose workgroup memory is capped to exactly what `v` needs, so it runs that size.
fn backend_for(v: &TiledVariant) -> Option<WgpuBackend> {
    let b = backend_with(WgpuOptions {
        max_workgroup_storage_bytes: Some(v.workgroup_bytes() as u32),
        ..Default::default()
    })?;
    let plan = b.kernel_plan(64, 64, 64, Granularity::PerChannel).unwrap();
    if plan.kernels != [v.w4a8.entry_points[0]] {
        // The device has less workgroup memory than this size needs (not lavapipe's 32 KiB).
        eprintln!("SKIPPED: {} does not fit this device: {plan}", v.w4a8.name);
        return None;
    }
    Some(b)
}

#[test]
fn tiled_w4a8_tails_match_oracle_in_both_sizes() {
    let g = |group_size| Granularity::PerGroup { group_size };
    // (M, N, K, granularity): Kp / 32 odd (a last step of one block), K not a multiple of 32,
    // M and N one past a tile, odd N, groups of one block (two groups per step) and groups that
    // span steps.
    let cases = [
        (129, 131, 96, g(32)),
        (255, 257, 160, Granularity::PerChannel),
        (200, 64, 45, Granularity::PerChannel),
        (130, 200, 192, g(64)),
        (17, 300, 384, g(128)),
        (65, 127, 768, g(256)),
    ];
    for v in &TILED_VARIANTS {
        let Some(b) = backend_for(v) else { continue };
        let mut rng = Rng::new(40 + v.tile as u64);
        for (i, &(m, n, k, gran)) in cases.iter().enumerate() {
            let w = random_weights(&mut rng, n, k, gran, i % 2 == 0);
            let x = random_activations(&mut rng, m, k);
            let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
            let (wd, xd) = (b.prepare(&w).unwrap(), b.upload_activations(&x).unwrap());
            b.gemm_with(&xd, &wd, &mut y, GemmKernel::Tiled).unwrap();
            let ctx = format!("{} M={m} N={n} K={k} {gran}", v.w4a8.name);
            assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), n, &ctx);
        }
    }
}

#[test]
fn tiled_size_follows_the_workgroup_memory_limit() {
    let Some(b) = backend() else { return };
    let plan = b.kernel_plan(300, 4096, 4096, Granularity::PerChannel).unwrap();
    let fitting = TILED_VARIANTS.iter().find(|v| plan.kernels == [v.w4a8.entry_points[0]]).unwrap();
    assert_eq!(plan.get("workgroup memory bytes"), Some(fitting.workgroup_bytes().to_string().as_str()));
    let shape = format!("{0}x{0}x{1}", fitting.tile, w4a8_wgpu::shaders::TILED_W4A8_STEP_K);
    assert_eq!(plan.get("tile (rows x columns x k per barrier)"), Some(shape.as_str()), "{plan}");

    // One byte less than the smallest size needs: every tiled call is refused with the limit's
    // name, and the backend still serves the rest.
    let smallest = TILED_VARIANTS[TILED_VARIANTS.len() - 1];
    let cap = smallest.workgroup_bytes() as u32 - 1;
    let Some(b) = backend_with(WgpuOptions { max_workgroup_storage_bytes: Some(cap), ..Default::default() })
    else {
        return;
    };
    let refused = |r: Result<(), Error>| match r {
        Err(Error::OverDeviceLimit { limit_name, limit, requested, .. }) => {
            assert_eq!(
                (limit_name, limit, requested),
                ("max_compute_workgroup_storage_size", cap as u64, smallest.workgroup_bytes())
            );
        }
        other => panic!("expected OverDeviceLimit, got {other:?}"),
    };
    refused(b.kernel_plan(300, 64, 64, Granularity::PerChannel).map(|_| ()));
    let mut rng = Rng::new(50);
    let w = random_weights(&mut rng, 40, 64, Granularity::PerChannel, false);
    let x = random_activations(&mut rng, 20, 64);
    let (wd, xd) = (b.prepare(&w).unwrap(), b.upload_activations(&x).unwrap());
    let mut y = b.alloc_output(20, 40, f16::NAN).unwrap();
    refused(b.gemm_with(&xd, &wd, &mut y, GemmKernel::Tiled));
    let f = b.upload_f16(&[f16::ONE; 20 * 64], 20, 64).unwrap();
    let g = b.upload_f16(&[f16::ONE; 40 * 64], 40, 64).unwrap();
    refused(b.f16_gemm(&f, &g, &mut y));
    b.gemm_with(&xd, &wd, &mut y, GemmKernel::Decode).unwrap();
    assert_bits_eq(&b.read_output(&y).unwrap(), &reference_gemm(&x, &w).unwrap(), 40, "decode after refusal");
}

/// Uniform f16 in [-1, 1] (subnormals included: the kernel converts them exactly).
fn random_f16(rng: &mut Rng, len: usize) -> Vec<f16> {
    (0..len).map(|_| f16::from_f32(rng.unit() * 2.0 - 1.0)).collect()
}

#[test]
fn f16_baseline_matches_an_f32_accumulated_reference_in_both_sizes() {
    // (M, N, K): K not a multiple of 8 (padding inside a 16-byte load) nor of the 16-k step, K
    // ending half-way through a step, tails one past a tile, odd N, a single element.
    let cases = [(1, 3, 5), (130, 131, 37), (70, 257, 72), (129, 64, 16), (65, 129, 200)];
    for v in &TILED_VARIANTS {
        let Some(b) = backend_for(v) else { continue };
        let mut rng = Rng::new(60 + v.tile as u64);
        for &(m, n, k) in &cases {
            let (x, w) = (random_f16(&mut rng, m * k), random_f16(&mut rng, n * k));
            let (xd, wd) = (b.upload_f16(&x, m, k).unwrap(), b.upload_f16(&w, n, k).unwrap());
            let mut y = b.alloc_output(m, n, f16::NAN).unwrap();
            b.f16_gemm(&xd, &wd, &mut y).unwrap();
            let got = b.read_output(&y).unwrap();
            let mut same_bits = 0;
            for i in 0..m {
                for j in 0..n {
                    let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    // The reference: f32 accumulation in k order, as the kernel does it.
                    let r32 = xr.iter().zip(wr).fold(0f32, |a, (p, q)| p.to_f32().mul_add(q.to_f32(), a));
                    let want = f16::from_f32(r32);
                    // An f16 × f16 product is exact in f32 (11 + 11 significand bits), so fused or
                    // not, each k adds one rounding: any order of the sum is within
                    // γ_k·Σ|x·w| of the exact value, γ_k = k·u / (1 - k·u), u = 2⁻²⁴, and two
                    // orders within twice that of each other. The kernel's own order is the
                    // reference's (bit-equal where the driver keeps it); a driver may reassociate.
                    // Rounding the kernel's f32 sum s to f16 then moves it by at most half an f16
                    // ulp: 2⁻¹¹·|s| (|s| ≤ max(|g|, |r|) + the order term), or 2⁻²⁵ in the
                    // subnormal range.
                    let abs_sum: f64 = xr.iter().zip(wr).map(|(p, q)| (p.to_f64() * q.to_f64()).abs()).sum();
                    let u = 2f64.powi(-24);
                    let order = 2.0 * k as f64 * u / (1.0 - k as f64 * u) * abs_sum;
                    let (g, r) = (got[i * n + j].to_f64(), r32 as f64);
                    let tol = order + (g.abs().max(r.abs()) + order) * 2f64.powi(-11) + 2f64.powi(-25);
                    assert!(
                        (g - r).abs() <= tol,
                        "{} ({m},{n},{k}) at ({i},{j}): {g} vs f32 reference {r} (tolerance {tol:e})",
                        v.f16.name
                    );
                    same_bits += (got[i * n + j].to_bits() == want.to_bits()) as usize;
                }
            }
            eprintln!(
                "{} ({m},{n},{k}): {same_bits} of {} outputs bit-equal to the f32 reference",
                v.f16.name,
                m * n
            );
        }
    }
}

/// Shared-memory passes of one subgroup access: each lane's word addresses (a vec4 is 4 words from
/// 4·slot, a scalar 1). Returns (passes, minimum): a bank serves one distinct word per pass (equal
/// words broadcast), so passes = the most distinct words any of the 32 banks (4 bytes each) meets;
/// the minimum is the distinct bytes over 128. Also asserts the stricter 128-bit rule for vec4
/// accesses: within each 8-lane quarter, distinct addresses meet distinct banks.
fn bank_passes(lanes: &[Vec<u32>]) -> (usize, usize) {
    use std::collections::BTreeSet;
    let distinct_in = |ls: &[Vec<u32>]| -> Vec<BTreeSet<u32>> {
        let mut banks = vec![BTreeSet::new(); 32];
        for &w in ls.iter().flatten() {
            banks[(w % 32) as usize].insert(w);
        }
        banks
    };
    let banks = distinct_in(lanes);
    let passes = banks.iter().map(|b| b.len()).max().unwrap();
    let words: usize = banks.iter().map(|b| b.len()).sum();
    if lanes[0].len() == 4 {
        for quarter in lanes.chunks(8) {
            assert!(distinct_in(quarter).iter().all(|b| b.len() <= 1), "quarter conflict: {quarter:?}");
        }
    }
    (passes, (words * 4).div_ceil(128))
}

#[test]
fn tiled_shared_memory_accesses_are_conflict_free() {
    // The index arithmetic of w4a8_gemm_tiled.wgsl and f16_gemm.wgsl (shared), transcribed, for a
    // 32-lane subgroup (32 consecutive lid) of every size; vec4 slot s covers words 4s .. 4s + 3.
    let vec4 = |slot: u32| (4 * slot..4 * slot + 4).collect::<Vec<_>>();
    for v in &TILED_VARIANTS {
        let (tg, tile) = (v.tile as u32 / 8, v.tile as u32);
        let wg = tg * tg;
        let mut report = Vec::new();
        let mut check = |what: &str, lanes: Vec<Vec<u32>>| {
            let (passes, min) = bank_passes(&lanes);
            assert_eq!(passes, min, "{} {what}: {passes} passes for {min}", v.w4a8.name);
            report.push(format!("{what}: {passes}"));
        };
        for sub in 0..wg / 32 {
            let lids = (32 * sub..32 * sub + 32).collect::<Vec<u32>>();
            let (tx, ty) = (|l: u32| l % tg, |l: u32| l / tg);
            for kq in 0..4 {
                let sw = 2 * kq;
                for (j, e) in (0..4).flat_map(|j| [(j, 0), (j, 1)]) {
                    check(
                        "ws/fws load",
                        lids.iter().map(|&l| vec4(kq * tile + 2 * tg * j + tg * e + (tx(l) ^ sw))).collect(),
                    );
                }
                for i in 0..8 {
                    check(
                        "xs/fxs load",
                        lids.iter().map(|&l| vec4(kq * tile + tg * i + (ty(l) ^ sw))).collect(),
                    );
                }
            }
            for r in 0..4 * tile / wg {
                let slot = |t: u32| (t % 4) * tile + ((t / 4) ^ (2 * (t % 4)));
                check("xs store", lids.iter().map(|&l| vec4(slot(l + wg * r))).collect());
            }
            for r in 0..2 * tile / wg {
                for half in 0..2 {
                    let slot = |u: u32| {
                        let kq = 2 * (u / tile) + half;
                        kq * tile + ((u % tile) ^ (2 * kq))
                    };
                    check("ws store", lids.iter().map(|&l| vec4(slot(l + wg * r))).collect());
                    let f16_slot = |t: u32| {
                        let kq = 2 * (t % 2) + half;
                        kq * tile + ((t / 2) ^ (2 * kq))
                    };
                    check("fxs/fws store", lids.iter().map(|&l| vec4(f16_slot(l + wg * r))).collect());
                }
            }
            // The weight fetch: the 32 lanes of a subgroup load 32 adjacent columns (σ⁻¹ permutes).
            let column = |l: u32| 2 * tg * (l / (2 * tg)) + 2 * (l % tg) + (l % (2 * tg)) / tg;
            let mut cols: Vec<u32> = lids.iter().map(|&l| column(l % tile)).collect();
            cols.sort();
            assert!(cols.windows(2).all(|w| w[1] == w[0] + 1) && cols[0].is_multiple_of(32), "{cols:?}");
        }
        report.sort();
        report.dedup();
        eprintln!("{}: passes per subgroup access (each the minimum): {}", v.w4a8.name, report.join(", "));
    }
    // Before: 64×64 tiles, 16×16 invocations, u32 words. ws[(4tx + j)·8 + w] put the 16 tx of a
    // subgroup 32 words apart in one bank; f16's fws[(4tx + j)·16 + kk] 64 apart.
    let lids: Vec<u32> = (0..32).collect();
    let old = |f: &dyn Fn(u32) -> u32| bank_passes(&lids.iter().map(|&l| vec![f(l)]).collect::<Vec<_>>());
    let before = [
        ("w4a8 ws load", old(&|l| (4 * (l % 16)) * 8)),
        ("w4a8 xs load", old(&|l| (l / 16) * 8)),
        ("w4a8 ws store", old(&|l| (l / 4) * 8 + 2 * (l % 4))),
        ("f16 fws load", old(&|l| (4 * (l % 16)) * 16)),
        ("f16 fxs load", old(&|l| (l / 16) * 16)),
        ("f16 fxs store", old(&|l| (l / 8) * 16 + 2 * (l % 8))),
    ];
    for (what, (passes, min)) in before {
        eprintln!("before, {what}: {passes} passes for a minimum of {min}");
    }
    assert_eq!(before[0].1, (16, 1), "the conflict this rewrite removes");
}
