//! Quantizers: per-token activations and round-to-nearest weights.

mod activations;
mod weights;

pub use activations::quantize_activations;
pub use weights::{quantize_weights_rtn, search_group_scales};

/// Round half to even for |x| < 2²²: adding and subtracting 1.5 · 2²³ (= 12 582 912) leaves x rounded
/// to an integer by the FPU's own round-to-nearest-even. Same result as `f32::round_ties_even`, but it
/// vectorizes (that one is a libm call on baseline x86-64).
#[inline(always)]
pub(crate) fn rne_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
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
