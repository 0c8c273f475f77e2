//! The CUDA sources, their entry points, and run-time compilation with NVRTC.
//!
//! The three files under `kernels/` are embedded with `include_str!` and compiled as one program
//! (`w4a8_common.cuh` spliced in place of each `#include` line), once per process per GPU
//! architecture, for that architecture exactly (`--gpu-architecture=sm_XY`: a cubin, no PTX JIT).

use std::collections::HashMap;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use w4a8_core::{BackendKind, Error, Result};

/// `kernels/w4a8_common.cuh`: helpers, fragment maps, dequantization, epilogue.
pub const COMMON_SOURCE: &str = include_str!("../../kernels/w4a8_common.cuh");
/// `kernels/w4a8_gemm.cu`: the stream-K GEMM kernels.
pub const GEMM_SOURCE: &str = include_str!("../../kernels/w4a8_gemm.cu");
/// `kernels/w4a8_quantize.cu`: per-token activation quantization.
pub const QUANTIZE_SOURCE: &str = include_str!("../../kernels/w4a8_quantize.cu");

/// The line of each `.cu` file that the common header replaces.
pub const INCLUDE_LINE: &str = "#include \"w4a8_common.cuh\"";

/// Entry point of the activation quantizer.
pub const QUANTIZE_ACTIVATIONS: &str = "w4a8_quantize_activations";

/// Entry point of the activation quantizer with the online Walsh–Hadamard rotation fused in.
pub const QUANTIZE_ACTIVATIONS_HADAMARD: &str = "w4a8_quantize_activations_hadamard";

/// Channels the rotated quantizer holds in shared memory at once (`W4A8_HCHUNK`): the largest block.
pub const HADAMARD_CHUNK: usize = 4096;

/// Every `extern "C" __global__` entry point of the program: the one table of kernel names.
/// (The GEMM names are also listed in [`crate::layout::CONFIGS`]; a test checks they agree.)
pub const KERNELS: [&str; 8] = [
    QUANTIZE_ACTIVATIONS,
    QUANTIZE_ACTIVATIONS_HADAMARD,
    "w4a8_gemm_small_per_channel",
    "w4a8_gemm_small_per_group",
    "w4a8_gemm_medium_per_channel",
    "w4a8_gemm_medium_per_group",
    "w4a8_gemm_large_per_channel",
    "w4a8_gemm_large_per_group",
];

/// The whole program as NVRTC sees it: the common header once, then each `.cu` file without its
/// `#include` line.
pub fn program_source() -> String {
    let mut src = String::with_capacity(COMMON_SOURCE.len() + GEMM_SOURCE.len() + QUANTIZE_SOURCE.len() + 64);
    src.push_str(COMMON_SOURCE);
    for (name, body) in [("w4a8_quantize.cu", QUANTIZE_SOURCE), ("w4a8_gemm.cu", GEMM_SOURCE)] {
        src.push_str(&format!("\n// ---- {name} ----\n"));
        src.push_str(&body.replacen(INCLUDE_LINE, "// (w4a8_common.cuh spliced above)", 1));
    }
    src
}

/// NVRTC options for compute capability `major.minor`. `--fmad=false` on top of the `_rn`
/// intrinsics: no float expression in these kernels may be contracted into an FMA.
pub fn compile_options(major: i32, minor: i32, verbose_ptxas: bool) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_string(),
        "--fmad=false".to_string(),
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
    ];
    if verbose_ptxas {
        opts.push("--ptxas-options=-v".to_string());
    }
    opts
}

/// What NVRTC produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The cubin for exactly the requested architecture.
    pub cubin: Vec<u8>,
    /// The compiler log (with `--ptxas-options=-v`: registers, stack and spills per kernel).
    pub log: String,
    /// The options it was compiled with.
    pub options: Vec<String>,
}

fn nvrtc_unavailable() -> Option<String> {
    // SAFETY: is_culib_present only dlopen()s candidate library names and drops the handles; it
    // touches no NVRTC state.
    if unsafe { nvrtc_sys::is_culib_present() } {
        None
    } else {
        Some(
            "NVRTC (libnvrtc.so.13) not found: install the CUDA 13 toolkit or `pip install \
             nvidia-cuda-nvrtc` and add its lib folder to LD_LIBRARY_PATH"
                .to_string(),
        )
    }
}

/// Returns `Err(reason)` when NVRTC cannot be loaded, before anything could panic on it.
pub fn probe_nvrtc() -> std::result::Result<(), String> {
    nvrtc_unavailable().map_or(Ok(()), Err)
}

