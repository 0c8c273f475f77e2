//! Comparison GEMMs for the benchmark (feature `baselines`): cuBLAS FP16 and cuBLASLt INT8, on the
//! backend's own stream, plus CUDA-event timing.
//!
//! Both compute the same product as the W4A8 kernel, `Y (M×N) = X (M×K) · Wᵀ` with X and W
//! row-major. cuBLAS is column-major, so each call computes `Yᵀ = W · Xᵀ`: the row-major W buffer is
//! a column-major K×N matrix used transposed (`op(A) = T`, lda = K), the row-major X buffer a
//! column-major K×M matrix used as is (`op(B) = N`, ldb = K), and the column-major N×M result with
//! ldc = N is exactly row-major Y. This "TN" form is also what cuBLASLt's int8 tensor-core
//! kernels require.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig, sys as blas_sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
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
pub struct CublasLtI8Gemm {
    handle: lt_sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
}

impl CublasLtI8Gemm {
    /// A cuBLASLt handle and a 32 MiB workspace on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only dlopen()s candidate names.
        probe("libcublasLt.so.13", unsafe { lt_sys::is_culib_present() })?;
        let handle = lt::create_handle().map_err(|e| blas_err("cublasLtCreate", e))?;
        let workspace =
            stream.alloc_zeros::<u8>(32 << 20).map_err(|e| driver_err("cuBLASLt workspace", e))?;
        Ok(CublasLtI8Gemm { handle, stream, workspace })
    }

    /// `y (M×N, s32) = x (M×K, s8) · wᵀ` with `w` N×K s8, all row-major. cuBLASLt's int8 kernels
    /// want K (the leading dimension of both operands) a multiple of 4.
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
        use lt_sys::cudaDataType_t::{CUDA_R_8I, CUDA_R_32I};
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32I, CUDA_R_32I)
            .map_err(|e| blas_err("cublasLtMatmulDescCreate", e))?;
        // CUBLASLT_MATMUL_DESC_TRANSA takes an int32 cublasOperation_t.
        let op_t = blas_sys::cublasOperation_t::CUBLAS_OP_T as i32;
        let a_layout = lt::create_matrix_layout(CUDA_R_8I, k as u64, n as u64, k as i64);
        let b_layout = lt::create_matrix_layout(CUDA_R_8I, k as u64, m as u64, k as i64);
        let c_layout = lt::create_matrix_layout(CUDA_R_32I, n as u64, m as u64, n as i64);
        let result = (|| -> Result<()> {
            let (a_layout, b_layout, c_layout) = (
                a_layout.map_err(|e| blas_err("layout A", e))?,
                b_layout.map_err(|e| blas_err("layout B", e))?,
                c_layout.map_err(|e| blas_err("layout C", e))?,
            );
            // SAFETY: desc is live; the attribute buffer is one cublasOperation_t, as TRANSA expects.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &op_t as *const _ as *const _,
                    std::mem::size_of_val(&op_t),
                )
            }
            .map_err(|e| blas_err("TRANSA", e))?;
            let pref = lt::create_matmul_pref().map_err(|e| blas_err("cublasLtMatmulPreferenceCreate", e))?;
            let ws_size = self.workspace.len();
            // SAFETY: pref is live; the buffer is one usize as MAX_WORKSPACE_BYTES expects.
            let heuristic = unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws_size as *const usize as *const _,
                    std::mem::size_of::<usize>(),
                )
                .and_then(|_| {
                    lt::get_matmul_algo_heuristic(
                        self.handle,
                        desc,
                        a_layout,
                        b_layout,
                        c_layout,
                        c_layout,
                        pref,
                    )
                })
            };
            // SAFETY: pref was created above and is not used after this.
            let _ = unsafe { lt::destroy_matmul_pref(pref) };
            let heuristic = heuristic.map_err(|e| blas_err("cublasLtMatmulAlgoGetHeuristic (int8)", e))?;
            let (alpha, beta) = (1i32, 0i32);
            let (wp, _g1) = w.device_ptr(&self.stream);
            let (xp, _g2) = x.device_ptr(&self.stream);
            let (yp, _g3) = y.device_ptr_mut(&self.stream);
            let (wsp, _g4) = self.workspace.device_ptr_mut(&self.stream);
            // SAFETY: operand lengths were checked against the layouts (K×N, K×M, N×M with the
            // leading dimensions given); alpha/beta are s32 as the CUDA_R_32I scale type requires;
            // the workspace holds ws_size bytes; the algorithm came from the heuristic for exactly
            // these descriptors.
            unsafe {
                lt::matmul(
                    self.handle,
                    desc,
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
                    &heuristic.algo,
                    wsp as *mut _,
                    ws_size,
                    self.stream.cu_stream() as _,
                )
            }
            .map_err(|e| blas_err("cublasLtMatmul int8", e))
        })();
        // SAFETY: each handle was created above and is destroyed once, after the (queued) matmul
        // call has returned; cuBLASLt descriptors may be destroyed while the work is in flight.
        unsafe {
            for l in [a_layout, b_layout, c_layout].into_iter().flatten() {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(desc);
        }
        result
    }
}

impl Drop for CublasLtI8Gemm {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed exactly once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// A pair of CUDA events for timing work queued on a stream, on the device.
pub struct EventTimer {
    start: CudaEvent,
    stop: CudaEvent,
    stream: Arc<CudaStream>,
}

impl EventTimer {
    /// Two timing-enabled events on `stream`'s context.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        Ok(EventTimer {
            start: ctx.new_event(flags).map_err(|e| driver_err("cuEventCreate", e))?,
            stop: ctx.new_event(flags).map_err(|e| driver_err("cuEventCreate", e))?,
            stream,
        })
    }

    /// Records the start event.
    pub fn start(&self) -> Result<()> {
        self.start.record(&self.stream).map_err(|e| driver_err("cuEventRecord", e))
    }

    /// Records the stop event, waits for it, and returns the device time between the two in ms.
    pub fn stop_ms(&self) -> Result<f32> {
        self.stop.record(&self.stream).map_err(|e| driver_err("cuEventRecord", e))?;
        self.start.elapsed_ms(&self.stop).map_err(|e| driver_err("cuEventElapsedTime", e))
    }

    /// Runs `f` `reps` times between the two events; returns the mean device time per run in ms.
    pub fn time_ms(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
        self.start()?;
        for _ in 0..reps {
            f()?;
        }
        Ok(self.stop_ms()? / reps.max(1) as f32)
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
