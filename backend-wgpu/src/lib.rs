//! # w4a8-wgpu
//!
//! The W4A8 GEMM as WGSL compute shaders on wgpu (Vulkan, Metal, DX12, WebGPU): per-token int8
//! activation quantization on the device, int4 → int8 weight unpacking in registers, exact int32
//! accumulation with `dot4I8Packed`, and the fused epilogue
//! `Y = f16(((f32(acc) · s_x[m]) · s_ch[n]) + bias[n])`, bit-for-bit the CPU oracle's.
//!
//! Kernels (sources in `shaders/`, entry points in [`shaders`]):
//! - M ≤ 16: `w4a8_gemm_decode`, one dispatch: 16 columns per workgroup, K split over its 256
//!   invocations and reduced in workgroup memory in a fixed order (no atomics), epilogue fused;
//! - M > 16: `w4a8_gemm_tiled_128`, 128×128 workgroup tiles of 256 invocations with 8×8 outputs
//!   each, 64 k per barrier from double-buffered k-major int8 tiles (weights dequantized once per
//!   workgroup while staging), epilogue fused; `w4a8_gemm_tiled_64` (64×64, 64 invocations) where
//!   the device allows only 16 KiB of workgroup memory;
//! - `quantize_activations` (workgroup-memory reduction) or `quantize_activations_subgroup`
//!   (subgroupMax) when the adapter has subgroups;
//! - `f16_gemm_tiled_128` / `_64`, our f16 GEMM baseline for the benches: the same tiling, f32
//!   accumulation, 16 k (f32-staged) per barrier.
//!
//! Source map: [`WgpuBackend`] and device discovery, loss and error scopes in `device.rs`;
//! shader modules, pipelines (all created at start-up) and dispatch recording in `pipelines.rs`;
//! buffers, uniform blocks and readback in `buffers.rs`; the handles in `tensors.rs`; options in
//! `options.rs`; one module per operation under `ops/` (activations, weights, the decode and tiled
//! GEMMs, the f16 baseline, outputs), which also holds the `Gemm` implementation.
//!
//! ```no_run
//! use w4a8_core::Gemm;
//! let backend = w4a8_wgpu::WgpuBackend::new()?;
//! println!("{}", backend.info().name);
//! # Ok::<(), w4a8_core::Error>(())
//! ```
#![warn(missing_docs)]

mod buffers;
mod device;
pub mod layout;
mod ops;
mod options;
mod pipelines;
pub mod shaders;
mod tensors;

pub use device::WgpuBackend;
pub use options::{GemmKernel, TimerKind, WgpuOptions};
pub use tensors::{F16Matrix, WgpuActivations, WgpuOutput, WgpuWeights};
pub use wgpu;
