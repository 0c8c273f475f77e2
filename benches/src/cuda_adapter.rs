//! The CUDA adapter (feature `cuda`): the W4A8 kernels through the `Gemm` trait, cuBLAS FP16 and
//! cuBLASLt INT8 (W8A8) as peers, a device-to-device `memcpy` for the bandwidth ceiling, all on the
//! backend's one stream.
//!
//! Kernel time is [`EventTimer::time_runs`]: a host function holds the stream while the host queues
//! a batch of runs between two CUDA events, then lets it go, so the runs execute back to back and the
//! events bracket GPU work only — launch latency, cudarc's event bookkeeping and cuBLAS's host work
//! stay outside even when queueing a run takes longer than running it. cuBLASLt's descriptors and
//! algorithm are made when the activations are added, before any timing, and cached per shape.
//! Whole-call time is the host clock around one call + `cuStreamSynchronize`.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::f16;
use w4a8_core::{BackendKind, Error, Gemm, Result};
use w4a8_cuda::CudaBackend;
use w4a8_cuda::baselines::{CublasF16Gemm, CublasLtI8Gemm};

use crate::backend::{
    Accumulation, BaselineGemm, BaselineKind, BenchBackend, CopyOp, DeviceRecord, GemmRun, HostData,
};
use crate::cuda_timer::{EventTimer, MAX_GATED_RUNS};
use crate::data::random_i8;

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend { backend: BackendKind::Cuda, message: format!("{what}: {e:?}") }
}

/// The CUDA backend as a benchmark backend.
pub struct CudaBench {
    backend: CudaBackend,
    timer: EventTimer,
}

impl CudaBench {
    /// Opens device 0 ([`CudaBackend::new`]).
    pub fn new() -> Result<Self> {
        Self::from_backend(CudaBackend::new()?)
    }

    /// Wraps an existing backend.
    pub fn from_backend(backend: CudaBackend) -> Result<Self> {
        let timer = EventTimer::new(backend.stream().clone())?;
        Ok(CudaBench { backend, timer })
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.backend.stream()
    }

    /// Host clock, in seconds, around `f` (which queues work on the backend's stream) and the wait
    /// for that work, starting from an idle stream.
    fn host_time(&self, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let start = Instant::now();
        f()?;
        self.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream().synchronize().map_err(|e| cuda_err("cuStreamSynchronize", e))
    }
}

impl BenchBackend for CudaBench {
    type G = CudaBackend;

    fn gemm(&self) -> &CudaBackend {
        &self.backend
    }

    fn device(&self) -> DeviceRecord {
        let info = self.backend.info();
        let driver = info
            .details
            .iter()
            .find(|(k, _)| k == "driver")
            .map_or("not reported".into(), |(_, v)| v.clone());
        DeviceRecord {
            backend: BackendKind::Cuda.name().into(),
            name: info.name.clone(),
            driver: format!("CUDA driver {driver}"),
            details: info.details.iter().filter(|(k, _)| k != "driver").cloned().collect(),
            kernel_timer: format!(
                "CUDA events around runs queued back to back behind a host-function gate on the backend's \
                 stream (at most {} runs per gate), per run",
                MAX_GATED_RUNS
            ),
            meaningless: None,
        }
    }

    fn time_gemm_batch(
        &self,
        runs: &[GemmRun<'_, CudaBackend>],
        y: &mut <CudaBackend as Gemm>::Output,
    ) -> Result<f64> {
        self.timer.time_runs(runs.len(), |i| self.backend.gemm_into(runs[i].0, runs[i].1, y))
    }

    fn copy_op(&self, bytes: usize) -> Result<Box<dyn CopyOp + '_>> {
        let host: Vec<u8> = random_i8(bytes, 0xC0FF).into_iter().map(|v| v as u8).collect();
        let src = self.stream().clone_htod(&host).map_err(|e| cuda_err("copy source", e))?;
        let dst = self.stream().alloc_zeros::<u8>(bytes).map_err(|e| cuda_err("copy destination", e))?;
        Ok(Box::new(CudaCopy { bench: self, host, src, dst }))
    }

    fn baselines(&self) -> Result<Vec<Box<dyn BaselineGemm + '_>>> {
        let f16 = CublasF16Gemm::new(self.stream().clone())?;
        let i8 = CublasLtI8Gemm::new(self.stream().clone())?;
        Ok(vec![Box::new(CudaPeer::new(self, f16)), Box::new(CudaPeer::new(self, i8))])
    }
}

