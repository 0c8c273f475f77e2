//! The small adapter each backend provides to the report: a device description, a kernel timer for
//! W4A8 GEMMs run back to back, a device-to-device copy and the peer GEMMs it is compared with.
//!
//! Everything else (data, rotation, warm-up, medians, checks, tables, JSON, plots) is written once in
//! [`crate::run`] and its neighbours over these traits. The W4A8 kernels themselves go through the
//! backend-agnostic [`Gemm`] trait, so the report times exactly what users call.
//!
//! Every case gets two times. The **kernel time** is device time per run of many runs queued back
//! to back (so host launch latency is hidden); the adapter says how in [`DeviceRecord::kernel_timer`].
//! The **whole-call time** is the host clock around one call and a wait for its completion — what a
//! decode step pays — measured the same way on every backend ([`BenchBackend::time_call`]).

use std::time::Instant;

use half::f16;
use serde::{Deserialize, Serialize};
use w4a8_core::{Gemm, Result};

/// What a report records about the device a backend ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// `cpu`, `wgpu` or `cuda`.
    pub backend: String,
    /// The device's name as its driver reports it.
    pub name: String,
    /// Driver name and version as reported, or why there is none.
    pub driver: String,
    /// Further (key, value) facts from the backend (limits, features, API).
    pub details: Vec<(String, String)>,
    /// How kernel times are taken (e.g. "CUDA events around gated back-to-back runs").
    pub kernel_timer: String,
    /// `None` when the timings describe the device; otherwise why they mean nothing (a CPU
    /// reference, a software rasterizer). Such timings never go into RESULTS.md.
    pub meaningless: Option<String>,
}

/// Which figure a peer GEMM stands for in the speedup columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BaselineKind {
    /// FP16 weights and activations (cuBLAS FP16, our WGSL f16 GEMM): "speedup over FP16".
    Fp16,
    /// INT8 weights and activations, W8A8 (cuBLASLt INT8): "speedup over W8A8".
    Int8,
}

/// How a peer GEMM accumulates, which fixes how closely it must match the f64 reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accumulation {
    /// Exact int32: must equal the integer reference.
    Int32,
    /// f32 accumulation of f16 products.
    F32,
    /// f16 accumulation (some fast paths): a looser bound.
    F16,
}

/// Host data handed to a peer GEMM for upload: f16 for [`BaselineKind::Fp16`], int8 for
/// [`BaselineKind::Int8`]. Always row-major: weights N×K, activations M×K.
#[derive(Clone, Copy, Debug)]
pub enum HostData<'a> {
    /// f16 values.
    F16(&'a [f16]),
    /// int8 values.
    I8(&'a [i8]),
}

impl HostData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F16(v) => v.len(),
            HostData::I8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A peer GEMM `Y = X · Wᵀ` on the same device (cuBLAS FP16, cuBLASLt INT8, our WGSL f16 GEMM).
///
/// It holds several rotating weight and activation sets; run `i` multiplies set `i mod count` of
/// each into one output buffer (allocated with the activations, outside any timed region).
pub trait BaselineGemm {
    /// Name for the table, e.g. "cuBLAS FP16".
    fn name(&self) -> String;
    /// Which speedup column it feeds.
    fn kind(&self) -> BaselineKind;
    /// How it accumulates.
    fn accumulation(&self) -> Accumulation;
    /// Bytes of one output element (2 for f16, 4 for int32): for the effective-bandwidth figure.
    fn output_bytes(&self) -> usize;
    /// Adds a weight set (N×K row-major, the kind's element type). All sets share N and K.
    fn add_weights(&mut self, n: usize, k: usize, data: HostData<'_>) -> Result<()>;
    /// Adds an activation set (M×K row-major). All sets share M. Anything the GEMM needs per shape
    /// (the output, a cuBLASLt plan) is made here, so that timed runs are the GEMM call alone.
    fn add_activations(&mut self, m: usize, k: usize, data: HostData<'_>) -> Result<()>;
    /// Frees every weight set.
    fn clear_weights(&mut self);
    /// Frees every activation set and the output.
    fn clear_activations(&mut self);
    /// Runs set `set` once, untimed, and waits for it: warm-up, and the run whose output is checked.
    fn run(&mut self, set: usize) -> Result<()>;
    /// Kernel time: mean device time per run, in seconds, of runs `first_set … first_set + runs − 1`
    /// queued back to back.
    fn time_batch(&mut self, first_set: usize, runs: usize) -> Result<f64>;
    /// Whole-call time: host clock, in seconds, around run `set` and the wait for its completion.
    fn time_call(&mut self, set: usize) -> Result<f64>;
    /// The output of the last run, M×N row-major, as f64 (exact for int32 and f16).
    fn read_output(&mut self) -> Result<Vec<f64>>;
}

/// A device-to-device copy of a fixed number of bytes: the bandwidth ceiling.
pub trait CopyOp {
    /// How the copy is made and timed, for the report (e.g. "cuMemcpyDtoD, CUDA events").
    fn method(&self) -> String;
    /// Bytes copied per run (each is read once and written once).
    fn bytes(&self) -> usize;
    /// Mean device time per copy, in seconds, of `runs` copies queued back to back.
    fn time_batch(&mut self, runs: usize) -> Result<f64>;
    /// Whether the destination now equals the source (checked on a sample or in full).
    fn verify(&mut self) -> Result<bool>;
}

/// The W4A8 operands of one run: activations and prepared weights of backend `G`.
pub type GemmRun<'a, G> = (&'a <G as Gemm>::Activations, &'a <G as Gemm>::Weights);

/// One backend as the report sees it.
pub trait BenchBackend {
    /// The backend's [`Gemm`] implementation: the W4A8 kernels under test.
    type G: Gemm;

    /// The backend itself.
    fn gemm(&self) -> &Self::G;

    /// Device, driver, kernel timer, and whether its timings mean anything.
    fn device(&self) -> DeviceRecord;

    /// Kernel time: mean device time per run, in seconds, of `gemm_into(x, w, y)` for each pair of
    /// `runs` in turn, queued back to back so that launch latency is not inside the figure.
    fn time_gemm_batch(
        &self,
        runs: &[GemmRun<'_, Self::G>],
        y: &mut <Self::G as Gemm>::Output,
    ) -> Result<f64>;

    /// Whole-call time: host clock, in seconds, around one `gemm_into(x, w, y)` and the
    /// `synchronize` that waits for it, starting from an idle device.
    fn time_call(
        &self,
        x: &<Self::G as Gemm>::Activations,
        w: &<Self::G as Gemm>::Weights,
        y: &mut <Self::G as Gemm>::Output,
    ) -> Result<f64> {
        let gemm = self.gemm();
        gemm.synchronize()?;
        let start = Instant::now();
        gemm.gemm_into(x, w, y)?;
        gemm.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// A device-to-device copy of `bytes` bytes of random data.
    fn copy_op(&self, bytes: usize) -> Result<Box<dyn CopyOp + '_>>;

    /// The peer GEMMs available on this device, in table order. The first [`BaselineKind::Fp16`] one
    /// also measures the matrix peak.
    fn baselines(&self) -> Result<Vec<Box<dyn BaselineGemm + '_>>>;
}
