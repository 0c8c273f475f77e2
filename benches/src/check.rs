//! The result checks: every timed case's output is compared on sampled positions with a reference —
//! W4A8 within 1 f16 ulp of the CPU oracle's arithmetic, peers within their accumulation's error
//! bound of an f64 product — so that no figure in the report comes from a wrong answer.

use half::f16;
use w4a8_core::oracle::{dot_i8, epilogue};
use w4a8_core::{QuantizedActivations, W4A8Weights};

use crate::backend::{Accumulation, HostData};
use crate::model::Check;

/// Distance between two f16 values in units in the last place (NaN → infinity).
pub fn f16_ulp_distance(a: f16, b: f16) -> f64 {
    w4a8_core::oracle::f16_ulp_distance(a, b).map_or(f64::INFINITY, f64::from)
}

/// Checks W4A8 outputs (M×N) at `positions` against the oracle's arithmetic: within 1 f16 ulp.
pub fn check_w4a8(
    y: &[f16],
    x: &QuantizedActivations,
    w: &W4A8Weights,
    positions: &[(usize, usize)],
) -> Check {
    let (n, k) = (w.n(), w.k());
    let mut check = Check::default();
    if y.len() != x.m() * n {
        check.record(f64::INFINITY, false, || {
            format!("output has {} elements, expected {}", y.len(), x.m() * n)
        });
        return check;
    }
    let mut cached: Option<(usize, Vec<i8>)> = None;
    for &(row, col) in positions {
        if cached.as_ref().is_none_or(|(c, _)| *c != col) {
            cached = Some((col, w.int8_row(col)));
        }
        let w8 = &cached.as_ref().expect("just set").1;
        let acc = dot_i8(&x.values()[row * k..(row + 1) * k], w8);
        let want = epilogue(acc, x.scales()[row], w.channel_scales()[col], w.bias().map(|b| b[col]));
        let got = y[row * n + col];
        let d = f16_ulp_distance(got, want);
        check.record(d, d <= 1.0, || format!("Y[{row},{col}] = {got}, oracle {want} ({d} ulp)"));
    }
    check
}

