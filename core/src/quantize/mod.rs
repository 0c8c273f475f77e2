//! Quantizers: per-token activations and round-to-nearest weights.

mod activations;
mod weights;

pub use activations::{quantize_activations, quantize_activations_with};
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use weights::{pack_int4_rows, rtn_dequantized};
pub use weights::{quantize_weights_rtn, search_group_scales};

/// Round half to even for |x| < 2²²: adding and subtracting 1.5 · 2²³ (= 12 582 912) leaves x rounded
/// to an integer by the FPU's own round-to-nearest-even. Same result as `f32::round_ties_even`, but it
/// vectorizes (that one is a libm call on baseline x86-64).
#[inline(always)]
pub(crate) fn rne_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// A loop nest compiled once per x86 vector instruction set and chosen at run time by [`dispatch`].
///
/// The crate is built for baseline x86-64 (SSE2, 4 f32 lanes); the quantizers' searches are wide,
/// independent lanes of plain f32/f64 arithmetic that AVX2 (8 lanes) and AVX-512 (16 lanes) run
/// 2–4× faster. `run` and every helper it calls must be `#[inline(always)]`, so that the whole nest is
/// compiled inside the `#[target_feature]` wrappers below. Results are identical on every path: each
/// lane performs the same IEEE operations in the same order (Rust never fuses a multiply and an add
/// on its own), only more of them per instruction.
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `kernel` compiled for the widest vector extension this CPU has (AVX-512F, AVX2, baseline).
///
/// The VEX/EVEX-encoded paths also sidestep a hazard: faer's AVX-512 GEMM kernels return without
/// `vzeroupper`, and legacy-SSE code then runs 5–6× slower on that thread (see
/// [`crate::calib`]'s `clear_upper_simd_state`).
#[inline]
pub(crate) fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement of
            // `run_avx512`.
            return unsafe { run_avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of `run_avx2`.
            return unsafe { run_avx2(kernel) };
        }
    }
    kernel.run()
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rne_small_matches_round_ties_even() {
        for i in -300_000..300_000 {
            let x = i as f32 * 0.000_5;
            assert_eq!(super::rne_small(x), x.round_ties_even(), "{x}");
        }
        for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 4_194_303.5] {
            assert_eq!(super::rne_small(x), x.round_ties_even(), "{x}");
        }
    }
}
