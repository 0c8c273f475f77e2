//! [`CudaBackend`]: the [`Gemm`] trait on one CUDA device through cudarc's driver API.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute, cudaError_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use w4a8_core::gemm::{check_gemm_args, check_owner, check_plan_args, check_transform_args, next_device_id};
use w4a8_core::transform::first_transform_error;
use w4a8_core::{
    ActivationTransform, BackendKind, DeviceInfo, DeviceTensor, Error, Gemm, Granularity, KernelPlan,
    QuantizedActivations, Result, W4A8Weights, f16,
};

use crate::kernels::{self, KERNELS, QUANTIZE_ACTIVATIONS, QUANTIZE_ACTIVATIONS_HADAMARD};
use crate::layout::{self, GemmConfig, LaunchPlan, PackedWeights, THREADS};

/// Lowest compute capability with `cp.async`, `ldmatrix` and `mma.m16n8k32` on s8.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BackendKind::Cuda, reason: reason.into() }
}

fn driver_name(e: &DriverError) -> String {
    e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0))
}

/// Maps a driver error to the library's error: a lost or faulted context is [`Error::DeviceLost`].
pub(crate) fn driver_err(what: &str, e: DriverError) -> Error {
    let name = driver_name(&e);
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let message = format!("{what}: {name} ({text})");
    match e.0 {
        cudaError_enum::CUDA_ERROR_ILLEGAL_ADDRESS
        | cudaError_enum::CUDA_ERROR_LAUNCH_FAILED
        | cudaError_enum::CUDA_ERROR_ECC_UNCORRECTABLE
        | cudaError_enum::CUDA_ERROR_DEVICE_UNAVAILABLE
        | cudaError_enum::CUDA_ERROR_CONTEXT_IS_DESTROYED
        | cudaError_enum::CUDA_ERROR_DEINITIALIZED
        | cudaError_enum::CUDA_ERROR_HARDWARE_STACK_ERROR
        | cudaError_enum::CUDA_ERROR_ILLEGAL_INSTRUCTION => {
            Error::DeviceLost { backend: BackendKind::Cuda, reason: message }
        }
        _ => Error::Backend { backend: BackendKind::Cuda, message },
    }
}

/// Checks that the CUDA driver library can be loaded. cudarc (with `dynamic-loading`) panics on
/// first use when it cannot; this finds out first, by name, without initializing anything.
pub fn probe_driver() -> std::result::Result<(), String> {
    // SAFETY: is_culib_present only dlopen()s candidate library names and drops the handles.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("the CUDA driver (libcuda.so.1) is not installed or not on the loader path: no NVIDIA GPU \
             driver on this machine"
            .into())
    }
}

/// Runs a first call into cudarc, turning a panic (a symbol missing from an old driver library)
/// into [`Error::Unavailable`].
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| match e.0 {
            cudaError_enum::CUDA_ERROR_NO_DEVICE | cudaError_enum::CUDA_ERROR_INVALID_DEVICE => {
                unavailable(format!("{what}: {} — no usable CUDA device", driver_name(&e)))
            }
            cudaError_enum::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | cudaError_enum::CUDA_ERROR_NOT_INITIALIZED => {
                unavailable(format!("{what}: {} — the driver is too old or not initialized", driver_name(&e)))
            }
            _ => driver_err(what, e),
        }),
        Err(_) => Err(unavailable(format!(
            "{what}: the CUDA driver library lacks a function this build needs (driver older than CUDA 13.0?)"
        ))),
    }
}

