//! # w4a8-wgpu
//!
//! The W4A8 GEMM as WGSL compute shaders on wgpu (Vulkan, Metal, DX12, WebGPU): per-token int8
//! activation quantization on the device, int4 → int8 weight unpacking in registers, exact int32
//! accumulation with `dot4I8Packed`, and the fused epilogue
//! `Y = f16(((f32(acc) · s_x[m]) · s_ch[n]) + bias[n])`, bit-for-bit the CPU oracle's.
//!
//! Kernels (sources in `shaders/`, entry points in [`shaders`]):
//! - M ≤ 16: `w4a8_gemm_small_m`, split-K with an exact int32 atomic reduction, then
//!   `w4a8_epilogue`;
//! - M > 16: `w4a8_gemm_tiled`, 64×64 workgroup tiles with the epilogue fused;
//! - `quantize_activations` (workgroup-memory reduction) or `quantize_activations_subgroup`
//!   (subgroupMax) when the adapter has subgroups;
//! - `f16_gemm_tiled`, our f16 GEMM baseline for the benches.
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
