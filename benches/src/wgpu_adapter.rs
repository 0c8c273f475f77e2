//! The wgpu adapter (feature `wgpu`): the W4A8 shaders through [`WgpuBackend::time_gemm`] (timestamp
//! queries written at the start and end of the compute pass when the adapter has them), our WGSL f16
//! GEMM as the FP16 peer, and `copy_buffer_to_buffer` for the bandwidth ceiling.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use half::f16;
use w4a8_core::{BackendKind, Error, Gemm, Result};
use w4a8_wgpu::{F16Matrix, GemmKernel, TimerKind, WgpuBackend, WgpuOutput, wgpu};

use crate::backend::{
    Accumulation, BaselineGemm, BaselineKind, BenchBackend, CopyOp, DeviceRecord, HostData,
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
            TimerKind::DeviceTimestamps => "wgpu timestamp queries at compute-pass begin/end",
            TimerKind::Host => "host clock around submit + wait (adapter has no timestamp queries)",
        };
        // A CPU adapter is a software rasterizer (lavapipe, llvmpipe, WARP, SwiftShader).
        let meaningless = (device_type == "Cpu")
            .then(|| format!("{} is a software rasterizer running on the CPU", info.name));
        DeviceRecord {
            backend: BackendKind::Wgpu.name().into(),
            name: info.name.clone(),
            driver: self.detail("driver").unwrap_or_else(|| "not reported".into()),
            details: info.details.iter().filter(|(k, _)| k != "driver").cloned().collect(),
            timer: timer.into(),
            meaningless,
        }
    }

    fn time_gemm(
        &self,
        x: &<WgpuBackend as Gemm>::Activations,
        w: &<WgpuBackend as Gemm>::Weights,
        y: &mut <WgpuBackend as Gemm>::Output,
    ) -> Result<f64> {
        let t = self.backend.time_gemm(x, w, y, GemmKernel::Auto, 1)?;
        t.first().copied().ok_or_else(|| wgpu_err("time_gemm returned no time"))
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

/// Copies per submission: wgpu has no timestamp outside a pass without an optional feature, so the
/// copy is timed by the host clock around several back-to-back copies, which amortizes the
/// submit-and-wait overhead.
const COPIES_PER_SUBMIT: u32 = 8;

struct WgpuCopy<'a> {
    bench: &'a WgpuBench,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    src_data: Vec<u8>,
    bytes: u64,
}

impl CopyOp for WgpuCopy<'_> {
    fn method(&self) -> String {
        format!("copy_buffer_to_buffer, host clock around {COPIES_PER_SUBMIT} copies in one submission")
    }

    fn bytes(&self) -> usize {
        self.bytes as usize
    }

    fn run_timed(&mut self) -> Result<f64> {
        let device = self.bench.backend.device();
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..COPIES_PER_SUBMIT {
            encoder.copy_buffer_to_buffer(&self.src, 0, &self.dst, 0, self.bytes);
        }
        let commands = encoder.finish();
        self.bench.wait()?;
        let start = Instant::now();
        self.bench.backend.queue().submit([commands]);
        self.bench.wait()?;
        Ok(start.elapsed().as_secs_f64() / COPIES_PER_SUBMIT as f64)
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
        self.x.push(self.backend.upload_f16(v, m, k)?);
        Ok(())
    }

    fn clear_weights(&mut self) {
        self.w.clear();
    }

    fn clear_activations(&mut self) {
        self.x.clear();
        self.y = None;
    }

    fn run_timed(&mut self, set: usize) -> Result<f64> {
        if self.w.is_empty() || self.x.is_empty() {
            return Err(wgpu_err("f16 GEMM run before weights and activations were added"));
        }
        let (x, w) = (&self.x[set % self.x.len()], &self.w[set % self.w.len()]);
        let (m, n) = (w4a8_core::DeviceTensor::shape(x).0, w4a8_core::DeviceTensor::shape(w).0);
        if self.y.as_ref().is_none_or(|y| w4a8_core::DeviceTensor::shape(y) != (m, n)) {
            self.y = Some(self.backend.alloc_output(m, n, f16::NAN)?);
        }
        let y = self.y.as_mut().expect("allocated above");
        let t = self.backend.time_f16_gemm(x, w, y, 1)?;
        t.first().copied().ok_or_else(|| wgpu_err("time_f16_gemm returned no time"))
    }

    fn read_output(&mut self) -> Result<Vec<f64>> {
        let y = self.y.as_ref().ok_or_else(|| wgpu_err("no f16 GEMM output yet"))?;
        Ok(self.backend.read_output(y)?.into_iter().map(|v| v.to_f64()).collect())
    }
}
