//! # w4a8
//!
//! GPU kernels for W4A8 LLM inference: 4-bit weights, 8-bit activations, int8 math. This facade
//! re-exports the format, quantizers and the [`Gemm`] trait from `w4a8-core`, and [`Backend`], which
//! picks the best backend present at run time — a CUDA GPU (feature `cuda`), then a wgpu adapter
//! (feature `wgpu`, on by default), then the exact CPU oracle — or opens one by name.
//!
//! ```no_run
//! use w4a8::{Backend, Gemm, Granularity, f16, quantize::quantize_weights_rtn};
//! # fn main() -> w4a8::Result<()> {
//! let (n, k, m) = (256, 512, 4);
//! let w: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
//! let weights = quantize_weights_rtn(&w, n, k, Granularity::PerGroup { group_size: 128 }, None)?;
//! let backend = Backend::best()?;
//! let prepared = backend.prepare(&weights)?;
//! let x = vec![f16::from_f32(0.25); m * k];
//! let y: Vec<f16> = backend.linear(&x, m, &prepared, None)?; // M×N
//! # Ok(()) }
//! ```

mod backend;

pub use backend::{AnyActivations, AnyOutput, AnyWeights, Backend, Probe};
pub use w4a8_core::*;
