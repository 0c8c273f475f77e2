//! Every error the format and the file reader can raise, reached through the public API.

use std::collections::BTreeMap;

use w4a8_core::io::{FORMAT_VERSION, Layer, layers_from_bytes, layers_to_bytes, load_layers, save_layers};
use w4a8_core::quantize::{quantize_activations, quantize_weights_rtn};
use w4a8_core::{Error, Granularity, QuantizedActivations, W4A8Weights};

fn g(group_size: usize) -> Granularity {
    Granularity::PerGroup { group_size }
}

fn sample() -> W4A8Weights {
    let w: Vec<f32> = (0..4 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    quantize_weights_rtn(&w, 4, 64, g(32), Some(vec![0.5, -1.0, 0.0, 2.0])).unwrap()
}

#[test]
fn unsupported_group_size() {
    let e = quantize_weights_rtn(&[0.0; 48], 1, 48, g(48), None).unwrap_err();
    assert!(matches!(e, Error::UnsupportedGroupSize { group_size: 48 }), "{e:?}");
    assert!(e.to_string().contains("48"));
}

#[test]
fn k_not_multiple_of_group() {
    let e = W4A8Weights::from_int4(1, 96, g(64), &[0; 96], vec![1.0], vec![1], None).unwrap_err();
    assert!(matches!(e, Error::KNotMultipleOfGroup { k: 96, group_size: 64 }), "{e:?}");
}

#[test]
fn k_too_large_and_empty_dimensions() {
    let e =
        W4A8Weights::new(1, 65_537, Granularity::PerChannel, vec![], vec![1.0], vec![], None).unwrap_err();
    assert!(matches!(e, Error::KTooLarge { k: 65_537, max: 65_536 }), "{e:?}");
    let e = W4A8Weights::new(0, 8, Granularity::PerChannel, vec![], vec![], vec![], None).unwrap_err();
    assert!(matches!(e, Error::EmptyDimension { what: "N" }), "{e:?}");
    let e = QuantizedActivations::new(0, 8, vec![], vec![]).unwrap_err();
    assert!(matches!(e, Error::EmptyDimension { what: "M" }), "{e:?}");
}

#[test]
fn shape_mismatches() {
    let e =
        W4A8Weights::new(2, 9, Granularity::PerChannel, vec![0; 3], vec![1.0; 2], vec![], None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 4, got: 3, .. }), "{e:?}");
    let e =
        W4A8Weights::new(2, 8, Granularity::PerChannel, vec![0; 2], vec![1.0; 3], vec![], None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 2, got: 3, .. }), "{e:?}");
    let e = W4A8Weights::new(2, 64, g(32), vec![0; 16], vec![1.0; 2], vec![1; 3], None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 4, got: 3, .. }), "{e:?}");
    let e =
        W4A8Weights::new(2, 8, Granularity::PerChannel, vec![0; 2], vec![1.0; 2], vec![], Some(vec![0.0]))
            .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 2, got: 1, .. }), "{e:?}");
    let e = QuantizedActivations::new(2, 3, vec![0; 6], vec![1.0]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 2, got: 1, .. }), "{e:?}");
    let e = quantize_weights_rtn(&[0.0; 7], 2, 4, Granularity::PerChannel, None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 8, got: 7, .. }), "{e:?}");
}

#[test]
fn invalid_values() {
    let bad_nibble = W4A8Weights::from_int4(1, 2, Granularity::PerChannel, &[0, 8], vec![1.0], vec![], None);
    assert!(matches!(bad_nibble, Err(Error::InvalidValue { what: "int4 weights", index: 1, .. })));
    let padding =
        W4A8Weights::new(2, 4, Granularity::PerChannel, vec![0, 0x1_0000], vec![1.0; 2], vec![], None);
    assert!(matches!(padding, Err(Error::InvalidValue { what: "qweight", index: 1, .. })), "{padding:?}");
    let group0 = W4A8Weights::new(1, 32, g(32), vec![0; 4], vec![1.0], vec![0], None);
    assert!(matches!(group0, Err(Error::InvalidValue { what: "group scales", .. })));
    let group17 = W4A8Weights::new(1, 32, g(32), vec![0; 4], vec![1.0], vec![17], None);
    assert!(matches!(group17, Err(Error::InvalidValue { what: "group scales", .. })));
    let negative = W4A8Weights::new(1, 8, Granularity::PerChannel, vec![0], vec![-1.0], vec![], None);
    assert!(matches!(negative, Err(Error::InvalidValue { what: "channel scales", .. })));
    let minus128 = QuantizedActivations::new(1, 2, vec![0, -128], vec![1.0]);
    assert!(matches!(minus128, Err(Error::InvalidValue { what: "activation values", index: 1, .. })));
}

