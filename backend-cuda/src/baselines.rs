//! Comparison GEMMs for the benchmark (feature `baselines`): cuBLAS FP16 and cuBLASLt INT8, on the
//! backend's own stream. Neither creates anything per call once its shape is prepared, so a timed
//! call is the GEMM alone.
//!
//! Both compute the same product as the W4A8 kernel, `Y (M×N) = X (M×K) · Wᵀ` with X and W
//! row-major. cuBLAS is column-major, so each call computes `Yᵀ = W · Xᵀ`: the row-major W buffer is
//! a column-major K×N matrix used transposed (`op(A) = T`, lda = K), the row-major X buffer a
//! column-major K×M matrix used as is (`op(B) = N`, ldb = K), and the column-major N×M result with
//! ldc = N is exactly row-major Y. This "TN" form is also what cuBLASLt's int8 tensor-core
//! kernels require.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig, sys as blas_sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use w4a8_core::{BackendKind, Error, Result, f16};

use crate::backend::driver_err;

fn blas_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend { backend: BackendKind::Cuda, message: format!("{what}: {e:?}") }
}

fn probe(lib: &str, present: bool) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(Error::Unavailable {
            backend: BackendKind::Cuda,
            reason: format!(
                "{lib} not found on the loader path (it ships with the CUDA toolkit and PyTorch)"
            ),
        })
    }
}

/// cuBLAS FP16 GEMM (f16 in, f32 accumulate, f16 out: `cublasGemmEx` with `CUBLAS_COMPUTE_32F`).
pub struct CublasF16Gemm {
    blas: CudaBlas,
}

impl CublasF16Gemm {
    /// A cuBLAS handle bound to `stream` (use [`crate::CudaBackend::stream`]).
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only dlopen()s candidate names.
        probe("libcublas.so.13", unsafe { blas_sys::is_culib_present() })?;
        Ok(CublasF16Gemm { blas: CudaBlas::new(stream).map_err(|e| blas_err("cublasCreate", e))? })
    }

    /// `y (M×N) = x (M×K) · wᵀ` with `w` N×K, all row-major f16.
    pub fn gemm(
        &self,
        x: &CudaSlice<f16>,
        w: &CudaSlice<f16>,
        y: &mut CudaSlice<f16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        check_operands([x.len(), w.len(), y.len()], m, n, k)?;
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: f16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: f16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: the lengths were checked above against the leading dimensions and shapes passed.
        unsafe { self.blas.gemm(cfg, w, x, y) }.map_err(|e| blas_err("cublasGemmEx f16", e))
    }
}

/// Both baselines take x M×K, w N×K and y M×N: each buffer must hold at least its shape.
fn check_operands(lens: [usize; 3], m: usize, n: usize, k: usize) -> Result<()> {
    let names = ["baseline x (M·K)", "baseline w (N·K)", "baseline y (M·N)"];
    let needs = [m.saturating_mul(k), n.saturating_mul(k), m.saturating_mul(n)];
    for ((what, len), need) in names.into_iter().zip(lens).zip(needs) {
        if len < need {
            return Err(Error::ShapeMismatch { what, expected: need, got: len });
        }
    }
    Ok(())
}

/// cuBLASLt INT8 GEMM (W8A8): s8 × s8 → s32 with `CUBLAS_COMPUTE_32I`, "TN" layout.
///
/// The matmul descriptor, the three layouts and the algorithm the heuristic picks are built once per
/// (M, N, K) by [`CublasLtI8Gemm::prepare`] (or the first call at that shape) and cached, so a call
/// is the `cublasLtMatmul` alone, as in an inference engine that plans its GEMMs ahead.
pub struct CublasLtI8Gemm {
    handle: lt_sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: HashMap<(usize, usize, usize), LtPlan>,
}

