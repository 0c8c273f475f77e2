//! # w4a8-core
//!
//! The W4A8 number format (4-bit weights, 8-bit activations), its quantizers, the exact CPU oracle
//! and the backend-agnostic [`Gemm`] trait that every backend implements. No GPU dependencies.
//!
//! ## The arithmetic every backend computes
//! - Activations, per token: `s_x[m] = max_k |X[m,k]| / 127`, `q_x = clamp(rne(X / s_x), -127, 127)`;
//!   an all-zero row has `s_x = 0`. X may first be smoothed and rotated online by a Walsh–Hadamard
//!   transform, exactly as every backend does it ([`transform`]).
//! - Weights: int4 `q_w ∈ [-8, 7]`, per channel `W ≈ s_ch[n] · q_w` or per group
//!   `W ≈ s_ch[n] · s_g[k/g, n] · q_w` with the integer `s_g ∈ [1, 16]`.
//! - `acc[m,n] = Σ_k q_x[m,k] · w8[n,k]` in exact int32 (`w8 = s_g · q_w` per group), K ≤ 65 536.
//! - `Y[m,n] = f16(((f32(acc) · s_x[m]) · s_ch[n]) + bias[n])`, left to right in f32, round to
//!   nearest even; without a bias there is no addition.

#[cfg(not(target_arch = "wasm32"))]
pub mod calib;
pub mod error;
pub mod format;
pub mod gemm;
pub mod io;
pub mod oracle;
pub mod pack;
pub mod quantize;
pub mod report;
pub mod rng;
pub mod transform;

pub use error::{BackendKind, Error, Result};
pub use format::{
    DEFAULT_GROUP_SIZE, GROUP_SIZES, Granularity, MAX_GROUP_SCALE, MAX_K, QuantizedActivations, W4A8Weights,
};
pub use gemm::{DeviceInfo, DeviceTensor, Gemm, KernelPlan};
pub use half::f16;
pub use oracle::CpuOracle;
pub use transform::{ActivationTransform, MAX_HADAMARD_BLOCK};
