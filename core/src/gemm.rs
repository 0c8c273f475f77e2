//! The backend-agnostic `Gemm` trait and the checks every backend shares.

use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;

use crate::error::{BackendKind, Error, Result};
use crate::format::{Granularity, QuantizedActivations, W4A8Weights, check_k, check_len, check_nonzero};
use crate::transform::ActivationTransform;

/// A buffer or prepared tensor that lives on one device.
pub trait DeviceTensor {
    /// The [`DeviceInfo::id`] of the device that made it.
    fn device_id(&self) -> u64;
    /// (rows, columns): (M, K) for activations, (N, K) for weights, (M, N) for outputs.
    fn shape(&self) -> (usize, usize);
}

/// What a backend found: enough to print in `w4a8 info` and to put beside a benchmark figure.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Which backend.
    pub backend: BackendKind,
    /// Unique per backend instance in this process; handles carry it so that a buffer from one device
    /// passed to another is refused.
    pub id: u64,
    /// The device's name as its driver reports it.
    pub name: String,
    /// Driver, features and limits that matter, as (key, value) lines.
    pub details: Vec<(String, String)>,
}

/// Which kernels a backend launches for one GEMM, and with what configuration.
///
/// Printed beside every benchmark figure and by `w4a8 info --plan`, so that a time is never
/// attributed to the wrong kernel. `Display` gives one line:
/// `w4a8_gemm_small_per_group (tile 16x64x128, splits 5, stages 6, grid 128x1x5)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPlan {
    /// Entry points launched, in launch order (e.g. a GEMM, then a split-K reduction).
    pub kernels: Vec<String>,
    /// The configuration as (key, value) pairs: tile, splits, stages, grid, …
    pub config: Vec<(String, String)>,
}

impl KernelPlan {
    /// A plan of the given kernels with no configuration yet.
    pub fn new<S: Into<String>>(kernels: impl IntoIterator<Item = S>) -> Self {
        KernelPlan { kernels: kernels.into_iter().map(Into::into).collect(), config: Vec::new() }
    }

    /// Adds one (key, value) pair.
    pub fn with(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.config.push((key.into(), value.to_string()));
        self
    }