/// The cuBLASLt objects of one (M, N, K): descriptor, layouts of A (W, K×N), B (X, K×M) and C/D
/// (Y, N×M), and the chosen algorithm. Destroys what it holds when dropped.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    /// A, B, C in that order once complete (fewer while being built).
    layouts: Vec<lt_sys::cublasLtMatrixLayout_t>,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl LtPlan {
    /// Creates the descriptors for `y (M×N) = x (M×K) · wᵀ` and asks the heuristic for the fastest
    /// algorithm within `ws_size` bytes of workspace. On error, whatever was created is destroyed.
    fn new(
        handle: lt_sys::cublasLtHandle_t,
        (m, n, k): (usize, usize, usize),
        ws_size: usize,
    ) -> Result<Self> {
        use lt_sys::cudaDataType_t::{CUDA_R_8I, CUDA_R_32I};
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32I, CUDA_R_32I)
            .map_err(|e| blas_err("cublasLtMatmulDescCreate", e))?;
        let mut plan = LtPlan {
            desc,
            layouts: Vec::with_capacity(3),
            algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // CUBLASLT_MATMUL_DESC_TRANSA takes an int32 cublasOperation_t.
        let op_t = blas_sys::cublasOperation_t::CUBLAS_OP_T as i32;
        // SAFETY: desc is live (owned by `plan`); the attribute buffer is one cublasOperation_t, as
        // TRANSA expects, and is read during the call only.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op_t as *const i32 as *const _,
                std::mem::size_of_val(&op_t),
            )
        }
        .map_err(|e| blas_err("TRANSA", e))?;
        for (what, ty, rows, cols, ld) in [
            ("layout A", CUDA_R_8I, k, n, k),
            ("layout B", CUDA_R_8I, k, m, k),
            ("layout C", CUDA_R_32I, n, m, n),
        ] {
            let layout = lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
                .map_err(|e| blas_err(what, e))?;
            plan.layouts.push(layout);
        }
        let (a, b, c) = (plan.layouts[0], plan.layouts[1], plan.layouts[2]);
        let pref = lt::create_matmul_pref().map_err(|e| blas_err("cublasLtMatmulPreferenceCreate", e))?;
        // SAFETY: pref is live; the buffer is one usize as MAX_WORKSPACE_BYTES expects. The handle,
        // descriptor and layouts are live; D has C's layout (the product is written in place).
        let heuristic = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws_size as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )
            .and_then(|_| lt::get_matmul_algo_heuristic(handle, plan.desc, a, b, c, c, pref))
        };
        // SAFETY: pref was created above, is destroyed once, here, and is not used after this.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        plan.algo = heuristic.map_err(|e| blas_err("cublasLtMatmulAlgoGetHeuristic (int8)", e))?.algo;
        Ok(plan)
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each object was created by LtPlan::new and is destroyed exactly once, here.
        // cuBLASLt descriptors may be destroyed while matmuls that used them are still in flight
        // (they are read when the call is enqueued).
        unsafe {
            for l in self.layouts.drain(..) {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

impl CublasLtI8Gemm {
    /// A cuBLASLt handle and a 32 MiB workspace on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only dlopen()s candidate names.
        probe("libcublasLt.so.13", unsafe { lt_sys::is_culib_present() })?;
        let handle = lt::create_handle().map_err(|e| blas_err("cublasLtCreate", e))?;
        let workspace = match stream.alloc_zeros::<u8>(32 << 20) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was created above and is not used after this.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(driver_err("cuBLASLt workspace", e));
            }
        };
        Ok(CublasLtI8Gemm { handle, stream, workspace, plans: HashMap::new() })
    }

    /// Builds and caches the descriptors, layouts and algorithm for (M, N, K), so that no later
    /// [`CublasLtI8Gemm::gemm`] at that shape creates anything. Idempotent.
    pub fn prepare(&mut self, m: usize, n: usize, k: usize) -> Result<()> {
        if !self.plans.contains_key(&(m, n, k)) {
            let plan = LtPlan::new(self.handle, (m, n, k), self.workspace.len())?;
            self.plans.insert((m, n, k), plan);
        }
        Ok(())
    }

    /// `y (M×N, s32) = x (M×K, s8) · wᵀ` with `w` N×K s8, all row-major, with the cached plan of
    /// this shape (built here on the first call at a shape not [`prepare`](Self::prepare)d).
    /// cuBLASLt's int8 kernels want K (the leading dimension of both operands) a multiple of 4.
    pub fn gemm(
        &mut self,
        x: &CudaSlice<i8>,
        w: &CudaSlice<i8>,
        y: &mut CudaSlice<i32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        check_operands([x.len(), w.len(), y.len()], m, n, k)?;
        self.prepare(m, n, k)?;
        let plan = &self.plans[&(m, n, k)];
        let (a_layout, b_layout, c_layout) = (plan.layouts[0], plan.layouts[1], plan.layouts[2]);
        let (alpha, beta) = (1i32, 0i32);
        let ws_size = self.workspace.len();
        let (wp, _g1) = w.device_ptr(&self.stream);
        let (xp, _g2) = x.device_ptr(&self.stream);
        let (yp, _g3) = y.device_ptr_mut(&self.stream);
        let (wsp, _g4) = self.workspace.device_ptr_mut(&self.stream);
        // SAFETY: operand lengths were checked against the layouts (K×N, K×M, N×M with the leading
        // dimensions given) of this (M, N, K)'s plan; alpha/beta are s32 as the CUDA_R_32I scale
        // type requires; the workspace holds ws_size bytes, the bound the algorithm was chosen
        // under; the algorithm came from the heuristic for exactly these descriptors.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const i32 as *const _,
                &beta as *const i32 as *const _,
                wp as *const _,
                a_layout,
                xp as *const _,
                b_layout,
                yp as *const _,
                c_layout,
                yp as *mut _,
                c_layout,
                &plan.algo,
                wsp as *mut _,
                ws_size,
                self.stream.cu_stream() as _,
            )
        }
        .map_err(|e| blas_err("cublasLtMatmul int8", e))
    }
}

impl Drop for CublasLtI8Gemm {
    fn drop(&mut self) {
        // Descriptors do not depend on the handle; free them first all the same, so that nothing
        // made for this handle outlives it.
        self.plans.clear();
        // SAFETY: the handle was created in `new` and is destroyed exactly once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_lengths_are_checked_by_name() {
        assert!(check_operands([6, 12, 8], 2, 4, 3).is_ok());
        let e = check_operands([6, 11, 8], 2, 4, 3).unwrap_err();
        assert!(
            matches!(e, Error::ShapeMismatch { what: "baseline w (N·K)", expected: 12, got: 11 }),
            "{e:?}"
        );
        let e = check_operands([6, 12, 0], 2, 4, 3).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { what: "baseline y (M·N)", expected: 8, got: 0 }), "{e:?}");
    }
}
