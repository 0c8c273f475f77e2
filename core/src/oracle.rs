//! The CPU oracle: exact int32 accumulation and the epilogue exactly as specified, multi-threaded.
//! Every backend is held to it bit for bit (within 1 f16 ulp).

use half::f16;
use rayon::prelude::*;

use crate::error::{BackendKind, Error, Result};
use crate::format::{Granularity, QuantizedActivations, W4A8Weights, check_len};
use crate::gemm::{
    DeviceInfo, DeviceTensor, Gemm, KernelPlan, check_gemm_args, check_owner, check_plan_args, next_device_id,
};
use crate::quantize::quantize_activations_with;
use crate::transform::ActivationTransform;

/// The epilogue: `f16(((f32(acc) · s_x) · s_ch) + bias)`, each operation rounded to nearest even in
/// f32, then one rounding to f16. Without a bias there is no addition (so `-0.0` stays `-0.0`).
#[inline]
pub fn epilogue(acc: i32, s_x: f32, s_ch: f32, bias: Option<f32>) -> f16 {
    let y = (acc as f32 * s_x) * s_ch;
    f16::from_f32(match bias {
        Some(b) => y + b,
        None => y,
    })
}

/// How many f16 values lie between `a` and `b` (units in the last place; ±0 coincide, ±inf are one
/// past ±max), or `None` if either is NaN. Backends must stay within 1 of the oracle.
pub fn f16_ulp_distance(a: f16, b: f16) -> Option<u32> {
    if a.is_nan() || b.is_nan() {
        return None;
    }
    // Map the sign-magnitude bit pattern onto a line where adjacent values differ by 1.
    let ordered = |v: f16| {
        let bits = v.to_bits() as i32;
        if bits & 0x8000 != 0 { -(bits & 0x7FFF) } else { bits }
    };
    Some(ordered(a).abs_diff(ordered(b)))
}

/// Exact `Σ_k a[k] · b[k]` in int32. Exact for K ≤ 65 536 since |a·b| ≤ 127 · 128.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &w)| x as i32 * w as i32).sum()
}

/// Y = X · Wᵀ (+ bias), M×N row-major, straight from canonical inputs.
pub fn reference_gemm(x: &QuantizedActivations, w: &W4A8Weights) -> Result<Vec<f16>> {
    check_len("K of weights vs activations", x.k(), w.k())?;
    Ok(gemm_int8(x, &w.int8(), w))
}

/// The GEMM over already-expanded int8 weights (N×K).
fn gemm_int8(x: &QuantizedActivations, w8: &[i8], w: &W4A8Weights) -> Vec<f16> {
    let (m, n, k) = (x.m(), w.n(), w.k());
    // Columns of Y in parallel: each task reads one weight row once and all of X (small for decode).
    let cols: Vec<Vec<f16>> = w8
        .par_chunks(k)
        .enumerate()
        .map(|(col, wrow)| {
            let s_ch = w.channel_scales()[col];
            let bias = w.bias().map(|b| b[col]);
            x.values()
                .chunks(k)
                .zip(x.scales())
                .map(|(xrow, &s_x)| epilogue(dot_i8(xrow, wrow), s_x, s_ch, bias))
                .collect()
        })
        .collect();
    let mut y = vec![f16::ZERO; m * n];
    for (col, c) in cols.iter().enumerate() {
        for (row, &v) in c.iter().enumerate() {
            y[row * n + col] = v;
        }
    }
    y
}

/// The CPU oracle as a [`Gemm`] backend: "device" buffers are host memory.
///
/// `Send + Sync`: it holds only its [`DeviceInfo`], no interior mutability; each call computes into
/// its own buffers (in parallel on rayon's global pool), so any number of threads may share one
/// oracle. Its handles ([`CpuWeights`], [`CpuActivations`], [`CpuOutput`]) are plain host data, also
/// `Send + Sync`.
#[derive(Debug)]
pub struct CpuOracle {
    info: DeviceInfo,
}

impl Default for CpuOracle {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuOracle {
    /// A new oracle instance with its own device id.
    pub fn new() -> Self {
        let threads = rayon::current_num_threads();
        CpuOracle {
            info: DeviceInfo {
                backend: BackendKind::Cpu,
                id: next_device_id(),
                name: "CPU oracle (exact int32, rayon)".into(),
                details: vec![("threads".into(), threads.to_string())],
            },
        }
    }
}

/// Weights held by the oracle, with the int8 operand expanded once.
#[derive(Clone, Debug)]
pub struct CpuWeights {
    device: u64,
    weights: W4A8Weights,
    int8: Vec<i8>,
}

/// Activations held by the oracle.
#[derive(Clone, Debug)]
pub struct CpuActivations {
    device: u64,
    x: QuantizedActivations,
}

/// An output held by the oracle.
#[derive(Clone, Debug)]
pub struct CpuOutput {
    device: u64,
    m: usize,
    n: usize,
    data: Vec<f16>,
}

impl DeviceTensor for CpuWeights {
    fn device_id(&self) -> u64 {
        self.device
    }
    fn shape(&self) -> (usize, usize) {
        (self.weights.n(), self.weights.k())
    }
}

impl DeviceTensor for CpuActivations {
    fn device_id(&self) -> u64 {
        self.device
    }
    fn shape(&self) -> (usize, usize) {
        (self.x.m(), self.x.k())
    }
}

impl DeviceTensor for CpuOutput {
    fn device_id(&self) -> u64 {
        self.device
    }
    fn shape(&self) -> (usize, usize) {
        (self.m, self.n)
    }
}

impl Gemm for CpuOracle {
    type Weights = CpuWeights;
    type Activations = CpuActivations;
    type Output = CpuOutput;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn prepare(&self, weights: &W4A8Weights) -> Result<CpuWeights> {
        Ok(CpuWeights { device: self.info.id, weights: weights.clone(), int8: weights.int8() })
    }

