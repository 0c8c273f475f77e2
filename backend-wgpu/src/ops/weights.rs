//! Weights: repacking into the shaders' layout, upload in binding-sized column chunks, readback.

use w4a8_core::gemm::check_owner;
use w4a8_core::{Error, Result, W4A8Weights};

use crate::WgpuBackend;
use crate::layout::{self, BLOCK_K, PackedChunk};
use crate::tensors::{WeightChunk, WgpuWeights};

impl WgpuBackend {
    /// Weight columns per chunk: as many as one storage binding holds (`prepare` splits N by it).
    pub(crate) fn weight_chunk_columns(&self, k: usize) -> Result<usize> {
        let bytes_per_col = (layout::padded_k(k) / 2) as u64;
        let max_cols = (self.max_binding.min(self.limits.max_buffer_size) / bytes_per_col) as usize;
        if max_cols < layout::CHUNK_ALIGN_N {
            return Err(Error::OverDeviceLimit {
                what: "64 weight columns (one binding)",
                requested: bytes_per_col * layout::CHUNK_ALIGN_N as u64,
                limit: self.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(max_cols)
    }

    pub(crate) fn upload_weight_chunk(&self, chunk: &PackedChunk) -> Result<WeightChunk> {
        Ok(WeightChunk {
            n0: chunk.n0,
            nc: chunk.nc,
            qweight: self.storage_init(
                "w4a8 qweight",
                bytemuck::cast_slice(&chunk.qweight),
                wgpu::BufferUsages::empty(),
            )?,
            group_scales: self.storage_init(
                "w4a8 group scales",
                bytemuck::cast_slice(&chunk.group_scales),
                wgpu::BufferUsages::empty(),
            )?,
        })
    }
}

impl WgpuBackend {
    /// [`Gemm::prepare`]: repacks into the shaders' layout and uploads, one binding-sized column chunk at a time.
    pub(crate) fn prepare_weights(&self, weights: &W4A8Weights) -> Result<WgpuWeights> {
        let (n, k) = (weights.n(), weights.k());
        let max_cols = self.weight_chunk_columns(k)?;
        self.scoped(|| {
            let chunks = layout::chunk_ranges(n, max_cols)
                .into_iter()
                .map(|(n0, nc)| self.upload_weight_chunk(&layout::pack_chunk(weights, n0, nc)))
                .collect::<Result<Vec<_>>>()?;
            let channel_scales = self.storage_init(
                "w4a8 channel scales",
                bytemuck::cast_slice(weights.channel_scales()),
                wgpu::BufferUsages::empty(),
            )?;
            let bias = weights
                .bias()
                .map(|b| self.storage_init("w4a8 bias", bytemuck::cast_slice(b), wgpu::BufferUsages::empty()))
                .transpose()?;
            Ok(WgpuWeights {
                device_id: self.info.id,
                n,
                k,
                granularity: weights.granularity(),
                chunks,
                channel_scales,
                bias,
            })
        })
    }

    /// [`Gemm::read_weights`]: reads the chunks back and inverts the repacking.
    pub(crate) fn read_back_weights(&self, w: &WgpuWeights) -> Result<W4A8Weights> {
        check_owner("weights", w, self.info.id)?;
        let groups = w.granularity.groups(w.k);
        let mut chunks = Vec::with_capacity(w.chunks.len());
        for ch in &w.chunks {
            let qweight: Vec<u32> =
                bytemuck::pod_collect_to_vec(&self.read_bytes(&ch.qweight, ch.qweight.size())?);
            let group_scales: Vec<u32> =
                bytemuck::pod_collect_to_vec(&self.read_bytes(&ch.group_scales, ch.group_scales.size())?);
            let words = layout::padded_k(w.k) / BLOCK_K * ch.nc * 4;
            let sg_words = groups * ch.nc.div_ceil(4);
            chunks.push(PackedChunk {
                n0: ch.n0,
                nc: ch.nc,
                qweight: qweight[..words].to_vec(),
                group_scales: group_scales[..sg_words].to_vec(),
            });
        }
        let cs: Vec<f32> =
            bytemuck::pod_collect_to_vec(&self.read_bytes(&w.channel_scales, (w.n * 4) as u64)?);
        let bias = match &w.bias {
            Some(b) => Some(
                bytemuck::pod_collect_to_vec::<u8, f32>(&self.read_bytes(b, (w.n * 4) as u64)?)[..w.n]
                    .to_vec(),
            ),
            None => None,
        };
        layout::unpack_chunks(w.n, w.k, w.granularity, &chunks, cs[..w.n].to_vec(), bias)
    }
}
