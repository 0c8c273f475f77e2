//! The value spreads of `conformance::inputs` have teeth: on the CPU, each makes the oracle differ
//! from the arithmetic a GPU driver may legally substitute (an FMA-contracted epilogue, flushed
//! subnormals, a 2.5-ulp division, ties rounded away from zero), so a backend that did the same
//! would fail conformance. Typical values, for contrast, hardly ever tell them apart. The rotated
//! spreads do the same for the online Walsh–Hadamard rotation (flushed butterflies, another order).

use conformance::inputs::{
    ActivationValues, GemmShape, Rng, RotatedShape, Values, gemm_inputs, quantizer_inputs,
    rotated_quantizer_inputs,
};
use half::f16;
use w4a8_core::oracle::{dot_i8, epilogue};
use w4a8_core::quantize::{quantize_activations, quantize_activations_with};
use w4a8_core::{ActivationTransform, Granularity, QuantizedActivations, W4A8Weights};

/// Flush to zero, keeping the sign, as a driver without denormal support does.
fn ftz(f: f32) -> f32 {
    if f.is_subnormal() { 0.0f32.copysign(f) } else { f }
}

/// Epilogue variants a driver could produce instead of the oracle's.
#[derive(Clone, Copy, Debug)]
enum Drift {
    /// `p · s_ch + bias` as one fused multiply-add.
    Fma,
    /// Every input and result flushed to zero when subnormal.
    FlushToZero,
}

fn drifted_epilogue(d: Drift, acc: i32, sx: f32, sch: f32, bias: Option<f32>) -> f16 {
    let v = match d {
        Drift::Fma => {
            let p1 = acc as f32 * sx;
            match bias {
                Some(b) => p1.mul_add(sch, b),
                None => p1 * sch,
            }
        }
        Drift::FlushToZero => {
            let p2 = ftz(ftz(acc as f32 * ftz(sx)) * ftz(sch));
            match bias {
                Some(b) => ftz(p2 + ftz(b)),
                None => p2,
            }
        }
    };
    f16::from_f32(v)
}

/// Outputs (of all) whose bits change under `d`, over `cases` random shapes of `values`.
fn epilogue_drift(values: Values, d: Drift, cases: u64) -> (usize, usize) {
    let (mut changed, mut total) = (0, 0);
    for seed in 0..cases {
        let mut rng = Rng::new(seed);
        let granularity =
            if rng.chance(0.5) { Granularity::PerChannel } else { Granularity::PerGroup { group_size: 32 } };
        let m = rng.int(1, 8) as usize;
        let n = rng.int(1, 64) as usize;
        let k = 32 * rng.int(1, 8) as usize;
        let s = GemmShape { m, n, k, granularity, bias: rng.chance(0.8), seed, values };
        let (x, w): (QuantizedActivations, W4A8Weights) = gemm_inputs(&s);
        for row in 0..m {
            for col in 0..n {
                let acc = dot_i8(&x.values()[row * k..(row + 1) * k], &w.int8_row(col));
                let (sx, sch, bias) = (x.scales()[row], w.channel_scales()[col], w.bias().map(|b| b[col]));
                let want = epilogue(acc, sx, sch, bias);
                changed += (drifted_epilogue(d, acc, sx, sch, bias).to_bits() != want.to_bits()) as usize;
                total += 1;
            }
        }
    }
    (changed, total)
}

#[test]
fn a_cancelling_bias_exposes_a_fused_epilogue() {
    let (typical, t_total) = epilogue_drift(Values::Typical, Drift::Fma, 200);
    let (cancel, c_total) = epilogue_drift(Values::CancellingBias, Drift::Fma, 200);
    println!("FMA epilogue changes {typical} of {t_total} typical outputs, {cancel} of {c_total} cancelling");
    // One row per column cancels (M ≤ 8 here), so a few percent of all outputs is most of those rows.
    assert!(cancel * 100 >= c_total * 2, "only {cancel} of {c_total} outputs expose an FMA");
    assert!(cancel > 20 * typical.max(1), "cancelling {cancel} vs typical {typical}");
}

#[test]
fn subnormal_scales_expose_flush_to_zero() {
    let (typical, t_total) = epilogue_drift(Values::Typical, Drift::FlushToZero, 200);
    let (sub, s_total) = epilogue_drift(Values::Subnormal, Drift::FlushToZero, 200);
    println!("flush-to-zero changes {typical} of {t_total} typical outputs, {sub} of {s_total} subnormal");
    assert_eq!(typical, 0, "typical values never meet a subnormal");
    assert!(sub * 100 >= s_total, "only {sub} of {s_total} outputs expose flushing");
}