#[test]
fn non_finite_inputs() {
    let e = quantize_activations(&[1.0, f32::NAN], 1, 2, None).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 1, .. }), "{e:?}");
    let e = quantize_weights_rtn(&[1.0, f32::INFINITY], 1, 2, Granularity::PerChannel, None).unwrap_err();
    assert!(matches!(e, Error::NonFinite { what: "weights", index: 1, .. }), "{e:?}");
    let e = W4A8Weights::new(1, 8, Granularity::PerChannel, vec![0], vec![1.0], vec![], Some(vec![f32::NAN]))
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { what: "bias", .. }), "{e:?}");
    let e = QuantizedActivations::new(1, 1, vec![0], vec![f32::INFINITY]).unwrap_err();
    assert!(matches!(e, Error::NonFinite { what: "activation scales", .. }), "{e:?}");
}

#[test]
fn weight_file_round_trip() {
    let smooth: Vec<f32> = (0..64).map(|i| 0.5 + i as f32 / 64.0).collect();
    let layers = BTreeMap::from([
        ("a.weight".to_string(), Layer::new(sample(), Some(smooth)).unwrap()),
        (
            "b".to_string(),
            Layer::from(quantize_weights_rtn(&[0.3; 3 * 13], 3, 13, Granularity::PerChannel, None).unwrap()),
        ),
    ]);
    let bytes = layers_to_bytes(&layers).unwrap();
    assert_eq!(layers_from_bytes(&bytes).unwrap(), layers);
    let dir = std::env::temp_dir().join(format!("w4a8-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    save_layers(&path, &layers).unwrap();
    assert_eq!(load_layers(&path).unwrap(), layers);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_truncation_of_a_weight_file_is_an_error() {
    let bytes = layers_to_bytes(&BTreeMap::from([("l".to_string(), Layer::from(sample()))])).unwrap();
    for len in 0..bytes.len() {
        let e = layers_from_bytes(&bytes[..len]).unwrap_err();
        assert!(matches!(e, Error::Format(_)), "truncated to {len}: {e:?}");
    }
}

#[test]
fn corrupted_or_foreign_files_are_errors() {
    let layers = BTreeMap::from([("l".to_string(), Layer::from(sample()))]);
    let bytes = layers_to_bytes(&layers).unwrap();
    // Flip every byte of the payload region in turn is too slow; flip a spread of bytes instead.
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0xFF;
        let _ = layers_from_bytes(&b); // may succeed (a changed scale) but must not panic
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let swap = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let pos = text.find(from).unwrap_or_else(|| panic!("{from} in header"));
        let mut b = bytes.clone();
        b[pos..pos + to.len()].copy_from_slice(to.as_bytes());
        layers_from_bytes(&b).unwrap_err().to_string()
    };
    assert!(swap("\"w4a8\"", "\"w5a8\"").contains("format"));
    assert!(swap(&format!("\"version\":\"{FORMAT_VERSION}\""), "\"version\":\"9\"").contains("version 9"));
    assert!(swap("\"g32\"", "\"g48\"").contains("48"));
    let e = layers_from_bytes(b"definitely not a safetensors file").unwrap_err();
    assert!(matches!(e, Error::Format(_)));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let e = load_layers("/nonexistent/w4a8/weights.safetensors").unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/w4a8/weights.safetensors"));
}

#[test]
fn per_group_quantizer_searches_integer_scales() {
    // A row whose groups differ in magnitude by 10×: per-group must beat per-channel, and every group
    // scale must be a valid integer.
    let k = 256;
    let w: Vec<f32> =
        (0..k).map(|i| ((i * 7919 % 113) as f32 / 56.0 - 1.0) * if i < 128 { 1.0 } else { 0.1 }).collect();
    let err = |q: &W4A8Weights| -> f64 {
        q.dequantize_f64().iter().zip(&w).map(|(a, &b)| (a - b as f64).powi(2)).sum()
    };
    let pc = quantize_weights_rtn(&w, 1, k, Granularity::PerChannel, None).unwrap();
    let pg = quantize_weights_rtn(&w, 1, k, g(128), None).unwrap();
    assert!(err(&pg) < 0.5 * err(&pc), "per-group {} vs per-channel {}", err(&pg), err(&pc));
    assert!(pg.group_scales().iter().all(|&s| (1..=16).contains(&s)));
    assert!(pg.group_scales()[0] > pg.group_scales()[1]);
}

#[test]
fn smoothing_vectors_are_validated() {
    let e = Layer::new(sample(), Some(vec![1.0; 63])).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { expected: 64, got: 63, .. }), "{e:?}");
    let mut s = vec![1.0; 64];
    s[9] = 0.0;
    let e = Layer::new(sample(), Some(s.clone())).unwrap_err();
    assert!(matches!(e, Error::InvalidValue { what: "smoothing vector", index: 9, .. }), "{e:?}");
    s[9] = f32::NAN;
    let e = Layer::new(sample(), Some(s)).unwrap_err();
    assert!(matches!(e, Error::NonFinite { what: "smoothing vector", index: 9, .. }), "{e:?}");
}
