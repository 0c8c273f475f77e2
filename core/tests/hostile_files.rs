//! Hostile files: headers that claim huge shapes (allocation bombs), lengths that overflow `usize` on
//! 32-bit and 64-bit targets, NaN/Inf scales, group scales 0 or > 16, weight codes out of range.
//! Each gets a typed error naming the problem — before any large allocation (a tracking allocator
//! measures the largest single allocation of each read) and before any device work (the readers
//! only build validated host values) — never a panic or an abort.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use w4a8_core::calib::{CalibStats, layer_calibration};
use w4a8_core::io::{
    FloatTensor, Layer, float_tensors_from_bytes, layers_from_bytes, layers_to_bytes, load_float_tensors,
    load_layers,
};
use w4a8_core::quantize::quantize_weights_rtn;
use w4a8_core::{Error, Granularity, MAX_K};

/// Records the largest single allocation (or reallocation) made by the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown find no slot and are not counted.
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's own pointer and layout unchanged; the
// bookkeeping touches only a const-initialized thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same layout the caller passed, which the GlobalAlloc contract makes valid.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through it) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// A safetensors image from a JSON header and a data section.
fn st_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The metadata of a one-layer W4A8 file `l` with K = `k`, per channel.
fn w4a8_meta(k: &str) -> String {
    format!(r#""__metadata__":{{"format":"w4a8","version":"1","l.k":"{k}","l.granularity":"per-channel"}}"#)
}

/// No single allocation of a hostile read may exceed this (the files here are all < 4 KiB).
const SMALL: usize = 64 << 10;

/// Reads `bytes` as a weight file, as a model file and as a calibration file; each must be a typed
/// error, with no allocation past [`SMALL`]. Returns the weight-file error's message.
fn refused_everywhere(bytes: &[u8]) -> String {
    let (weights, largest) = largest_allocation(|| layers_from_bytes(bytes));
    let e = weights.expect_err("the weight reader accepted a hostile file");
    assert!(matches!(e, Error::Format(_)), "{e:?}");
    assert!(largest <= SMALL, "weight reader allocated {largest} bytes at once for {e}");
    let (model, largest) = largest_allocation(|| float_tensors_from_bytes(bytes));
    if let Err(e) = &model {
        assert!(matches!(e, Error::Format(_)), "{e:?}");
    }
    assert!(largest <= SMALL, "model reader allocated {largest} bytes at once");
    e.to_string()
}

#[test]
fn header_lengths_past_the_file_or_the_limit_are_refused() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    for claimed in [u64::MAX, 1 << 63, 1 << 32, 100_000_001, header.len() as u64 + 1] {
        let mut bytes = st_file(header, &[0; 4]);
        bytes[..8].copy_from_slice(&claimed.to_le_bytes());
        let msg = refused_everywhere(&bytes);
        assert!(msg.contains("safetensors"), "{claimed}: {msg}");
    }
}

#[test]
fn huge_claimed_shapes_without_data_are_refused_before_allocating() {
    let bombs = [
        // 2⁸⁰ words of qweight claimed, none present.
        r#"{"l.qweight":{"dtype":"U32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}}"#,
        // A tensor of 2⁴⁰ floats whose data offsets point past the file.
        r#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#,
        // Offsets that run backwards.
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
        // A u64 dimension past every usize, and one past u64.
        r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}}"#,
        r#"{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}}"#,
    ];
    for header in bombs {
        refused_everywhere(&st_file(header, &[0; 16]));
    }
    // Claimed K of 2⁶⁴ - 1 with a tiny qweight: on a 64-bit target a shape mismatch, not an
    // allocation of K/8 words; on a 32-bit target K does not parse as a usize at all.
    let header = format!(
        r#"{{{},"l.qweight":{{"dtype":"U32","shape":[1,1],"data_offsets":[0,4]}},"l.channel_scales":{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}"#,
        w4a8_meta("18446744073709551615")
    );
    let msg = refused_everywhere(&st_file(&header, &[0; 8]));
    let expected = if usize::BITS == 64 { "shape" } else { "not an integer" };
    assert!(msg.contains(expected), "{msg}");
}

