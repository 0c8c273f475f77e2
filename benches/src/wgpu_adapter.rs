//! The wgpu adapter (feature `wgpu`): the W4A8 shaders, our WGSL f16 GEMM as the FP16 peer, and
//! `copy_buffer_to_buffer` for the bandwidth ceiling.
//!
//! Kernel time is [`WgpuBackend::time_gemm`] (and `time_f16_gemm`): timestamp queries written at the
//! start and end of the compute pass, one submission per run, so submit and wait are outside the
//! figure — when the adapter has timestamp queries; otherwise it is the host clock around submit +
//! wait, and the device record says so. Whole-call time is the host clock around `gemm_into` (or
//! `f16_gemm`) + `synchronize`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use half::f16;
use w4a8_core::{BackendKind, Error, Gemm, Result};
use w4a8_wgpu::{F16Matrix, GemmKernel, TimerKind, WgpuBackend, WgpuOutput, wgpu};

use crate::backend::{
    Accumulation, BaselineGemm, BaselineKind, BenchBackend, CopyOp, DeviceRecord, GemmRun, HostData,
};
use crate::data::random_i8;

fn wgpu_err(message: impl Into<String>) -> Error {
    Error::Backend { backend: BackendKind::Wgpu, message: message.into() }
}

/// The wgpu backend as a benchmark backend.
pub struct WgpuBench {
    backend: WgpuBackend,
}

impl WgpuBench {
    /// Opens the best adapter ([`WgpuBackend::new`]).
    pub fn new() -> Result<Self> {
        Ok(WgpuBench { backend: WgpuBackend::new()? })
    }

    /// Wraps an existing backend.
    pub fn from_backend(backend: WgpuBackend) -> Self {
        WgpuBench { backend }
    }

    fn detail(&self, key: &str) -> Option<String> {
        self.backend.info().details.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn wait(&self) -> Result<()> {
        self.backend
            .device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| wgpu_err(format!("waiting for the device: {e}")))
    }
}

impl BenchBackend for WgpuBench {
    type G = WgpuBackend;

    fn gemm(&self) -> &WgpuBackend {
        &self.backend
    }

    fn device(&self) -> DeviceRecord {
        let info = self.backend.info();
        let device_type = self.detail("device type").unwrap_or_default();
        let timer = match self.backend.timer_kind() {
            TimerKind::DeviceTimestamps => {
                "wgpu timestamp queries at compute-pass begin/end, one submission per run (submit and wait \
                 outside the figure)"
            }
            TimerKind::Host => {
                "host clock around submit + wait, one submission per run (the adapter has no timestamp \
                 queries: launch overhead is inside the kernel time)"
            }
        };
        // A CPU adapter is a software rasterizer (lavapipe, llvmpipe, WARP, SwiftShader).
        let meaningless = (device_type == "Cpu")
            .then(|| format!("{} is a software rasterizer running on the CPU", info.name));
        DeviceRecord {
            backend: BackendKind::Wgpu.name().into(),
            name: info.name.clone(),
            driver: self.detail("driver").unwrap_or_else(|| "not reported".into()),
            details: info.details.iter().filter(|(k, _)| k != "driver").cloned().collect(),
            kernel_timer: timer.into(),
            meaningless,
        }
    }

    fn time_gemm_batch(
        &self,
        runs: &[GemmRun<'_, WgpuBackend>],
        y: &mut <WgpuBackend as Gemm>::Output,
    ) -> Result<f64> {
        let mut total = 0.0;
        for (x, w) in runs {
            let t = self.backend.time_gemm(x, w, y, GemmKernel::Auto, 1)?;
            total += t.first().copied().ok_or_else(|| wgpu_err("time_gemm returned no time"))?;
        }
        Ok(total / runs.len().max(1) as f64)
    }

    fn copy_op(&self, bytes: usize) -> Result<Box<dyn CopyOp + '_>> {
        let limit = self.backend.device().limits().max_buffer_size;
        // Whole u32 words, within the device's largest buffer.
        let bytes = (bytes as u64).min(limit) / 4 * 4;
        if bytes == 0 {
            return Err(wgpu_err("copy of 0 bytes"));
        }
        let src_data: Vec<u8> = random_i8(bytes as usize, 0xC0FF).into_iter().map(|v| v as u8).collect();
        let device = self.backend.device();
        let make = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = make("bench copy src", wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        let dst = make("bench copy dst", wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        self.backend.queue().write_buffer(&src, 0, &src_data);
        self.wait()?;
        Ok(Box::new(WgpuCopy { bench: self, src, dst, src_data, bytes }))
    }

    fn baselines(&self) -> Result<Vec<Box<dyn BaselineGemm + '_>>> {
        Ok(vec![Box::new(WgpuF16Peer { backend: &self.backend, w: Vec::new(), x: Vec::new(), y: None })])
    }
}

struct WgpuCopy<'a> {
    bench: &'a WgpuBench,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    src_data: Vec<u8>,
    bytes: u64,
}

