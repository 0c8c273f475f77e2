//! # w4a8-benches
//!
//! Benchmarks of the W4A8 kernels: criterion benches for the CPU-side work (`cargo bench -p
//! w4a8-benches`) and the `w4a8-bench` report binary, which on one device measures the ceilings (copy
//! bandwidth, f16 matrix peak), then times every W4A8 kernel beside its peers (cuBLAS FP16, cuBLASLt
//! INT8, our WGSL f16 GEMM) at the LLaMA-2 shapes of DESIGN.md, checks every timed case against a
//! reference, and writes a markdown table, JSON and a speedup plot.
//!
//! The measurement logic is written once ([`report`]) over a small adapter per backend
//! ([`backend::BenchBackend`]): [`cpu::CpuBench`] always, and the wgpu and CUDA adapters behind the
//! cargo features `wgpu` and `cuda`.
#![warn(missing_docs)]

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda_adapter;
pub mod data;
pub mod markdown;
pub mod meta;
pub mod open;
pub mod plot;
pub mod report;
pub mod results;
pub mod shapes;
pub mod stats;
#[cfg(feature = "wgpu")]
pub mod wgpu_adapter;
