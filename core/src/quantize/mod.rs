//! Quantizers: per-token activations and round-to-nearest weights.

mod activations;
mod weights;

pub use activations::quantize_activations;
pub use weights::{quantize_weights_rtn, search_group_scales};
