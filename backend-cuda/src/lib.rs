//! # w4a8-cuda
//!
//! The W4A8 GEMM on NVIDIA int8 tensor cores (`mma.sync.m16n8k32.s8.s8.s32`, compute capability
//! 8.0+), through [cudarc] with the driver and NVRTC loaded at run time: the crate builds, and its
//! CPU-side tests run, on a machine with no CUDA at all; there [`CudaBackend::new`] returns
//! [`w4a8_core::Error::Unavailable`] naming what is missing.
//!
//! - [`layout`]: the repacked weight layout made once in `prepare` (and its exact inverse), the
//!   kernel configurations and the stream-K launch plan.
//! - [`kernels`]: the CUDA sources (`kernels/*.cu`, `*.cuh`), the entry-point table, NVRTC.
//! - [`emulate`]: a lane-by-lane CPU emulator of the GEMM kernel that the tests hold to the oracle.
//! - [`sass`]: the kernels' SASS without a GPU (NVRTC + `cuobjdump`): registers, spills and the main
//!   loop's instructions per IMMA (example `sass_report`, `benches/SASS.md`).
//! - [`baselines`] (feature `baselines`): cuBLAS FP16 and cuBLASLt INT8 GEMMs and CUDA-event
//!   timers for the benchmark.
#![warn(missing_docs)]

mod backend;
#[cfg(feature = "baselines")]
pub mod baselines;
pub mod emulate;
pub mod kernels;
pub mod layout;
pub mod sass;

pub use backend::{
    CudaActivations, CudaBackend, CudaOutput, CudaWeights, MIN_COMPUTE_CAPABILITY, describe_plan,
    probe_driver,
};
