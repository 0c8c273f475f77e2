//! The wgpu device, its pipelines, the handles and the `Gemm` implementation.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use half::f16;
use w4a8_core::gemm::{check_activation_args, check_gemm_args, check_owner, check_plan_args, next_device_id};
use w4a8_core::{
    BackendKind, DeviceInfo, DeviceTensor, Error, Gemm, Granularity, KernelPlan, QuantizedActivations,
    Result, W4A8Weights,
};

use crate::layout::{self, BLOCK_K, PackedChunk};
use crate::shaders::{self, ShaderModuleSpec, entry};

const BACKEND: BackendKind = BackendKind::Wgpu;

/// How a [`WgpuBackend`] is set up.
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Use the subgroup kernels when the adapter has `Features::SUBGROUP` (default true); false
    /// forces the portable workgroup-memory paths.
    pub use_subgroups: bool,
    /// Caps the storage-binding size the backend plans with, below the device's own
    /// `max_storage_buffer_binding_size` (None: the device limit). Lets tests exercise weight
    /// splitting and the over-limit errors on small shapes.
    pub max_binding_bytes: Option<u64>,
    /// Caps `max_compute_workgroups_per_dimension` the same way (None: the device limit), so that
    /// tests reach the 2-D folding of large dispatches on small shapes.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Caps `max_compute_workgroup_storage_size` the same way (None: the device limit), so that
    /// tests reach the tiled GEMMs' 64×64 size (16 KiB, WebGPU's default) and their refusal below it
    /// on a device that has more.
    pub max_workgroup_storage_bytes: Option<u32>,
    /// The most device memory, in bytes, the backend may hold in live buffers at once (None: no
    /// budget beyond the driver's own). An allocation that would go past it is refused with
    /// [`Error::OutOfMemory`] before it reaches the driver; see [`WgpuBackend::device_bytes`].
    /// Lets a server share a device with other work, and tests reach out-of-memory on any device.
    pub max_device_bytes: Option<u64>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            use_subgroups: true,
            max_binding_bytes: None,
            max_workgroups_per_dimension: None,
            max_workgroup_storage_bytes: None,
            max_device_bytes: None,
        }
    }
}

/// Which W4A8 GEMM kernel [`WgpuBackend::gemm_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// Decode kernel for M ≤ 16, tiled kernel above.
    Auto,
    /// The one-dispatch decode kernel (rows in blocks of 16 when M > 16, each block re-reading
    /// the weights).
    Decode,
    /// The tiled kernel (128×128 tiles, 64×64 where the device has only 16 KiB of workgroup memory).
    Tiled,
}

/// How [`WgpuBackend::time_gemm`] and friends measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// GPU timestamps written at the start and end of the compute pass (`TIMESTAMP_QUERY`).
    DeviceTimestamps,
    /// Host clock around submit + wait (the adapter has no timestamp queries).
    Host,
}

/// A buffer this backend created, counted in [`WgpuBackend::device_bytes`] from creation until its
/// handle is dropped (wgpu itself may keep the memory a little longer, until the GPU is done with it).
pub(crate) struct DeviceBuffer {
    buffer: wgpu::Buffer,
    /// The backend's count of live bytes, shared by every buffer it made; `None` for a handle on
    /// one of the backend's own cached buffers (uniform blocks, the no-bias placeholder), which
    /// are not counted (see [`WgpuBackend::device_bytes`]).
    live: Option<Arc<AtomicU64>>,
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
    device_id: u64,
    n: usize,
    k: usize,
    granularity: Granularity,
    chunks: Vec<WeightChunk>,
    channel_scales: DeviceBuffer,
    bias: Option<DeviceBuffer>,
}

struct WeightChunk {
    n0: usize,
    nc: usize,
    qweight: DeviceBuffer,
    /// Packed u8 group scales, or a 4-byte placeholder per channel.
    group_scales: DeviceBuffer,
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
    device_id: u64,
    m: usize,
    k: usize,
    values: DeviceBuffer,
    scales: DeviceBuffer,
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
    device_id: u64,
    m: usize,
    n: usize,
    buffer: DeviceBuffer,
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
    device_id: u64,
    rows: usize,
    cols: usize,
    buffer: DeviceBuffer,
}