/// Quantizer variants a driver could produce instead of the oracle's.
#[derive(Clone, Copy, Debug)]
enum QuantDrift {
    /// Every quotient x'/s one ulp off, in the direction that is 2.5-ulp-legal and worst.
    DivisionUlp,
    /// Ties rounded away from zero (`f32::round`) instead of to even.
    TiesAway,
    /// x' and s flushed to zero when subnormal.
    FlushToZero,
}

/// The quantizer of `w4a8_core::quantize`, with one step replaced.
fn drifted_quantize(d: QuantDrift, x: &[f32], m: usize, k: usize, smooth: &[f32]) -> QuantizedActivations {
    let mut values = Vec::with_capacity(m * k);
    let mut scales = Vec::with_capacity(m);
    for row in x.chunks(k) {
        let flush = |v: f32| if matches!(d, QuantDrift::FlushToZero) { ftz(v) } else { v };
        let xs: Vec<f32> = row.iter().zip(smooth).map(|(&v, &s)| flush(v * s)).collect();
        let s = flush(xs.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0);
        scales.push(s);
        for &v in &xs {
            let q = if s == 0.0 {
                0.0
            } else {
                let t = v / s;
                match d {
                    // Toward the nearer tie: the quotient a 2.5-ulp division may return.
                    QuantDrift::DivisionUlp => {
                        let frac = t.abs().fract();
                        let toward = if frac < 0.5 { 1 } else { -1 } * if t < 0.0 { -1 } else { 1 };
                        f32::from_bits((t.to_bits() as i64 + toward) as u32).round_ties_even()
                    }
                    QuantDrift::TiesAway => t.round(),
                    QuantDrift::FlushToZero => t.round_ties_even(),
                }
            };
            values.push(q.clamp(-127.0, 127.0) as i8);
        }
    }
    QuantizedActivations::new(m, k, values, scales).unwrap()
}