fn c_log(v: Vec<c_char>) -> String {
    let bytes: Vec<u8> = v.into_iter().map(|c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn backend_err(message: String) -> Error {
    Error::Backend { backend: BackendKind::Cuda, message }
}

/// Compiles the program for `sm_{major}{minor}` through cudarc's NVRTC bindings (the same path the
/// backend takes at run time). An absent NVRTC is [`Error::Unavailable`]; a compile error carries
/// the options and the log.
pub fn compile(major: i32, minor: i32, verbose_ptxas: bool) -> Result<Compiled> {
    if let Some(reason) = nvrtc_unavailable() {
        return Err(Error::Unavailable { backend: BackendKind::Cuda, reason });
    }
    let options = compile_options(major, minor, verbose_ptxas);
    // cudarc panics if a symbol is missing from an (old) libnvrtc: turn that into an error too.
    catch_unwind(AssertUnwindSafe(|| compile_inner(&options))).unwrap_or_else(|_| {
        Err(Error::Unavailable {
            backend: BackendKind::Cuda,
            reason: "the NVRTC library found lacks a function cudarc needs (too old for CUDA 13?)".into(),
        })
    })
}

fn compile_inner(options: &[String]) -> Result<Compiled> {
    let src = CString::new(program_source())
        .map_err(|e| backend_err(format!("kernel source has a NUL byte: {e}")))?;
    let prog = nvrtc::create_program(&src, Some(c"w4a8.cu"))
        .map_err(|e| backend_err(format!("nvrtcCreateProgram failed: {e:?}")))?;
    // SAFETY: `prog` was just created from `src`, which outlives it, and is destroyed exactly once
    // below, after its last use; the cubin buffer is sized by nvrtcGetCUBINSize for this program.
    unsafe {
        let compiled = nvrtc::compile_program(prog, options);
        let log = nvrtc::get_program_log(prog).map(c_log).unwrap_or_default();
        let result = match compiled {
            Err(e) => {
                Err(backend_err(format!("NVRTC compile failed ({e:?}) with options {options:?}:\n{log}")))
            }
            Ok(()) => {
                let mut size = 0usize;
                let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                    Err(backend_err(format!("nvrtcGetCUBINSize failed: {r:?}")))
                } else {
                    let mut cubin = vec![0u8; size];
                    let r = nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char);
                    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                        Err(backend_err(format!("nvrtcGetCUBIN failed: {r:?} (size {size})")))
                    } else {
                        Ok(Compiled { cubin, log, options: options.to_vec() })
                    }
                }
            }
        };
        let _ = nvrtc::destroy_program(prog);
        result
    }
}

/// The cubin for `sm_{major}{minor}`, compiled on first use and cached for the life of the process.
pub fn cubin_for(major: i32, minor: i32) -> Result<Arc<Vec<u8>>> {
    type Cache = Mutex<HashMap<(i32, i32), Arc<Vec<u8>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held across the compile so that two backends on one architecture compile once.
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = guard.get(&(major, minor)) {
        return Ok(c.clone());
    }
    let compiled = Arc::new(compile(major, minor, false)?.cubin);
    guard.insert((major, minor), compiled.clone());
    Ok(compiled)
}

/// Per-kernel resource usage parsed from a `--ptxas-options=-v` log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasUsage {
    /// Mangled or `extern "C"` name of the function.
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Stack frame bytes.
    pub stack_bytes: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
}

/// Parses ptxas' verbose log: a `Compiling entry function 'NAME'` line, then
/// `N bytes stack frame, N bytes spill stores, N bytes spill loads` and `Used N registers`.
pub fn parse_ptxas_log(log: &str) -> Vec<PtxasUsage> {
    fn number_before(line: &str, what: &str) -> Option<u32> {
        let idx = line.find(what)?;
        line[..idx].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    }
    let mut out: Vec<PtxasUsage> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(PtxasUsage { function: name, ..Default::default() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(u32::MAX);
            cur.spill_stores = number_before(line, "bytes spill stores").unwrap_or(u32::MAX);
            cur.spill_loads = number_before(line, "bytes spill loads").unwrap_or(u32::MAX);
        }
        if line.contains("Used") && line.contains("registers") {
            cur.registers = number_before(line, "registers").unwrap_or(u32::MAX);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_once_in_the_source() {
        let src = program_source();
        for name in KERNELS {
            let plain = src.matches(&format!("void __launch_bounds__(256)\n    {name}(")).count();
            let macro_use = src.matches(&format!("W4A8_GEMM_ENTRY({name},")).count();
            assert_eq!(plain + macro_use, 1, "{name}");
        }
        for c in crate::layout::CONFIGS {
            assert!(KERNELS.contains(&c.per_channel) && KERNELS.contains(&c.per_group));
        }
        assert_eq!(src.matches("#pragma once").count(), 1);
        assert!(!src.lines().any(|l| l.trim() == INCLUDE_LINE), "an #include line was left for NVRTC");
        assert!(
            GEMM_SOURCE.lines().any(|l| l == INCLUDE_LINE)
                && QUANTIZE_SOURCE.lines().any(|l| l == INCLUDE_LINE)
        );
    }

    #[test]
    fn host_constants_match_the_cuda_source() {
        use crate::layout::*;
        for (name, value) in [
            ("W4A8_BK", BK),
            ("W4A8_KSTEP", KSTEP),
            ("W4A8_WARP_N", WARP_N),
            ("W4A8_CHUNK_WORDS", CHUNK_WORDS),
            ("W4A8_SCALE_SLOT_BYTES", SCALE_SLOT_BYTES),
            ("W4A8_RASTER_ROWS", RASTER_ROWS),
        ] {
            assert!(COMMON_SOURCE.contains(&format!("#define {name} {value}\n")), "{name} = {value}");
        }
        assert!(QUANTIZE_SOURCE.contains(&format!("#define W4A8_HCHUNK {HADAMARD_CHUNK}\n")));
        assert_eq!(HADAMARD_CHUNK, w4a8_core::MAX_HADAMARD_BLOCK);
        for c in CONFIGS {
            for (name, pg) in [(c.per_channel, false), (c.per_group, true)] {
                let line = format!(
                    "W4A8_GEMM_ENTRY({name}, {}, {}, {}, {}, {}, {pg})",
                    c.bm, c.warps_m, c.warps_n, c.warps_k, c.stages
                );
                assert!(GEMM_SOURCE.contains(&line), "{line}");
            }
        }
    }

    #[test]
    fn ptxas_log_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'w4a8_x' for 'sm_80'\n\
                   ptxas info    : Function properties for w4a8_x\n\
                   \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 96 registers, used 1 barriers, 400 bytes cmem[0]\n";
        let u = parse_ptxas_log(log);
        assert_eq!(
            u,
            vec![PtxasUsage {
                function: "w4a8_x".into(),
                registers: 96,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }]
        );
    }
}
