//! Shader modules and pipelines (all created at start-up), bind groups, and recording dispatches.

use std::collections::HashMap;

use w4a8_core::{Error, Result};

use crate::WgpuBackend;
use crate::device::unavailable;
use crate::shaders::{self, ShaderModuleSpec, entry};

/// Shader modules whose every index is in bounds by construction, reviewed source by source: (module
/// name, FNV-1a 64 hash of [`ShaderModuleSpec::source`] as reviewed). On native targets these are
/// compiled with [`wgpu::ShaderRuntimeChecks::unchecked`] and without zero-initialised workgroup
/// memory; any edit to a module (or to the files every module appends) changes its hash, and the
/// module is compiled with wgpu's checks again until someone re-reads it and updates the hash here.
/// The review, per module, is written beside the table entry. Modules not listed (the quantizers,
/// the tiled and f16 GEMMs) keep wgpu's checks until reviewed the same way.
pub(crate) const TRUSTED_SHADERS: &[(&str, u64)] = &[
    // w4a8_gemm_decode (the M ≤ 16 hot path), with common/softfloat/epilogue_exact appended.
    // Host-validated: the handles' shapes agree (check_gemm_args), every buffer is sized by its
    // constructor (qweight kb_total·n_chunk vec4, xq M·Kp/16 vec4, x_scales M, channel_scales and
    // bias N, y M·Np/2 words), n_chunk ≥ 1, M ≥ 1, TM ∈ DECODE_ROW_TILES (OVERRIDE_VARIANTS).
    // - qweight[kb·n_chunk + col]: col = min(.., n_chunk − 1); whole rounds stop at kb_full ≤
    //   kb_total with the furthest load kb + 48 < kb_full; the tail loads are each guarded by
    //   `< kb_total`.
    // - group_scales[(kb >> group_shift)·sg_stride + col/4]: read only when per_group = 1, where
    //   g | K and 32 | g make kb_total = K/32 and (kb >> shift) < K/g groups.
    // - xq[(row0 + min(r, rows − 1))·x_stride + 2kb + 1]: lin < n_tiles·row_blocks gives
    //   row0 < M, so rows = min(TM, M − row0) ≥ 1 and the row is < M; 2kb + 1 < Kp/16 = x_stride.
    // - x_scales[row], channel_scales[n_offset + n], bias[..] (only when has_bias = 1), y[..]: the
    //   epilogue writes only r < rows and n < n_chunk.
    // - red[(r·8 + s)·16 + c] < TM·128 = RED_WORDS for r < TM, s < 16 − 8, c < 16; total[r] with
    //   r < TM ≤ 16 = MAX_TM. Every red slot is written before the barrier that precedes its read
    //   (tree phases, then slices 0 and 1 for every r < TM before the epilogue), so it needs no
    //   zero-initialisation.
    // - Divisors: n_tiles ≥ 1 and constants; the only runtime divisor of the appended files
    //   (sf_div's significand, ≥ 2^23) is not on this entry's call graph. Loops: bounded by
    //   kb_total ≤ 2048, TM and constants.
    ("w4a8_gemm_decode", 0x4b4d_c5c5_28d3_5923),
];

/// FNV-1a, 64-bit: the fingerprint of a reviewed shader source.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether `spec` is compiled without runtime checks: native targets only (WebGPU always checks),
/// and only a module listed in [`TRUSTED_SHADERS`] with the hash of its current source.
pub(crate) fn runtime_checks_dropped(spec: &ShaderModuleSpec) -> bool {
    !cfg!(target_arch = "wasm32")
        && TRUSTED_SHADERS
            .iter()
            .any(|&(name, hash)| name == spec.name && hash == fnv1a64(spec.source().as_bytes()))
}

/// The overridable constants the backend specialises entry points on: (entry point, override,
/// values). [`WgpuBackend::from_device`] creates one pipeline per value; asking for another is an
/// error, not a lazy compile.
pub(crate) const OVERRIDE_VARIANTS: &[(&str, &str, &[u32])] = &[
    (entry::GEMM_DECODE, "TM", &shaders::DECODE_ROW_TILES),
    (entry::QUANTIZE_HADAMARD, "HCHUNK", &shaders::HADAMARD_CHUNKS),
];

/// A pipeline and its bind-group layout (the shader's "function signature"), fetched once.
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// (entry point, override value or 0) → the pipeline, or why the device refused it. Built in
/// [`WgpuBackend::from_device`], read-only afterwards.
pub(crate) type PipelineTable = HashMap<(&'static str, u32), std::result::Result<Pipeline, String>>;

/// One compute dispatch, ready to record.
pub(crate) struct Dispatch {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) groups: (u32, u32),
}