impl DeviceTensor for F16Matrix {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

// Uniform blocks, field for field the structs of the same name in the shaders.

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantParams {
    m: u32,
    k: u32,
    x_stride: u32,
    has_smooth: u32,
    /// Always 0: the shaders' opaque zero against fast-math folding (quantize_exact.wgsl).
    fence: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DecodeParams {
    m: u32,
    n_chunk: u32,
    n_offset: u32,
    kb_total: u32,
    n_tiles: u32,
    row_blocks: u32,
    per_group: u32,
    group_shift: u32,
    sg_stride: u32,
    x_stride: u32,
    y_stride: u32,
    has_bias: u32,
    /// Always 0: the shader's opaque zero against fusing/reassociating the epilogue's float ops.
    fence: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TiledParams {
    m: u32,
    n_chunk: u32,
    n_offset: u32,
    kb_total: u32,
    n_tiles: u32,
    tiles: u32,
    group_blocks: u32,
    sg_stride: u32,
    x_stride: u32,
    y_stride: u32,
    has_bias: u32,
    /// Always 0: the shader's opaque zero against fusing/reassociating the epilogue's float ops.
    fence: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct F16Params {
    m: u32,
    n: u32,
    steps: u32,
    x_stride: u32,
    n_tiles: u32,
    tiles: u32,
    y_stride: u32,
    pad: u32,
}

/// Workgroup sizes and tiles of the shaders (see the .wgsl files).
const QUANT_WG_ROWS: usize = 1;
/// Rows of an [`F16Matrix`] are padded to a multiple of this many f16 (16 bytes: the f16 GEMM loads
/// vec4<u32>).
const F16_ROW_ALIGN: usize = 8;
/// Rows per tiled-GEMM dispatch are a multiple of this, so that binding offsets of activation
/// rows (Kp bytes, Kp multiple of 32), scales (4 bytes) and output rows (even f16 count) stay
/// multiples of 256 bytes, the largest `min_storage_buffer_offset_alignment` WebGPU allows.
const ROW_CHUNK_ALIGN: usize = 128;
/// How long [`WgpuBackend::loss_or`] waits for a destroyed device's loss to be reported.
#[cfg(not(target_arch = "wasm32"))]
const LOSS_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a readback waits for its mapping callback after the device has finished its work.
#[cfg(not(target_arch = "wasm32"))]
const READBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The decode kernel's rows per workgroup (its `TM` override) for `m` rows: the smallest tile ≥ m,
/// 16 (in row blocks) past that.
fn decode_row_tile(m: usize) -> u32 {
    let max = shaders::DECODE_ROW_TILES[shaders::DECODE_ROW_TILES.len() - 1];
    *shaders::DECODE_ROW_TILES.iter().find(|&&t| t as usize >= m).unwrap_or(&max)
}

/// The decode kernel's (per_group, group_shift): block kb is in group `kb >> group_shift`, which
/// needs g / 32 to be a power of two (every supported g is: 32, 64, 128, 256).
fn decode_groups(granularity: Granularity) -> Result<(u32, u32)> {
    match granularity.group_size() {
        None => Ok((0, 0)),
        Some(g) if g % BLOCK_K == 0 && (g / BLOCK_K).is_power_of_two() => {
            Ok((1, (g / BLOCK_K).trailing_zeros()))
        }
        Some(group_size) => Err(Error::UnsupportedGroupSize { group_size }),
    }
}

/// Shader modules whose every index is in bounds by construction, reviewed source by source: (module
/// name, FNV-1a 64 hash of [`ShaderModuleSpec::source`] as reviewed). On native targets these are
/// compiled with [`wgpu::ShaderRuntimeChecks::unchecked`] and without zero-initialised workgroup
/// memory; any edit to a module (or to the files every module appends) changes its hash, and the
/// module is compiled with wgpu's checks again until someone re-reads it and updates the hash here.
/// The review, per module, is written beside the table entry. Modules not listed (the quantizers,
/// the tiled and f16 GEMMs) keep wgpu's checks until reviewed the same way.
const TRUSTED_SHADERS: &[(&str, u64)] = &[
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
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether `spec` is compiled without runtime checks: native targets only (WebGPU always checks),
/// and only a module listed in [`TRUSTED_SHADERS`] with the hash of its current source.
fn runtime_checks_dropped(spec: &ShaderModuleSpec) -> bool {
    !cfg!(target_arch = "wasm32")
        && TRUSTED_SHADERS
            .iter()
            .any(|&(name, hash)| name == spec.name && hash == fnv1a64(spec.source().as_bytes()))
}

/// At most this many distinct uniform blocks stay cached (a few dozen bytes each, one small buffer).
const UNIFORM_CACHE_ENTRIES: usize = 1024;

/// The overridable constants the backend specialises entry points on: (entry point, override,
/// values). [`WgpuBackend::from_device`] creates one pipeline per value; asking for another is an
/// error, not a lazy compile.
const OVERRIDE_VARIANTS: &[(&str, &str, &[u32])] = &[(entry::GEMM_DECODE, "TM", &shaders::DECODE_ROW_TILES)];

/// A pipeline and its bind-group layout (the shader's "function signature"), fetched once.
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// (entry point, override value or 0) → the pipeline, or why the device refused it. Built in
/// [`WgpuBackend::from_device`], read-only afterwards.
type PipelineTable = HashMap<(&'static str, u32), std::result::Result<Pipeline, String>>;

/// What wgpu's callbacks report about the device, readable without a lock.
#[derive(Default)]
struct Health {
    /// Set once the device-lost callback has run (after `reason` is written).
    lost: AtomicBool,
    /// The loss reason.
    reason: Mutex<Option<String>>,
    /// Errors that reached the uncaptured-error handler (raised outside every error scope).
    uncaptured: AtomicU64,
    /// The latest of them.
    last_uncaptured: Mutex<Option<String>>,
}

/// One compute dispatch, ready to record.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The wgpu backend: one adapter, its device and queue, compiled shader modules and a pipeline cache.
///
/// # Threads
///
/// On native targets `WgpuBackend` is `Send + Sync` and may be shared by any number of threads:
/// wgpu's device and queue are themselves `Send + Sync` (wgpu serializes access internally); the
/// pipeline table is built before the backend exists and only read afterwards; the device-health
/// flags and the live-byte count are atomics; the buffers calls share are never written after
/// creation (uniform blocks, cached by content and written once; the no-bias placeholder) or are
/// each call's own (outputs, readback staging); and wgpu's error scopes are per thread, so the
/// calls that use them capture their own errors (the GEMM hot path uses none: see
/// [`WgpuBackend::unscoped`]). The handles ([`WgpuWeights`], [`WgpuActivations`], [`WgpuOutput`], [`F16Matrix`])
/// are `Send + Sync` too. On wasm32 wgpu's types are neither, and neither is this backend (the
/// browser's device belongs to one thread).
pub struct WgpuBackend {
    info: DeviceInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    max_binding: u64,
    max_groups: u32,
    /// `max_compute_workgroup_storage_size`, under [`WgpuOptions::max_workgroup_storage_bytes`].
    max_workgroup_bytes: u64,
    subgroups: bool,
    timestamps: bool,
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    /// Every pipeline the backend dispatches, created in [`WgpuBackend::from_device`] and read
    /// without a lock (see [`WgpuBackend::pipeline`]).
    pipelines: PipelineTable,
    /// What wgpu's callbacks said about the device: loss and errors outside every error scope.
    health: Arc<Health>,
    /// Uniform blocks by content, each written once (see [`WgpuBackend::uniform`]).
    uniforms: RwLock<HashMap<Box<[u8]>, wgpu::Buffer>>,
    /// Four zero bytes, bound as `bias` when the weights have none (read-only, shared by every call).
    no_bias: wgpu::Buffer,
    /// Bytes in the live buffers this backend created (see [`DeviceBuffer`]).
    live_bytes: Arc<AtomicU64>,
    /// [`WgpuOptions::max_device_bytes`].
    budget: Option<u64>,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BACKEND, reason: reason.into() }
}

fn backend_error(message: impl Into<String>) -> Error {
    Error::Backend { backend: BACKEND, message: message.into() }
}

/// Runs a future to completion: with pollster on native targets; on wasm a future that is not
/// ready at once (the browser resolves it on its event loop) is an error, since this API is
/// synchronous.
#[cfg(not(target_arch = "wasm32"))]
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    Ok(pollster::block_on(f))
}

#[cfg(target_arch = "wasm32")]
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => {
            Err(unavailable("the synchronous w4a8 API cannot wait for the browser's event loop on wasm32"))
        }
    }
}

/// Adapter preference: real GPUs first, then virtual, then CPU; among equals a native API (Vulkan,
/// Metal, DX12) before GL, whose llvmpipe twin of lavapipe lacks what we need.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 | wgpu::Backend::BrowserWebGpu => {
            0
        }
        _ => 1,
    };
    (kind, api)
}