#[test]
fn lengths_that_overflow_usize_on_32_and_64_bit_targets_are_refused() {
    // Element counts past 2³² (a 32-bit usize, wasm32) and past 2⁶⁴ (a 64-bit usize); and a byte
    // count (elements · 4) past 2⁶⁴ although the element count fits. Each is a typed error on either
    // width: an overflow where it overflows, a shape/data mismatch where it does not.
    for shape in
        ["[65536,65536]", "[4294967296,4294967296]", "[4294967296,4294967296,4]", "[4611686018427387905]"]
    {
        let header = format!(r#"{{"a":{{"dtype":"F32","shape":{shape},"data_offsets":[0,8]}}}}"#);
        refused_everywhere(&st_file(&header, &[0; 8]));
    }
    // K metadata past a 32-bit usize (and past u64): "not an integer" there, a shape mismatch or
    // KTooLarge on 64-bit; never a wrapped K.
    for k in ["4294967304", "99999999999999999999999"] {
        let header = format!(
            r#"{{{},"l.qweight":{{"dtype":"U32","shape":[1,1],"data_offsets":[0,4]}},"l.channel_scales":{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}"#,
            w4a8_meta(k)
        );
        refused_everywhere(&st_file(&header, &[0; 8]));
    }
}

/// A valid one-layer W4A8 file (N = 2, K = 13 per channel, or K = 64 at g32), with its pieces
/// editable: `edit` gets the qweight words, channel scales, group scales, bias and smoothing vector.
fn w4a8_file(
    group: usize,
    edit: impl FnOnce(&mut [u32], &mut [f32], &mut [u8], &mut [f32], &mut [f32]),
) -> Vec<u8> {
    let k = if group == 0 { 13 } else { 64 };
    let granularity =
        if group == 0 { Granularity::PerChannel } else { Granularity::PerGroup { group_size: group } };
    let w: Vec<f32> = (0..2 * k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let q = quantize_weights_rtn(&w, 2, k, granularity, Some(vec![0.5, -0.5])).unwrap();
    let mut qweight = q.qweight().to_vec();
    let mut channel = q.channel_scales().to_vec();
    let mut groups = q.group_scales().to_vec();
    let mut bias = q.bias().unwrap().to_vec();
    let mut smooth = vec![1.5f32; k];
    edit(&mut qweight, &mut channel, &mut groups, &mut bias, &mut smooth);
    // Written by the project's writer, then the edited values patched into the data section, so the
    // file is exactly what a hostile writer would produce.
    let layer = Layer::new(q, Some(vec![1.5; k])).unwrap();
    let mut bytes = layers_to_bytes(&BTreeMap::from([("l".to_string(), layer)])).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: String = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    let offset = |name: &str| {
        let at = header.find(&format!("\"{name}\"")).unwrap();
        let offs = &header[at..];
        let start = offs.find("data_offsets\":[").unwrap() + "data_offsets\":[".len();
        let end = offs[start..].find(',').unwrap();
        8 + header_len + offs[start..start + end].parse::<usize>().unwrap()
    };
    let mut put = |name: &str, data: Vec<u8>| {
        let at = offset(name);
        bytes[at..at + data.len()].copy_from_slice(&data);
    };
    put("l.qweight", qweight.iter().flat_map(|v| v.to_le_bytes()).collect());
    put("l.channel_scales", channel.iter().flat_map(|v| v.to_le_bytes()).collect());
    put("l.bias", bias.iter().flat_map(|v| v.to_le_bytes()).collect());
    put("l.smooth", smooth.iter().flat_map(|v| v.to_le_bytes()).collect());
    if group != 0 {
        put("l.group_scales", groups);
    }
    bytes
}

/// The weight reader's error for `bytes`, which must be a typed format error naming `needle`.
fn refused_naming(bytes: &[u8], needle: &str) {
    let e = layers_from_bytes(bytes).expect_err("accepted");
    assert!(matches!(e, Error::Format(_)), "{e:?}");
    assert!(e.to_string().contains(needle), "expected {needle:?} in: {e}");
}

#[test]
fn the_patching_helper_writes_a_valid_file_when_nothing_is_edited() {
    for group in [0, 32] {
        let layers = layers_from_bytes(&w4a8_file(group, |_, _, _, _, _| {})).unwrap();
        assert_eq!(layers["l"].smooth.as_deref().unwrap()[0], 1.5);
    }
}

#[test]
fn non_finite_and_negative_scales_are_refused() {
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
        refused_naming(&w4a8_file(0, |_, c, _, _, _| c[1] = bad), "channel scales");
        refused_naming(&w4a8_file(32, |_, _, _, b, _| b[0] = bad), "bias");
        refused_naming(&w4a8_file(32, |_, _, _, _, s| s[3] = bad), "smoothing vector");
        assert!(
            layers_from_bytes(&w4a8_file(0, |_, c, _, _, _| c[0] = bad))
                .unwrap_err()
                .to_string()
                .contains(what)
        );
    }
    refused_naming(&w4a8_file(0, |_, c, _, _, _| c[0] = -1.0), "negative");
    refused_naming(&w4a8_file(0, |_, _, _, _, s| s[0] = 0.0), "not positive");
    refused_naming(&w4a8_file(0, |_, _, _, _, s| s[0] = -2.0), "not positive");
}

#[test]
fn group_scales_outside_1_to_16_are_refused() {
    for bad in [0u8, 17, 255] {
        refused_naming(&w4a8_file(32, |_, _, g, _, _| g[2] = bad), &format!("{bad} is outside [1, 16]"));
    }
    // 1 and 16 are the bounds, both valid.
    for ok in [1u8, 16] {
        assert_eq!(
            layers_from_bytes(&w4a8_file(32, |_, _, g, _, _| g[2] = ok)).unwrap()["l"].weights.group_scales()
                [2],
            ok
        );
    }
}

#[test]
fn weight_codes_out_of_range_are_refused() {
    // Int4 codes are nibbles, so a code out of [-8, 7] can only be a non-zero padding nibble past K
    // (K = 13: nibbles 13..15 of each row's last word), or codes stored in a wider type.
    refused_naming(&w4a8_file(0, |q, _, _, _, _| q[1] |= 0x7 << 20), "padding nibbles");
    refused_naming(&w4a8_file(0, |q, _, _, _, _| q[3] |= 1 << 31), "padding nibbles");
    let header = format!(
        r#"{{{},"l.qweight":{{"dtype":"I64","shape":[1,2],"data_offsets":[0,16]}},"l.channel_scales":{{"dtype":"F32","shape":[1],"data_offsets":[16,20]}}}}"#,
        w4a8_meta("13")
    );
    refused_naming(&st_file(&header, &[0; 20]), "dtype");
}

#[test]
fn hostile_calibration_data_is_refused() {
    let t = |shape: &[usize], data: Vec<f32>| FloatTensor { shape: shape.to_vec(), data };
    let k = 16;
    type Expect = fn(&Error) -> bool;
    let cases: [(FloatTensor, Expect); 5] = [
        (t(&[2, k], vec![f32::NAN; 2 * k]), |e| matches!(e, Error::NonFinite { .. })),
        (
            t(&[2, k], [vec![1.0; 2 * k - 1], vec![f32::INFINITY]].concat()),
            |e| matches!(e, Error::NonFinite { index, .. } if *index == 31),
        ),
        (t(&[0, k], vec![]), |e| matches!(e, Error::EmptyDimension { .. })),
        (t(&[2, k + 1], vec![0.0; 2 * k + 2]), |e| matches!(e, Error::ShapeMismatch { .. })),
        (t(&[2, 2, 4], vec![0.0; 16]), |e| matches!(e, Error::ShapeMismatch { .. })),
    ];
    for (tensor, ok) in cases {
        let shape = tensor.shape.clone();
        let calib = BTreeMap::from([("l.input".to_string(), tensor)]);
        let (r, largest) = largest_allocation(|| layer_calibration(&calib, "l.weight", k));
        let e = r.expect_err("accepted hostile calibration data");
        assert!(ok(&e), "{shape:?}: {e:?}");
        assert!(largest <= SMALL, "{shape:?}: allocated {largest} bytes");
    }
    let missing = layer_calibration(&BTreeMap::new(), "l.weight", k).unwrap_err();
    assert!(missing.to_string().contains("l.input"), "{missing}");
    // The Gram matrix of the widest K the format allows is 32 GiB: allocated if the host can, an
    // OutOfMemory error if it cannot, never an abort. K past the format is refused outright.
    match CalibStats::new(MAX_K) {
        Ok(stats) => assert_eq!(stats.k(), MAX_K),
        Err(e) => assert!(
            matches!(e, Error::OutOfMemory { backend: None, requested, .. } if requested == 1 << 35),
            "{e:?}"
        ),
    }
    assert!(matches!(CalibStats::new(MAX_K + 1), Err(Error::KTooLarge { .. })));
}

#[test]
fn model_values_are_returned_as_stored_and_judged_by_the_quantizer() {
    // The model reader returns what the file holds, NaN included; the quantizer refuses it.
    let model = BTreeMap::from([(
        "w".to_string(),
        FloatTensor { shape: vec![1, 4], data: vec![1.0, f32::NAN, 0.0, 2.0] },
    )]);
    let back = float_tensors_from_bytes(&w4a8_core::io::float_tensors_to_bytes(&model).unwrap()).unwrap();
    assert!(back["w"].data[1].is_nan());
    let e = quantize_weights_rtn(&back["w"].data, 1, 4, Granularity::PerChannel, None).unwrap_err();
    assert!(matches!(e, Error::NonFinite { what: "weights", index: 1, .. }), "{e:?}");
    // An F16 tensor whose byte length is odd is a typed error.
    let header = r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,5]}}"#;
    assert!(matches!(float_tensors_from_bytes(&st_file(header, &[0; 5])), Err(Error::Format(_))));
}

#[test]
fn paths_that_are_not_regular_files_are_refused_without_reading_them() {
    // A device that never ends would otherwise be read until the allocator gives up.
    for path in ["/dev/zero", "/dev/urandom", "/"] {
        if !std::path::Path::new(path).exists() {
            continue;
        }
        let (r, largest) = largest_allocation(|| load_layers(path));
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("not a regular file"), "{path}: {e}");
        assert!(largest <= SMALL, "{path}: allocated {largest} bytes");
        assert!(matches!(load_float_tensors(path), Err(Error::Io { .. })), "{path}");
    }
}

#[test]
fn the_allocation_tracker_sees_large_allocations() {
    // Without this, a broken tracker would make every bound above pass vacuously.
    let (v, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(largest >= 3 << 20, "{largest}");
    // Reading a valid weight file allocates in proportion to its size (header parsing included).
    let bytes = w4a8_file(32, |_, _, _, _, _| {});
    let (r, largest) = largest_allocation(|| layers_from_bytes(&bytes));
    r.unwrap();
    assert!(largest > 0 && largest <= 4 * bytes.len() + 4096, "{largest} for a {}-byte file", bytes.len());
}