impl WgpuBackend {
    /// Compiles one module. wgpu validates it with naga either way; a module whose indexing has
    /// been reviewed (see [`TRUSTED_SHADERS`]) is compiled without wgpu's runtime checks on native
    /// targets, every other one with them.
    pub(crate) fn compile(&self, spec: &ShaderModuleSpec) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(spec.name),
            source: wgpu::ShaderSource::Wgsl(spec.source().into()),
        };
        if runtime_checks_dropped(spec) {
            // SAFETY: `runtime_checks_dropped` holds only for a module whose source is, byte for
            // byte, one reviewed in `TRUSTED_SHADERS`: every storage, uniform and workgroup index
            // in it is in bounds by construction for the parameters the host validates before
            // recording, no integer division or remainder has a zero (or i32::MIN / -1) operand,
            // every loop is bounded by uniform values, and no workgroup memory is read before it is
            // written. Those are the checks `ShaderRuntimeChecks::unchecked()` drops.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        } else {
            self.device.create_shader_module(desc)
        }
    }

    /// Every pipeline the backend can dispatch: each entry point of each compiled module, and one
    /// per value of each override in [`OVERRIDE_VARIANTS`]. A pipeline the device refuses (a
    /// variant over its workgroup-memory limit) is recorded with wgpu's reason and reported when
    /// asked for; the dispatch paths check those limits first, so it never is on a sound call.
    pub(crate) fn create_pipelines(&self) -> Result<PipelineTable> {
        let mut table = PipelineTable::new();
        for spec in shaders::MODULES {
            let Some(module) = self.modules.get(spec.name) else { continue };
            for &entry_point in spec.entry_points {
                let variants: Vec<Option<(&'static str, u32)>> =
                    match OVERRIDE_VARIANTS.iter().find(|(e, _, _)| *e == entry_point) {
                        Some(&(_, name, values)) => values.iter().map(|&v| Some((name, v))).collect(),
                        None => vec![None],
                    };
                for variant in variants {
                    let constants: Vec<(&str, f64)> =
                        variant.map(|(name, v)| vec![(name, v as f64)]).unwrap_or_default();
                    let created = self.scoped(|| {
                        let pipeline =
                            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                                label: Some(entry_point),
                                layout: None,
                                module,
                                entry_point: Some(entry_point),
                                compilation_options: wgpu::PipelineCompilationOptions {
                                    constants: &constants,
                                    // Reviewed modules read no workgroup memory before writing it.
                                    zero_initialize_workgroup_memory: !runtime_checks_dropped(&spec),
                                },
                                cache: None,
                            });
                        let layout = pipeline.get_bind_group_layout(0);
                        Ok(Pipeline { pipeline, layout })
                    });
                    let created = match created {
                        Ok(p) => Ok(p),
                        Err(e @ Error::DeviceLost { .. }) => return Err(e),
                        Err(e) => Err(e.to_string()),
                    };
                    table.insert((entry_point, variant.map_or(0, |(_, v)| v)), created);
                }
            }
        }
        Ok(table)
    }

    /// The pipeline of `entry` (in `module`) with override value `tm` (the entry's override in
    /// [`OVERRIDE_VARIANTS`]), from the table built at start-up: a lock-free map lookup. One that
    /// was not built — an entry or value missing from the tables, or refused by the device — is
    /// [`Error::Unavailable`] with the reason.
    pub(crate) fn pipeline(
        &self,
        entry: &'static str,
        module: &'static str,
        tm: Option<u32>,
    ) -> Result<&Pipeline> {
        match self.pipelines.get(&(entry, tm.unwrap_or(0))) {
            Some(Ok(p)) => Ok(p),
            Some(Err(reason)) => Err(unavailable(format!(
                "pipeline {entry} (module {module}, override {tm:?}) was refused by the device: {reason}"
            ))),
            None => Err(unavailable(format!(
                "pipeline {entry} (module {module}, override {tm:?}) was not created at start-up: \
                 the entry point must be listed in shaders::MODULES and its override values in \
                 OVERRIDE_VARIANTS"
            ))),
        }
    }

    /// Folds `total` workgroups into a (x, y) grid under `max_compute_workgroups_per_dimension`.
    pub(crate) fn grid(&self, what: &'static str, total: usize) -> Result<(u32, u32)> {
        let lim = self.max_groups as usize;
        let y = total.div_ceil(lim).max(1);
        if y > lim {
            return Err(Error::OverDeviceLimit {
                what,
                requested: total as u64,
                limit: (lim * lim) as u64,
                limit_name: "max_compute_workgroups_per_dimension²",
            });
        }
        Ok((total.min(lim).max(1) as u32, y as u32))
    }

    pub(crate) fn bind(&self, pipeline: &Pipeline, entries: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        let entries: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        // The layout fetched once, when the pipeline was made.
        let layout = &pipeline.layout;
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
    }

    /// Records `dispatches` into one compute pass (with begin/end timestamps when `timer` is
    /// given) and submits.
    pub(crate) fn submit(
        &self,
        dispatches: &[Dispatch],
        timer: Option<&wgpu::QuerySet>,
    ) -> wgpu::SubmissionIndex {
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("w4a8") });
        {
            let timestamp_writes = timer.map(|query_set| wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("w4a8"), timestamp_writes });
            for d in dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
            }
        }
        self.queue.submit([encoder.finish()])
    }
}
