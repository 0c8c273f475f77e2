//! Compile check without a GPU: NVRTC compiles every kernel for each supported architecture through
//! cudarc's NVRTC bindings (the backend's own path), and ptxas must report no spills.
//!
//! Skipped, with the reason printed, when NVRTC cannot be loaded; a failure instead when
//! `W4A8_REQUIRE_NVRTC=1` (CI sets it, after `pip install nvidia-cuda-nvrtc` and LD_LIBRARY_PATH).

use w4a8_cuda::kernels::{self, KERNELS};

const ARCHS: [(i32, i32); 4] = [(8, 0), (8, 6), (8, 9), (9, 0)];

fn nvrtc_or_skip() -> bool {
    match kernels::probe_nvrtc() {
        Ok(()) => true,
        Err(reason) => {
            let required = std::env::var("W4A8_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
            assert!(!required, "W4A8_REQUIRE_NVRTC=1 but {reason}");
            eprintln!("SKIPPED: {reason}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_every_arch_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    for (major, minor) in ARCHS {
        let compiled =
            kernels::compile(major, minor, true).unwrap_or_else(|e| panic!("sm_{major}{minor}: {e}"));
        assert!(compiled.cubin.len() > 1024, "sm_{major}{minor}: cubin of {} bytes", compiled.cubin.len());
        let usage = kernels::parse_ptxas_log(&compiled.log);
        for name in KERNELS {
            let u = usage.iter().find(|u| u.function == name).unwrap_or_else(|| {
                panic!("sm_{major}{minor}: no ptxas report for entry point {name}:\n{}", compiled.log)
            });
            println!(
                "sm_{major}{minor} {name}: {} registers, {} B stack, {} B spill stores, {} B spill loads",
                u.registers, u.stack_bytes, u.spill_stores, u.spill_loads
            );
            assert_eq!(
                (u.spill_stores, u.spill_loads),
                (0, 0),
                "sm_{major}{minor} {name} spills:\n{}",
                compiled.log
            );
            assert!(
                u.registers > 0 && u.registers <= 255,
                "sm_{major}{minor} {name}: {} registers",
                u.registers
            );
        }
        // The cubin is an ELF image that names every entry point.
        let cubin = String::from_utf8_lossy(&compiled.cubin);
        assert!(compiled.cubin.starts_with(b"\x7fELF"), "sm_{major}{minor}: cubin is not ELF");
        for name in KERNELS {
            assert!(cubin.contains(name), "sm_{major}{minor}: {name} missing from the cubin");
        }
    }
}

#[test]
fn a_compile_error_carries_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    // An architecture without int8 mma.m16n8k32 must fail loudly, with ptxas' words in the error.
    let err = kernels::compile(7, 0, false).expect_err("sm_70 has no m16n8k32 s8 mma");
    let text = err.to_string();
    assert!(text.contains("--gpu-architecture=sm_70"), "{text}");
}

/// A kernel the compiler rejects is `Error::Backend` carrying the options and the compiler's log:
/// sm_75 has no m16n8k32 int8 mma, so ptxas refuses our GEMM there.
#[test]
fn a_rejected_compile_is_a_backend_error_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    match kernels::compile(7, 5, false) {
        Err(w4a8_core::Error::Backend { message, .. }) => {
            assert!(message.contains("sm_75"), "options missing from the message: {message}");
            assert!(message.lines().count() > 1, "compiler log missing from the message: {message}");
        }
        Err(other) => panic!("expected Error::Backend, got {other:?}"),
        Ok(_) => panic!("sm_75 compiled an m16n8k32 int8 mma"),
    }
}
