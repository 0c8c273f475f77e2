//! # w4a8-reliability
//!
//! How the library holds up in a process that runs for weeks: many threads sharing one backend,
//! thousands of prepare/quantize/GEMM/read cycles with memory sampled, and faults — a device lost
//! in the middle of a batch, an out-of-memory on prepare, an interrupted weight-file write.
//!
//! The generic bodies live in `conformance` (the concurrency property and [`soak::long_run`]); the
//! fault scenarios are here, in [`faults`]. The `w4a8-reliability` binary runs all of it at full size
//! and prints the tables of `benches/RELIABILITY.md`; this crate's tests run it at a small size in
//! CI. The fuzz figures of that page come from `scripts/fuzz.sh`.

pub mod faults;

pub use conformance::soak;
pub use conformance::{ConcurrencyReport, concurrent_gemms_match_serial, mixed_inputs, mixed_shapes};

use w4a8_core::{BackendKind, Result};
use w4a8_wgpu::{WgpuBackend, WgpuOptions};

/// Opens the wgpu backend, or returns `None` with the reason printed — unless `W4A8_REQUIRE` names
/// `wgpu`, then a missing device panics (the conformance suite's rule).
pub fn wgpu_or_skip(options: WgpuOptions) -> Option<WgpuBackend> {
    conformance::open_or_skip(BackendKind::Wgpu, || WgpuBackend::new_with(options))
}

/// [`soak::long_run`] on the wgpu backend, sampling its live device bytes.
pub fn long_run_wgpu(b: &WgpuBackend, cycles: usize, samples: usize) -> Result<soak::LongRun> {
    soak::long_run(b, cycles, samples, |b| Some(b.device_bytes()))
}
