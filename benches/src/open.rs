//! Opening a backend by name and running generic code on it.
//!
//! [`BenchBackend`] has an associated `Gemm` type, so backends are not trait objects; a
//! [`BackendVisitor`] is the one generic body that [`visit_backend`] calls with whichever backend
//! was asked for.

use w4a8_core::{BackendKind, Error, Result};

use crate::backend::BenchBackend;

/// Generic code to run on one backend.
pub trait BackendVisitor {
    /// What the visit produces.
    type Output;
    /// Runs on the opened backend.
    fn visit<B: BenchBackend>(self, backend: &B) -> Self::Output;
}

/// The backends compiled into this build, in report order (GPU first).
pub fn compiled_backends() -> Vec<BackendKind> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push(BackendKind::Cuda);
    }
    if cfg!(feature = "wgpu") {
        v.push(BackendKind::Wgpu);
    }
    v.push(BackendKind::Cpu);
    v
}

/// Opens `kind` and runs `visitor` on it. A backend not compiled in, or one that finds no device, is
/// an [`Error::Unavailable`] that says which.
pub fn visit_backend<V: BackendVisitor>(kind: BackendKind, visitor: V) -> Result<V::Output> {
    match kind {
        BackendKind::Cpu => Ok(visitor.visit(&crate::cpu::CpuBench::new())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(visitor.visit(&crate::wgpu_adapter::WgpuBench::new()?)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(visitor.visit(&crate::cuda_adapter::CudaBench::new()?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::Unavailable {
            backend: other,
            reason: format!("not compiled in: build w4a8-benches with `--features {}`", other.name()),
        }),
    }
}
