//! The one error type of the library: every bad input and every device failure is a variant here.

use std::fmt;

/// Which backend a device belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The multi-threaded CPU oracle in `w4a8-core`.
    Cpu,
    /// WGSL compute shaders on wgpu (Vulkan, Metal, DX12, WebGPU).
    Wgpu,
    /// CUDA kernels on int8 tensor cores.
    Cuda,
}

impl BackendKind {
    /// Every backend, in the order discovery prefers them (fastest first).
    pub const ALL: [BackendKind; 3] = [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Cpu];

    /// The lower-case name used by the CLI, `W4A8_REQUIRE` and `W4A8_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Parses a name as printed by [`BackendKind::name`].
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|b| b.name() == name.trim().to_ascii_lowercase())
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong. Each variant names the offending input precisely enough to fix it;
/// after any of them the backend that returned it remains usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer's length does not match the shape it was given with, or two operands disagree on K.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which operand or dimension.
        what: &'static str,
        /// The length or size the other operands imply.
        expected: usize,
        /// The length or size that was passed.
        got: usize,
    },
    /// A dimension is zero.
    #[error("{what} must be at least 1, got 0")]
    EmptyDimension {
        /// Which dimension (`M`, `N` or `K`).
        what: &'static str,
    },
    /// The group size is not one of 32, 64, 128, 256.
    #[error("unsupported group size {group_size}: must be 32, 64, 128 or 256")]
    UnsupportedGroupSize {
        /// The group size that was asked for.
        group_size: usize,
    },
    /// K is not a multiple of the group size.
    #[error("K = {k} is not a multiple of the group size {group_size}")]
    KNotMultipleOfGroup {
        /// The reduction dimension.
        k: usize,
        /// The group size.
        group_size: usize,
    },
    /// K is so large that the int32 accumulator could overflow (127 · 128 · K ≥ 2³¹).
    #[error("K = {k} exceeds {max}, the largest K for which the int32 accumulation is exact")]
    KTooLarge {
        /// The reduction dimension.
        k: usize,
        /// [`crate::MAX_K`].
        max: usize,
    },
    /// A NaN or infinity in an input, or one produced by scaling an input.
    #[error("non-finite value {value} in {what} at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A value breaks an invariant of the format (a group scale outside [1, 16], a negative
    /// scale, an int8 value of -128, a non-zero padding nibble).
    #[error("invalid {what} at index {index}: {reason}")]
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A handle made by another device, or by another backend, was passed in.
    #[error("{what} belongs to device #{owner}, not to this device #{this}")]
    ForeignBuffer {
        /// Which argument.
        what: &'static str,
        /// Id of the device that made it.
        owner: u64,
        /// Id of the device it was passed to.
        this: u64,
    },
    /// A shape needs more than the device allows (binding size, dispatch size, memory).
    #[error("{what}: {requested} exceeds the device limit {limit} ({limit_name})")]
    OverDeviceLimit {
        /// What was being sized.
        what: &'static str,
        /// The amount requested.
        requested: u64,
        /// The device's limit.
        limit: u64,
        /// The name of the limit, as the API calls it.
        limit_name: &'static str,
    },
    /// An allocation was refused: by the host allocator (`backend` is `None`), by a device's driver,
    /// or because it would take a backend past the memory budget it was opened with. Returned before
    /// anything is written, so earlier results and the backend stay usable.
    #[error(
        "out of {} memory: {what} needs {requested} bytes ({reason})",
        .backend.map_or("host", BackendKind::name)
    )]
    OutOfMemory {
        /// The backend whose device memory ran out, or `None` for host memory.
        backend: Option<BackendKind>,
        /// What was being allocated.
        what: &'static str,
        /// The size of the refused allocation, in bytes.
        requested: u64,
        /// Why: the budget and what is in use, or what the allocator or driver said.
        reason: String,
    },
    /// No usable device for this backend (no driver, no adapter, an unsupported GPU).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend asked for.
        backend: BackendKind,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The device was lost (driver reset, removal, destroyed).
    #[error("{backend} device lost: {reason}")]
    DeviceLost {
        /// The backend whose device was lost.
        backend: BackendKind,
        /// What the driver said.
        reason: String,
    },
    /// Any other failure reported by a driver, compiler or runtime.
    #[error("{backend} backend error: {message}")]
    Backend {
        /// The backend that failed.
        backend: BackendKind,
        /// What it said.
        message: String,
    },
    /// A weight file is malformed, truncated, of an unknown version, or does not hold what it claims.
    #[error("weight file: {0}")]
    Format(String),
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
