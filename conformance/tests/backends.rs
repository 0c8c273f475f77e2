//! Every property of the conformance contract, on every backend compiled in. One line per backend.

use conformance::backend_suite;
use conformance::w4a8_core::{BackendKind, CpuOracle};

backend_suite!(cpu, BackendKind::Cpu, CpuOracle, || Ok(CpuOracle::new()));

#[cfg(feature = "wgpu")]
backend_suite!(wgpu, BackendKind::Wgpu, w4a8_wgpu::WgpuBackend, w4a8_wgpu::WgpuBackend::new);

#[cfg(feature = "cuda")]
backend_suite!(cuda, BackendKind::Cuda, w4a8_cuda::CudaBackend, w4a8_cuda::CudaBackend::new);
