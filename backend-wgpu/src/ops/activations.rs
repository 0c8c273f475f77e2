//! Activations: per-token quantization on the device, upload of host-quantized ones, readback.

use half::f16;
use w4a8_core::gemm::{check_owner, check_transform_args};
use w4a8_core::transform::first_transform_error;
use w4a8_core::{ActivationTransform, Error, QuantizedActivations, Result};

use crate::WgpuBackend;
use crate::buffers::{bytes_of_dims, host_vec};
use crate::layout;
use crate::pipelines::Dispatch;
use crate::shaders::{self, entry};
use crate::tensors::WgpuActivations;

/// The uniform block of `quantize_activations.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct QuantParams {
    pub(crate) m: u32,
    pub(crate) k: u32,
    pub(crate) x_stride: u32,
    pub(crate) has_smooth: u32,
    /// Always 0: the shaders' opaque zero against fast-math folding (quantize_exact.wgsl).
    pub(crate) fence: u32,
    /// The Hadamard block b (`quantize_hadamard.wgsl`); 0 without rotation.
    pub(crate) block: u32,
    pub(crate) pad: [u32; 2],
}

/// Workgroup sizes and tiles of the shaders (see the .wgsl files).
pub(crate) const QUANT_WG_ROWS: usize = 1;

impl WgpuBackend {
    /// [`Gemm::quantize_activations_with`]: one workgroup per row, exact as the oracle (see
    /// `quantize_exact.wgsl`, and `quantize_hadamard.wgsl` for the fused rotation).
    pub(crate) fn quantize_on_device(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<WgpuActivations> {
        check_transform_args(x.len(), m, k, t)?;
        // Every non-finite x' (and any y a rotation would take to infinity) is found here, on the
        // values the kernel computes, with the oracle's error: the kernels never see one.
        if let Some(e) = first_transform_error(x, m, k, t) {
            return Err(e);
        }
        let kp = layout::padded_k(k);
        self.check_binding("f16 activations (M·K·2 bytes)", bytes_of_dims(m, k, 2))?;
        self.check_binding("int8 activations (M·Kp bytes)", bytes_of_dims(m, kp, 1))?;
        let (entry_point, module, chunk) = match t.hadamard_block {
            Some(b) => {
                (entry::QUANTIZE_HADAMARD, shaders::QUANTIZE_HADAMARD.name, Some(self.hadamard_chunk(b)?))
            }
            None if self.subgroups => (entry::QUANTIZE_SUBGROUP, shaders::QUANTIZE_SUBGROUP.name, None),
            None => (entry::QUANTIZE, shaders::QUANTIZE_SHARED.name, None),
        };
        let smooth = t.smooth;
        // A per-token call, so on the hot path like the GEMM: no error scope and no poll around it
        // (see `unscoped`). Every binding is checked above or bounded by those checks (scales M·4 ≤
        // M·Kp bytes, smoothing K·4 ≤ 256 KiB); each buffer still gets its own out-of-memory scope
        // in `create_buffer`, so a refused allocation stays `Error::OutOfMemory`.
        self.unscoped(|| {
            let input = self.storage_init(
                "w4a8 f16 activations",
                bytemuck::cast_slice(x),
                wgpu::BufferUsages::empty(),
            )?;
            let smooth_buf = self.storage_init(
                "w4a8 smoothing",
                bytemuck::cast_slice(smooth.unwrap_or(&[1.0])),
                wgpu::BufferUsages::empty(),
            )?;
            let values = self.storage_empty("w4a8 int8 activations", bytes_of_dims(m, kp, 1))?;
            let scales = self.storage_empty("w4a8 activation scales", (m * 4) as u64)?;
            let pipeline = self.pipeline(entry_point, module, chunk)?;
            let params = self.uniform(&QuantParams {
                m: m as u32,
                k: k as u32,
                x_stride: (kp / 4) as u32,
                has_smooth: smooth.is_some() as u32,
                fence: 0,
                block: t.hadamard_block.unwrap_or(0) as u32,
                pad: [0; 2],
            })?;
            let bind_group = self.bind(
                pipeline,
                &[
                    params.as_entire_binding(),
                    input.as_entire_binding(),
                    smooth_buf.as_entire_binding(),
                    values.as_entire_binding(),
                    scales.as_entire_binding(),
                ],
            );
            let groups = self.grid("quantizer workgroups (one per row)", m.div_ceil(QUANT_WG_ROWS))?;
            self.submit(&[Dispatch { pipeline: pipeline.pipeline.clone(), bind_group, groups }], None);
            Ok(WgpuActivations { device_id: self.info.id, m, k, values, scales })
        })
    }

    /// The rotated quantizer's chunk (its `HCHUNK` pipeline) for block `b`: the largest of
    /// [`shaders::HADAMARD_CHUNKS`] whose workgroup memory the device has. A block larger than that
    /// chunk cannot be held in workgroup memory: [`Error::OverDeviceLimit`].
    pub(crate) fn hadamard_chunk(&self, b: usize) -> Result<u32> {
        let fits = |c: &&u32| shaders::hadamard_workgroup_bytes(**c) <= self.max_workgroup_bytes;
        match shaders::HADAMARD_CHUNKS.iter().find(fits) {
            Some(&chunk) if b <= chunk as usize => Ok(chunk),
            _ => Err(Error::OverDeviceLimit {
                what: "Hadamard block in workgroup memory (4 bytes per channel)",
                requested: shaders::hadamard_workgroup_bytes(b as u32),
                limit: self.max_workgroup_bytes,
                limit_name: "max_compute_workgroup_storage_size",
            }),
        }
    }

    /// [`Gemm::upload_activations`]: rows padded to Kp with zeros.
    pub(crate) fn upload_quantized(&self, x: &QuantizedActivations) -> Result<WgpuActivations> {
        let (m, k) = (x.m(), x.k());
        let kp = layout::padded_k(k);
        self.check_buffer("int8 activations (M·Kp bytes)", bytes_of_dims(m, kp, 1))?;
        let mut padded = host_vec("padded int8 activations", bytes_of_dims(m, kp, 1), 0i8)?;
        for (dst, src) in padded.chunks_mut(kp).zip(x.values().chunks(k)) {
            dst[..k].copy_from_slice(src);
        }
        self.scoped(|| {
            let values = self.storage_init(
                "w4a8 int8 activations",
                bytemuck::cast_slice(&padded),
                wgpu::BufferUsages::empty(),
            )?;
            let scales = self.storage_init(
                "w4a8 activation scales",
                bytemuck::cast_slice(x.scales()),
                wgpu::BufferUsages::empty(),
            )?;
            Ok(WgpuActivations { device_id: self.info.id, m, k, values, scales })
        })
    }

    /// [`Gemm::read_activations`].
    pub(crate) fn read_back_activations(&self, x: &WgpuActivations) -> Result<QuantizedActivations> {
        check_owner("activations", x, self.info.id)?;
        let kp = layout::padded_k(x.k);
        let bytes = self.read_bytes(&x.values, (x.m * kp) as u64)?;
        let values: Vec<i8> =
            bytes.chunks(kp).take(x.m).flat_map(|row| row[..x.k].iter().map(|&b| b as i8)).collect();
        let scales: Vec<f32> = bytemuck::pod_collect_to_vec(&self.read_bytes(&x.scales, (x.m * 4) as u64)?);
        QuantizedActivations::new(x.m, x.k, values, scales[..x.m].to_vec())
    }
}
