//! The one-dispatch decode GEMM (M ≤ 16): `w4a8_gemm_decode.wgsl`.

use w4a8_core::{Error, GROUP_SIZES, Granularity, KernelPlan, Result};

use crate::WgpuBackend;
use crate::buffers::bytes_of_dims;
use crate::layout::{self, BLOCK_K};
use crate::pipelines::Dispatch;
use crate::shaders::{self, entry};
use crate::tensors::{DeviceBuffer, WgpuActivations, WgpuOutput, WgpuWeights};

/// The uniform block of `w4a8_gemm_decode.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DecodeParams {
    pub(crate) m: u32,
    pub(crate) n_chunk: u32,
    pub(crate) n_offset: u32,
    pub(crate) kb_total: u32,
    pub(crate) n_tiles: u32,
    pub(crate) row_blocks: u32,
    pub(crate) per_group: u32,
    pub(crate) group_shift: u32,
    pub(crate) sg_stride: u32,
    pub(crate) x_stride: u32,
    pub(crate) y_stride: u32,
    pub(crate) has_bias: u32,
    /// Always 0: the shader's opaque zero against fusing/reassociating the epilogue's float ops.
    pub(crate) fence: u32,
    pub(crate) pad: [u32; 3],
}

/// The decode kernel's rows per workgroup (its `TM` override) for `m` rows: the smallest tile ≥ m,
/// 16 (in row blocks) past that.
pub(crate) fn decode_row_tile(m: usize) -> u32 {
    let max = shaders::DECODE_ROW_TILES[shaders::DECODE_ROW_TILES.len() - 1];
    *shaders::DECODE_ROW_TILES.iter().find(|&&t| t as usize >= m).unwrap_or(&max)
}

/// The decode kernel's (per_group, group_shift): block kb is in group `kb >> group_shift`. Weights
/// and plans only carry a group size from [`GROUP_SIZES`] (validated where they are made), and
/// every one of those is 32 times a power of two, as the assertion below keeps true.
pub(crate) fn decode_groups(granularity: Granularity) -> (u32, u32) {
    match granularity.group_size() {
        None => (0, 0),
        Some(g) => (1, (g / BLOCK_K).trailing_zeros()),
    }
}

const _: () = {
    let mut i = 0;
    while i < GROUP_SIZES.len() {
        let g = GROUP_SIZES[i];
        assert!(
            g.is_multiple_of(BLOCK_K) && (g / BLOCK_K).is_power_of_two(),
            "decode_groups needs g = 32·2^s"
        );
        i += 1;
    }
};

impl WgpuBackend {
    /// The decode GEMM: one dispatch per weight chunk (one in all unless N needed several
    /// bindings), K reduced inside each workgroup, the epilogue fused. M > 16 (only when forced)
    /// runs in row blocks of 16 inside the same dispatch.
    pub(crate) fn decode_dispatches(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &WgpuOutput,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        let (m, n, k) = (x.m, w.n, w.k);
        let kp = layout::padded_k(k);
        self.check_binding("activations (M·Kp bytes)", bytes_of_dims(m, kp, 1))?;
        self.check_binding("output (M·Np·2 bytes)", y.buffer.size())?;
        let tm = decode_row_tile(m);
        self.check_decode_workgroup(tm)?;
        let (per_group, group_shift) = decode_groups(w.granularity);
        let row_blocks = m.div_ceil(tm as usize);
        let pipeline = self.pipeline(entry::GEMM_DECODE, shaders::GEMM_DECODE.name, Some(tm))?;
        let dummy_bias = self.no_bias_placeholder()?;
        let bias = w.bias.as_ref().unwrap_or(&dummy_bias);
        let mut dispatches = Vec::new();
        let mut keep = Vec::new();
        for ch in &w.chunks {
            let n_tiles = ch.nc.div_ceil(shaders::DECODE_COLS);
            let params = self.uniform(&DecodeParams {
                m: m as u32,
                n_chunk: ch.nc as u32,
                n_offset: ch.n0 as u32,
                kb_total: (kp / BLOCK_K) as u32,
                n_tiles: n_tiles as u32,
                row_blocks: row_blocks as u32,
                per_group,
                group_shift,
                sg_stride: ch.nc.div_ceil(4) as u32,
                x_stride: (kp / 16) as u32,
                y_stride: n.div_ceil(2) as u32,
                has_bias: w.bias.is_some() as u32,
                fence: 0,
                pad: [0; 3],
            })?;
            let bind_group = self.bind(
                pipeline,
                &[
                    params.as_entire_binding(),
                    ch.qweight.as_entire_binding(),
                    ch.group_scales.as_entire_binding(),
                    x.values.as_entire_binding(),
                    x.scales.as_entire_binding(),
                    w.channel_scales.as_entire_binding(),
                    bias.as_entire_binding(),
                    y.buffer.as_entire_binding(),
                ],
            );
            dispatches.push(Dispatch {
                pipeline: pipeline.pipeline.clone(),
                bind_group,
                groups: self.grid("decode GEMM workgroups", n_tiles * row_blocks)?,
            });
            keep.push(params);
        }
        keep.push(dummy_bias);
        Ok((dispatches, keep))
    }

    /// The decode kernel's workgroup memory at `tm` rows against the device's limit (under
    /// [`WgpuOptions::max_workgroup_storage_bytes`]); its 256 invocations are checked when the
    /// backend is made.
    pub(crate) fn check_decode_workgroup(&self, tm: u32) -> Result<()> {
        let bytes = shaders::decode_workgroup_bytes(tm);
        let limit = self.max_workgroup_bytes;
        if bytes > limit {
            return Err(Error::OverDeviceLimit {
                what: "decode GEMM workgroup memory (partial sums)",
                requested: bytes,
                limit,
                limit_name: "max_compute_workgroup_storage_size",
            });
        }
        Ok(())
    }

    /// The plan of [`WgpuBackend::decode_dispatches`] at M rows over these weight chunks: one
    /// dispatch per chunk, the grid and workgroup memory exactly as it launches them.
    pub(crate) fn decode_plan(&self, m: usize, chunks: &[(usize, usize)]) -> Result<KernelPlan> {
        let tm = decode_row_tile(m);
        self.check_decode_workgroup(tm)?;
        let tiles: usize = chunks.iter().map(|&(_, nc)| nc.div_ceil(shaders::DECODE_COLS)).sum();
        Ok(KernelPlan::new([entry::GEMM_DECODE])
            .with("dispatches", chunks.len())
            .with("rows", tm)
            .with("columns per workgroup", shaders::DECODE_COLS)
            .with("k slices per workgroup", shaders::DECODE_SLICES)
            .with("16-byte weight loads in flight per invocation", shaders::DECODE_UNROLL)
            .with("workgroups", tiles * m.div_ceil(tm as usize))
            .with("workgroup memory bytes", shaders::decode_workgroup_bytes(tm)))
    }
}
