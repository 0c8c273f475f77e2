//! The tiled GEMM (M > 16): `w4a8_gemm_tiled.wgsl`, 128×128 or 64×64 tiles by the device's limits.

use w4a8_core::{Error, KernelPlan, Result};

use crate::WgpuBackend;
use crate::buffers::row_slice;
use crate::layout::{self, BLOCK_K};
use crate::pipelines::Dispatch;
use crate::shaders;
use crate::tensors::{DeviceBuffer, WgpuActivations, WgpuOutput, WgpuWeights};

/// The uniform block of `w4a8_gemm_tiled.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TiledParams {
    pub(crate) m: u32,
    pub(crate) n_chunk: u32,
    pub(crate) n_offset: u32,
    pub(crate) kb_total: u32,
    pub(crate) n_tiles: u32,
    pub(crate) tiles: u32,
    pub(crate) group_blocks: u32,
    pub(crate) sg_stride: u32,
    pub(crate) x_stride: u32,
    pub(crate) y_stride: u32,
    pub(crate) has_bias: u32,
    /// Always 0: the shader's opaque zero against fusing/reassociating the epilogue's float ops.
    pub(crate) fence: u32,
}

/// Rows per tiled-GEMM dispatch are a multiple of this, so that binding offsets of activation
/// rows (Kp bytes, Kp multiple of 32), scales (4 bytes) and output rows (even f16 count) stay
/// multiples of 256 bytes, the largest `min_storage_buffer_offset_alignment` WebGPU allows.
pub(crate) const ROW_CHUNK_ALIGN: usize = 128;

impl WgpuBackend {
    pub(crate) fn tiled_dispatches(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &WgpuOutput,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        let (m, n, k) = (x.m, w.n, w.k);
        let kp = layout::padded_k(k);
        let y_stride = n.div_ceil(2);
        let (x_row, y_row) = (kp as u64, (y_stride * 4) as u64);
        let rows_per = self.tiled_rows_per_dispatch(m, n, k)?;
        let variant = self.tiled_variant()?;
        let spec = variant.w4a8;
        let pipeline = self.pipeline(spec.entry_points[0], spec.name, None)?;
        let dummy_bias = self.no_bias_placeholder()?;
        let bias = w.bias.as_ref().unwrap_or(&dummy_bias);
        let mut dispatches = Vec::new();
        let mut keep = Vec::new();
        for row0 in (0..m).step_by(rows_per) {
            let rows = (m - row0).min(rows_per);
            let slice = |buf, per_row| row_slice(buf, row0, rows, per_row);
            for ch in &w.chunks {
                let (m_tiles, n_tiles) = (rows.div_ceil(variant.tile), ch.nc.div_ceil(variant.tile));
                let params = self.uniform(&TiledParams {
                    m: rows as u32,
                    n_chunk: ch.nc as u32,
                    n_offset: ch.n0 as u32,
                    kb_total: (kp / BLOCK_K) as u32,
                    n_tiles: n_tiles as u32,
                    tiles: (m_tiles * n_tiles) as u32,
                    group_blocks: (w.granularity.group_size().unwrap_or(0) / BLOCK_K) as u32,
                    sg_stride: ch.nc.div_ceil(4) as u32,
                    x_stride: (kp / 16) as u32,
                    y_stride: y_stride as u32,
                    has_bias: w.bias.is_some() as u32,
                    fence: 0,
                })?;
                let bind_group = self.bind(
                    pipeline,
                    &[
                        params.as_entire_binding(),
                        ch.qweight.as_entire_binding(),
                        ch.group_scales.as_entire_binding(),
                        slice(&x.values, x_row),
                        slice(&x.scales, 4),
                        w.channel_scales.as_entire_binding(),
                        bias.as_entire_binding(),
                        slice(&y.buffer, y_row),
                    ],
                );
                dispatches.push(Dispatch {
                    pipeline: pipeline.pipeline.clone(),
                    bind_group,
                    groups: self.grid("tiled GEMM workgroups", m_tiles * n_tiles)?,
                });
                keep.push(params);
            }
        }
        keep.push(dummy_bias);
        Ok((dispatches, keep))
    }

    /// The largest size of the tiled GEMMs whose workgroup memory and invocations the device allows.
    pub(crate) fn tiled_variant(&self) -> Result<shaders::TiledVariant> {
        let invocations = self.limits.max_compute_invocations_per_workgroup as usize;
        let fits = |v: &&shaders::TiledVariant| {
            v.workgroup_bytes() <= self.max_workgroup_bytes && v.invocations() <= invocations
        };
        match shaders::TILED_VARIANTS.iter().find(fits) {
            Some(v) => Ok(*v),
            None => {
                let smallest = shaders::TILED_VARIANTS[shaders::TILED_VARIANTS.len() - 1];
                Err(Error::OverDeviceLimit {
                    what: "tiled GEMM workgroup memory (double-buffered staged tiles)",
                    requested: smallest.workgroup_bytes(),
                    limit: self.max_workgroup_bytes,
                    limit_name: "max_compute_workgroup_storage_size",
                })
            }
        }
    }

    /// Rows per dispatch: as many as fit one binding of activations and of output, in steps of
    /// [`ROW_CHUNK_ALIGN`] so that every binding offset stays aligned.
    pub(crate) fn tiled_rows_per_dispatch(&self, m: usize, n: usize, k: usize) -> Result<usize> {
        let row_bytes = (layout::padded_k(k) as u64).max((n.div_ceil(2) * 4) as u64);
        let fit = (self.max_binding / row_bytes) as usize;
        let rows_per = if m <= fit { m } else { fit / ROW_CHUNK_ALIGN * ROW_CHUNK_ALIGN };
        if rows_per == 0 {
            let what = "activation/output rows of one dispatch (M, or 128 when M is split)";
            self.check_binding(what, m.min(ROW_CHUNK_ALIGN) as u64 * row_bytes)?;
        }
        Ok(rows_per.max(1))
    }

    /// The plan of [`WgpuBackend::tiled_dispatches`]: one dispatch per (row range, weight chunk).
    pub(crate) fn tiled_plan(
        &self,
        m: usize,
        n: usize,
        k: usize,
        chunks: &[(usize, usize)],
    ) -> Result<KernelPlan> {
        let v = self.tiled_variant()?;
        let row_dispatches = m.div_ceil(self.tiled_rows_per_dispatch(m, n, k)?);
        let step = shaders::TILED_W4A8_STEP_K;
        Ok(KernelPlan::new([v.w4a8.entry_points[0]])
            .with("dispatches", row_dispatches * chunks.len())
            .with("tile (rows x columns x k per barrier)", format!("{0}x{0}x{step}", v.tile))
            .with("outputs per invocation", "8x8")
            .with("invocations", v.invocations())
            .with("workgroup memory bytes", v.workgroup_bytes()))
    }
}
