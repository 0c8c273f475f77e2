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
//! ```no_run
//! use w4a8_core::Gemm;
//! let backend = w4a8_wgpu::WgpuBackend::new()?;
//! println!("{}", backend.info().name);
//! # Ok::<(), w4a8_core::Error>(())
//! ```
#![warn(missing_docs)]

mod backend;
pub mod layout;
pub mod shaders;

pub use backend::{
    F16Matrix, GemmKernel, TimerKind, WgpuActivations, WgpuBackend, WgpuOptions, WgpuOutput, WgpuWeights,
};
pub use wgpu;
