//! The CPU adapter: the oracle through the [`Gemm`] trait, with plain rayon f16 and int8 GEMMs beside
//! it as peers. There is no launch to hide: kernel time is the host clock around runs back to back,
//! and whole-call time the host clock around one.
//!
//! Its timings mean nothing about any GPU and are labelled so; it exists so that `--quick --backend
//! cpu` exercises every code path of the report (ceilings, peers, checks, table, JSON, plot) in CI.

use std::time::Instant;

use half::f16;
use rayon::prelude::*;
use w4a8_core::{BackendKind, CpuOracle, Error, Gemm, Result};

use crate::backend::{
    Accumulation, BaselineGemm, BaselineKind, BenchBackend, CopyOp, DeviceRecord, GemmRun, HostData,
};
use crate::data::random_i8;

/// The CPU oracle as a benchmark backend.
#[derive(Debug, Default)]
pub struct CpuBench {
    oracle: CpuOracle,
}

impl CpuBench {
    /// A fresh oracle.
    pub fn new() -> Self {
        CpuBench { oracle: CpuOracle::new() }
    }
}

/// The host CPU's model name from /proc/cpuinfo, where there is one.
fn host_cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn cpu_err(message: impl Into<String>) -> Error {
    Error::Backend { backend: BackendKind::Cpu, message: message.into() }
}

impl BenchBackend for CpuBench {
    type G = CpuOracle;

    fn gemm(&self) -> &CpuOracle {
        &self.oracle
    }

    fn device(&self) -> DeviceRecord {
        let info = self.oracle.info();
        let mut details = info.details.clone();
        if let Some(model) = host_cpu_model() {
            details.push(("host cpu".into(), model));
        }
        DeviceRecord {
            backend: BackendKind::Cpu.name().into(),
            name: info.name.clone(),
            driver: "none (host code)".into(),
            details,
            kernel_timer: "host clock around the batch's gemm_into calls + synchronize, per run".into(),
            meaningless: Some("CPU oracle: a correctness reference, not a tuned kernel".into()),
        }
    }

    fn time_gemm_batch(
        &self,
        runs: &[GemmRun<'_, CpuOracle>],
        y: &mut <CpuOracle as Gemm>::Output,
    ) -> Result<f64> {
        let start = Instant::now();
        for (x, w) in runs {
            self.oracle.gemm_into(x, w, y)?;
        }
        self.oracle.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / runs.len().max(1) as f64)
    }

    fn copy_op(&self, bytes: usize) -> Result<Box<dyn CopyOp + '_>> {
        let src: Vec<u8> = random_i8(bytes, 0xC0FF).into_iter().map(|v| v as u8).collect();
        Ok(Box::new(HostCopy { dst: vec![0; bytes], src }))
    }

    fn baselines(&self) -> Result<Vec<Box<dyn BaselineGemm + '_>>> {
        Ok(vec![Box::new(CpuPeer::<f16>::default()), Box::new(CpuPeer::<i8>::default())])
    }
}

/// `memcpy` between two host buffers.
struct HostCopy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl CopyOp for HostCopy {
    fn method(&self) -> String {
        "host memcpy (copy_from_slice), host clock around copies back to back".into()
    }

    fn bytes(&self) -> usize {
        self.src.len()
    }

    fn time_batch(&mut self, runs: usize) -> Result<f64> {
        let start = Instant::now();
        for _ in 0..runs.max(1) {
            self.dst.copy_from_slice(&self.src);
            std::hint::black_box(&mut self.dst);
        }
        Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
    }

    fn verify(&mut self) -> Result<bool> {
        Ok(self.dst == self.src)
    }
}

/// An element type a CPU peer GEMM multiplies.
trait PeerElem: Copy + Send + Sync + 'static {
    const KIND: BaselineKind;
    const NAME: &'static str;
    const ACCUMULATION: Accumulation;
    const OUTPUT_BYTES: usize;
    fn take(data: HostData<'_>) -> Option<Vec<Self>>;
    /// Dot product of two rows with this type's accumulator, widened to f64.
    fn dot(a: &[Self], b: &[Self]) -> f64;
}

impl PeerElem for f16 {
    const KIND: BaselineKind = BaselineKind::Fp16;
    const NAME: &'static str = "CPU f16 GEMM (f32 acc, rayon)";
    const ACCUMULATION: Accumulation = Accumulation::F32;
    const OUTPUT_BYTES: usize = 2;
    fn take(data: HostData<'_>) -> Option<Vec<f16>> {
        if let HostData::F16(v) = data { Some(v.to_vec()) } else { None }
    }
    fn dot(a: &[f16], b: &[f16]) -> f64 {
        let acc: f32 = a.iter().zip(b).map(|(x, w)| x.to_f32() * w.to_f32()).sum();
        // The output is f16, as a real f16 GEMM writes it.
        f16::from_f32(acc).to_f64()
    }
}

