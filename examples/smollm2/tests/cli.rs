//! The example without its model: clean errors, never a panic; the GGUF reader on small synthetic
//! files (valid, truncated at every length, garbled); and, when scripts/fetch-smollm2.sh has been run,
//! the tokenizer round trip and the reference's " Paris" (skipped with a message otherwise, failed
//! instead when `W4A8_REQUIRE` names `smollm2`).

use std::path::PathBuf;
use std::process::Command;

use half::f16;
use w4a8_smollm2::gguf::{Gguf, GgufError, Value};
use w4a8_smollm2::model::{FloatLinears, KvCache, Llama, Logits, argmax, forward};
use w4a8_smollm2::{MODEL_FILE, default_dir, tokenizer};

// ---------------------------------------------------------------------------------------------------
// A GGUF writer for the tests.

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A metadata value as (type id, encoded bytes).
fn val_u32(v: u32) -> (u32, Vec<u8>) {
    (4, v.to_le_bytes().to_vec())
}

fn val_str(s: &str) -> (u32, Vec<u8>) {
    let mut b = Vec::new();
    put_str(&mut b, s);
    (8, b)
}

fn val_strs(v: &[&str]) -> (u32, Vec<u8>) {
    let mut b = 8u32.to_le_bytes().to_vec();
    b.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for s in v {
        put_str(&mut b, s);
    }
    (9, b)
}

struct T {
    name: &'static str,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// A GGUF v3 file: header, metadata, tensor infos, padding to 32, tensor data (each aligned to 32).
fn gguf(kvs: &[(&str, (u32, Vec<u8>))], tensors: &[T]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, (ty, v)) in kvs {
        put_str(&mut b, k);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(v);
    }
    let mut data = Vec::new();
    for t in tensors {
        // Each tensor starts aligned; nothing follows the last one (so that every shorter prefix of
        // the file is truncated).
        data.resize(data.len().div_ceil(32) * 32, 0);
        let offset = data.len() as u64;
        put_str(&mut b, t.name);
        b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&t.ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        data.extend_from_slice(&t.data);
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend_from_slice(&data);
    b
}

/// One Q4_1 block: d = 0.5, m = −2, element j = j mod 16 (so value 0.5·(j mod 16) − 2).
fn q4_1_block() -> Vec<u8> {
    let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
    b.extend_from_slice(&f16::from_f32(-2.0).to_le_bytes());
    b.extend((0..16u8).map(|j| j << 4 | j));
    b
}

/// One Q8_0 block: d = 0.125, element j = j − 16.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16::from_f32(0.125).to_le_bytes().to_vec();
    b.extend((0..32).map(|j| (j as i8 - 16) as u8));
    b
}

fn valid_file() -> Vec<u8> {
    let f32s: Vec<u8> =
        [1.5f32, -2.0, 0.25, 8.0, 3.0, -0.5, 0.0, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    gguf(
        &[
            ("general.architecture", val_str("llama")),
            ("general.alignment", val_u32(32)),
            ("tokenizer.ggml.tokens", val_strs(&["a", "b", "ab"])),
        ],
        &[
            T { name: "f", dims: vec![4, 2], ty: 0, data: f32s },
            T { name: "q41", dims: vec![32, 2], ty: 3, data: [q4_1_block(), q4_1_block()].concat() },
            T { name: "q80", dims: vec![32], ty: 8, data: q8_0_block() },
        ],
    )
}

// ---------------------------------------------------------------------------------------------------
// The GGUF reader.

#[test]
fn a_valid_file_reads_and_dequantizes() {
    let g = Gguf::from_bytes(valid_file()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_strings("tokenizer.ggml.tokens").unwrap(), ["a", "b", "ab"]);
    assert_eq!(g.get_u64("general.alignment").unwrap(), 32);
    let (f, dims) = g.dequantize("f").unwrap();
    assert_eq!((f, dims), (vec![1.5, -2.0, 0.25, 8.0, 3.0, -0.5, 0.0, 1.0], vec![4, 2]));
    let q = g.dequantize_shaped("q41", &[32, 2]).unwrap();
    assert_eq!(q.len(), 64);
    for (i, v) in q.iter().enumerate() {
        assert_eq!(*v, 0.5 * (i % 16) as f32 - 2.0, "Q4_1 element {i}");
    }
    let q = g.dequantize("q80").unwrap().0;
    assert!(q.iter().enumerate().all(|(j, &v)| v == 0.125 * (j as f32 - 16.0)));
    assert!(matches!(g.dequantize_shaped("q41", &[64]), Err(GgufError::WrongShape { .. })));
    assert!(matches!(g.dequantize("nope"), Err(GgufError::MissingTensor(_))));
    assert!(matches!(g.get_u64("absent"), Err(GgufError::MissingKey(_))));
    assert!(matches!(g.get_u64("general.architecture"), Err(GgufError::WrongType { .. })));
}

#[test]
fn every_truncation_is_a_typed_error() {
    let full = valid_file();
    for n in 0..full.len() {
        match Gguf::from_bytes(full[..n].to_vec()) {
            Err(GgufError::Truncated { .. }) => {}
            other => panic!("prefix of {n} of {} bytes: {other:?}", full.len()),
        }
    }
}

#[test]
fn garbled_files_never_panic() {
    let full = valid_file();
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..1 + next() % 4 {
            let i = next() % b.len();
            b[i] = next() as u8;
        }
        if let Ok(g) = Gguf::from_bytes(b) {
            for t in g.tensors.clone() {
                let _ = g.dequantize(&t.name);
            }
        }
    }
}