impl CopyOp for WgpuCopy<'_> {
    fn method(&self) -> String {
        // wgpu has no timestamp outside a pass without an optional feature, so the copies are timed by
        // the host clock around one submission of many, which amortizes the submit and the wait.
        "copy_buffer_to_buffer, host clock around one submission of copies back to back".into()
    }

    fn bytes(&self) -> usize {
        self.bytes as usize
    }

    fn time_batch(&mut self, runs: usize) -> Result<f64> {
        let device = self.bench.backend.device();
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..runs.max(1) {
            encoder.copy_buffer_to_buffer(&self.src, 0, &self.dst, 0, self.bytes);
        }
        let commands = encoder.finish();
        self.bench.wait()?;
        let start = Instant::now();
        self.bench.backend.queue().submit([commands]);
        self.bench.wait()?;
        Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
    }

    fn verify(&mut self) -> Result<bool> {
        let device = self.bench.backend.device();
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench copy readback"),
            size: self.bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.dst, 0, &staging, 0, self.bytes);
        self.bench.backend.queue().submit([encoder.finish()]);
        let done = Arc::new(Mutex::new(None));
        let flag = done.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut slot) = flag.lock() {
                *slot = Some(r);
            }
        });
        self.bench.wait()?;
        let outcome = done.lock().map_err(|_| wgpu_err("readback flag poisoned"))?.take();
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(wgpu_err(format!("mapping the copy for readback: {e}"))),
            None => return Err(wgpu_err("readback map did not complete")),
        }
        let equal = {
            let view =
                staging.slice(..).get_mapped_range().map_err(|e| wgpu_err(format!("mapped range: {e}")))?;
            view[..] == self.src_data[..]
        };
        staging.unmap();
        Ok(equal)
    }
}

/// Our WGSL f16 GEMM (f32 accumulation) as the FP16 peer.
struct WgpuF16Peer<'a> {
    backend: &'a WgpuBackend,
    w: Vec<F16Matrix>,
    x: Vec<F16Matrix>,
    y: Option<WgpuOutput>,
}

impl WgpuF16Peer<'_> {
    /// Activation and weight set `set` (mod their counts) and the output.
    fn operands(&mut self, set: usize) -> Result<(&F16Matrix, &F16Matrix, &mut WgpuOutput)> {
        if self.w.is_empty() || self.x.is_empty() {
            return Err(wgpu_err("f16 GEMM run before weights and activations were added"));
        }
        let y = self.y.as_mut().ok_or_else(|| wgpu_err("f16 GEMM output not allocated"))?;
        Ok((&self.x[set % self.x.len()], &self.w[set % self.w.len()], y))
    }
}

impl BaselineGemm for WgpuF16Peer<'_> {
    fn name(&self) -> String {
        "WGSL f16 GEMM (ours)".into()
    }
    fn kind(&self) -> BaselineKind {
        BaselineKind::Fp16
    }
    fn accumulation(&self) -> Accumulation {
        Accumulation::F32
    }
    fn output_bytes(&self) -> usize {
        2
    }

    fn add_weights(&mut self, n: usize, k: usize, data: HostData<'_>) -> Result<()> {
        let HostData::F16(v) = data else { return Err(wgpu_err("the f16 GEMM takes f16 weights")) };
        self.w.push(self.backend.upload_f16(v, n, k)?);
        Ok(())
    }

    fn add_activations(&mut self, m: usize, k: usize, data: HostData<'_>) -> Result<()> {
        let HostData::F16(v) = data else { return Err(wgpu_err("the f16 GEMM takes f16 activations")) };
        let n = self
            .w
            .first()
            .map(|w| w4a8_core::DeviceTensor::shape(w).0)
            .ok_or_else(|| wgpu_err("f16 GEMM activations added before weights"))?;
        self.x.push(self.backend.upload_f16(v, m, k)?);
        if self.y.as_ref().is_none_or(|y| w4a8_core::DeviceTensor::shape(y) != (m, n)) {
            self.y = Some(self.backend.alloc_output(m, n, f16::NAN)?);
        }
        Ok(())
    }

    fn clear_weights(&mut self) {
        self.w.clear();
    }

    fn clear_activations(&mut self) {
        self.x.clear();
        self.y = None;
    }

    fn run(&mut self, set: usize) -> Result<()> {
        let backend = self.backend;
        let (x, w, y) = self.operands(set)?;
        backend.f16_gemm(x, w, y)?;
        backend.synchronize()
    }

    fn time_batch(&mut self, first_set: usize, runs: usize) -> Result<f64> {
        let (backend, mut total) = (self.backend, 0.0);
        for set in first_set..first_set + runs.max(1) {
            let (x, w, y) = self.operands(set)?;
            let t = backend.time_f16_gemm(x, w, y, 1)?;
            total += t.first().copied().ok_or_else(|| wgpu_err("time_f16_gemm returned no time"))?;
        }
        Ok(total / runs.max(1) as f64)
    }

    fn time_call(&mut self, set: usize) -> Result<f64> {
        let backend = self.backend;
        backend.synchronize()?;
        let (x, w, y) = self.operands(set)?;
        let start = Instant::now();
        backend.f16_gemm(x, w, y)?;
        backend.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    fn read_output(&mut self) -> Result<Vec<f64>> {
        let y = self.y.as_ref().ok_or_else(|| wgpu_err("no f16 GEMM output yet"))?;
        Ok(self.backend.read_output(y)?.into_iter().map(|v| v.to_f64()).collect())
    }
}
