//! # w4a8-benches
//!
//! Benchmarks of the W4A8 kernels: criterion benches for the CPU-side work (`cargo bench -p
//! w4a8-benches`) and the `w4a8-bench` report binary, which on one device measures the ceilings (copy
//! bandwidth, f16 matrix peak), then times every W4A8 kernel beside its peers (cuBLAS FP16, cuBLASLt
//! INT8, our WGSL f16 GEMM) at the LLaMA-2 shapes of DESIGN.md, checks every timed case against a
//! reference, and writes a markdown table, JSON and a speedup plot.
//!
//! Each case has a kernel time (device time per run of runs queued back to back: launch latency
//! hidden) and a whole-call time (host clock around one call and its completion), and each W4A8 row
//! records the kernel plan the backend launched.
//!
//! The measurement logic is written once over a small adapter per backend
//! ([`backend::BenchBackend`]): [`cpu::CpuBench`] always, and the wgpu and CUDA adapters behind the
//! cargo features `wgpu` and `cuda`. The modules, in dependency order: [`config`] (what to measure)
//! and [`model`] (the report as plain data); [`check`] (result checks) and [`measure`] (sampling);
//! `peers` and [`run`] (the driver); [`markdown`], [`results`] and [`plot`] (output, from
//! [`model`] only).
#![warn(missing_docs)]

pub mod backend;
pub mod check;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda_adapter;
#[cfg(feature = "cuda")]
pub mod cuda_timer;
pub mod data;
pub mod markdown;
pub mod measure;
pub mod meta;
pub mod model;
pub mod open;
pub(crate) mod peers;
pub mod plot;
pub mod results;
pub mod run;
pub mod shapes;
pub mod stats;
#[cfg(feature = "wgpu")]
pub mod wgpu_adapter;