/// The W4A8 backend on one CUDA device (compute capability 8.0 or newer).
///
/// All work goes to one stream owned by the backend; buffers made by one backend are refused by
/// another ([`Error::ForeignBuffer`]).
pub struct CudaBackend {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    sms: usize,
    total_mem: usize,
    /// Resident blocks (SMs × blocks per SM) of each configuration of `layout::CONFIGS`.
    resident: Vec<usize>,
    /// Stream-K partial sums and tile semaphores, grown on demand.
    scratch: Mutex<Option<Scratch>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The stream-K partial-sum workspace and the per-tile semaphores.
type Scratch = (CudaSlice<i32>, CudaSlice<u32>);

/// Weights repacked for the GEMM kernel and resident on the device.
pub struct CudaWeights {
    device_id: u64,
    n: usize,
    k: usize,
    granularity: Granularity,
    n_pad: usize,
    k_pad: usize,
    words: CudaSlice<u32>,
    group_scales: Option<CudaSlice<u8>>,
    channel_scales: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
}

/// Quantized activations on the device: int8 `[M][padded K]` and f32 scales `[M]`.
pub struct CudaActivations {
    device_id: u64,
    m: usize,
    k: usize,
    values: CudaSlice<i8>,
    scales: CudaSlice<f32>,
}

/// An M×N f16 output on the device.
pub struct CudaOutput {
    device_id: u64,
    m: usize,
    n: usize,
    data: CudaSlice<f16>,
}

impl DeviceTensor for CudaWeights {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}
impl DeviceTensor for CudaActivations {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.m, self.k)
    }
}
impl DeviceTensor for CudaOutput {
    fn device_id(&self) -> u64 {
        self.device_id
    }
    fn shape(&self) -> (usize, usize) {
        (self.m, self.n)
    }
}

impl CudaWeights {
    /// Bytes of device memory the prepared weights occupy.
    pub fn device_bytes(&self) -> usize {
        self.words.len() * 4
            + self.group_scales.as_ref().map_or(0, |g| g.len())
            + self.channel_scales.len() * 4
            + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
}

/// The launch as `kernel_plan` reports it: entry point, tile, warps, stages, tiles and blocks.
pub fn describe_plan(plan: &LaunchPlan, granularity: Granularity) -> KernelPlan {
    let c = plan.config;
    let blocks = if plan.is_stream_k() {
        let (lo, hi) = (plan.iterations() / plan.blocks, plan.iterations().div_ceil(plan.blocks));
        let each = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
        format!("{} persistent (stream-K, {each} k-tiles each)", plan.blocks)
    } else {
        format!("{} (whole tiles, {} each)", plan.blocks, plan.tiles().div_ceil(plan.blocks))
    };
    KernelPlan::new([c.entry(granularity)])
        .with("tile", format!("{}x{}x{}", c.bm, c.bn(), layout::BK))
        .with("warps", format!("{}x{}x{}", c.warps_m, c.warps_n, c.warps_k))
        .with("stages", c.stages)
        .with("tiles", format!("{}x{}x{}", plan.tiles_m, plan.tiles_n, plan.k_tiles))
        .with("blocks", blocks)
        .with("smem", format!("{} B", c.smem_bytes()))
}

/// A device pointer or null, as a kernel argument.
fn ptr_or_null<T>(slice: Option<&CudaSlice<T>>, stream: &CudaStream) -> u64 {
    use cudarc::driver::DevicePtr;
    match slice {
        // The SyncOnDrop guard is dropped at once: event tracking is off (single stream), so it
        // records nothing.
        Some(s) => s.device_ptr(stream).0,
        None => 0,
    }
}

impl CudaBackend {
    /// The backend on device 0.
    pub fn new() -> Result<Self> {
        Self::with_ordinal(0)
    }

