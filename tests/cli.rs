//! The `w4a8` command-line tool, run as a user would: quantize files, errors as messages, the demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use w4a8::io::{FloatTensor, float_tensors_to_bytes, load_layers};
use w4a8::rng::SplitMix64;

fn w4a8(args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_w4a8")).args(args).env("W4A8_BACKEND", "cpu").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("w4a8-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensor(rng: &mut SplitMix64, shape: &[usize], scale: f32) -> FloatTensor {
    let len = shape.iter().product();
    FloatTensor { shape: shape.to_vec(), data: (0..len).map(|_| rng.normal() * scale).collect() }
}

/// A two-layer model file (one layer with a bias, plus a 1-D tensor to ignore) and its calibration file.
fn model_files(dir: &Path) -> (String, String) {
    let mut rng = SplitMix64::new(42);
    let model = BTreeMap::from([
        ("l0.weight".to_string(), tensor(&mut rng, &[48, 256], 0.05)),
        ("l0.bias".to_string(), tensor(&mut rng, &[48], 0.1)),
        ("l1.weight".to_string(), tensor(&mut rng, &[32, 128], 0.05)),
        ("norm.weight".to_string(), tensor(&mut rng, &[256], 1.0)),
    ]);
    let mut x0 = tensor(&mut rng, &[64, 256], 1.0);
    x0.data.iter_mut().skip(3).step_by(256).for_each(|v| *v *= 40.0); // an outlier channel
    let calib =
        BTreeMap::from([("l0.input".to_string(), x0), ("l1".to_string(), tensor(&mut rng, &[64, 128], 1.0))]);
    let (m, c) = (dir.join("model.safetensors"), dir.join("calib.safetensors"));
    std::fs::write(&m, float_tensors_to_bytes(&model).unwrap()).unwrap();
    std::fs::write(&c, float_tensors_to_bytes(&calib).unwrap()).unwrap();
    (m.display().to_string(), c.display().to_string())
}

#[test]
fn quantize_with_gptq_smoothing_and_clipping() {
    let dir = temp_dir("gptq");
    let (model, calib) = model_files(&dir);
    let out = dir.join("out.safetensors").display().to_string();
    let (ok, text) = w4a8(&[
        "quantize", &model, &out, "--method", "gptq", "--smooth", "adaptive", "--clip", "--group", "64",
        "--calib", &calib,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("wrote 2 layers"), "{text}");
    let layers = load_layers(&out).unwrap();
    assert_eq!(layers.keys().collect::<Vec<_>>(), ["l0.weight", "l1.weight"]);
    let l0 = &layers["l0.weight"];
    assert_eq!((l0.weights.n(), l0.weights.k()), (48, 256));
    assert!(l0.weights.bias().is_some(), "the bias travels with its layer");
    assert!(layers["l1.weight"].weights.bias().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantize_rtn_needs_no_calibration_and_reports_what_it_skips() {
    let dir = temp_dir("rtn");
    let (model, _) = model_files(&dir);
    let out = dir.join("out.safetensors").display().to_string();
    // g256 does not divide l1's K = 128: that layer is skipped with the reason, the other written.
    let (ok, text) = w4a8(&["quantize", &model, &out, "--group", "256"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("wrote 1 layers") && text.contains("skipped l1.weight") && text.contains("128"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--rotate B`: every layer is quantized from `W·H/B` and records B; run through the oracle with
/// the layer's transform (smoothing, then the online rotation) the file's layers reproduce the float
/// layer, and without the rotation they do not. A block that does not divide a layer's K skips it.
#[test]
fn quantize_with_rotation_records_the_block_and_reproduces_the_layer() {
    use w4a8::{CpuOracle, Gemm, f16};
    let dir = temp_dir("rotate");
    let (model, calib) = model_files(&dir);
    let out = dir.join("out.safetensors").display().to_string();
    let (ok, text) = w4a8(&[
        "quantize", &model, &out, "--method", "gptq", "--smooth", "adaptive", "--group", "64", "--rotate",
        "128", "--calib", &calib,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("wrote 2 layers") && text.contains("rotated by Hadamard blocks of 128"), "{text}");
    let layers = load_layers(&out).unwrap();
    let floats = w4a8::io::load_float_tensors(&model).unwrap();
    let oracle = CpuOracle::new();
    let mut rng = SplitMix64::new(7);
    for (name, layer) in &layers {
        assert_eq!(layer.hadamard_block, Some(128), "{name}");
        let (n, k, m) = (layer.weights.n(), layer.weights.k(), 16);
        let x: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.normal())).collect();
        let w = &floats[name].data;
        let bias = layer.weights.bias();
        let prepared = oracle.prepare(&layer.weights).unwrap();
        let error = |t: &w4a8::ActivationTransform<'_>| {
            let y = oracle.linear_with(&x, m, &prepared, t).unwrap();
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|c| x[i * k + c].to_f64() * w[j * k + c] as f64).sum::<f64>()
                        + bias.map_or(0.0, |b| b[j] as f64);
                    num += (y[i * n + j].to_f64() - exact).powi(2);
                    den += exact * exact;
                }
            }
            (num / den).sqrt()
        };
        let with = error(&layer.transform());
        let without = error(&w4a8::ActivationTransform { hadamard_block: None, ..layer.transform() });
        assert!(with < 0.2 && without > 0.5, "{name}: {with} with the rotation, {without} without");
    }
    // 256 does not divide l1's K = 128: that layer is skipped with the reason.
    let (ok, text) = w4a8(&["quantize", &model, &out, "--rotate", "256"]);
    assert!(ok && text.contains("wrote 1 layers") && text.contains("skipped l1.weight"), "{text}");
    assert!(text.contains("does not divide K = 128"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_invocations_are_clear_errors() {
    let dir = temp_dir("errors");
    let (model, _) = model_files(&dir);
    let out = dir.join("out.safetensors").display().to_string();
    let cases: [(&[&str], &str); 7] = [
        (&["quantize", &model, &out, "--method", "gptq"], "--calib"),
        (&["quantize", &model, &out, "--rotate", "3"], "not a power of two"),
        (&["quantize", &model, &out, "--rotate", "8192"], "exceeds the largest block"),
        (&["quantize", &model, &out, "--method", "awq"], "expected rtn or gptq"),
        (&["quantize", &model, &out, "--group", "48"], "unsupported group size 48"),
        (&["quantize", "/nonexistent/in.safetensors", &out], "/nonexistent/in.safetensors"),
        (&["demo", "--backend", "tpu", "--m", "1", "--n", "8", "--k", "32"], "unknown backend"),
    ];
    for (args, needle) in cases {
        let (ok, text) = w4a8(args);
        assert!(!ok, "{args:?} succeeded: {text}");
        assert!(text.contains(needle) && !text.contains("panicked"), "{args:?}: {text}");
    }
    // A truncated model file is an error message, not a crash.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, text) = w4a8(&["quantize", &cut.display().to_string(), &out]);
    assert!(!ok && text.contains("safetensors") && !text.contains("panicked"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_and_agrees_with_the_oracle() {
    let (ok, text) = w4a8(&["demo", "--m", "3", "--n", "64", "--k", "256", "--iters", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("192/192 outputs bit-equal"), "{text}");
}

/// `w4a8 quantize` killed in the middle of writing its output (the file-size limit makes the kernel
/// stop it with SIGXFSZ at a fixed byte count), and failing a write (the same limit with SIGXFSZ
/// ignored: the write returns EFBIG): both leave the previous output whole, and the next run
/// replaces it. Without the temporary-file-and-rename write, the first leaves a truncated file.
#[cfg(unix)]
#[test]
fn an_interrupted_or_failed_output_write_leaves_the_previous_file() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir("interrupt");
    let mut rng = SplitMix64::new(7);
    let model = dir.join("big.safetensors");
    let tensors = BTreeMap::from([("l.weight".to_string(), tensor(&mut rng, &[512, 1024], 0.05))]);
    std::fs::write(&model, float_tensors_to_bytes(&tensors).unwrap()).unwrap();
    let out = dir.join("out.safetensors");
    let (model_s, out_s) = (model.display().to_string(), out.display().to_string());
    let (ok, text) = w4a8(&["quantize", &model_s, &out_s, "--group", "0"]);
    assert!(ok, "{text}");
    let previous = load_layers(&out).unwrap();
    let previous_len = std::fs::metadata(&out).unwrap().len();
    assert!(previous_len > 64 << 10, "the output must be larger than the limit below");

    // bash's `ulimit -f` counts 1024-byte blocks: 16 KiB, a fraction of the ~260 KiB output.
    let limited = |trap: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!("{trap} ulimit -f 16; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_w4a8"))
            .args(["quantize", &model_s, &out_s, "--group", "128"])
            .env("W4A8_BACKEND", "cpu")
            .output()
            .unwrap()
    };
    let killed = limited("");
    assert_eq!(killed.status.signal(), Some(25), "expected death by SIGXFSZ: {:?}", killed.status);
    assert_eq!(load_layers(&out).unwrap(), previous, "the kill changed the previous output");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), previous_len);

    let failed = limited("trap '' XFSZ;");
    let text = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && failed.status.signal().is_none(), "{:?}", failed.status);
    assert!(text.contains("out.safetensors") && !text.contains("panicked"), "{text}");
    assert_eq!(load_layers(&out).unwrap(), previous, "the failed write changed the previous output");
    // The failed run cleaned up its temporary file; the killed one could not, and left only that.
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.len() <= 1 && leftovers.iter().all(|n| n.starts_with(".out.safetensors.")),
        "{leftovers:?}"
    );

    let (ok, text) = w4a8(&["quantize", &model_s, &out_s, "--group", "128"]);
    assert!(ok, "{text}");
    let replaced = load_layers(&out).unwrap();
    assert_eq!(replaced["l.weight"].weights.granularity(), w4a8::Granularity::PerGroup { group_size: 128 });
    let _ = std::fs::remove_dir_all(&dir);
}
