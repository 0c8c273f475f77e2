//! Our f16 GEMM, the baseline the benchmark sets the W4A8 kernels against: `f16_gemm.wgsl`.

use half::f16;
use w4a8_core::Result;
use w4a8_core::gemm::check_owner;

use crate::WgpuBackend;
use crate::pipelines::Dispatch;
use crate::shaders;
use crate::tensors::{DeviceBuffer, F16Matrix, WgpuOutput};

/// The uniform block of `f16_gemm.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct F16Params {
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) steps: u32,
    pub(crate) x_stride: u32,
    pub(crate) n_tiles: u32,
    pub(crate) tiles: u32,
    pub(crate) y_stride: u32,
    pub(crate) pad: u32,
}

/// Rows of an [`F16Matrix`] are padded to a multiple of this many f16 (16 bytes: the f16 GEMM loads
/// vec4<u32>).
pub(crate) const F16_ROW_ALIGN: usize = 8;

impl WgpuBackend {
    /// Uploads a rows × cols row-major f16 matrix for [`WgpuBackend::f16_gemm`] (rows padded with
    /// zeros to a multiple of 8 f16, whole 16-byte vectors for the kernel's loads).
    pub fn upload_f16(&self, data: &[f16], rows: usize, cols: usize) -> Result<F16Matrix> {
        w4a8_core::format::check_nonzero("rows", rows)?;
        w4a8_core::format::check_nonzero("columns", cols)?;
        w4a8_core::format::check_len("f16 matrix (rows·cols)", rows * cols, data.len())?;
        let stride = cols.next_multiple_of(F16_ROW_ALIGN);
        let mut padded = vec![f16::ZERO; rows * stride];
        for (dst, src) in padded.chunks_mut(stride).zip(data.chunks(cols)) {
            dst[..cols].copy_from_slice(src);
        }
        let bytes = (rows * stride * 2) as u64;
        self.check_binding("f16 matrix", bytes)?;
        let buffer = self.scoped(|| {
            self.storage_init("w4a8 f16 matrix", bytemuck::cast_slice(&padded), wgpu::BufferUsages::empty())
        })?;
        Ok(F16Matrix { device_id: self.info.id, rows, cols, buffer })
    }

    pub(crate) fn f16_dispatch(
        &self,
        x: &F16Matrix,
        w: &F16Matrix,
        y: &WgpuOutput,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        check_owner("f16 activations", x, self.info.id)?;
        check_owner("f16 weights", w, self.info.id)?;
        check_owner("output", y, self.info.id)?;
        w4a8_core::format::check_len("K of f16 weights vs activations", x.cols, w.cols)?;
        w4a8_core::format::check_len("output rows (M)", x.rows, y.m)?;
        w4a8_core::format::check_len("output columns (N)", w.rows, y.n)?;
        self.check_binding("output (M·Np·2 bytes)", y.buffer.size())?;
        let (m, n, k) = (x.rows, w.rows, x.cols);
        let variant = self.tiled_variant()?;
        let (m_tiles, n_tiles) = (m.div_ceil(variant.tile), n.div_ceil(variant.tile));
        let ks = k.next_multiple_of(F16_ROW_ALIGN);
        let pipeline = self.pipeline(variant.f16.entry_points[0], variant.f16.name, None)?;
        let params = self.uniform(&F16Params {
            m: m as u32,
            n: n as u32,
            steps: ks.div_ceil(shaders::TILED_F16_STEP_K) as u32,
            x_stride: (ks / F16_ROW_ALIGN) as u32,
            n_tiles: n_tiles as u32,
            tiles: (m_tiles * n_tiles) as u32,
            y_stride: n.div_ceil(2) as u32,
            pad: 0,
        })?;
        let bind_group = self.bind(
            pipeline,
            &[
                params.as_entire_binding(),
                x.buffer.as_entire_binding(),
                w.buffer.as_entire_binding(),
                y.buffer.as_entire_binding(),
            ],
        );
        let groups = self.grid("f16 GEMM workgroups", m_tiles * n_tiles)?;
        Ok((vec![Dispatch { pipeline: pipeline.pipeline.clone(), bind_group, groups }], vec![params]))
    }

    /// Our f16 GEMM baseline: `y = f16(x · wᵀ)` with f32 accumulation; x is M×K, w is N×K.
    pub fn f16_gemm(&self, x: &F16Matrix, w: &F16Matrix, y: &mut WgpuOutput) -> Result<()> {
        self.scoped(|| {
            let (dispatches, _keep) = self.f16_dispatch(x, w, y)?;
            self.submit(&dispatches, None);
            Ok(())
        })
    }

    /// Times [`WgpuBackend::f16_gemm`] like [`WgpuBackend::time_gemm`].
    pub fn time_f16_gemm(
        &self,
        x: &F16Matrix,
        w: &F16Matrix,
        y: &mut WgpuOutput,
        runs: usize,
    ) -> Result<Vec<f64>> {
        let (dispatches, _keep) = self.scoped(|| self.f16_dispatch(x, w, y))?;
        self.time_dispatches(&dispatches, runs)
    }
}