    /// The backend on device `ordinal`. Returns [`Error::Unavailable`] when the driver or NVRTC is
    /// missing, there is no such device, or its compute capability is below 8.0.
    pub fn with_ordinal(ordinal: usize) -> Result<Self> {
        probe_driver().map_err(unavailable)?;
        kernels::probe_nvrtc().map_err(unavailable)?;
        let ctx = guarded("cuInit / cuDevicePrimaryCtxRetain", || CudaContext::new(ordinal))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("compute capability", e))?;
        let name = ctx.name().map_err(|e| driver_err("device name", e))?;
        if (major, minor) < MIN_COMPUTE_CAPABILITY {
            return Err(unavailable(format!(
                "{name} has compute capability {major}.{minor}; the int8 mma.m16n8k32 kernels need 8.0 or newer"
            )));
        }
        // SAFETY: every buffer of this backend is used on its one stream only (tensors carry the
        // device id and are refused elsewhere), so cudarc's cross-stream event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_err("cuStreamCreate", e))?;
        let cubin = kernels::cubin_for(major, minor)?;
        let module = ctx
            .load_module(Ptx::from_binary(cubin.to_vec()))
            .map_err(|e| driver_err("cuModuleLoadData", e))?;
        let mut functions = HashMap::new();
        for name in KERNELS {
            let f = module
                .load_function(name)
                .map_err(|e| driver_err(&format!("cuModuleGetFunction({name})"), e))?;
            functions.insert(name, f);
        }
        for c in layout::CONFIGS {
            for name in [c.per_channel, c.per_group] {
                functions[name]
                    .set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        c.smem_bytes() as i32,
                    )
                    .map_err(|e| driver_err(&format!("dynamic shared memory of {name}"), e))?;
            }
        }
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("SM count", e))? as usize;
        let total_mem = ctx.total_mem().map_err(|e| driver_err("total memory", e))?;
        let mut driver_version = 0;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer; the library is loaded.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let info = DeviceInfo {
            backend: BackendKind::Cuda,
            id: next_device_id(),
            name,
            details: vec![
                ("ordinal".into(), ordinal.to_string()),
                ("compute capability".into(), format!("{major}.{minor}")),
                ("multiprocessors".into(), sms.to_string()),
                ("memory".into(), format!("{} MiB", total_mem >> 20)),
                ("driver".into(), format!("{}.{}", driver_version / 1000, (driver_version % 1000) / 10)),
                ("kernels".into(), format!("NVRTC, sm_{major}{minor}")),
            ],
        };
        // One wave of persistent blocks: as many as the occupancy calculator says fit per SM (the
        // per-channel and per-group kernels of a configuration may differ in registers: the fewer).
        let resident = layout::CONFIGS
            .iter()
            .map(|c| {
                let per_sm = [c.per_channel, c.per_group]
                    .iter()
                    .map(|name| {
                        functions[name].occupancy_max_active_blocks_per_multiprocessor(
                            THREADS,
                            c.smem_bytes(),
                            None,
                        )
                    })
                    .collect::<std::result::Result<Vec<u32>, _>>()
                    .map_err(|e| driver_err("occupancy of the GEMM kernels", e))?;
                Ok(sms * per_sm.into_iter().min().unwrap_or(1).max(1) as usize)
            })
            .collect::<Result<Vec<usize>>>()?;
        let info = DeviceInfo {
            details: info
                .details
                .into_iter()
                .chain([("resident blocks (small, medium, large)".into(), format!("{resident:?}"))])
                .collect(),
            ..info
        };
        Ok(CudaBackend { info, ctx, stream, functions, sms, total_mem, resident, scratch: Mutex::new(None) })
    }

    /// The stream all work is queued on (for the benchmark's CUDA-event timers).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Number of streaming multiprocessors.
    pub fn multiprocessors(&self) -> usize {
        self.sms
    }

    fn check_alloc(&self, what: &'static str, bytes: usize) -> Result<()> {
        if bytes > self.total_mem {
            return Err(Error::OverDeviceLimit {
                what,
                requested: bytes as u64,
                limit: self.total_mem as u64,
                limit_name: "total device memory",
            });
        }
        Ok(())
    }

    fn upload<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        what: &'static str,
        data: &[T],
    ) -> Result<CudaSlice<T>> {
        self.check_alloc(what, std::mem::size_of_val(data))?;
        // A zero-length allocation is legal in cudarc but pointless; keep one element so every
        // kernel argument is a real pointer.
        if data.is_empty() {
            return self.stream.alloc_zeros::<T>(1).map_err(|e| driver_err(what, e));
        }
        self.stream.clone_htod(data).map_err(|e| driver_err(what, e))
    }

    fn download<T: cudarc::driver::DeviceRepr>(
        &self,
        what: &'static str,
        data: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.stream.clone_dtoh(data).map_err(|e| driver_err(what, e))
    }

    fn function(&self, name: &'static str) -> &CudaFunction {
        // Every name in KERNELS was resolved in `with_ordinal`.
        &self.functions[name]
    }

    /// Uploads weights already in the CUDA layout.
    pub fn upload_packed(&self, p: &PackedWeights) -> Result<CudaWeights> {
        Ok(CudaWeights {
            device_id: self.info.id,
            n: p.n,
            k: p.k,
            granularity: p.granularity,
            n_pad: p.n_pad,
            k_pad: p.k_pad,
            words: self.upload("packed weights", &p.words)?,
            group_scales: match p.granularity {
                Granularity::PerChannel => None,
                Granularity::PerGroup { .. } => Some(self.upload("group scales", &p.group_scales)?),
            },
            channel_scales: self.upload("channel scales", &p.channel_scales)?,
            bias: p.bias.as_ref().map(|b| self.upload("bias", b)).transpose()?,
        })
    }

    /// Downloads prepared weights in the CUDA layout.
    pub fn download_packed(&self, w: &CudaWeights) -> Result<PackedWeights> {
        check_owner("weights", w, self.info.id)?;
        Ok(PackedWeights {
            n: w.n,
            k: w.k,
            granularity: w.granularity,
            n_pad: w.n_pad,
            k_pad: w.k_pad,
            words: self.download("packed weights", &w.words)?,
            group_scales: match &w.group_scales {
                Some(g) => self.download("group scales", g)?,
                None => Vec::new(),
            },
            channel_scales: self.download("channel scales", &w.channel_scales)?,
            bias: w.bias.as_ref().map(|b| self.download("bias", b)).transpose()?,
        })
    }

    /// The launch `gemm_into` makes for these padded shapes; `forced_blocks` overrides the grid
    /// (see [`CudaBackend::gemm_into_with_blocks`]).
    fn plan(&self, m: usize, n_pad: usize, k_pad: usize, forced_blocks: Option<usize>) -> Result<LaunchPlan> {
        let resident =
            self.resident[layout::CONFIGS.iter().position(|c| *c == GemmConfig::for_m(m)).unwrap_or(0)];
        let plan = LaunchPlan::new(m, n_pad, k_pad, resident, forced_blocks)
            .map_err(|reason| Error::InvalidValue { what: "forced block count", index: 0, reason })?;
        // The kernel indexes tile × k-tile iterations with ints (blocks ≤ iterations).
        if plan.iterations() > i32::MAX as usize {
            return Err(Error::OverDeviceLimit {
                what: "GEMM iterations (M/bm · N/bn output tiles × K/128 k-tiles)",
                requested: plan.iterations() as u64,
                limit: i32::MAX as u64,
                limit_name: "the kernel's 32-bit iteration index",
            });
        }
        Ok(plan)
    }

    /// [`Gemm::gemm_into`] with the persistent grid forced to `blocks` (1..=tiles·k-tiles) instead
    /// of the occupancy-based choice: `blocks` = the tile count gives every block whole tiles (no
    /// partial sums, the longest pipelines); other counts cut tiles between blocks anywhere. For
    /// tests and benchmarks; not a tuning knob (the result is the same, bit for bit).
    #[doc(hidden)]
    pub fn gemm_into_with_blocks(
        &self,
        x: &CudaActivations,
        w: &CudaWeights,
        y: &mut CudaOutput,
        blocks: usize,
    ) -> Result<()> {
        self.launch_gemm(x, w, y, Some(blocks))
    }

    /// The plan `gemm_into_with_blocks(.., blocks)` launches for these shapes (`None`: the
    /// default grid), for tests that pick block counts by what they exercise.
    #[doc(hidden)]
    pub fn launch_plan(&self, m: usize, n: usize, k: usize, blocks: Option<usize>) -> Result<LaunchPlan> {
        self.plan(m, layout::padded_n(n), layout::padded_k(k), blocks)
    }

    fn launch_gemm(
        &self,
        x: &CudaActivations,
        w: &CudaWeights,
        y: &mut CudaOutput,
        forced_blocks: Option<usize>,
    ) -> Result<()> {
        check_gemm_args(self.info.id, x, w, y)?;
        let (m, n) = (x.m, w.n);
        let plan = self.plan(m, w.n_pad, w.k_pad, forced_blocks)?;
        let cfg = plan.config;
        let entry = cfg.entry(w.granularity);
        let group_size = w.granularity.group_size().unwrap_or(0) as i32;
        let (mi, ni, kpi, npi) = (m as i32, n as i32, w.k_pad as i32, w.n_pad as i32);
        let gs_ptr = ptr_or_null(w.group_scales.as_ref(), &self.stream);
        let bias_ptr = ptr_or_null(w.bias.as_ref(), &self.stream);
        let (ws_len, sem_len) =
            if plan.is_stream_k() { (plan.workspace_len(), plan.tiles()) } else { (1, 1) };
        let mut scratch = self.stream_k_scratch(ws_len, sem_len)?;
        let (ws, sem) = scratch.as_mut().expect("scratch allocated above");
        let launch_cfg = LaunchConfig {
            grid_dim: (plan.blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: cfg.smem_bytes() as u32,
        };
        let mut launch = self.stream.launch_builder(self.function(entry));
        launch
            .arg(&x.values)
            .arg(&x.scales)
            .arg(&w.words)
            .arg(&gs_ptr)
            .arg(&w.channel_scales)
            .arg(&bias_ptr)
            .arg(&mut y.data)
            .arg(ws)
            .arg(sem)
            .arg(&mi)
            .arg(&ni)
            .arg(&kpi)
            .arg(&npi)
            .arg(&group_size);
        // SAFETY: argument order and types match W4A8_GEMM_ENTRY (x: s8[M·Kp], sx: f32[M],
        // w: chunks [Np/32][Kp/128][512] u32, gs: slots or null, sch: f32[Np], bias: f32[Np] or
        // null, y: f16[M·N], ws: s32[blocks·2·bm·bn] and sem: u32[tiles] (zero between launches)
        // when some tile is shared, M, N, Kp, Np, g); the weights were packed for exactly this
        // Kp/Np and the activations padded to this Kp (both are padded_k(K) of the same K, checked
        // by check_gemm_args); gridDim.x = plan.blocks, whose ranges the kernel derives as the plan.
        unsafe { launch.launch(launch_cfg) }.map_err(|e| driver_err(&format!("launch {entry}"), e))?;
        Ok(())
    }

    /// The stream-K partial sums (`ws_len` i32) and tile semaphores (`sem_len` u32, all zero: each
    /// launch's last block resets the ones it used), grown on demand and reused call after call
    /// (stream order keeps launches from overlapping).
    fn stream_k_scratch(
        &self,
        ws_len: usize,
        sem_len: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<Scratch>>> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(ws, sem)| ws.len() < ws_len || sem.len() < sem_len) {
            let (ws_len, sem_len) = match guard.as_ref() {
                Some((ws, sem)) => (ws_len.max(ws.len()), sem_len.max(sem.len())),
                None => (ws_len, sem_len),
            };
            self.check_alloc("stream-K workspace", ws_len * 4 + sem_len * 4)?;
            *guard = None; // free the old ones first
            // SAFETY: every partial sum is written by its block before the tile's semaphore counts
            // it, and only the last arriving block reads them.
            let ws = unsafe { self.stream.alloc::<i32>(ws_len) }
                .map_err(|e| driver_err("stream-K workspace", e))?;
            let sem =
                self.stream.alloc_zeros::<u32>(sem_len).map_err(|e| driver_err("stream-K semaphores", e))?;
            *guard = Some((ws, sem));
        }
        Ok(guard)
    }
}