/// Checks a peer's output at `positions` against an f64 reference from its host inputs (set 0),
/// within the accumulation's error bound.
pub fn check_peer(
    y: &[f64],
    x: HostData<'_>,
    w: HostData<'_>,
    (m, n, k): (usize, usize, usize),
    accumulation: Accumulation,
    positions: &[(usize, usize)],
) -> Check {
    let mut check = Check::default();
    if y.len() != m * n {
        check.record(f64::INFINITY, false, || format!("output has {} elements, expected {}", y.len(), m * n));
        return check;
    }
    let value = |d: HostData<'_>, i: usize| match d {
        HostData::F16(v) => v[i].to_f64(),
        HostData::I8(v) => v[i] as f64,
    };
    for &(row, col) in positions {
        let (mut exact, mut abs_sum, mut sq_sum) = (0.0f64, 0.0f64, 0.0f64);
        for kk in 0..k {
            let p = value(x, row * k + kk) * value(w, col * k + kk);
            exact += p;
            abs_sum += p.abs();
            sq_sum += p * p;
        }
        let tol = match accumulation {
            Accumulation::Int32 => 0.0,
            // f32 sums: K·2⁻²⁴·Σ|x·w| (the textbook bound) plus the f16 output rounding, 2⁻¹⁰·|y|.
            Accumulation::F32 => k as f64 * 2f64.powi(-24) * abs_sum + 2f64.powi(-10) * exact.abs(),
            // f16 sums: about √K roundings of partial sums of size ~√(Σ(x·w)²), 4σ, plus output rounding.
            Accumulation::F16 => {
                4.0 * (k as f64).sqrt() * 2f64.powi(-11) * sq_sum.sqrt() + 2f64.powi(-10) * exact.abs()
            }
        };
        let got = y[row * n + col];
        let err = (got - exact).abs();
        check.record(err, err <= tol, || {
            format!("Y[{row},{col}] = {got}, reference {exact} (tolerance {tol:.3e})")
        });
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{
        random_f16, random_i8, random_quantized_activations, random_weights, sample_positions,
    };
    use w4a8_core::Granularity;
    use w4a8_core::oracle::reference_gemm;

    #[test]
    fn ulp_distance() {
        let one = f16::ONE;
        let next = f16::from_bits(one.to_bits() + 1);
        assert_eq!(f16_ulp_distance(one, next), 1.0);
        assert_eq!(f16_ulp_distance(f16::ZERO, f16::NEG_ZERO), 0.0);
        assert_eq!(f16_ulp_distance(f16::from_bits(1), f16::from_bits(0x8001)), 2.0);
        assert_eq!(f16_ulp_distance(f16::NAN, one), f64::INFINITY);
    }

    #[test]
    fn w4a8_check_accepts_the_oracle_and_catches_errors() {
        let w = random_weights(37, 256, Granularity::PerGroup { group_size: 128 }, 1).unwrap();
        let x = random_quantized_activations(5, 256, 2).unwrap();
        let mut y = reference_gemm(&x, &w).unwrap();
        let pos = sample_positions(5, 37, 40, 3);
        let c = check_w4a8(&y, &x, &w, &pos);
        assert!(c.ok() && c.max_err == 0.0, "{c:?}");
        // One ulp is tolerated, two are not; an unwritten (NaN) element is caught.
        let (r, col) = pos[pos.len() / 2];
        y[r * 37 + col] = f16::from_bits(y[r * 37 + col].to_bits() + 1);
        assert!(check_w4a8(&y, &x, &w, &pos).ok());
        y[r * 37 + col] = f16::from_bits(y[r * 37 + col].to_bits() + 1);
        assert_eq!(check_w4a8(&y, &x, &w, &pos).failed, 1);
        y[0] = f16::NAN;
        let c = check_w4a8(&y, &x, &w, &pos);
        assert_eq!((c.failed, c.max_err), (2, f64::MAX));
        // A transposed output (N×M read as M×N) fails almost everywhere.
        let yt: Vec<f16> =
            (0..5 * 37).map(|i| reference_gemm(&x, &w).unwrap()[(i % 5) * 37 + i / 5]).collect();
        assert!(check_w4a8(&yt, &x, &w, &pos).failed > pos.len() / 2);
    }

    #[test]
    fn peer_check_tolerances() {
        let (m, n, k) = (3, 11, 4096);
        let x = random_f16(m * k, 1);
        let w = random_f16(n * k, 2);
        let exact: Vec<f64> = (0..m * n)
            .map(|i| (0..k).map(|kk| x[(i / n) * k + kk].to_f64() * w[(i % n) * k + kk].to_f64()).sum())
            .collect();
        let pos = sample_positions(m, n, 33, 4);
        let shape = (m, n, k);
        // f16-rounded exact results pass the f32 bound.
        let rounded: Vec<f64> = exact.iter().map(|&v| f16::from_f64(v).to_f64()).collect();
        assert!(
            check_peer(&rounded, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F32, &pos).ok()
        );
        // Results of another column (a layout bug) fail.
        let shifted: Vec<f64> = (0..m * n).map(|i| rounded[(i + 1) % (m * n)]).collect();
        let c = check_peer(&shifted, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F32, &pos);
        assert!(c.failed > pos.len() / 2, "{c:?}");
        let c = check_peer(&shifted, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F16, &pos);
        assert!(c.failed > pos.len() / 2, "{c:?}");
        // Int32 must be exact.
        let xi = random_i8(m * 64, 5);
        let wi = random_i8(n * 64, 6);
        let yi: Vec<f64> = (0..m * n)
            .map(|i| (0..64).map(|kk| xi[(i / n) * 64 + kk] as f64 * wi[(i % n) * 64 + kk] as f64).sum())
            .collect();
        let ok = check_peer(&yi, HostData::I8(&xi), HostData::I8(&wi), (m, n, 64), Accumulation::Int32, &pos);
        assert!(ok.ok());
        let mut off = yi.clone();
        off[0] += 1.0;
        let c = check_peer(&off, HostData::I8(&xi), HostData::I8(&wi), (m, n, 64), Accumulation::Int32, &pos);
        assert_eq!(c.failed, 1);
    }
}
