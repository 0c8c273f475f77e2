//! The handles: prepared weights, activations, outputs, f16 matrices, and the counted device buffer
//! under all of them.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use w4a8_core::{DeviceTensor, Granularity};

#[cfg(not(target_arch = "wasm32"))]
use crate::WgpuBackend;

/// A buffer this backend created, counted in [`WgpuBackend::device_bytes`] from creation until its
/// handle is dropped (wgpu itself may keep the memory a little longer, until the GPU is done with it).
pub(crate) struct DeviceBuffer {
    pub(crate) buffer: wgpu::Buffer,
    /// The backend's count of live bytes, shared by every buffer it made; `None` for a handle on
    /// one of the backend's own cached buffers (uniform blocks, the no-bias placeholder), which
    /// are not counted (see [`WgpuBackend::device_bytes`]).
    pub(crate) live: Option<Arc<AtomicU64>>,
}

impl Deref for DeviceBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.fetch_sub(self.buffer.size(), Ordering::AcqRel);
        }
    }
}

/// Prepared weights: the shader layout split into column chunks that each fit one storage binding,
/// plus the channel scales and bias for the epilogue.
pub struct WgpuWeights {
    pub(crate) device_id: u64,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) granularity: Granularity,
    pub(crate) chunks: Vec<WeightChunk>,
    pub(crate) channel_scales: DeviceBuffer,
    pub(crate) bias: Option<DeviceBuffer>,
}

pub(crate) struct WeightChunk {
    pub(crate) n0: usize,
    pub(crate) nc: usize,
    pub(crate) qweight: DeviceBuffer,
    /// Packed u8 group scales, or a 4-byte placeholder per channel.
    pub(crate) group_scales: DeviceBuffer,
}

impl WgpuWeights {
    /// How many storage bindings (and dispatches per GEMM) the weights were split into.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
    /// Per-channel or per-group.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
}

impl DeviceTensor for WgpuWeights {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// Quantized activations on the device: M × Kp/4 words of four int8 (k ≥ K zero) and M f32 scales.
pub struct WgpuActivations {
    pub(crate) device_id: u64,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) values: DeviceBuffer,
    pub(crate) scales: DeviceBuffer,
}

impl DeviceTensor for WgpuActivations {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.m, self.k)
    }
}

/// An M×N f16 output on the device, rows padded to an even count of f16 (two per 32-bit word).
pub struct WgpuOutput {
    pub(crate) device_id: u64,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) buffer: DeviceBuffer,
}

impl WgpuOutput {
    /// The device buffer: M rows of `2·⌈N/2⌉` f16.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl DeviceTensor for WgpuOutput {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.m, self.n)
    }
}

/// A rows × cols f16 matrix on the device (operand of the f16 baseline GEMM), rows padded to an
/// even count of f16 with zeros.
pub struct F16Matrix {
    pub(crate) device_id: u64,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) buffer: DeviceBuffer,
}

impl DeviceTensor for F16Matrix {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

// The thread-safety contract documented on `WgpuBackend`, checked at compile time (native only).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<WgpuBackend>();
    assert_send_sync::<WgpuWeights>();
    assert_send_sync::<WgpuActivations>();
    assert_send_sync::<WgpuOutput>();
    assert_send_sync::<F16Matrix>();
};