    /// The value of `key`, if the plan has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for KernelPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kernels.join(" + "))?;
        if !self.config.is_empty() {
            let parts: Vec<String> = self.config.iter().map(|(k, v)| format!("{k} {v}")).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// A fresh, process-unique device id.
pub fn next_device_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The operations of a W4A8 backend.
///
/// A backend owns its device, its buffers and its prepared weights. Every method checks its inputs
/// and returns an [`Error`] for bad ones; after an error the backend stays usable.
///
/// The arithmetic is fixed by the format (see the crate docs): per-token int8 activations, int4
/// weights, exact int32 accumulation, then `f16(((f32(acc) · s_x[m]) · s_ch[n]) + bias[n])`.
///
/// # Threads
///
/// Every backend of this workspace is `Send + Sync`, and so are its handle types: one backend
/// serves any number of threads through `&self`, prepared weights are shared by reference (one
/// model, many request threads), and each call's result is bit-equal to the same call made alone
/// (conformance property `concurrent_gemms_match_serial`). An output is written through `&mut`,
/// so two threads never write the same output at once. The trait itself does not demand
/// `Send + Sync`, so a single-threaded backend (a browser's WebGPU device on wasm32) can implement
/// it; code that shares a backend states the bound, as the conformance property does.
pub trait Gemm {
    /// Weights repacked into this backend's layout and uploaded.
    type Weights: DeviceTensor;
    /// Quantized activations (int8 values and f32 per-token scales) on the device.
    type Activations: DeviceTensor;
    /// An M×N f16 output buffer on the device.
    type Output: DeviceTensor;

    /// The device this backend runs on.
    fn info(&self) -> &DeviceInfo;

    /// Repacks canonical weights into the backend's layout and uploads them, once.
    fn prepare(&self, weights: &W4A8Weights) -> Result<Self::Weights>;

    /// Reads prepared weights back into canonical storage (the inverse of [`Gemm::prepare`]).
    fn read_weights(&self, weights: &Self::Weights) -> Result<W4A8Weights>;

    /// Quantizes f16 activations (M×K row-major) per token on the device after the transform `t`:
    /// smoothing (`x' = x · smooth[k]`), then the online Walsh–Hadamard rotation of each block of
    /// `t.hadamard_block` channels (see [`crate::transform`]), then the per-token int8 rules. The
    /// result equals [`crate::quantize::quantize_activations_with`] on the same f32 values, scales
    /// and codes bit for bit, errors included (a non-finite input, or one the smoothing or the
    /// rotation takes to infinity, is [`Error::NonFinite`]; a bad block is [`Error::InvalidValue`]).
    fn quantize_activations_with(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<Self::Activations>;

    /// Quantizes f16 activations (M×K row-major) per token on the device, after multiplying column k
    /// by `smooth[k]` when a smoothing vector is given. A non-finite input is an error.
    ///
    /// [`Gemm::quantize_activations_with`] with smoothing only.
    fn quantize_activations(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        smooth: Option<&[f32]>,
    ) -> Result<Self::Activations> {
        self.quantize_activations_with(x, m, k, &ActivationTransform::smoothed(smooth))
    }

    /// Uploads activations quantized elsewhere (the conformance tests feed every backend the same ones).
    fn upload_activations(&self, x: &QuantizedActivations) -> Result<Self::Activations>;

    /// Reads quantized activations back.
    fn read_activations(&self, x: &Self::Activations) -> Result<QuantizedActivations>;

    /// Allocates an M×N output with every element set to `fill` (tests poison it with NaN).
    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<Self::Output>;

    /// `y = x · wᵀ (+ bias)` with the fused epilogue. Every element of `y` is written.
    fn gemm_into(&self, x: &Self::Activations, w: &Self::Weights, y: &mut Self::Output) -> Result<()>;

    /// The kernels and configuration [`Gemm::gemm_into`] runs for `m` rows against N×K weights of
    /// this granularity (the same shape checks as [`Gemm::prepare`]; nothing is launched).
    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan>;

    /// Copies an output back to the host, M×N row-major.
    fn read_output(&self, y: &Self::Output) -> Result<Vec<f16>>;

    /// Waits for all submitted work (for timing from the host).
    fn synchronize(&self) -> Result<()>;

    /// Allocates the output and runs [`Gemm::gemm_into`].
    fn gemm(&self, x: &Self::Activations, w: &Self::Weights) -> Result<Self::Output> {
        let mut y = self.alloc_output(x.shape().0, w.shape().0, f16::ZERO)?;
        self.gemm_into(x, w, &mut y)?;
        Ok(y)
    }

    /// A whole linear layer from the host's point of view: quantize `x` (M×K), multiply, read back M×N.
    fn linear(&self, x: &[f16], m: usize, w: &Self::Weights, smooth: Option<&[f32]>) -> Result<Vec<f16>> {
        self.linear_with(x, m, w, &ActivationTransform::smoothed(smooth))
    }

    /// [`Gemm::linear`] with any activation transform (a rotated layer passes its Hadamard block).
    fn linear_with(
        &self,
        x: &[f16],
        m: usize,
        w: &Self::Weights,
        t: &ActivationTransform<'_>,
    ) -> Result<Vec<f16>> {
        let xq = self.quantize_activations_with(x, m, w.shape().1, t)?;
        let y = self.gemm(&xq, w)?;
        self.read_output(&y)
    }
}

/// The shape checks behind every [`Gemm::kernel_plan`]: M, N and K non-zero, K within the exactness
/// bound and a multiple of the group size.
pub fn check_plan_args(m: usize, n: usize, k: usize, granularity: Granularity) -> Result<()> {
    check_nonzero("M", m)?;
    check_nonzero("N", n)?;
    check_k(k)?;
    granularity.validate(k)
}

/// Refuses a handle made by another device.
pub fn check_owner(what: &'static str, tensor: &impl DeviceTensor, this: u64) -> Result<()> {
    let owner = tensor.device_id();
    if owner == this { Ok(()) } else { Err(Error::ForeignBuffer { what, owner, this }) }
}

/// The checks every backend runs before a GEMM: ownership of all three handles and agreeing shapes.
pub fn check_gemm_args(
    this: u64,
    x: &impl DeviceTensor,
    w: &impl DeviceTensor,
    y: &impl DeviceTensor,
) -> Result<()> {
    check_owner("activations", x, this)?;
    check_owner("weights", w, this)?;
    check_owner("output", y, this)?;
    let ((m, kx), (n, kw), (ym, yn)) = (x.shape(), w.shape(), y.shape());
    check_len("K of weights vs activations", kx, kw)?;
    check_len("output rows (M)", m, ym)?;
    check_len("output columns (N)", n, yn)
}

/// The checks every backend runs before quantizing activations: shapes, the smoothing vector's length
/// and finiteness. (Non-finite activations are found by the quantizer itself.)
pub fn check_activation_args(x_len: usize, m: usize, k: usize, smooth: Option<&[f32]>) -> Result<()> {
    check_transform_args(x_len, m, k, &ActivationTransform::smoothed(smooth))
}

/// [`check_activation_args`] for a whole [`ActivationTransform`]: shapes, then the smoothing vector
/// and the Hadamard block ([`ActivationTransform::check`]).
pub fn check_transform_args(x_len: usize, m: usize, k: usize, t: &ActivationTransform<'_>) -> Result<()> {
    check_nonzero("M", m)?;
    check_k(k)?;
    // Saturating: an M·K past usize cannot match any slice length, and must not overflow.
    check_len("activations (M·K)", m.saturating_mul(k), x_len)?;
    t.check(k)
}