impl PeerElem for i8 {
    const KIND: BaselineKind = BaselineKind::Int8;
    const NAME: &'static str = "CPU int8 GEMM (i32 acc, rayon)";
    const ACCUMULATION: Accumulation = Accumulation::Int32;
    const OUTPUT_BYTES: usize = 4;
    fn take(data: HostData<'_>) -> Option<Vec<i8>> {
        if let HostData::I8(v) = data { Some(v.to_vec()) } else { None }
    }
    fn dot(a: &[i8], b: &[i8]) -> f64 {
        a.iter().zip(b).map(|(&x, &w)| x as i32 * w as i32).sum::<i32>() as f64
    }
}

/// A plain rayon GEMM over output rows, on host "device" buffers.
struct CpuPeer<T> {
    n: usize,
    k: usize,
    m: usize,
    weights: Vec<Vec<T>>,
    activations: Vec<Vec<T>>,
    out: Vec<f64>,
}

impl<T> Default for CpuPeer<T> {
    fn default() -> Self {
        CpuPeer { n: 0, k: 0, m: 0, weights: Vec::new(), activations: Vec::new(), out: Vec::new() }
    }
}

impl<T: PeerElem> BaselineGemm for CpuPeer<T> {
    fn name(&self) -> String {
        T::NAME.into()
    }
    fn kind(&self) -> BaselineKind {
        T::KIND
    }
    fn accumulation(&self) -> Accumulation {
        T::ACCUMULATION
    }
    fn output_bytes(&self) -> usize {
        T::OUTPUT_BYTES
    }

    fn add_weights(&mut self, n: usize, k: usize, data: HostData<'_>) -> Result<()> {
        if !self.weights.is_empty() && (n, k) != (self.n, self.k) {
            return Err(cpu_err(format!("weight set {n}×{k} differs from the loaded {}×{}", self.n, self.k)));
        }
        w4a8_core::format::check_len("peer weights (N·K)", n * k, data.len())?;
        let v = T::take(data).ok_or_else(|| cpu_err(format!("{} got the wrong element type", T::NAME)))?;
        (self.n, self.k) = (n, k);
        self.weights.push(v);
        Ok(())
    }

    fn add_activations(&mut self, m: usize, k: usize, data: HostData<'_>) -> Result<()> {
        w4a8_core::format::check_len("peer activations K", self.k, k)?;
        if !self.activations.is_empty() && m != self.m {
            return Err(cpu_err(format!(
                "activation set with M = {m} differs from the loaded M = {}",
                self.m
            )));
        }
        w4a8_core::format::check_len("peer activations (M·K)", m * k, data.len())?;
        let v = T::take(data).ok_or_else(|| cpu_err(format!("{} got the wrong element type", T::NAME)))?;
        self.m = m;
        self.activations.push(v);
        self.out.resize(m * self.n, 0.0);
        Ok(())
    }

    fn clear_weights(&mut self) {
        self.weights.clear();
    }

    fn clear_activations(&mut self) {
        self.activations.clear();
        self.out.clear();
    }

    fn run(&mut self, set: usize) -> Result<()> {
        if self.weights.is_empty() || self.activations.is_empty() {
            return Err(cpu_err("run before any weights and activations were added"));
        }
        let (n, k) = (self.n, self.k);
        let w = &self.weights[set % self.weights.len()];
        let x = &self.activations[set % self.activations.len()];
        self.out.par_chunks_mut(n).zip(x.par_chunks(k)).for_each(|(yrow, xrow)| {
            for (y, wrow) in yrow.iter_mut().zip(w.chunks(k)) {
                *y = T::dot(xrow, wrow);
            }
        });
        Ok(())
    }

    fn time_batch(&mut self, first_set: usize, runs: usize) -> Result<f64> {
        let start = Instant::now();
        for i in first_set..first_set + runs.max(1) {
            self.run(i)?;
        }
        Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
    }

    fn time_call(&mut self, set: usize) -> Result<f64> {
        let start = Instant::now();
        self.run(set)?;
        Ok(start.elapsed().as_secs_f64())
    }

    fn read_output(&mut self) -> Result<Vec<f64>> {
        Ok(self.out.clone())
    }
}