#[test]
fn malformed_headers_give_their_errors() {
    let full = valid_file();
    let mut b = full.clone();
    b[0] = b'X';
    assert!(matches!(Gguf::from_bytes(b), Err(GgufError::BadMagic(_))));
    let mut b = full.clone();
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(Gguf::from_bytes(b), Err(GgufError::UnsupportedVersion(4))));
    // A metadata count far beyond the file: truncated, not a giant allocation.
    let mut b = full.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(Gguf::from_bytes(b), Err(GgufError::Truncated { .. })));

    let kv = |ty: u32, v: Vec<u8>| gguf(&[("k", (ty, v))], &[]);
    assert!(matches!(Gguf::from_bytes(kv(13, vec![0; 8])), Err(GgufError::BadValueType { ty: 13, .. })));
    // A string claiming u64::MAX bytes, and an array claiming 2^60 elements.
    assert!(matches!(
        Gguf::from_bytes(kv(8, u64::MAX.to_le_bytes().to_vec())),
        Err(GgufError::Truncated { .. })
    ));
    let mut arr = 0u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(Gguf::from_bytes(kv(9, arr)), Err(GgufError::Truncated { .. })));
    // Arrays of arrays of arrays …: refused past the depth bound instead of recursing.
    let mut nested = Vec::new();
    for _ in 0..64 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(matches!(Gguf::from_bytes(kv(9, nested)), Err(GgufError::TooDeep { .. })));
    let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xC3, 0x28]);
    assert!(matches!(Gguf::from_bytes(kv(8, bad_utf8)), Err(GgufError::Utf8 { .. })));
    let dup = gguf(&[("k", val_u32(1)), ("k", val_u32(2))], &[]);
    assert!(matches!(Gguf::from_bytes(dup), Err(GgufError::Duplicate { .. })));
    let align = gguf(&[("general.alignment", val_u32(24))], &[]);
    assert!(matches!(Gguf::from_bytes(align), Err(GgufError::BadAlignment(24))));
    assert!(matches!(Gguf::from_bytes(kv(7, vec![1])).unwrap().get("k"), Ok(Value::Bool(true))));
}

#[test]
fn malformed_tensor_infos_give_their_errors() {
    let one = |dims: Vec<u64>, ty: u32, data: Vec<u8>| {
        Gguf::from_bytes(gguf(&[], &[T { name: "t", dims, ty, data }]))
    };
    // Element count overflows u64.
    assert!(matches!(one(vec![1 << 40, 1 << 40], 0, vec![]), Err(GgufError::BadTensor { .. })));
    // Five dimensions, or none.
    assert!(matches!(one(vec![1; 5], 0, vec![0; 4]), Err(GgufError::BadTensor { .. })));
    assert!(matches!(one(vec![], 0, vec![]), Err(GgufError::BadTensor { .. })));
    // A Q4_1 row of 16 elements is half a block.
    assert!(matches!(one(vec![16], 3, vec![0; 20]), Err(GgufError::BadTensor { .. })));
    // More elements than bytes.
    assert!(matches!(one(vec![1024], 0, vec![0; 16]), Err(GgufError::Truncated { .. })));
    // An unknown type parses (the file may carry tensors we never load) but does not dequantize.
    let g = one(vec![256], 12, vec![0; 144]).unwrap();
    assert!(matches!(g.dequantize("t"), Err(GgufError::UnsupportedType { ty: 12, .. })));
    // A misaligned offset, and one past the end.
    let mut b = gguf(&[], &[T { name: "t", dims: vec![4], ty: 0, data: vec![0; 16] }]);
    let off = 24 + 8 + 1 + 4 + 8 + 4; // header, name, n_dims, ne[0], type: the offset field follows
    b[off..off + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(Gguf::from_bytes(b.clone()), Err(GgufError::BadTensor { .. })));
    b[off..off + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(Gguf::from_bytes(b), Err(GgufError::BadTensor { .. } | GgufError::Truncated { .. })));
    let dup = gguf(
        &[],
        &[
            T { name: "t", dims: vec![1], ty: 0, data: vec![0; 4] },
            T { name: "t", dims: vec![1], ty: 0, data: vec![0; 4] },
        ],
    );
    assert!(matches!(Gguf::from_bytes(dup), Err(GgufError::Duplicate { .. })));
}