impl Gemm for CudaBackend {
    type Weights = CudaWeights;
    type Activations = CudaActivations;
    type Output = CudaOutput;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn prepare(&self, weights: &W4A8Weights) -> Result<CudaWeights> {
        self.upload_packed(&layout::pack_weights(weights))
    }

    fn read_weights(&self, weights: &CudaWeights) -> Result<W4A8Weights> {
        layout::unpack_weights(&self.download_packed(weights)?)
    }

    fn quantize_activations_with(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<CudaActivations> {
        check_transform_args(x.len(), m, k, t)?;
        if m > i32::MAX as usize {
            return Err(Error::OverDeviceLimit {
                what: "rows to quantize",
                requested: m as u64,
                limit: i32::MAX as u64,
                limit_name: "maxGridDimX",
            });
        }
        let smooth = t.smooth;
        let kp = layout::padded_k(k);
        self.check_alloc("activations", m * kp + m * k * 2)?;
        let xd = self.upload("f16 activations", x)?;
        let sm = smooth.map(|s| self.upload("smoothing vector", s)).transpose()?;
        // SAFETY: the kernel writes all M·Kp values and all M scales before anything reads them.
        let mut values =
            unsafe { self.stream.alloc::<i8>(m * kp) }.map_err(|e| driver_err("activations", e))?;
        let mut scales =
            unsafe { self.stream.alloc::<f32>(m) }.map_err(|e| driver_err("activation scales", e))?;
        let mut bad = self.stream.alloc_zeros::<u64>(1).map_err(|e| driver_err("non-finite flag", e))?;
        let smooth_ptr = ptr_or_null(sm.as_ref(), &self.stream);
        let (mi, ki, kpi) = (m as i32, k as i32, kp as i32);
        // The block is checked (a power of two ≤ MAX_HADAMARD_BLOCK = W4A8_HCHUNK), so it fits an i32.
        let block = t.hadamard_block.map(|b| b as i32);
        let entry = if block.is_some() { QUANTIZE_ACTIVATIONS_HADAMARD } else { QUANTIZE_ACTIVATIONS };
        let f = self.function(entry);
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(&xd)
            .arg(&smooth_ptr)
            .arg(&mut values)
            .arg(&mut scales)
            .arg(&mut bad)
            .arg(&mi)
            .arg(&ki)
            .arg(&kpi);
        if let Some(b) = &block {
            launch.arg(b);
        }
        let cfg =
            LaunchConfig { grid_dim: (m as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument order and types match w4a8_quantize_activations (x: f16[M·K],
        // smooth: f32[K] or null, q: s8[M·Kp], sx: f32[M], bad: u64[1], M, K, Kp) and, with the
        // block B appended, w4a8_quantize_activations_hadamard; every buffer has the length the
        // kernel indexes, and B divides K and is at most W4A8_HCHUNK (check_transform_args).
        unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {entry}"), e))?;
        let flag = self.download("non-finite flag", &bad)?[0];
        if flag != 0 {
            if block.is_some() {
                // The oracle's error, found on the host (only on this failure path): the first row
                // with a non-finite x' or a rotation that overflows.
                return Err(first_transform_error(x, m, k, t).unwrap_or_else(|| Error::Backend {
                    backend: BackendKind::Cuda,
                    message: format!("{entry} flagged a non-finite value the host does not find"),
                }));
            }
            let index = (u64::MAX - flag) as usize;
            let raw = x[index].to_f32();
            let (what, value) = match smooth {
                Some(s) if raw.is_finite() => ("smoothed activations", raw * s[index % k]),
                _ => ("activations", raw),
            };
            return Err(Error::NonFinite { what, index, value });
        }
        Ok(CudaActivations { device_id: self.info.id, m, k, values, scales })
    }

    fn upload_activations(&self, x: &QuantizedActivations) -> Result<CudaActivations> {
        let padded = layout::pad_activations(x.values(), x.m(), x.k());
        Ok(CudaActivations {
            device_id: self.info.id,
            m: x.m(),
            k: x.k(),
            values: self.upload("activations", &padded)?,
            scales: self.upload("activation scales", x.scales())?,
        })
    }

    fn read_activations(&self, x: &CudaActivations) -> Result<QuantizedActivations> {
        check_owner("activations", x, self.info.id)?;
        let padded = self.download("activations", &x.values)?;
        let kp = layout::padded_k(x.k);
        let values = padded.chunks(kp).take(x.m).flat_map(|r| r[..x.k].iter().copied()).collect();
        QuantizedActivations::new(x.m, x.k, values, self.download("activation scales", &x.scales)?)
    }

    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<CudaOutput> {
        w4a8_core::format::check_nonzero("M", m)?;
        w4a8_core::format::check_nonzero("N", n)?;
        self.check_alloc("output", m.saturating_mul(n).saturating_mul(2))?;
        let data = if fill.to_bits() == 0 {
            self.stream.alloc_zeros::<f16>(m * n).map_err(|e| driver_err("output", e))?
        } else {
            self.upload("output", &vec![fill; m * n])?
        };
        Ok(CudaOutput { device_id: self.info.id, m, n, data })
    }

    fn gemm_into(&self, x: &CudaActivations, w: &CudaWeights, y: &mut CudaOutput) -> Result<()> {
        self.launch_gemm(x, w, y, None)
    }

    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan> {
        check_plan_args(m, n, k, granularity)?;
        let plan = self.plan(m, layout::padded_n(n), layout::padded_k(k), None)?;
        Ok(describe_plan(&plan, granularity))
    }

    fn read_output(&self, y: &CudaOutput) -> Result<Vec<f16>> {
        check_owner("output", y, self.info.id)?;
        self.download("output", &y.data)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("cuStreamSynchronize", e))
    }
}