    fn read_weights(&self, weights: &CpuWeights) -> Result<W4A8Weights> {
        check_owner("weights", weights, self.info.id)?;
        Ok(weights.weights.clone())
    }

    fn quantize_activations_with(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<CpuActivations> {
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        Ok(CpuActivations { device: self.info.id, x: quantize_activations_with(&xf, m, k, t)? })
    }

    fn upload_activations(&self, x: &QuantizedActivations) -> Result<CpuActivations> {
        Ok(CpuActivations { device: self.info.id, x: x.clone() })
    }

    fn read_activations(&self, x: &CpuActivations) -> Result<QuantizedActivations> {
        check_owner("activations", x, self.info.id)?;
        Ok(x.x.clone())
    }

    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<CpuOutput> {
        crate::format::check_nonzero("M", m)?;
        crate::format::check_nonzero("N", n)?;
        // Refuse what cannot be allocated instead of aborting the process on allocation failure.
        let too_big = |requested: u64| Error::OverDeviceLimit {
            what: "output buffer (bytes)",
            requested,
            limit: isize::MAX as u64,
            limit_name: "host allocation size",
        };
        let elems = m.checked_mul(n).ok_or(too_big(u64::MAX))?;
        let bytes = elems.checked_mul(2).filter(|&b| b <= isize::MAX as usize).ok_or(too_big(u64::MAX))?;
        let mut data = Vec::new();
        data.try_reserve_exact(elems).map_err(|_| too_big(bytes as u64))?;
        data.resize(elems, fill);
        Ok(CpuOutput { device: self.info.id, m, n, data })
    }

    fn gemm_into(&self, x: &CpuActivations, w: &CpuWeights, y: &mut CpuOutput) -> Result<()> {
        check_gemm_args(self.info.id, x, w, y)?;
        y.data = gemm_int8(&x.x, &w.int8, &w.weights);
        Ok(())
    }

    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan> {
        check_plan_args(m, n, k, granularity)?;
        Ok(KernelPlan::new(["oracle gemm_int8"])
            .with("parallel", format!("{n} columns over {} rayon threads", rayon::current_num_threads()))
            .with("accumulation", "exact i32"))
    }

    fn read_output(&self, y: &CpuOutput) -> Result<Vec<f16>> {
        check_owner("output", y, self.info.id)?;
        Ok(y.data.clone())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

// The thread-safety contract above (and that of the format and error types), checked at compile time.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CpuOracle>();
    assert_send_sync::<CpuWeights>();
    assert_send_sync::<CpuActivations>();
    assert_send_sync::<CpuOutput>();
    assert_send_sync::<W4A8Weights>();
    assert_send_sync::<QuantizedActivations>();
    assert_send_sync::<DeviceInfo>();
    assert_send_sync::<KernelPlan>();
    assert_send_sync::<Error>();
    assert_send_sync::<crate::io::Layer>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_distance_counts_representable_values() {
        let one = f16::ONE;
        let next = f16::from_bits(one.to_bits() + 1);
        assert_eq!(f16_ulp_distance(one, one), Some(0));
        assert_eq!(f16_ulp_distance(one, next), Some(1));
        assert_eq!(f16_ulp_distance(f16::ZERO, f16::NEG_ZERO), Some(0));
        assert_eq!(f16_ulp_distance(f16::from_bits(1), f16::from_bits(0x8001)), Some(2));
        assert_eq!(f16_ulp_distance(f16::MAX, f16::INFINITY), Some(1));
        assert_eq!(f16_ulp_distance(f16::NAN, one), None);
    }

    #[test]
    fn epilogue_adds_no_zero_without_bias() {
        assert_eq!(epilogue(-1, 1e-30, 1e-30, None).to_bits(), f16::NEG_ZERO.to_bits());
        assert_eq!(epilogue(-1, 1e-30, 1e-30, Some(0.0)).to_bits(), f16::ZERO.to_bits());
        assert_eq!(epilogue(1_000_000, 1.0, 1.0, None), f16::INFINITY);
    }
}
