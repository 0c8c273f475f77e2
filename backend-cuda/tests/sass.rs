//! The SASS report end to end (NVRTC → cubin → `cuobjdump -sass` → main-loop analysis), when the
//! tools are installed; skipped with the reason printed otherwise (see `w4a8_cuda::sass` for where
//! `cuobjdump` is looked for; CI installs it from PyPI, `nvidia-cuda-cuobjdump`).

use w4a8_cuda::layout::{CONFIGS, GemmConfig};
use w4a8_cuda::sass::{self, SassError};

/// IMMA per warp per k-tile: MT m16 tiles × 4 n8 tiles × the k32 steps this warp owns.
fn expected_imma(c: &GemmConfig) -> usize {
    (c.bm / c.warps_m / 16) * 4 * (4 / c.warps_k)
}

/// cp.async per thread per k-tile: ⌈BM·8 / 256⌉ A chunks, WARPS_N·128 / 256 B chunks, ≤ 1 for scales.
fn expected_copies(c: &GemmConfig, per_group: bool) -> usize {
    (c.bm * 8).div_ceil(256) + c.warps_n * 128 / 256 + usize::from(per_group)
}

/// A ceiling on main-loop instructions per IMMA, with headroom over what the kernels compile to
/// (benches/SASS.md: at most 23, 9.4, 4.7 after the lean-loop change; 116, 35, 12 before it).
fn per_imma_ceiling(c: &GemmConfig) -> f64 {
    match c.bm {
        16 => 32.0,
        64 => 12.0,
        _ => 6.0,
    }
}

#[test]
fn every_gemm_has_a_lean_main_loop() {
    for (major, minor) in [(8, 0), (9, 0)] {
        let report = match sass::report(major, minor) {
            Ok(r) => r,
            Err(SassError::Missing(reason)) => {
                eprintln!("SKIPPED: {reason}");
                return;
            }
            Err(e) => panic!("sm_{major}{minor}: {e}"),
        };
        println!("{}", report.markdown());
        assert_eq!(report.kernels.len(), 2 * CONFIGS.len());
        for c in CONFIGS {
            for (name, per_group) in [(c.per_channel, false), (c.per_group, true)] {
                let k = report.kernels.iter().find(|k| k.name == name).expect(name);
                assert_eq!(k.spills, (0, 0), "sm_{major}{minor} {name} spills");
                let m =
                    k.main_loop.as_ref().unwrap_or_else(|| panic!("sm_{major}{minor} {name}: no main loop"));
                // The loop found is the k-tile loop: it holds exactly one k-tile's IMMA and one barrier.
                assert_eq!(m.counts.imma, expected_imma(&c), "sm_{major}{minor} {name}: {m:?}");
                assert_eq!(m.counts.bar, 1, "sm_{major}{minor} {name}: {m:?}");
                // Lean: straight-line copies, one cp.async per 16 bytes a thread copies, no copy loop.
                assert_eq!(
                    m.counts.ldgsts,
                    expected_copies(&c, per_group),
                    "sm_{major}{minor} {name}: {m:?}"
                );
                assert_eq!(m.inner_loops, 0, "sm_{major}{minor} {name}: a loop inside the main loop: {m:?}");
                let per = m.counts.per_imma().unwrap();
                assert!(
                    per <= per_imma_ceiling(&c),
                    "sm_{major}{minor} {name}: {per:.1} instructions per IMMA"
                );
            }
        }
    }
}
