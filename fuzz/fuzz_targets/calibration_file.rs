//! The calibration-file reader: `io::float_tensors_from_bytes`, then `calib::layer_calibration` for
//! the layers of a fixed model (the layer widths K come from the model, the rest from the file), and
//! for every 2-D tensor of the file as if it were a layer of its own width.
//!
//! Properties: no panic, no abort, no allocation the input does not pay for (beyond the K×K Gram
//! matrix of a layer the model declares); accepted statistics count every token and hold finite,
//! non-negative channel maxima.

#![no_main]

use libfuzzer_sys::fuzz_target;
use w4a8_core::calib::layer_calibration;
use w4a8_core::io::float_tensors_from_bytes;

/// The model the calibration file is read against: (weight tensor, K). The seed corpus
/// (fuzz/seeds) writes calibration files for these names.
const MODEL: [(&str, usize); 3] = [("l0.weight", 256), ("l1.weight", 128), ("attn.q.weight", 64)];

/// Widths up to this are also tried for every 2-D tensor of the file (a 512² Gram is 2 MiB).
const MAX_FILE_K: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Ok(calib) = float_tensors_from_bytes(data) else { return };
    let file_layers = calib
        .iter()
        .filter(|(_, t)| t.shape.len() == 2 && t.shape[1] <= MAX_FILE_K)
        .map(|(name, t)| (name.as_str(), t.shape[1]));
    for (name, k) in MODEL.into_iter().chain(file_layers) {
        if let Ok(stats) = layer_calibration(&calib, name, k) {
            assert_eq!(stats.k(), k);
            assert!(stats.tokens() > 0);
            assert!(stats.absmax().iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
        }
    }
});
