//! The model reader (`io::float_tensors_from_bytes`: the F32/F16/BF16 tensors of a safetensors
//! model file) on arbitrary bytes.
//!
//! Properties: no panic, no abort, no allocation the input does not pay for; every tensor returned
//! holds exactly as many values as its shape says, and writing the tensors back (as F32) and reading
//! them again gives the same shapes and the same value bits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use w4a8_core::io::{float_tensors_from_bytes, float_tensors_to_bytes};

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = float_tensors_from_bytes(data) else { return };
    for (name, t) in &tensors {
        let len = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(len, Some(t.data.len()), "{name}: shape {:?}", t.shape);
    }
    let bytes = float_tensors_to_bytes(&tensors).expect("tensors the reader returned serialize");
    let back = float_tensors_from_bytes(&bytes).expect("a file we wrote reads back");
    assert_eq!(back.len(), tensors.len());
    for ((name, a), (name_b, b)) in tensors.iter().zip(&back) {
        assert_eq!((name, &a.shape), (name_b, &b.shape));
        assert!(a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}");
    }
});
