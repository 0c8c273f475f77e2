//! The adapter and device: discovery, limits, the backend struct, device loss and error scopes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use w4a8_core::gemm::next_device_id;
use w4a8_core::{BackendKind, DeviceInfo, Error, Result};

use crate::options::{TimerKind, WgpuOptions};
use crate::pipelines::{PipelineTable, runtime_checks_dropped};
use crate::shaders;

pub(crate) const BACKEND: BackendKind = BackendKind::Wgpu;

/// How long [`WgpuBackend::loss_or`] waits for a destroyed device's loss to be reported.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const LOSS_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// What wgpu's callbacks report about the device, readable without a lock.
#[derive(Default)]
pub(crate) struct Health {
    /// Set once the device-lost callback has run (after `reason` is written).
    pub(crate) lost: AtomicBool,
    /// The loss reason.
    pub(crate) reason: Mutex<Option<String>>,
    /// Errors that reached the uncaptured-error handler (raised outside every error scope).
    pub(crate) uncaptured: AtomicU64,
    /// The latest of them.
    pub(crate) last_uncaptured: Mutex<Option<String>>,
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
    pub(crate) info: DeviceInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) max_binding: u64,
    pub(crate) max_groups: u32,
    /// `max_compute_workgroup_storage_size`, under [`WgpuOptions::max_workgroup_storage_bytes`].
    pub(crate) max_workgroup_bytes: u64,
    pub(crate) subgroups: bool,
    pub(crate) timestamps: bool,
    pub(crate) modules: HashMap<&'static str, wgpu::ShaderModule>,
    /// Every pipeline the backend dispatches, created in [`WgpuBackend::from_device`] and read
    /// without a lock (see [`WgpuBackend::pipeline`]).
    pub(crate) pipelines: PipelineTable,
    /// What wgpu's callbacks said about the device: loss and errors outside every error scope.
    pub(crate) health: Arc<Health>,
    /// Uniform blocks by content, each written once (see [`WgpuBackend::uniform`]).
    pub(crate) uniforms: RwLock<HashMap<Box<[u8]>, wgpu::Buffer>>,
    /// Four zero bytes, bound as `bias` when the weights have none (read-only, shared by every call).
    pub(crate) no_bias: wgpu::Buffer,
    /// Bytes in the live buffers this backend created (see [`DeviceBuffer`]).
    pub(crate) live_bytes: Arc<AtomicU64>,
    /// [`WgpuOptions::max_device_bytes`].
    pub(crate) budget: Option<u64>,
}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BACKEND, reason: reason.into() }
}

pub(crate) fn backend_error(message: impl Into<String>) -> Error {
    Error::Backend { backend: BACKEND, message: message.into() }
}

/// Runs a future to completion: with pollster on native targets; on wasm a future that is not
/// ready at once (the browser resolves it on its event loop) is an error, since this API is
/// synchronous.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output> {
    Ok(pollster::block_on(f))
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output> {
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
pub(crate) fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
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

    pub(crate) fn check_lost(&self) -> Result<()> {
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
    pub(crate) fn loss_or(&self, error: Error) -> Error {
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
    pub(crate) fn unscoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
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
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
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
}