// ---------------------------------------------------------------------------------------------------
// The binary without a model.

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_w4a8-smollm2"))
}

#[test]
fn a_missing_model_is_an_error_naming_the_fetch_script() {
    let out = bin()
        .args(["--model", "/nonexistent/smollm2.gguf", "--backend", "cpu", "generate", "--prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/smollm2.gguf") && err.contains("fetch-smollm2.sh"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_garbled_model_is_a_clean_error() {
    let dir = std::env::temp_dir().join(format!("w4a8-smollm2-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.gguf");
    // A valid GGUF without any Llama metadata, and a truncated one.
    for (bytes, want) in [(valid_file(), "llama.block_count"), (valid_file()[..50].to_vec(), "truncated")] {
        std::fs::write(&path, bytes).unwrap();
        let out = bin().arg("--model").arg(&path).args(["eval", "--eval-tokens", "256"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.starts_with("error:") && err.contains(want), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_backend_or_group_is_an_error() {
    for args in [
        &["--backend", "tpu", "generate", "--prompt", "x", "--method", "rtn"][..],
        &["generate", "--prompt", "x", "--group", "48"],
    ] {
        let out = bin().args(["--model", "/nonexistent/smollm2.gguf"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.starts_with("error:") && !err.contains("panicked"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------------
// With the model (scripts/fetch-smollm2.sh).

/// The model file, or `None` with a message (a failure when `W4A8_REQUIRE` names smollm2).
fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("W4A8_SMOLLM2_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_dir().join(MODEL_FILE));
    if p.exists() {
        return Some(p);
    }
    let required = std::env::var("W4A8_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == "smollm2"));
    assert!(
        !required,
        "W4A8_REQUIRE names smollm2 but {} is absent (run scripts/fetch-smollm2.sh)",
        p.display()
    );
    eprintln!("skipped: {} is absent (run scripts/fetch-smollm2.sh)", p.display());
    None
}

#[test]
fn the_tokenizer_round_trips_and_splits_digits() {
    let Some(path) = model_path() else { return };
    let g = Gguf::open(&path).unwrap();
    let tok = tokenizer::from_gguf(&g).unwrap();
    for text in [
        "The capital of France is Paris.",
        "  Leading spaces, tabs\tand\nnew lines\n\n",
        "Ünïcödé — “quotes” … 東京 🚀",
        "def f(x):\n    return x ** 2  # 2024-01-31",
        "<|im_start|>user\nHi<|im_end|>\n",
    ] {
        let ids = tokenizer::encode(&tok, text).unwrap();
        assert_eq!(tokenizer::decode(&tok, &ids).unwrap(), text, "{ids:?}");
    }
    // Every digit is its own token; special tokens are matched whole.
    assert_eq!(tokenizer::encode(&tok, "2024").unwrap().len(), 4);
    assert_eq!(tokenizer::encode(&tok, "<|im_start|>").unwrap(), [1]);
    let ids = tokenizer::encode(&tok, "The capital of France is").unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}");
}

#[test]
fn the_reference_says_paris() {
    let Some(path) = model_path() else { return };
    let g = Gguf::open(&path).unwrap();
    let tok = tokenizer::from_gguf(&g).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    assert!(model.tied_embeddings());
    let ids = tokenizer::encode(&tok, "The capital of France is").unwrap();
    let logits =
        forward(&model, &FloatLinears(&model), &ids, &mut KvCache::new(), Logits::Last, &mut |_, _, _| {})
            .unwrap();
    let next = argmax(&logits) as u32;
    assert_eq!(tokenizer::decode(&tok, &[next]).unwrap(), " Paris");
    // The KV-cache path agrees with the batched one: the last prompt token fed alone after the rest.
    let mut cache = KvCache::new();
    let f = FloatLinears(&model);
    forward(&model, &f, &ids[..4], &mut cache, Logits::Last, &mut |_, _, _| {}).unwrap();
    let step = forward(&model, &f, &ids[4..], &mut cache, Logits::Last, &mut |_, _, _| {}).unwrap();
    let diff = step.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "cached decoding differs by {diff}");
}
