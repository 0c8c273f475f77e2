//! Device buffers: creation under the budget and the limits, uniform blocks, readback.

use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use w4a8_core::{Error, Result};

use crate::WgpuBackend;
#[cfg(target_arch = "wasm32")]
use crate::device::unavailable;
use crate::device::{BACKEND, backend_error, block_on};
use crate::tensors::DeviceBuffer;

/// How long a readback waits for its mapping callback after the device has finished its work.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const READBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many distinct uniform blocks stay cached (a few dozen bytes each, one small buffer).
pub(crate) const UNIFORM_CACHE_ENTRIES: usize = 1024;

impl WgpuBackend {
    pub(crate) fn check_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
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

    pub(crate) fn check_buffer(&self, what: &'static str, bytes: u64) -> Result<()> {
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
    pub(crate) fn buffer_with(
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
    pub(crate) fn create_buffer(
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
    pub(crate) fn storage_init(
        &self,
        what: &'static str,
        data: &[u8],
        extra: wgpu::BufferUsages,
    ) -> Result<DeviceBuffer> {
        self.check_buffer(what, data.len() as u64)?;
        self.buffer_with(what, data, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra)
    }

    pub(crate) fn storage_empty(&self, what: &'static str, bytes: u64) -> Result<DeviceBuffer> {
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
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> Result<DeviceBuffer> {
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
    pub(crate) fn no_bias_placeholder(&self) -> Result<DeviceBuffer> {
        Ok(DeviceBuffer { buffer: self.no_bias.clone(), live: None })
    }

    pub(crate) fn wait(&self) -> Result<()> {
        let r = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check_lost()?;
        r.map(|_| ()).map_err(|e| self.loss_or(backend_error(format!("waiting for the device: {e}"))))
    }

    /// Copies `size` bytes at `offset` of `src` back to the host.
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
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
}

/// `a · b · elem_bytes` in u64, saturating: sizes are computed in u64 so that they cannot wrap on
/// 32-bit targets (wasm32), and a product past u64 is over every limit rather than small.
pub(crate) fn bytes_of_dims(a: usize, b: usize, elem_bytes: u64) -> u64 {
    (a as u64).saturating_mul(b as u64).saturating_mul(elem_bytes)
}

/// A host vector of `len` copies of `fill`, or [`Error::OutOfMemory`] (host) when `len` does not fit
/// `usize` or the allocator refuses, instead of an abort.
pub(crate) fn host_vec<T: Clone>(what: &'static str, len: u64, fill: T) -> Result<Vec<T>> {
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
pub(crate) fn row_slice(
    buf: &wgpu::Buffer,
    row0: usize,
    rows: usize,
    per_row: u64,
) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: row0 as u64 * per_row,
        size: NonZeroU64::new(rows as u64 * per_row),
    })
}
