//! # conformance
//!
//! The properties every W4A8 backend must satisfy, each written once, generic over
//! [`w4a8_core::Gemm`], and instantiated per backend with [`backend_suite!`]:
//!
//! 1. [`gemm_matches_oracle`]: same quantized inputs → every output bit-equal to the CPU oracle
//!    (the contract allows 1 f16 ulp; every backend does better), every element written (the output
//!    is poisoned with NaN first). Value spreads include biases that cancel the product and
//!    subnormal scales ([`inputs::Values`]).
//! 2. [`activation_quantization_matches_oracle`]: scales and codes equal to the oracle's (the
//!    contract allows 1 f32 ulp and rare `|Δq| = 1`), with quotients on and next to rounding ties and
//!    subnormal products ([`inputs::ActivationValues`]); the same with the online Walsh–Hadamard
//!    rotation at every block size ([`rotated_activation_quantization_matches_oracle`]), and a
//!    rotated layer end to end ([`rotated_linear_matches_oracle`]).
//! 3. [`gemm_matches_f64`]: the GEMM against an f64 matmul of the dequantized operands, within the
//!    bound that the f32 epilogue and f16 output rounding allow.
//! 4. [`prepared_weights_round_trip`]: prepare → read back is lossless (packing round trips are
//!    backend independent and live in `tests/format.rs`).
//! 5. [`bad_input_is_rejected`]: each error variant reachable through the trait is returned, and the
//!    backend still computes correctly afterwards.
//! 6. [`concurrent_gemms_match_serial`]: one backend shared by many threads, GEMMs of different
//!    shapes at once, every result bit-equal to the single-threaded run.
//!
//! [`soak`] holds the long-run driver (thousands of prepare/quantize/GEMM/read cycles with memory
//! sampled), generic over the backend like the properties.
//!
//! A backend compiled in that finds no device is skipped with a printed reason, unless
//! `W4A8_REQUIRE` (a comma-separated list such as `wgpu,cuda`) names it: then it fails.
//! `W4A8_CASES` scales the number of generated cases (a multiplier, default 1).

pub mod inputs;
pub mod soak;

use std::io::Write;

use half::f16;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use w4a8_core::oracle::{f16_ulp_distance, reference_gemm};
use w4a8_core::quantize::{quantize_activations, quantize_activations_with};
use w4a8_core::{
    ActivationTransform, BackendKind, DeviceTensor, Error, Gemm, MAX_HADAMARD_BLOCK, MAX_K,
    QuantizedActivations, Result, W4A8Weights,
};

use inputs::{
    ActivationValues, GemmShape, Rng, Values, f16_activations, gemm_inputs, gemm_shapes, quantizer_inputs,
    rotated_quantizer_inputs, rotated_shapes, weights,
};

pub use w4a8_core;

/// Whether `W4A8_REQUIRE` names this backend.
pub fn required(kind: BackendKind) -> bool {
    std::env::var("W4A8_REQUIRE")
        .map(|v| v.split(',').any(|s| BackendKind::from_name(s) == Some(kind)))
        .unwrap_or(false)
}

/// Opens a backend, or prints why it is skipped (straight to stderr, past the test harness's capture)
/// and returns `None`. Panics instead if the backend is required.
pub fn open_or_skip<B>(kind: BackendKind, make: impl FnOnce() -> Result<B>) -> Option<B> {
    match make() {
        Ok(b) => Some(b),
        Err(e) if required(kind) => panic!("W4A8_REQUIRE names {kind}, but it is unavailable: {e}"),
        Err(e) => {
            let _ =
                writeln!(std::io::stderr(), "SKIP {kind}: {e} (set W4A8_REQUIRE={kind} to make this fail)");
            None
        }
    }
}

