//! The example binary without its model: a clear error that says how to get it, never a panic.

use std::process::Command;

#[test]
fn a_missing_model_is_an_error_naming_the_fetch_script() {
    let out = Command::new(env!("CARGO_BIN_EXE_w4a8-minilm"))
        .args(["--model-dir", "/nonexistent/minilm", "--backend", "cpu", "embed", "hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/minilm") && err.contains("fetch-minilm.sh"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unknown_backend_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_w4a8-minilm"))
        .args(["--model-dir", "/nonexistent/minilm", "--backend", "tpu", "embed", "--fp32", "hello"])
        .output()
        .unwrap();
    // The model is loaded before the backend is opened, so either error may come first; both are clean.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.starts_with("error:") && !err.contains("panicked"), "{err}");
}