impl WgpuBackend {
    /// Discovers the best adapter (see [`WgpuBackend::new_with`]) with default options.
    pub fn new() -> Result<WgpuBackend> {
        Self::new_with(WgpuOptions::default())
    }

    /// Discovers the best adapter: discrete, then integrated GPUs, then virtual and CPU adapters;
    /// native APIs before GL. Returns [`Error::Unavailable`] with the reason when there is none, or
    /// none that runs compute shaders with the `packed_4x8_integer_dot_product` WGSL extension.
    pub fn new_with(options: WgpuOptions) -> Result<WgpuBackend> {
        // Native APIs (Vulkan, Metal, DX12, WebGPU) first; GL only when they find nothing, so a
        // machine with lavapipe never initialises EGL for its llvmpipe GL twin.
        let mut found = None;
        for backends in [wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY] {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = backends;
            let instance = wgpu::Instance::new(desc);
            let adapters = block_on(instance.enumerate_adapters(backends))?;
            if !adapters.is_empty() {
                found = Some((instance, adapters));
                break;
            }
        }
        let Some((instance, mut adapters)) = found else {
            return Err(unavailable(
                "no wgpu adapter found (no Vulkan/Metal/DX12/GL driver; on Linux without a GPU install \
                 mesa-vulkan-drivers for lavapipe)",
            ));
        };
        if !instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
        {
            return Err(unavailable(
                "this wgpu instance lacks the WGSL language extension packed_4x8_integer_dot_product",
            ));
        }
        let mut rejected = Vec::new();
        adapters.retain(|a| {
            let ok = a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
            if !ok {
                rejected.push(format!(
                    "{} ({:?}): no compute shaders",
                    a.get_info().name,
                    a.get_info().backend
                ));
            }
            ok
        });
        adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
        let mut last_error = None;
        for adapter in adapters {
            let features = adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
            let desc = wgpu::DeviceDescriptor {
                label: Some("w4a8"),
                required_features: features,
                required_limits: adapter.limits(),
                ..Default::default()
            };
            match block_on(adapter.request_device(&desc))? {
                Ok((device, queue)) => {
                    match Self::from_device(&instance, &adapter, device, queue, options.clone()) {
                        Ok(b) => return Ok(b),
                        Err(e) => last_error = Some(format!("{}: {e}", adapter.get_info().name)),
                    }
                }
                Err(e) => {
                    last_error = Some(format!("{}: request_device failed: {e}", adapter.get_info().name))
                }
            }
        }
        Err(unavailable(match last_error {
            Some(e) => e,
            None => format!("no adapter with compute shaders: {}", rejected.join("; ")),
        }))
    }

    /// Builds the backend on a device the application already has (it must come from `adapter`).
    /// The backend uses the device's features (subgroups and timestamp queries when enabled) and
    /// limits as they are, and installs a device-lost callback and an uncaptured-error handler
    /// (replacing the application's): errors outside error scopes are how the backend's unscoped
    /// GEMM path learns that wgpu refused something (see [`WgpuBackend::unscoped`]).
    pub fn from_device(
        instance: &wgpu::Instance,
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: WgpuOptions,
    ) -> Result<WgpuBackend> {
        if !instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
        {
            return Err(unavailable("the WGSL language extension packed_4x8_integer_dot_product is missing"));
        }
        let ainfo = adapter.get_info();
        let limits = device.limits();
        let features = device.features();
        let subgroups = options.use_subgroups && features.contains(wgpu::Features::SUBGROUP);
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY);
        let max_binding = options.max_binding_bytes.map_or(limits.max_storage_buffer_binding_size, |cap| {
            cap.min(limits.max_storage_buffer_binding_size)
        });
        let max_groups =
            options.max_workgroups_per_dimension.map_or(limits.max_compute_workgroups_per_dimension, |cap| {
                cap.clamp(1, limits.max_compute_workgroups_per_dimension)
            });
        let max_workgroup_bytes =
            options.max_workgroup_storage_bytes.map_or(limits.max_compute_workgroup_storage_size, |cap| {
                cap.min(limits.max_compute_workgroup_storage_size)
            }) as u64;
        if limits.max_compute_invocations_per_workgroup < 256 || limits.max_compute_workgroup_size_x < 256 {
            return Err(unavailable(format!(
                "{}: needs 256 invocations per workgroup, the device allows {}",
                ainfo.name, limits.max_compute_invocations_per_workgroup
            )));
        }
        if limits.max_compute_workgroup_storage_size < 8192 {
            return Err(unavailable(format!(
                "{}: needs 8 KiB of workgroup memory, the device allows {}",
                ainfo.name, limits.max_compute_workgroup_storage_size
            )));
        }
        if limits.max_storage_buffers_per_shader_stage < 7 {
            return Err(unavailable(format!(
                "{}: needs 7 storage buffers per shader stage, the device allows {}",
                ainfo.name, limits.max_storage_buffers_per_shader_stage
            )));
        }

