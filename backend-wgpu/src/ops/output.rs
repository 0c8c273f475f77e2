//! Outputs: allocation (filled, so a kernel that skipped an element shows) and readback.

use half::f16;
use w4a8_core::Result;
use w4a8_core::gemm::check_owner;

use crate::WgpuBackend;
use crate::buffers::host_vec;
use crate::tensors::WgpuOutput;

impl WgpuBackend {
    /// [`Gemm::alloc_output`]: rows of Np = N rounded up to even f16, filled with `fill`.
    pub(crate) fn new_output(&self, m: usize, n: usize, fill: f16) -> Result<WgpuOutput> {
        w4a8_core::format::check_nonzero("M", m)?;
        w4a8_core::format::check_nonzero("N", n)?;
        let stride = n.next_multiple_of(2);
        // Saturating: a product past u64 is over any limit, and must be refused rather than wrap.
        let bytes = (m as u64).saturating_mul(stride as u64).saturating_mul(2);
        self.check_buffer("output (M·Np·2 bytes)", bytes)?;
        let data = host_vec("output fill", bytes / 2, fill)?;
        let buffer = self.scoped(|| {
            self.storage_init("w4a8 output", bytemuck::cast_slice(&data), wgpu::BufferUsages::COPY_DST)
        })?;
        Ok(WgpuOutput { device_id: self.info.id, m, n, buffer })
    }

    /// [`Gemm::read_output`]: drops the padding column of an odd N.
    pub(crate) fn read_back_output(&self, y: &WgpuOutput) -> Result<Vec<f16>> {
        check_owner("output", y, self.info.id)?;
        let stride = y.n.next_multiple_of(2);
        let bytes = self.read_bytes(&y.buffer, (y.m * stride * 2) as u64)?;
        let all: Vec<f16> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(all.chunks(stride).take(y.m).flat_map(|row| row[..y.n].iter().copied()).collect())
    }
}