/// Codes and scales (of all) that change under `d`, over `cases` random inputs of `values`.
fn quantizer_drift(values: ActivationValues, d: QuantDrift, cases: u64) -> (usize, usize) {
    let (mut changed, mut total) = (0, 0);
    for seed in 0..cases {
        let mut rng = Rng::new(1000 + seed);
        let (m, k) = (rng.int(1, 8) as usize, rng.int(1, 300) as usize);
        let (x, smooth) = quantizer_inputs(&mut rng, m, k, values);
        let smooth = smooth.unwrap_or_else(|| vec![1.0; k]);
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let want = quantize_activations(&xf, m, k, Some(&smooth)).unwrap();
        let got = drifted_quantize(d, &xf, m, k, &smooth);
        changed += want.values().iter().zip(got.values()).filter(|(a, b)| a != b).count();
        changed += want.scales().iter().zip(got.scales()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        total += m * k + m;
    }
    (changed, total)
}

#[test]
fn quotients_at_ties_expose_an_inexact_division_and_the_wrong_tie_rule() {
    for d in [QuantDrift::DivisionUlp, QuantDrift::TiesAway] {
        let (typical, t_total) = quantizer_drift(ActivationValues::Typical, d, 200);
        let (ties, total) = quantizer_drift(ActivationValues::Ties, d, 200);
        println!("{d:?} changes {typical} of {t_total} typical codes and scales, {ties} of {total} at ties");
        assert!(ties * 100 >= total * 5, "{d:?}: only {ties} of {total} changed");
        assert!(ties > 20 * typical.max(1), "{d:?}: ties {ties} vs typical {typical}");
    }
}

#[test]
fn subnormal_products_expose_flush_to_zero_in_the_quantizer() {
    let (typical, t_total) = quantizer_drift(ActivationValues::Typical, QuantDrift::FlushToZero, 200);
    let (sub, total) = quantizer_drift(ActivationValues::Subnormal, QuantDrift::FlushToZero, 200);
    println!(
        "flush-to-zero changes {typical} of {t_total} typical codes and scales, {sub} of {total} subnormal"
    );
    assert_eq!(typical, 0);
    assert!(sub * 100 >= total * 5, "only {sub} of {total} changed");
}

/// The rotated quantizer with its butterflies replaced: flushing subnormal operands and results (a
/// driver without denormals, `sf_add` fallback skipped), or the stages in the other order
/// (h = b/2, …, 1: the same sums in exact arithmetic, other roundings).
#[derive(Clone, Copy, Debug)]
enum RotationDrift {
    FlushToZero,
    ReversedStages,
}

fn drifted_rotation(d: RotationDrift, x: &[f32], smooth: Option<&[f32]>, b: usize) -> Vec<f32> {
    let mut y: Vec<f32> = match smooth {
        Some(s) => x.iter().zip(s.iter().cycle()).map(|(&v, &s)| v * s).collect(),
        None => x.to_vec(),
    };
    let flush = |v: f32| if matches!(d, RotationDrift::FlushToZero) { ftz(v) } else { v };
    let stages: Vec<usize> = match d {
        RotationDrift::FlushToZero => (0..b.trailing_zeros()).map(|e| 1 << e).collect(),
        RotationDrift::ReversedStages => (0..b.trailing_zeros()).rev().map(|e| 1 << e).collect(),
    };
    for block in y.chunks_mut(b) {
        for &h in &stages {
            for run in block.chunks_mut(2 * h) {
                let (lo, hi) = run.split_at_mut(h);
                for (u, v) in lo.iter_mut().zip(hi) {
                    let (a, c) = (flush(*u), flush(*v));
                    *u = flush(a + c);
                    *v = flush(a - c);
                }
            }
        }
    }
    y
}

/// Codes and scales (of all) that change under `d`, over `cases` rotated problems of `values`.
fn rotation_drift(values: ActivationValues, d: RotationDrift, cases: u64) -> (usize, usize) {
    let (mut changed, mut total) = (0, 0);
    for seed in 0..cases {
        let mut rng = Rng::new(5000 + seed);
        let b = 1usize << rng.int(1, 9);
        let s = RotatedShape { m: rng.int(1, 8) as usize, b, k: b * rng.int(1, 4) as usize, values, seed };
        let (x, smooth) = rotated_quantizer_inputs(&mut Rng::new(seed), &s);
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let t = ActivationTransform { smooth: smooth.as_deref(), hadamard_block: Some(b) };
        let want = quantize_activations_with(&xf, s.m, s.k, &t).unwrap();
        // The drifted y, then the oracle's own per-token rules on it.
        let y = drifted_rotation(d, &xf, smooth.as_deref(), b);
        let got = quantize_activations(&y, s.m, s.k, None).unwrap();
        changed += want.values().iter().zip(got.values()).filter(|(a, c)| a != c).count();
        changed += want.scales().iter().zip(got.scales()).filter(|(a, c)| a.to_bits() != c.to_bits()).count();
        total += s.m * s.k + s.m;
    }
    (changed, total)
}

#[test]
fn rotated_spreads_expose_flushed_butterflies_and_another_stage_order() {
    let (typical, t_total) = rotation_drift(ActivationValues::Typical, RotationDrift::FlushToZero, 200);
    let (sub, total) = rotation_drift(ActivationValues::Subnormal, RotationDrift::FlushToZero, 200);
    println!(
        "flushed butterflies change {typical} of {t_total} typical codes and scales, {sub} of {total} subnormal"
    );
    assert_eq!(typical, 0);
    assert!(sub * 100 >= total * 5, "only {sub} of {total} changed");
    // Another order changes the last bits of y, which the scale (max |y| / 127) shows in most rows.
    let (reordered, r_total) = rotation_drift(ActivationValues::Typical, RotationDrift::ReversedStages, 200);
    println!("reversed stages change {reordered} of {r_total} typical codes and scales");
    assert!(reordered > 0, "the stage order left every code and scale unchanged");
}

#[test]
fn rotated_ties_expose_an_inexact_division() {
    let count = |values| {
        let (mut changed, mut total) = (0, 0);
        for seed in 0..200u64 {
            let mut rng = Rng::new(7000 + seed);
            let b = 1usize << rng.int(1, 9);
            let s =
                RotatedShape { m: rng.int(1, 8) as usize, b, k: b * rng.int(1, 4) as usize, values, seed };
            let (x, smooth) = rotated_quantizer_inputs(&mut Rng::new(seed), &s);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let t = ActivationTransform { smooth: smooth.as_deref(), hadamard_block: Some(b) };
            // y as the oracle rotates it, then the per-token rules with a 1-ulp-off quotient.
            let mut y = Vec::new();
            let mut ys = Vec::with_capacity(s.m * s.k);
            for (row, xs) in xf.chunks(s.k).enumerate() {
                t.apply_row(row, xs, &mut y).unwrap();
                ys.extend_from_slice(&y);
            }
            let want = quantize_activations_with(&xf, s.m, s.k, &t).unwrap();
            let got = drifted_quantize(QuantDrift::DivisionUlp, &ys, s.m, s.k, &vec![1.0; s.k]);
            changed += want.values().iter().zip(got.values()).filter(|(a, c)| a != c).count();
            total += s.m * s.k;
        }
        (changed, total)
    };
    let (typical, t_total) = count(ActivationValues::Typical);
    let (ties, total) = count(ActivationValues::Ties);
    println!(
        "a 1-ulp quotient changes {typical} of {t_total} typical rotated codes, {ties} of {total} at ties"
    );
    assert!(
        ties * 100 >= total * 5 && ties > 20 * typical.max(1),
        "ties {ties} of {total}, typical {typical}"
    );
}