struct CudaCopy<'a> {
    bench: &'a CudaBench,
    host: Vec<u8>,
    src: CudaSlice<u8>,
    dst: CudaSlice<u8>,
}

impl CopyOp for CudaCopy<'_> {
    fn method(&self) -> String {
        "cuMemcpyDtoDAsync, CUDA events around copies queued back to back behind a gate".into()
    }

    fn bytes(&self) -> usize {
        self.host.len()
    }

    fn time_batch(&mut self, runs: usize) -> Result<f64> {
        let (stream, src, dst) = (self.bench.stream(), &self.src, &mut self.dst);
        self.bench
            .timer
            .time_runs(runs, |_| stream.memcpy_dtod(src, dst).map_err(|e| cuda_err("cuMemcpyDtoD", e)))
    }

    fn verify(&mut self) -> Result<bool> {
        let back = self.bench.stream().clone_dtoh(&self.dst).map_err(|e| cuda_err("copy readback", e))?;
        Ok(back == self.host)
    }
}

/// A cuBLAS GEMM as the peers use it: its element types and one call on device buffers.
trait CuGemm {
    /// Input element (weights and activations).
    type In: DeviceRepr + ValidAsZeroBits + Copy + 'static;
    /// Output element.
    type Out: DeviceRepr + ValidAsZeroBits + Copy + 'static;
    const NAME: &'static str;
    const KIND: BaselineKind;
    const ACCUMULATION: Accumulation;
    /// The host slice of this peer's element type, or `None` for the other type.
    fn take(data: HostData<'_>) -> Option<&[Self::In]>;
    /// Makes whatever a call at (M, N, K) needs besides the GEMM itself, before any timing.
    fn prepare(&mut self, mnk: (usize, usize, usize)) -> Result<()>;
    /// `y (M×N) = x (M×K) · wᵀ`, queued on the backend's stream.
    fn run(
        &mut self,
        x: &CudaSlice<Self::In>,
        w: &CudaSlice<Self::In>,
        y: &mut CudaSlice<Self::Out>,
        mnk: (usize, usize, usize),
    ) -> Result<()>;
    fn to_f64(v: Self::Out) -> f64;
}

impl CuGemm for CublasF16Gemm {
    type In = f16;
    type Out = f16;
    const NAME: &'static str = "cuBLAS FP16 (f32 acc)";
    const KIND: BaselineKind = BaselineKind::Fp16;
    const ACCUMULATION: Accumulation = Accumulation::F32;
    fn take(data: HostData<'_>) -> Option<&[f16]> {
        if let HostData::F16(v) = data { Some(v) } else { None }
    }
    fn prepare(&mut self, _mnk: (usize, usize, usize)) -> Result<()> {
        // cublasGemmEx takes its whole configuration per call; there is nothing to make ahead.
        Ok(())
    }
    fn run(
        &mut self,
        x: &CudaSlice<f16>,
        w: &CudaSlice<f16>,
        y: &mut CudaSlice<f16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(x, w, y, m, n, k)
    }
    fn to_f64(v: f16) -> f64 {
        v.to_f64()
    }
}

impl CuGemm for CublasLtI8Gemm {
    type In = i8;
    type Out = i32;
    const NAME: &'static str = "cuBLASLt INT8 (W8A8, i32 out)";
    const KIND: BaselineKind = BaselineKind::Int8;
    const ACCUMULATION: Accumulation = Accumulation::Int32;
    fn take(data: HostData<'_>) -> Option<&[i8]> {
        if let HostData::I8(v) = data { Some(v) } else { None }
    }
    fn prepare(&mut self, (m, n, k): (usize, usize, usize)) -> Result<()> {
        CublasLtI8Gemm::prepare(self, m, n, k)
    }
    fn run(
        &mut self,
        x: &CudaSlice<i8>,
        w: &CudaSlice<i8>,
        y: &mut CudaSlice<i32>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(x, w, y, m, n, k)
    }
    fn to_f64(v: i32) -> f64 {
        v as f64
    }
}

/// A cuBLAS peer with its rotating device buffers.
struct CudaPeer<'a, G: CuGemm> {
    bench: &'a CudaBench,
    gemm: G,
    n: usize,
    k: usize,
    m: usize,
    w: Vec<CudaSlice<G::In>>,
    x: Vec<CudaSlice<G::In>>,
    y: Option<CudaSlice<G::Out>>,
}