/// `base` cases times the `W4A8_CASES` multiplier.
pub fn cases(base: u32) -> u32 {
    let mult: u32 = std::env::var("W4A8_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    base.saturating_mul(mult.max(1))
}

fn runner(base_cases: u32) -> TestRunner {
    TestRunner::new(Config { cases: cases(base_cases), failure_persistence: None, ..Config::default() })
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Monotonic integer image of an f32.
pub fn f32_ord(x: f32) -> i64 {
    let b = x.to_bits() as i64;
    if b & 0x8000_0000 != 0 { -(b & 0x7FFF_FFFF) } else { b }
}

/// Runs one GEMM on a backend from canonical inputs, into an output poisoned with NaN.
pub fn run_gemm<B: Gemm>(b: &B, x: &QuantizedActivations, w: &W4A8Weights) -> Result<Vec<f16>> {
    let xd = b.upload_activations(x)?;
    let wd = b.prepare(w)?;
    let mut y = b.alloc_output(x.m(), w.n(), f16::NAN)?;
    b.gemm_into(&xd, &wd, &mut y)?;
    b.read_output(&y)
}

/// Every element bit-equal to `want` (signed zeros included), and none left unwritten (NaN). The
/// contract allows 1 f16 ulp; every backend delivers the oracle's bits, so the check holds them to it.
pub fn check_bit_equal(got: &[f16], want: &[f16], n: usize) -> std::result::Result<(), TestCaseError> {
    if got.len() != want.len() {
        return Err(fail(format!("output has {} elements, expected {}", got.len(), want.len())));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() {
            return Err(fail(format!("Y[{}, {}] was never written (still NaN poison)", i / n, i % n)));
        }
        if g.to_bits() != w.to_bits() {
            let ulps = f16_ulp_distance(g, w).map_or("NaN".into(), |d| d.to_string());
            return Err(fail(format!(
                "Y[{}, {}] = {g} ({:#06x}) but the oracle says {w} ({:#06x}), {ulps} ulp apart",
                i / n,
                i % n,
                g.to_bits(),
                w.to_bits()
            )));
        }
    }
    Ok(())
}

/// Property 1: given the same quantized inputs, every output is bit-equal to the oracle's.
pub fn gemm_matches_oracle<B: Gemm>(b: &B) {
    runner(48)
        .run(&gemm_shapes(300, 160, 3), |s| {
            let (x, w) = gemm_inputs(&s);
            let want = reference_gemm(&x, &w).map_err(fail)?;
            let got = run_gemm(b, &x, &w).map_err(fail)?;
            check_bit_equal(&got, &want, s.n)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

/// Property 1, fixed cases the generator is unlikely to draw: the extreme accumulators at K = 65 536
/// (`127 · -128 · 65 536 = -1 065 353 216`, the exactness bound), 1×1×1, and K tails around 8 and 32.
pub fn gemm_edge_cases<B: Gemm>(b: &B) {
    use w4a8_core::Granularity::*;
    let extreme = |k: usize, granularity, qw: i8, sg: u8| {
        let x = QuantizedActivations::new(2, k, [vec![127i8; k], vec![-127i8; k]].concat(), vec![1.0, 0.5])
            .unwrap();
        let w = W4A8Weights::from_int4(
            3,
            k,
            granularity,
            &[vec![qw; k], vec![7; k], vec![0; k]].concat(),
            vec![2f32.powi(-20), 2f32.powi(-22), 1.0],
            vec![sg; granularity.groups(k) * 3],
            None,
        )
        .unwrap();
        (x, w)
    };
    let mut cases = vec![
        extreme(MAX_K, PerGroup { group_size: 256 }, -8, 16),
        extreme(MAX_K, PerChannel, -8, 1),
        extreme(MAX_K - 1, PerChannel, 7, 1),
    ];
    for (m, n, k, granularity) in [
        (1, 1, 1, PerChannel),
        (1, 1, 7, PerChannel),
        (3, 5, 9, PerChannel),
        (17, 33, 31, PerChannel),
        (1, 1, 32, PerGroup { group_size: 32 }),
        (2, 65, 96, PerGroup { group_size: 32 }),
        (16, 17, 257, PerChannel),
    ] {
        let seed = (m * 1000 + n * 10 + k) as u64;
        let s = GemmShape { m, n, k, granularity, bias: true, seed, values: Values::Typical };
        cases.push(gemm_inputs(&s));
    }
    for (x, w) in cases {
        let want = reference_gemm(&x, &w).unwrap();
        let got = run_gemm(b, &x, &w).unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
        check_bit_equal(&got, &want, w.n())
            .unwrap_or_else(|e| panic!("{}: M={} N={} K={}: {e}", b.info().name, x.m(), w.n(), w.k()));
    }
}

/// Property 2: on-device activation quantization equals the oracle's: every scale bit for bit, every
/// code exactly, on typical values, on quotients at rounding ties and on subnormal products.
pub fn activation_quantization_matches_oracle<B: Gemm>(b: &B) {
    let values = proptest::prop_oneof![
        2 => proptest::strategy::Just(ActivationValues::Typical),
        1 => proptest::strategy::Just(ActivationValues::Ties),
        1 => proptest::strategy::Just(ActivationValues::Subnormal),
    ];
    let shapes = (
        proptest::prop_oneof![proptest::strategy::Just(1usize), 1..=300usize],
        1..=1100usize,
        values,
        proptest::num::u64::ANY,
    );
    runner(64)
        .run(&shapes, |(m, k, values, seed)| {
            let (x, s) = quantizer_inputs(&mut Rng::new(seed), m, k, values);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let want = quantize_activations(&xf, m, k, s.as_deref()).map_err(fail)?;
            let dev = b.quantize_activations(&x, m, k, s.as_deref()).map_err(fail)?;
            let got = b.read_activations(&dev).map_err(fail)?;
            check_activations_equal(&got, &want)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

/// Every scale bit-equal and every code equal.
pub fn check_activations_equal(
    got: &QuantizedActivations,
    want: &QuantizedActivations,
) -> std::result::Result<(), TestCaseError> {
    for (row, (&g, &w)) in got.scales().iter().zip(want.scales()).enumerate() {
        if g.to_bits() != w.to_bits() {
            return Err(fail(format!(
                "s_x[{row}] = {g:e} ({:#010x}), oracle {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            )));
        }
    }
    let k = want.k();
    for (row, (g, w)) in got.values().chunks(k).zip(want.values().chunks(k)).enumerate() {
        if let Some(col) = g.iter().zip(w).position(|(a, c)| a != c) {
            return Err(fail(format!("q_x[{row}, {col}] = {}, oracle {}", g[col], w[col])));
        }
    }
    Ok(())
}

/// Property 2 with the online Walsh–Hadamard rotation: scales and codes equal to the oracle's on
/// every block size from 2 to [`w4a8_core::MAX_HADAMARD_BLOCK`], K = b and K spanning many blocks
/// (and the device kernels' chunks), with rotated quotients at ties and subnormal values that the
/// butterflies sum and cancel ([`inputs::rotated_quantizer_inputs`]).
pub fn rotated_activation_quantization_matches_oracle<B: Gemm>(b: &B) {
    runner(48)
        .run(&rotated_shapes(48), |s| {
            let (x, smooth) = rotated_quantizer_inputs(&mut Rng::new(s.seed), &s);
            let t = ActivationTransform { smooth: smooth.as_deref(), hadamard_block: Some(s.b) };
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let want = quantize_activations_with(&xf, s.m, s.k, &t).map_err(fail)?;
            let dev = b.quantize_activations_with(&x, s.m, s.k, &t).map_err(fail)?;
            let got = b.read_activations(&dev).map_err(fail)?;
            check_activations_equal(&got, &want)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

/// A rotated layer end to end, from f16 activations to the f16 output: the backend's
/// [`Gemm::linear_with`] (rotation fused into its quantizer, then its GEMM) bit-equal to the
/// oracle's, on weights quantized from `W · H_b / b`.
pub fn rotated_linear_matches_oracle<B: Gemm>(b: &B) {
    let oracle = w4a8_core::CpuOracle::new();
    let shapes = (
        proptest::prop_oneof![proptest::strategy::Just(1usize), 1..=40usize],
        1..=48usize,
        proptest::sample::select(vec![32usize, 64, 128, 256]),
        1..=3usize,
        proptest::num::u64::ANY,
    );
    runner(16)
        .run(&shapes, |(m, n, block, blocks, seed)| {
            let k = block * blocks;
            let mut rng = Rng::new(seed);
            let smoothed = rng.chance(0.5);
            let (x, smooth) = f16_activations(&mut rng, m, k, smoothed);
            let w: Vec<f32> = (0..n * k).map(|_| rng.range(-1.0, 1.0)).collect();
            let mut wr: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            w4a8_core::transform::fwht_blocks_f64(&mut wr, block);
            let wr: Vec<f32> = wr.iter().map(|&v| (v / block as f64) as f32).collect();
            let granularity = w4a8_core::Granularity::PerGroup { group_size: 32 };
            let q = w4a8_core::quantize::quantize_weights_rtn(&wr, n, k, granularity, None).map_err(fail)?;
            let t = ActivationTransform { smooth: smooth.as_deref(), hadamard_block: Some(block) };
            let want = oracle.linear_with(&x, m, &oracle.prepare(&q).map_err(fail)?, &t).map_err(fail)?;
            let got = b.linear_with(&x, m, &b.prepare(&q).map_err(fail)?, &t).map_err(fail)?;
            check_bit_equal(&got, &want, n)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

/// Property 3: the GEMM against an f64 matmul of the dequantized operands. The f32 epilogue rounds
/// three products and a sum (each ≤ 2⁻²⁴ relative), then f16 rounds once (≤ ½ ulp, 2⁻²⁵ absolute in
/// the subnormal range); the bound below is that plus a little slack.
pub fn gemm_matches_f64<B: Gemm>(b: &B, base_cases: u32) {
    runner(base_cases)
        .run(&gemm_shapes(24, 24, 2), |s| {
            let (x, w) = gemm_inputs(&s);
            let got = run_gemm(b, &x, &w).map_err(fail)?;
            // Dequantized operands in f64: q_x·s_x and q_w·s_g·s_ch are exact there.
            let xd: Vec<f64> = x
                .values()
                .chunks(s.k)
                .zip(x.scales())
                .flat_map(|(row, &sx)| row.iter().map(move |&q| q as f64 * sx as f64))
                .collect();
            let wd = w.dequantize_f64();
            for i in 0..s.m {
                for j in 0..s.n {
                    let t: f64 = (0..s.k).map(|kk| xd[i * s.k + kk] * wd[j * s.k + kk]).sum();
                    let bias = w.bias().map_or(0.0, |b| b[j] as f64);
                    let exact = t + bias;
                    let y = got[i * s.n + j].to_f32() as f64;
                    let f32_err = 5.0 * 2f64.powi(-24) * (t.abs() + bias.abs());
                    if exact.abs() > 65520.0 * (1.0 + 1e-6) + f32_err {
                        if y.is_infinite() && y.signum() == exact.signum() {
                            continue;
                        }
                        return Err(fail(format!("Y[{i},{j}] = {y}, expected ±inf for {exact}")));
                    }
                    let mag = exact.abs().max(y.abs());
                    let half_ulp = if mag < 2f64.powi(-14) {
                        2f64.powi(-25)
                    } else {
                        2f64.powi(mag.log2().floor() as i32 - 11)
                    };
                    if (y - exact).abs() > half_ulp + f32_err + 1e-12 {
                        return Err(fail(format!("Y[{i},{j}] = {y}, f64 reference {exact}")));
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

/// Property 4: prepare → read back gives the canonical weights back, bit for bit.
pub fn prepared_weights_round_trip<B: Gemm>(b: &B) {
    runner(32)
        .run(&gemm_shapes(1, 200, 4), |s| {
            let (_, w) = gemm_inputs(&s);
            let back = b.prepare(&w).and_then(|p| b.read_weights(&p)).map_err(fail)?;
            if back != w {
                return Err(fail(format!("read back differs from what was prepared (N={} K={})", s.n, s.k)));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", b.info().name));
}

fn expect_err<T>(what: &str, r: Result<T>, ok: impl Fn(&Error) -> bool) {
    match r {
        Err(e) if ok(&e) => {}
        Err(e) => panic!("{what}: wrong error {e:?}"),
        Ok(_) => panic!("{what}: accepted bad input"),
    }
}

/// Property 5: every error reachable through the trait is returned for the bad input that causes it,
/// and after each one the backend still computes a correct GEMM.
pub fn bad_input_is_rejected<B: Gemm>(make: impl Fn() -> Result<B>) {
    let b = make().expect("backend opened once already");
    let s = GemmShape {
        m: 3,
        n: 5,
        k: 64,
        granularity: w4a8_core::Granularity::PerGroup { group_size: 32 },
        bias: true,
        seed: 7,
        values: Values::Typical,
    };
    let (x, w) = gemm_inputs(&s);
    let want = reference_gemm(&x, &w).unwrap();
    let still_works = |b: &B, after: &str| {
        let got = run_gemm(b, &x, &w).unwrap_or_else(|e| panic!("after {after}: {e}"));
        check_bit_equal(&got, &want, s.n).unwrap_or_else(|e| panic!("after {after}: {e}"));
    };
    let one = f16::ONE;
    let smooth = vec![1.0f32; 4];

    use Error::*;
    expect_err("x shorter than M·K", b.quantize_activations(&[one; 7], 2, 4, None), |e| {
        matches!(e, ShapeMismatch { .. })
    });
    expect_err("M·K past usize", b.quantize_activations(&[one; 8], usize::MAX / 2, 4, None), |e| {
        matches!(e, ShapeMismatch { .. })
    });
    still_works(&b, "ShapeMismatch");
    expect_err("M = 0", b.quantize_activations(&[], 0, 4, None), |e| {
        matches!(e, EmptyDimension { what: "M" })
    });
    expect_err("K = 0", b.quantize_activations(&[], 1, 0, None), |e| {
        matches!(e, EmptyDimension { what: "K" })
    });
    expect_err("output N = 0", b.alloc_output(1, 0, f16::ZERO), |e| {
        matches!(e, EmptyDimension { what: "N" })
    });
    still_works(&b, "EmptyDimension");
    expect_err(
        "K over the bound",
        b.quantize_activations(&[], 1, MAX_K + 1, None),
        |e| matches!(e, KTooLarge { k, max } if *k == MAX_K + 1 && *max == MAX_K),
    );
    still_works(&b, "KTooLarge");
    let mut bad = vec![one; 8];
    bad[5] = f16::NAN;
    expect_err("NaN activation", b.quantize_activations(&bad, 2, 4, None), |e| {
        matches!(e, NonFinite { index: 5, .. })
    });
    bad[5] = f16::NEG_INFINITY;
    expect_err("-inf activation", b.quantize_activations(&bad, 2, 4, Some(&smooth)), |e| {
        matches!(e, NonFinite { index: 5, .. })
    });
    expect_err(
        "inf in the smoothing vector",
        b.quantize_activations(&[one; 8], 2, 4, Some(&[1.0, f32::INFINITY, 1.0, 1.0])),
        |e| matches!(e, NonFinite { index: 1, .. }),
    );
    expect_err(
        "smoothing overflows f32",
        b.quantize_activations(&[f16::MAX; 8], 2, 4, Some(&[1.0, 1.0, 1e36, 1.0])),
        |e| matches!(e, NonFinite { index: 2, .. }),
    );
    expect_err(
        "smoothing vector of the wrong length",
        b.quantize_activations(&[one; 8], 2, 4, Some(&[1.0; 3])),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    still_works(&b, "NonFinite");
    let rotate = |hadamard_block| ActivationTransform { smooth: None, hadamard_block: Some(hadamard_block) };
    for (block, k) in [(3, 6), (1, 4), (0, 4), (8, 4), (2 * MAX_HADAMARD_BLOCK, 2 * MAX_HADAMARD_BLOCK)] {
        expect_err(
            &format!("Hadamard block {block} at K = {k}"),
            b.quantize_activations_with(&vec![one; k], 1, k, &rotate(block)),
            |e| matches!(e, InvalidValue { what: "Hadamard block", .. }),
        );
    }
    // 8 · 65504 · 1e33 > f32::MAX: x' is finite, the rotated sum of a row of equal values is not.
    let big = vec![f16::MAX; 16];
    let smoothed_rotation = ActivationTransform { smooth: Some(&[1e33; 8]), hadamard_block: Some(8) };
    expect_err(
        "rotation overflows f32",
        b.quantize_activations_with(&big, 2, 8, &smoothed_rotation),
        |e| matches!(e, NonFinite { what: "rotated activations", index: 0, value } if value.is_infinite()),
    );
    still_works(&b, "a bad rotation");

    let xd = b.upload_activations(&x).unwrap();
    let wd = b.prepare(&w).unwrap();
    let other_k = gemm_inputs(&GemmShape { k: 32, ..s }).0;
    let xk = b.upload_activations(&other_k).unwrap();
    let mut y = b.alloc_output(s.m, s.n, f16::NAN).unwrap();
    expect_err("K of X ≠ K of W", b.gemm_into(&xk, &wd, &mut y), |e| matches!(e, ShapeMismatch { .. }));
    let mut y_bad = b.alloc_output(s.m + 1, s.n, f16::NAN).unwrap();
    expect_err("output of the wrong shape", b.gemm_into(&xd, &wd, &mut y_bad), |e| {
        matches!(e, ShapeMismatch { .. })
    });
    still_works(&b, "ShapeMismatch in gemm");

    expect_err("output too large", b.alloc_output(usize::MAX / 4, 3, f16::ZERO), |e| {
        matches!(e, OverDeviceLimit { .. })
    });
    still_works(&b, "OverDeviceLimit");

    let other = make().expect("a second instance of the backend");
    assert_ne!(other.info().id, b.info().id, "two instances must have distinct device ids");
    let xo = other.upload_activations(&x).unwrap();
    let wo = other.prepare(&w).unwrap();
    let mut yo = other.alloc_output(s.m, s.n, f16::ZERO).unwrap();
    let foreign = |e: &Error| matches!(e, ForeignBuffer { .. });
    expect_err("foreign activations", b.gemm_into(&xo, &wd, &mut y), foreign);
    expect_err("foreign weights", b.gemm_into(&xd, &wo, &mut y), foreign);
    expect_err("foreign output", b.gemm_into(&xd, &wd, &mut yo), foreign);
    expect_err("reading a foreign output", b.read_output(&yo), foreign);
    expect_err("reading foreign weights", b.read_weights(&wo), foreign);
    expect_err("reading foreign activations", b.read_activations(&xo), foreign);
    assert_eq!(xo.device_id(), other.info().id);
    still_works(&b, "ForeignBuffer");
    still_works(&other, "being the other device");
}

/// The GEMM problems of [`concurrent_gemms_match_serial`] and of [`soak::long_run`]: decode and
/// prefill M (both wgpu kernels), N and K tails, every granularity, with and without bias.
pub fn mixed_shapes() -> Vec<GemmShape> {
    use w4a8_core::Granularity::*;
    let g = |group_size| PerGroup { group_size };
    [
        (1, 64, 128, g(128), true),
        (3, 33, 96, g(32), false),
        (16, 96, 256, g(64), true),
        (17, 40, 72, PerChannel, true),
        (70, 65, 256, g(256), false),
        (5, 130, 40, PerChannel, false),
        (1, 7, 13, PerChannel, true),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (m, n, k, granularity, bias))| GemmShape {
        m,
        n,
        k,
        granularity,
        bias,
        seed: 600 + i as u64,
        values: Values::Typical,
    })
    .collect()
}

/// f16 activations (quantized by the backend itself in each run) and weights of a shape.
pub fn mixed_inputs(s: &GemmShape) -> (Vec<f16>, W4A8Weights) {
    let mut rng = Rng::new(s.seed);
    let (x, _) = f16_activations(&mut rng, s.m, s.k, false);
    (x, weights(&mut rng, s.n, s.k, s.granularity, s.bias))
}

/// One GEMM from the host's point of view: quantize `x` on the device, multiply by prepared `w` into
/// an output poisoned with NaN, read back.
pub fn quantize_gemm_read<B: Gemm>(b: &B, x: &[f16], s: &GemmShape, w: &B::Weights) -> Result<Vec<f16>> {
    let xq = b.quantize_activations(x, s.m, s.k, None)?;
    let mut y = b.alloc_output(s.m, s.n, f16::NAN)?;
    b.gemm_into(&xq, w, &mut y)?;
    b.read_output(&y)
}

/// What [`concurrent_gemms_match_serial`] ran.
#[derive(Clone, Debug)]
pub struct ConcurrencyReport {
    /// The backend's device name.
    pub device: String,
    /// Threads sharing the one backend.
    pub threads: usize,
    /// GEMMs each thread ran (quantize + GEMM + read back; every other one on weights it prepared itself).
    pub gemms_per_thread: usize,
    /// Distinct shapes among them.
    pub shapes: usize,
    /// Wall time of the concurrent phase.
    pub seconds: f64,
}

/// Property 6: one backend shared by `threads` threads, each running `gemms` GEMMs of different
/// shapes at once (quantize on the device, GEMM, read back), alternately against weights prepared
/// once and shared by every thread and against weights the thread prepares itself. Every result
/// must be bit-equal to the same GEMM run single-threaded beforehand (which is itself checked
/// against the oracle), and no call may fail.
///
/// The bounds are the contract: a backend is `Sync` (shared by reference across threads) and its
/// prepared weights are `Sync` (one prepared model serves every thread).
pub fn concurrent_gemms_match_serial<B>(b: &B, threads: usize, gemms: usize) -> ConcurrencyReport
where
    B: Gemm + Sync,
    B::Weights: Sync,
{
    let name = &b.info().name;
    let shapes = mixed_shapes();
    let inputs: Vec<_> = shapes.iter().map(mixed_inputs).collect();
    let shared: Vec<B::Weights> =
        inputs.iter().map(|(_, w)| b.prepare(w).unwrap_or_else(|e| panic!("{name}: prepare: {e}"))).collect();
    // The single-threaded run, each result checked against the oracle on the activations the
    // backend quantized.
    let serial: Vec<Vec<f16>> = shapes
        .iter()
        .zip(&inputs)
        .zip(&shared)
        .map(|((s, (x, w)), wd)| {
            let got = quantize_gemm_read(b, x, s, wd).unwrap_or_else(|e| panic!("{name}: serial: {e}"));
            let xq = b.read_activations(&b.quantize_activations(x, s.m, s.k, None).unwrap()).unwrap();
            let want = reference_gemm(&xq, w).unwrap();
            check_bit_equal(&got, &want, s.n).unwrap_or_else(|e| panic!("{name}: serial {s:?}: {e}"));
            got
        })
        .collect();
    let start = std::time::Instant::now();
    let outcomes: Vec<std::result::Result<(), String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (shapes, inputs, shared, serial) = (&shapes, &inputs, &shared, &serial);
                scope.spawn(move || -> std::result::Result<(), String> {
                    for g in 0..gemms {
                        // A different order per thread, so different shapes run at the same time.
                        let i = (t * 3 + g * (t + 1)) % shapes.len();
                        let (s, (x, w)) = (&shapes[i], &inputs[i]);
                        let own;
                        let wd = if g % 2 == 0 {
                            &shared[i]
                        } else {
                            own = b.prepare(w).map_err(|e| format!("thread {t}, GEMM {g}: prepare: {e}"))?;
                            &own
                        };
                        let got = quantize_gemm_read(b, x, s, wd)
                            .map_err(|e| format!("thread {t}, GEMM {g} ({s:?}): {e}"))?;
                        if let Some(j) = got.iter().zip(&serial[i]).position(|(a, c)| a.to_bits() != c.to_bits()) {
                            return Err(format!(
                                "thread {t}, GEMM {g} ({s:?}): Y[{}, {}] = {} but the single-threaded run gave {}",
                                j / s.n,
                                j % s.n,
                                got[j],
                                serial[i][j]
                            ));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let failures: Vec<String> = outcomes.into_iter().filter_map(std::result::Result::err).collect();
    assert!(
        failures.is_empty(),
        "{name}: {} of {threads} threads failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let report = ConcurrencyReport {
        device: name.clone(),
        threads,
        gemms_per_thread: gemms,
        shapes: shapes.len(),
        seconds,
    };
    let _ = writeln!(
        std::io::stderr(),
        "{name}: {threads} threads x {gemms} GEMMs ({} shapes) at once, every result bit-equal to the \
         single-threaded run ({seconds:.2} s)",
        report.shapes
    );
    report
}

/// Instantiates every property for one backend: `backend_suite!(module, BackendKind, Type, constructor)`.
/// The constructor returns `Result<Type>`; an unavailable backend skips (or fails under `W4A8_REQUIRE`).
#[macro_export]
macro_rules! backend_suite {
    ($module:ident, $kind:expr, $ty:ty, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            fn open() -> Option<$ty> {
                $crate::open_or_skip($kind, $make)
            }

            #[test]
            fn gemm_matches_oracle() {
                if let Some(b) = open() {
                    $crate::gemm_matches_oracle(&b);
                }
            }

            #[test]
            fn gemm_edge_cases() {
                if let Some(b) = open() {
                    $crate::gemm_edge_cases(&b);
                }
            }

            #[test]
            fn activation_quantization_matches_oracle() {
                if let Some(b) = open() {
                    $crate::activation_quantization_matches_oracle(&b);
                }
            }

            #[test]
            fn rotated_activation_quantization_matches_oracle() {
                if let Some(b) = open() {
                    $crate::rotated_activation_quantization_matches_oracle(&b);
                }
            }

            #[test]
            fn rotated_linear_matches_oracle() {
                if let Some(b) = open() {
                    $crate::rotated_linear_matches_oracle(&b);
                }
            }

            #[test]
            fn gemm_matches_f64() {
                if let Some(b) = open() {
                    $crate::gemm_matches_f64(
                        &b,
                        if $kind == $crate::w4a8_core::BackendKind::Cpu { 3000 } else { 64 },
                    );
                }
            }

            #[test]
            fn prepared_weights_round_trip() {
                if let Some(b) = open() {
                    $crate::prepared_weights_round_trip(&b);
                }
            }

            #[test]
            fn bad_input_is_rejected() {
                if open().is_some() {
                    $crate::bad_input_is_rejected($make);
                }
            }

            #[test]
            fn concurrent_gemms_match_serial() {
                if let Some(b) = open() {
                    let (threads, gemms) =
                        if $kind == $crate::w4a8_core::BackendKind::Cpu { (8, 24) } else { (8, 16) };
                    $crate::concurrent_gemms_match_serial(&b, threads, gemms);
                }
            }
        }
    };
}
