//! How a backend is set up and which kernel a call pins.

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