impl<'a, G: CuGemm> CudaPeer<'a, G> {
    fn new(bench: &'a CudaBench, gemm: G) -> Self {
        CudaPeer { bench, gemm, n: 0, k: 0, m: 0, w: Vec::new(), x: Vec::new(), y: None }
    }

    fn upload(&self, what: &str, data: HostData<'_>) -> Result<CudaSlice<G::In>> {
        let v =
            G::take(data).ok_or_else(|| cuda_err(what, format!("{} got the wrong element type", G::NAME)))?;
        self.bench.stream().clone_htod(v).map_err(|e| cuda_err(what, e))
    }
}

impl<G: CuGemm> CudaPeer<'_, G> {
    /// Queues run `set`: activation and weight set `set` (mod their counts) into the output. The
    /// GEMM call alone; the output and any per-shape plan exist already.
    fn enqueue(&mut self, set: usize) -> Result<()> {
        let (Some(y), false, false) = (self.y.as_mut(), self.x.is_empty(), self.w.is_empty()) else {
            return Err(cuda_err(G::NAME, "run before weights and activations were added"));
        };
        let (x, w) = (&self.x[set % self.x.len()], &self.w[set % self.w.len()]);
        self.gemm.run(x, w, y, (self.m, self.n, self.k))
    }
}

impl<G: CuGemm> BaselineGemm for CudaPeer<'_, G> {
    fn name(&self) -> String {
        G::NAME.into()
    }
    fn kind(&self) -> BaselineKind {
        G::KIND
    }
    fn accumulation(&self) -> Accumulation {
        G::ACCUMULATION
    }
    fn output_bytes(&self) -> usize {
        std::mem::size_of::<G::Out>()
    }

    fn add_weights(&mut self, n: usize, k: usize, data: HostData<'_>) -> Result<()> {
        w4a8_core::format::check_len("peer weights (N·K)", n * k, data.len())?;
        if !self.w.is_empty() && (n, k) != (self.n, self.k) {
            return Err(cuda_err(
                "peer weights",
                format!("{n}×{k} differs from the loaded {}×{}", self.n, self.k),
            ));
        }
        let buf = self.upload("peer weights", data)?;
        (self.n, self.k) = (n, k);
        self.w.push(buf);
        Ok(())
    }

    fn add_activations(&mut self, m: usize, k: usize, data: HostData<'_>) -> Result<()> {
        w4a8_core::format::check_len("peer activations K", self.k, k)?;
        w4a8_core::format::check_len("peer activations (M·K)", m * k, data.len())?;
        if !self.x.is_empty() && m != self.m {
            return Err(cuda_err(
                "peer activations",
                format!("M = {m} differs from the loaded M = {}", self.m),
            ));
        }
        let buf = self.upload("peer activations", data)?;
        self.m = m;
        self.x.push(buf);
        if self.y.as_ref().is_none_or(|y| y.len() != m * self.n) {
            self.y = None;
            let y = self
                .bench
                .stream()
                .alloc_zeros::<G::Out>(m * self.n)
                .map_err(|e| cuda_err("peer output", e))?;
            self.y = Some(y);
        }
        self.gemm.prepare((m, self.n, self.k))
    }

    fn clear_weights(&mut self) {
        self.w.clear();
    }

    fn clear_activations(&mut self) {
        self.x.clear();
        self.y = None;
    }

    fn run(&mut self, set: usize) -> Result<()> {
        self.enqueue(set)?;
        self.bench.synchronize()
    }

    fn time_batch(&mut self, first_set: usize, runs: usize) -> Result<f64> {
        let bench = self.bench;
        bench.timer.time_runs(runs, |i| self.enqueue(first_set + i))
    }

    fn time_call(&mut self, set: usize) -> Result<f64> {
        let bench = self.bench;
        bench.host_time(|| self.enqueue(set))
    }

    fn read_output(&mut self) -> Result<Vec<f64>> {
        let y = self.y.as_ref().ok_or_else(|| cuda_err(G::NAME, "no output yet"))?;
        let host = self.bench.stream().clone_dtoh(y).map_err(|e| cuda_err("peer output readback", e))?;
        Ok(host.into_iter().map(G::to_f64).collect())
    }
}