        let health = Arc::new(Health::default());
        {
            let health = health.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut slot) = health.reason.lock() {
                    *slot = Some(if message.is_empty() {
                        format!("{reason:?}")
                    } else {
                        format!("{reason:?}: {message}")
                    });
                }
                health.lost.store(true, Ordering::Release);
            });
        }
        {
            let health = health.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                // Called synchronously by the failing wgpu call, on its thread. The scoped paths
                // capture their own errors, so this only sees what the unscoped GEMM path (or an
                // application sharing the device) raised: record it for `unscoped` to report.
                if let Ok(mut slot) = health.last_uncaptured.lock() {
                    *slot = Some(e.to_string());
                }
                health.uncaptured.fetch_add(1, Ordering::AcqRel);
            }));
        }
        let no_bias = {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("w4a8 no-bias placeholder"),
                size: 4,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if let Some(e) = block_on(scope.pop())? {
                return Err(unavailable(format!("{}: the no-bias placeholder: {e}", ainfo.name)));
            }
            buffer
        };

        let id = next_device_id();
        let details = vec![
            ("adapter".into(), ainfo.name.clone()),
            ("device type".into(), format!("{:?}", ainfo.device_type)),
            ("vendor:device".into(), format!("{:#06x}:{:#06x}", ainfo.vendor, ainfo.device)),
            ("backend API".into(), format!("{:?}", ainfo.backend)),
            ("driver".into(), format!("{} ({})", ainfo.driver, ainfo.driver_info)),
            ("subgroup sizes".into(), format!("{}..{}", ainfo.subgroup_min_size, ainfo.subgroup_max_size)),
            ("subgroup kernels".into(), subgroups.to_string()),
            ("timestamp queries".into(), timestamps.to_string()),
            ("max storage binding".into(), limits.max_storage_buffer_binding_size.to_string()),
            ("max buffer size".into(), limits.max_buffer_size.to_string()),
            ("max workgroup memory".into(), limits.max_compute_workgroup_storage_size.to_string()),
            (
                "max invocations per workgroup".into(),
                limits.max_compute_invocations_per_workgroup.to_string(),
            ),
            ("max workgroups per dimension".into(), limits.max_compute_workgroups_per_dimension.to_string()),
            ("wgsl extensions".into(), "packed_4x8_integer_dot_product".into()),
        ];
        let info = DeviceInfo { backend: BACKEND, id, name: ainfo.name.clone(), details };

        let mut backend = WgpuBackend {
            info,
            device,
            queue,
            limits,
            max_binding,
            max_groups,
            max_workgroup_bytes,
            subgroups,
            timestamps,
            modules: HashMap::new(),
            pipelines: HashMap::new(),
            health,
            uniforms: RwLock::new(HashMap::new()),
            no_bias,
            live_bytes: Arc::new(AtomicU64::new(0)),
            budget: options.max_device_bytes,
        };
        for spec in shaders::MODULES {
            if spec.needs_subgroups && !subgroups {
                continue;
            }
            let module = backend.scoped(|| Ok(backend.compile(&spec))).map_err(|e| {
                unavailable(format!("{}: shader module {} does not compile: {e}", ainfo.name, spec.name))
            })?;
            backend.modules.insert(spec.name, module);
        }
        backend.pipelines = backend.create_pipelines()?;
        let refused: Vec<String> = backend
            .pipelines
            .iter()
            .filter_map(|((entry, v), p)| p.as_ref().err().map(|e| format!("{entry} ({v}): {e}")))
            .collect();
        backend.info.details.push((
            "pipelines".into(),
            format!(
                "{} created at start-up, {} refused{}",
                backend.pipelines.len() - refused.len(),
                refused.len(),
                if refused.is_empty() { String::new() } else { format!(": {}", refused.join("; ")) }
            ),
        ));
        let unchecked: Vec<&str> =
            shaders::MODULES.iter().filter(|s| runtime_checks_dropped(s)).map(|s| s.name).collect();
        backend.info.details.push((
            "shader modules without runtime checks".into(),
            if unchecked.is_empty() { "none".into() } else { unchecked.join(", ") },
        ));
        Ok(backend)
    }

    /// Compiles one module. wgpu validates it with naga either way; a module whose indexing has
    /// been reviewed (see [`TRUSTED_SHADERS`]) is compiled without wgpu's runtime checks on native
    /// targets, every other one with them.
    fn compile(&self, spec: &ShaderModuleSpec) -> wgpu::ShaderModule {
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
    fn create_pipelines(&self) -> Result<PipelineTable> {
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

    /// The wgpu device (for applications that share it).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Whether the subgroup kernels are in use.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// How the `time_*` methods measure.
    pub fn timer_kind(&self) -> TimerKind {
        if self.timestamps { TimerKind::DeviceTimestamps } else { TimerKind::Host }
    }

    fn check_lost(&self) -> Result<()> {
        let flagged = |this: &Self| -> Result<Option<String>> {
            if !this.health.lost.load(Ordering::Acquire) {
                return Ok(None);
            }
            let reason = this.health.reason.lock().map_err(|_| backend_error("device-lost flag poisoned"))?;
            Ok(Some(reason.clone().unwrap_or_else(|| "lost".into())))
        };
        let mut reason = flagged(self)?;
        if reason.is_none() {
            // wgpu reports a loss (e.g. after `Device::destroy`) from its maintenance step, so give
            // it one, without waiting, before trusting the flag.
            let _ = self.device.poll(wgpu::PollType::Poll);
            reason = flagged(self)?;
        }
        match reason {
            Some(reason) => Err(Error::DeviceLost { backend: BACKEND, reason }),
            None => Ok(()),
        }
    }

    /// `error`, unless the device is being lost: then [`Error::DeviceLost`].
    ///
    /// wgpu reports a destroyed device only once its queue has drained, from a maintenance step
    /// that may run in any thread; until then calls fail with symptoms (an invalid buffer, a failed
    /// mapping). So before returning such an error, drain the queue and wait (at most
    /// [`LOSS_SETTLE`]) for the device-lost callback to land. A real validation error on a healthy
    /// device pays that wait once; it only happens on a bug.
    fn loss_or(&self, error: Error) -> Error {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let start = std::time::Instant::now();
            while start.elapsed() < LOSS_SETTLE {
                if let Err(lost) = self.check_lost() {
                    return lost;
                }
                let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.check_lost().err().unwrap_or(error)
    }

    /// Runs `f`, a hot-path call (the GEMM), with no error scope and no poll; errors still surface
    /// typed.
    ///
    /// Why nothing is lost: the GEMM validates on the host, before recording, everything wgpu
    /// would (handles from this device, shapes, binding sizes and offsets against the limits,
    /// workgroup counts, pipelines built at start-up), so on a healthy device wgpu has nothing to
    /// refuse, and it allocates no device memory on a warm path (cached uniform blocks, the shared
    /// no-bias placeholder). What can still go wrong is reported by wgpu's callbacks: a loss already
    /// reported fails the call up front (one atomic load); an error wgpu raises anyway reaches
    /// the uncaptured-error handler synchronously, which counts it, and a count that moved during
    /// the call fails it — with [`Error::DeviceLost`] once the loss lands, otherwise with wgpu's
    /// message (see [`WgpuBackend::loss_or`]). An error raised by another thread's unscoped call in
    /// the same window fails this one too: such an error means a lost device or a bug, so failing
    /// wide is the safe side. A device destroyed but not yet reported lost makes wgpu drop the
    /// calls silently (WebGPU's contract); the loss is reported by the next call that waits,
    /// reads back or allocates, and by this one once the loss callback has run.
    fn unscoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.health.lost.load(Ordering::Acquire) {
            self.check_lost()?;
        }
        let before = self.health.uncaptured.load(Ordering::Acquire);
        let result = f();
        if self.health.uncaptured.load(Ordering::Acquire) != before {
            let message = self.health.last_uncaptured.lock().ok().and_then(|m| m.clone()).unwrap_or_default();
            return Err(self.loss_or(backend_error(message)));
        }
        result
    }

    /// Runs `f` inside out-of-memory and validation error scopes; a captured error becomes
    /// [`Error::Backend`] (or [`Error::DeviceLost`] once the device is gone).
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let v = block_on(validation.pop())?;
        let o = block_on(oom.pop())?;
        self.check_lost()?;
        if let Some(e) = v {
            return Err(self.loss_or(backend_error(e.to_string())));
        }
        if let Some(e) = o {
            return Err(backend_error(e.to_string()));
        }
        result
    }

    /// The pipeline of `entry` (in `module`) with override value `tm` (the entry's override in
    /// [`OVERRIDE_VARIANTS`]), from the table built at start-up: a lock-free map lookup. One that
    /// was not built — an entry or value missing from the tables, or refused by the device — is
    /// [`Error::Unavailable`] with the reason.
    fn pipeline(
        &self,
        entry: &'static str,
        module: &'static str,
        tm: Option<u32>,
    ) -> Result<wgpu::ComputePipeline> {
        match self.pipelines.get(&(entry, tm.unwrap_or(0))) {
            Some(Ok(p)) => Ok(p.pipeline.clone()),
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

    fn check_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding {
            return Err(Error::OverDeviceLimit {
                what,
                requested: bytes,
                limit: self.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    fn check_buffer(&self, what: &'static str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::OverDeviceLimit {
                what,
                requested: bytes,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }

    /// A buffer holding `data` (padded with zeros to a multiple of 4 bytes, at least 4).
    ///
    /// Created empty and filled through the queue rather than mapped at creation: on a lost
    /// device a mapped-at-creation buffer makes wgpu panic, this way it is a captured error.
    fn buffer_with(
        &self,
        what: &'static str,
        data: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<DeviceBuffer> {
        let size = (data.len() as u64).max(4).next_multiple_of(4);
        let buffer = self.create_buffer(what, size, usage | wgpu::BufferUsages::COPY_DST)?;
        if data.len() as u64 == size {
            self.queue.write_buffer(&buffer, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(size as usize, 0);
            self.queue.write_buffer(&buffer, 0, &padded);
        }
        Ok(buffer)
    }

    /// Every buffer of the backend is made here: counted in [`WgpuBackend::device_bytes`], held to
    /// [`WgpuOptions::max_device_bytes`], and refused with [`Error::OutOfMemory`] (not a later
    /// validation error) when the budget or the driver says no.
    fn create_buffer(
        &self,
        what: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<DeviceBuffer> {
        let oom =
            |reason: String| Error::OutOfMemory { backend: Some(BACKEND), what, requested: size, reason };
        match self.budget {
            // Reserve before creating, atomically, so that threads racing for the last bytes cannot
            // both pass.
            Some(budget) => {
                self.live_bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                        live.checked_add(size).filter(|&total| total <= budget)
                    })
                    .map_err(|live| {
                        oom(format!("the backend's budget is {budget} bytes, {live} are in use"))
                    })?;
            }
            None => {
                self.live_bytes.fetch_add(size, Ordering::AcqRel);
            }
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = DeviceBuffer {
            buffer: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage,
                mapped_at_creation: false,
            }),
            live: Some(self.live_bytes.clone()),
        };
        match block_on(scope.pop())? {
            Some(e) => Err(oom(format!("the driver refused it: {e}"))),
            None => Ok(buffer),
        }
    }

    /// Bytes in the device buffers this backend holds right now: prepared weights, activations,
    /// outputs, and the transient buffers of calls in progress (uniforms, no-bias placeholders,
    /// readback staging). Returns to the same value whenever the same handles are live, so a
    /// long-running process can watch it for leaks; [`WgpuOptions::max_device_bytes`] caps it.
    pub fn device_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Acquire)
    }

    /// A storage buffer holding `data`.
    fn storage_init(
        &self,
        what: &'static str,
        data: &[u8],
        extra: wgpu::BufferUsages,
    ) -> Result<DeviceBuffer> {
        self.check_buffer(what, data.len() as u64)?;
        self.buffer_with(what, data, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra)
    }

    fn storage_empty(&self, what: &'static str, bytes: u64) -> Result<DeviceBuffer> {
        self.check_buffer(what, bytes)?;
        self.create_buffer(
            what,
            bytes.max(4).next_multiple_of(4),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A uniform block holding `params`: the backend's cached buffer of the same content, or a new
    /// one, written once and cached. Never rewritten, so any number of calls in flight, from any
    /// threads, may bind it; a decode loop (the same shapes every step) creates none after its
    /// first step. At most [`UNIFORM_CACHE_ENTRIES`] blocks are kept (past that the cache starts
    /// over; work already recorded keeps its buffers alive). Not counted in
    /// [`WgpuBackend::device_bytes`].
    fn uniform<T: bytemuck::Pod>(&self, params: &T) -> Result<DeviceBuffer> {
        let bytes = bytemuck::bytes_of(params);
        let poisoned = || backend_error("uniform cache poisoned");
        if let Some(buffer) = self.uniforms.read().map_err(|_| poisoned())?.get(bytes) {
            return Ok(DeviceBuffer { buffer: buffer.clone(), live: None });
        }
        let size = (bytes.len() as u64).max(4).next_multiple_of(4);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("w4a8 params"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = block_on(scope.pop())? {
            return Err(Error::OutOfMemory {
                backend: Some(BACKEND),
                what: "w4a8 params",
                requested: size,
                reason: format!("the driver refused it: {e}"),
            });
        }
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        // Queued before any submission that can bind the buffer (it is published below).
        self.queue.write_buffer(&buffer, 0, &padded);
        let mut cache = self.uniforms.write().map_err(|_| poisoned())?;
        if cache.len() >= UNIFORM_CACHE_ENTRIES {
            cache.clear();
        }
        // A thread that raced us here keeps its own (identical) buffer; the first one stays cached.
        let buffer = cache.entry(bytes.into()).or_insert(buffer).clone();
        Ok(DeviceBuffer { buffer, live: None })
    }

    /// The no-bias placeholder: four zero bytes the backend made once, never written, bound
    /// read-only as `bias` by any number of calls. Not counted in [`WgpuBackend::device_bytes`].
    fn no_bias_placeholder(&self) -> Result<DeviceBuffer> {
        Ok(DeviceBuffer { buffer: self.no_bias.clone(), live: None })
    }

    /// Folds `total` workgroups into a (x, y) grid under `max_compute_workgroups_per_dimension`.
    fn grid(&self, what: &'static str, total: usize) -> Result<(u32, u32)> {
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

    fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        // The layout fetched when the pipeline was made (a scan of a dozen ids, no wgpu call).
        let layout = self.pipelines.values().flatten().find(|p| p.pipeline == *pipeline).map(|p| &p.layout);
        let fetched;
        let layout = match layout {
            Some(l) => l,
            None => {
                fetched = pipeline.get_bind_group_layout(0);
                &fetched
            }
        };
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
    }

    /// Records `dispatches` into one compute pass (with begin/end timestamps when `timer` is
    /// given) and submits.
    fn submit(&self, dispatches: &[Dispatch], timer: Option<&wgpu::QuerySet>) -> wgpu::SubmissionIndex {
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

    fn wait(&self) -> Result<()> {
        let r = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check_lost()?;
        r.map(|_| ()).map_err(|e| self.loss_or(backend_error(format!("waiting for the device: {e}"))))
    }

    /// Copies `size` bytes at `offset` of `src` back to the host.
    fn read_bytes(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4).max(4);
        let staging = self.scoped(|| {
            let staging = self.create_buffer(
                "w4a8 readback",
                size,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.queue.submit([encoder.finish()]);
            Ok(staging)
        })?;
        let done: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> =
            Arc::new(Mutex::new(None));
        {
            let done = done.clone();
            staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                if let Ok(mut slot) = done.lock() {
                    *slot = Some(r);
                }
            });
        }
        self.wait()?;
        let taken =
            || done.lock().map(|mut slot| slot.take()).map_err(|_| backend_error("readback flag poisoned"));
        #[cfg_attr(target_arch = "wasm32", allow(unused_mut))] // only native targets poll again
        let mut outcome = taken()?;
        // With several threads polling, the wait above can return while another thread's poll is
        // still delivering this mapping's callback: poll until it lands (or the device is lost).
        #[cfg(not(target_arch = "wasm32"))]
        {
            let start = std::time::Instant::now();
            while outcome.is_none() && start.elapsed() < READBACK_TIMEOUT {
                self.check_lost()?;
                std::thread::yield_now();
                let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
                outcome = taken()?;
            }
        }
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(self.loss_or(backend_error(format!("mapping the readback buffer: {e}"))));
            }
            #[cfg(target_arch = "wasm32")]
            None => {
                return Err(unavailable("the readback did not complete synchronously (wasm32 needs async)"));
            }
            #[cfg(not(target_arch = "wasm32"))]
            None => {
                return Err(self.loss_or(backend_error(format!(
                    "the readback's mapping callback did not arrive within {READBACK_TIMEOUT:?}"
                ))));
            }
        }
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| self.loss_or(backend_error(format!("reading the mapped buffer: {e}"))))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    // ---------------------------------------------------------------------------------------
    // W4A8 GEMM

    /// Builds the dispatches of `y = x · wᵀ (+ bias)`.
    fn gemm_dispatches(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &WgpuOutput,
        kernel: GemmKernel,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        check_gemm_args(self.info.id, x, w, y)?;
        let decode = match kernel {
            GemmKernel::Auto => x.m <= shaders::DECODE_M_MAX,
            GemmKernel::Decode => true,
            GemmKernel::Tiled => false,
        };
        if decode { self.decode_dispatches(x, w, y) } else { self.tiled_dispatches(x, w, y) }
    }

    /// The decode GEMM: one dispatch per weight chunk (one in all unless N needed several
    /// bindings), K reduced inside each workgroup, the epilogue fused. M > 16 (only when forced)
    /// runs in row blocks of 16 inside the same dispatch.
    fn decode_dispatches(
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
        let (per_group, group_shift) = decode_groups(w.granularity)?;
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
                &pipeline,
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
                pipeline: pipeline.clone(),
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
    fn check_decode_workgroup(&self, tm: u32) -> Result<()> {
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

    fn tiled_dispatches(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &WgpuOutput,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        let (m, n, k) = (x.m, w.n, w.k);
        let kp = layout::padded_k(k);
        let y_stride = n.div_ceil(2);
        let (x_row, y_row) = (kp as u64, (y_stride * 4) as u64);
        // Rows per dispatch: as many as fit one binding of activations and of output, in steps of
        // ROW_CHUNK_ALIGN so that every binding offset stays aligned.
        let row_bytes = x_row.max(y_row);
        let fit = (self.max_binding / row_bytes) as usize;
        let rows_per = if m <= fit { m } else { fit / ROW_CHUNK_ALIGN * ROW_CHUNK_ALIGN };
        if rows_per == 0 {
            let what = "activation/output rows of one dispatch (M, or 128 when M is split)";
            self.check_binding(what, m.min(ROW_CHUNK_ALIGN) as u64 * row_bytes)?;
        }
        let variant = self.tiled_variant()?;
        let spec = variant.w4a8;
        let pipeline = self.pipeline(spec.entry_points[0], spec.name, None)?;
        let dummy_bias = self.no_bias_placeholder()?;
        let bias = w.bias.as_ref().unwrap_or(&dummy_bias);
        let mut dispatches = Vec::new();
        let mut keep = Vec::new();
        for row0 in (0..m).step_by(rows_per.max(1)) {
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
                    &pipeline,
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
                    pipeline: pipeline.clone(),
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
    fn tiled_variant(&self) -> Result<shaders::TiledVariant> {
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

    /// Weight columns per chunk: as many as one storage binding holds (`prepare` splits N by it).
    fn weight_chunk_columns(&self, k: usize) -> Result<usize> {
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

    /// [`Gemm::gemm_into`] with an explicit kernel choice (benches and tests pin one).
    pub fn gemm_with(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &mut WgpuOutput,
        kernel: GemmKernel,
    ) -> Result<()> {
        self.unscoped(|| {
            let (dispatches, _keep) = self.gemm_dispatches(x, w, y, kernel)?;
            self.submit(&dispatches, None);
            Ok(())
        })
    }

    /// Runs the W4A8 GEMM `runs` times and returns each run's duration in seconds, measured as
    /// [`WgpuBackend::timer_kind`] says.
    pub fn time_gemm(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &mut WgpuOutput,
        kernel: GemmKernel,
        runs: usize,
    ) -> Result<Vec<f64>> {
        let (dispatches, _keep) = self.scoped(|| self.gemm_dispatches(x, w, y, kernel))?;
        self.time_dispatches(&dispatches, runs)
    }

    fn time_dispatches(&self, dispatches: &[Dispatch], runs: usize) -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(runs);
        if self.timestamps {
            let query_set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("w4a8 timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.create_buffer(
                "w4a8 timestamps",
                16,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            )?;
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            for _ in 0..runs {
                self.scoped(|| {
                    self.submit(dispatches, Some(&query_set));
                    let mut encoder = self.device.create_command_encoder(&Default::default());
                    encoder.resolve_query_set(&query_set, 0..2, &resolve, 0);
                    self.queue.submit([encoder.finish()]);
                    Ok(())
                })?;
                let bytes = self.read_bytes(&resolve, 16)?;
                let t: &[u64] = bytemuck::cast_slice(&bytes);
                times.push(t[1].wrapping_sub(t[0]) as f64 * period);
            }
        } else {
            #[cfg(target_arch = "wasm32")]
            return Err(unavailable("host timing needs a clock and a blocking wait; not on wasm32"));
            #[cfg(not(target_arch = "wasm32"))]
            for _ in 0..runs {
                self.wait()?;
                let start = std::time::Instant::now();
                self.scoped(|| {
                    self.submit(dispatches, None);
                    Ok(())
                })?;
                self.wait()?;
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    }

    // ---------------------------------------------------------------------------------------
    // f16 baseline

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

    fn f16_dispatch(
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
            &pipeline,
            &[
                params.as_entire_binding(),
                x.buffer.as_entire_binding(),
                w.buffer.as_entire_binding(),
                y.buffer.as_entire_binding(),
            ],
        );
        let groups = self.grid("f16 GEMM workgroups", m_tiles * n_tiles)?;
        Ok((vec![Dispatch { pipeline, bind_group, groups }], vec![params]))
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

    fn upload_weight_chunk(&self, chunk: &PackedChunk) -> Result<WeightChunk> {
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

/// `a · b · elem_bytes` in u64, saturating: sizes are computed in u64 so that they cannot wrap on
/// 32-bit targets (wasm32), and a product past u64 is over every limit rather than small.
fn bytes_of_dims(a: usize, b: usize, elem_bytes: u64) -> u64 {
    (a as u64).saturating_mul(b as u64).saturating_mul(elem_bytes)
}

/// A host vector of `len` copies of `fill`, or [`Error::OutOfMemory`] (host) when `len` does not fit
/// `usize` or the allocator refuses, instead of an abort.
fn host_vec<T: Clone>(what: &'static str, len: u64, fill: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    usize::try_from(len).ok().and_then(|n| v.try_reserve_exact(n).ok()).ok_or_else(|| {
        Error::OutOfMemory {
            backend: None,
            what,
            requested: len.saturating_mul(std::mem::size_of::<T>() as u64),
            reason: "host staging copy".into(),
        }
    })?;
    v.resize(len as usize, fill);
    Ok(v)
}

/// Binds rows `row0 .. row0 + rows` of a buffer of `per_row`-byte rows.
fn row_slice(buf: &wgpu::Buffer, row0: usize, rows: usize, per_row: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: row0 as u64 * per_row,
        size: NonZeroU64::new(rows as u64 * per_row),
    })
}

/// Returns the first element of `x · smooth` (row-major, column k scaled by `smooth[k]`) that is
/// not finite, as the quantizer would compute it in f32.
fn first_non_finite(x: &[f16], k: usize, smooth: Option<&[f32]>) -> Option<Error> {
    x.iter().enumerate().find_map(|(index, &v)| {
        let raw = v.to_f32();
        let value = smooth.map_or(raw, |s| raw * s[index % k]);
        // Same wording as the CPU quantizer: an input that is itself non-finite, or one the
        // smoothing vector scaled to infinity.
        let what = if raw.is_finite() { "smoothed activations" } else { "activations" };
        (!value.is_finite()).then_some(Error::NonFinite { what, index, value })
    })
}

impl Gemm for WgpuBackend {
    type Weights = WgpuWeights;
    type Activations = WgpuActivations;
    type Output = WgpuOutput;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn prepare(&self, weights: &W4A8Weights) -> Result<WgpuWeights> {
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

    fn read_weights(&self, w: &WgpuWeights) -> Result<W4A8Weights> {
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

    fn quantize_activations(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        smooth: Option<&[f32]>,
    ) -> Result<WgpuActivations> {
        check_activation_args(x.len(), m, k, smooth)?;
        if let Some(e) = first_non_finite(x, k, smooth) {
            return Err(e);
        }
        let kp = layout::padded_k(k);
        self.check_binding("f16 activations (M·K·2 bytes)", bytes_of_dims(m, k, 2))?;
        self.check_binding("int8 activations (M·Kp bytes)", bytes_of_dims(m, kp, 1))?;
        let module = if self.subgroups { shaders::QUANTIZE_SUBGROUP } else { shaders::QUANTIZE_SHARED };
        let entry_point = if self.subgroups { entry::QUANTIZE_SUBGROUP } else { entry::QUANTIZE };
        self.scoped(|| {
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
            let pipeline = self.pipeline(entry_point, module.name, None)?;
            let params = self.uniform(&QuantParams {
                m: m as u32,
                k: k as u32,
                x_stride: (kp / 4) as u32,
                has_smooth: smooth.is_some() as u32,
                fence: 0,
                pad: [0; 3],
            })?;
            let bind_group = self.bind(
                &pipeline,
                &[
                    params.as_entire_binding(),
                    input.as_entire_binding(),
                    smooth_buf.as_entire_binding(),
                    values.as_entire_binding(),
                    scales.as_entire_binding(),
                ],
            );
            let groups = self.grid("quantizer workgroups (one per row)", m.div_ceil(QUANT_WG_ROWS))?;
            self.submit(&[Dispatch { pipeline, bind_group, groups }], None);
            Ok(WgpuActivations { device_id: self.info.id, m, k, values, scales })
        })
    }

    fn upload_activations(&self, x: &QuantizedActivations) -> Result<WgpuActivations> {
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

    fn read_activations(&self, x: &WgpuActivations) -> Result<QuantizedActivations> {
        check_owner("activations", x, self.info.id)?;
        let kp = layout::padded_k(x.k);
        let bytes = self.read_bytes(&x.values, (x.m * kp) as u64)?;
        let values: Vec<i8> =
            bytes.chunks(kp).take(x.m).flat_map(|row| row[..x.k].iter().map(|&b| b as i8)).collect();
        let scales: Vec<f32> = bytemuck::pod_collect_to_vec(&self.read_bytes(&x.scales, (x.m * 4) as u64)?);
        QuantizedActivations::new(x.m, x.k, values, scales[..x.m].to_vec())
    }

    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<WgpuOutput> {
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

    fn gemm_into(&self, x: &WgpuActivations, w: &WgpuWeights, y: &mut WgpuOutput) -> Result<()> {
        self.gemm_with(x, w, y, GemmKernel::Auto)
    }

    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan> {
        check_plan_args(m, n, k, granularity)?;
        let chunks = layout::chunk_ranges(n, self.weight_chunk_columns(k)?);
        let plan = if m <= shaders::DECODE_M_MAX {
            // One dispatch per weight chunk; the grid and memory exactly as `decode_dispatches`.
            let tm = decode_row_tile(m);
            self.check_decode_workgroup(tm)?;
            decode_groups(granularity)?;
            let tiles: usize = chunks.iter().map(|&(_, nc)| nc.div_ceil(shaders::DECODE_COLS)).sum();
            KernelPlan::new([entry::GEMM_DECODE])
                .with("rows", tm)
                .with("columns per workgroup", shaders::DECODE_COLS)
                .with("k slices per workgroup", shaders::DECODE_SLICES)
                .with("16-byte weight loads in flight per invocation", shaders::DECODE_UNROLL)
                .with("workgroups", tiles * m.div_ceil(tm as usize))
                .with("workgroup memory bytes", shaders::decode_workgroup_bytes(tm))
        } else {
            let v = self.tiled_variant()?;
            let step = shaders::TILED_W4A8_STEP_K;
            KernelPlan::new([v.w4a8.entry_points[0]])
                .with("tile (rows x columns x k per barrier)", format!("{0}x{0}x{step}", v.tile))
                .with("outputs per invocation", "8x8")
                .with("invocations", v.invocations())
                .with("workgroup memory bytes", v.workgroup_bytes())
        };
        Ok(plan.with("weight chunks", chunks.len()))
    }

    fn read_output(&self, y: &WgpuOutput) -> Result<Vec<f16>> {
        check_owner("output", y, self.info.id)?;
        let stride = y.n.next_multiple_of(2);
        let bytes = self.read_bytes(&y.buffer, (y.m * stride * 2) as u64)?;
        let all: Vec<f16> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(all.chunks(stride).take(y.m).flat_map(|row| row[..y.n].iter().copied()).collect())
    }

    fn synchronize(&self) -> Result<()> {
        self.check_lost()?;
        self.wait()
    }
}
