//! The measurement driver, written once over [`BenchBackend`]: ceilings first, then every W4A8 kernel
//! and every peer GEMM at every shape and M. Each case is warmed up, then gets two times — kernel time
//! (device time per run of runs queued back to back) and whole-call time (host clock around one call
//! and its completion) — over rotating input sets larger than L2, and is checked against a reference
//! on a sample of outputs.

use half::f16;
use w4a8_core::pack::words_per_row;
use w4a8_core::{DeviceTensor, Error, Gemm, Granularity, Result, W4A8Weights};

use crate::backend::{BaselineGemm, BaselineKind, BenchBackend, GemmRun};
use crate::check::check_w4a8;
use crate::config::RunConfig;
use crate::data::{random_quantized_activations, random_weights, sample_positions};
use crate::markdown::{num, progress_line};
use crate::measure::{call_time, kernel_time, seed_for};
use crate::model::{BackendReport, Ceilings, CopyCeiling, PeakCeiling, Row, RowKind};
use crate::peers::{load_peer_weights, peer_rows, time_peer};
use crate::shapes::Shape;
use crate::stats::rotation_sets;

/// Bytes of canonical W4A8 weights, as [`W4A8Weights::storage_bytes`] will count them.
fn w4a8_weight_bytes(n: usize, k: usize, g: Granularity) -> usize {
    n * words_per_row(k) * 4 + n * 4 + g.groups(k) * n
}

/// What the backend says it launches at (M, N, K): its plan, or why it could not say.
fn plan_of<G: Gemm>(gemm: &G, m: usize, n: usize, k: usize, g: Granularity) -> String {
    gemm.kernel_plan(m, n, k, g).map_or_else(|e| format!("plan unavailable: {e}"), |p| p.to_string())
}

/// Times the W4A8 kernels of `b` at one shape and granularity, for every M.
fn w4a8_rows<B: BenchBackend>(
    b: &B,
    cfg: &RunConfig,
    shape: &Shape,
    g: Granularity,
    log: &mut dyn FnMut(&str),
) -> Vec<Row> {
    let gemm = b.gemm();
    let (n, k) = (shape.n, shape.k);
    let row = |m: usize| Row {
        plan: Some(plan_of(gemm, m, n, k, g)),
        ..Row::new(shape, m, format!("W4A8 {g}"), RowKind::W4A8 { granularity: g.to_string() })
    };
    let sets = rotation_sets(w4a8_weight_bytes(n, k, g), cfg.rotate_bytes, cfg.max_sets);
    // Set 0 stays on the host for the checks; the others are dropped once uploaded.
    let prepared = (|| -> Result<(W4A8Weights, Vec<<B::G as Gemm>::Weights>)> {
        let host0 = random_weights(n, k, g, seed_for(cfg, n, k, 1, 0))?;
        let mut dev = vec![gemm.prepare(&host0)?];
        for s in 1..sets {
            dev.push(gemm.prepare(&random_weights(n, k, g, seed_for(cfg, n, k, 1, s))?)?);
        }
        Ok((host0, dev))
    })();
    let (host_w, dev_w) = match prepared {
        Ok(p) => p,
        Err(e) => {
            log(&format!("  {shape} {g}: weights not prepared: {e}"));
            return cfg.m_values.iter().map(|&m| row(m).failed(&e)).collect();
        }
    };
    let mut rows = Vec::new();
    for &m in &cfg.m_values {
        let case = (|| -> Result<Row> {
            let host_x = random_quantized_activations(m, k, seed_for(cfg, m, k, 2, 0))?;
            let mut dev_x = vec![gemm.upload_activations(&host_x)?];
            for s in 1..sets {
                let x = random_quantized_activations(m, k, seed_for(cfg, m, k, 2, s))?;
                dev_x.push(gemm.upload_activations(&x)?);
            }
            let mut y = gemm.alloc_output(m, n, f16::NAN)?;
            for i in 0..cfg.warmup {
                gemm.gemm_into(&dev_x[i % sets], &dev_w[i % sets], &mut y)?;
            }
            gemm.synchronize()?;
            let kernel = kernel_time(cfg, sets, |first, runs| {
                let batch: Vec<GemmRun<'_, B::G>> =
                    (first..first + runs).map(|i| (&dev_x[i % sets], &dev_w[i % sets])).collect();
                b.time_gemm_batch(&batch, &mut y)
            })?;
            let call = call_time(cfg, sets, |s| b.time_call(&dev_x[s], &dev_w[s], &mut y))?;
            // The check: set 0 into a freshly poisoned output, so an unwritten element shows as NaN.
            let mut y0 = gemm.alloc_output(m, n, f16::NAN)?;
            gemm.gemm_into(&dev_x[0], &dev_w[0], &mut y0)?;
            let out = gemm.read_output(&y0)?;
            let positions = sample_positions(m, n, cfg.check_samples, seed_for(cfg, m, n, 3, 0));
            let check = check_w4a8(&out, &host_x, &host_w, &positions);
            let x_bytes = m * k + 4 * m;
            let bytes = (host_w.storage_bytes() + x_bytes + 2 * m * n) as f64;
            debug_assert_eq!(dev_w[0].shape(), (n, k));
            Ok(row(m).measured(sets, bytes, kernel, call, check))
        })();
        let r = case.unwrap_or_else(|e| row(m).failed(&e));
        log(&progress_line(&r));
        rows.push(r);
    }
    rows
}

/// Measures the copy bandwidth and the f16 matrix peak.
fn ceilings<B: BenchBackend>(
    b: &B,
    peers: &mut [Box<dyn BaselineGemm + '_>],
    cfg: &RunConfig,
    log: &mut dyn FnMut(&str),
) -> Ceilings {
    let mut c = Ceilings::default();
    let copy = (|| -> Result<CopyCeiling> {
        let mut op = b.copy_op(cfg.copy_bytes)?;
        op.time_batch(cfg.warmup.max(1))?;
        let time = kernel_time(cfg, 1, |_, runs| op.time_batch(runs))?;
        let verified = op.verify()?;
        let gbps = 2.0 * op.bytes() as f64 / time.median_s / 1e9;
        Ok(CopyCeiling { method: op.method(), bytes: op.bytes(), time, gbps, verified })
    })();
    match copy {
        Ok(cc) => {
            log(&format!("copy bandwidth: {} GB/s (read+write of {} MiB)", num(cc.gbps), cc.bytes >> 20));
            c.copy = Some(cc);
        }
        Err(e) => {
            log(&format!("copy bandwidth not measured: {e}"));
            c.copy_error = Some(e.to_string());
        }
    }
    let Some(peer) = peers.iter_mut().find(|p| p.kind() == BaselineKind::Fp16) else {
        c.peak_error = Some("no f16 GEMM on this backend".into());
        return c;
    };
    let s = cfg.peak_size;
    let peak = (|| -> Result<PeakCeiling> {
        let host_w = load_peer_weights(peer.as_mut(), cfg, s, s, 1)?;
        let case = time_peer(peer.as_mut(), cfg, &host_w, (s, s, s), 1)?;
        peer.clear_weights();
        let tflops = 2.0 * (s as f64).powi(3) / case.kernel.median_s / 1e12;
        Ok(PeakCeiling { kernel: peer.name(), size: s, time: case.kernel, tflops, check: case.check })
    })();
    match peak {
        Ok(p) => {
            log(&format!("matrix peak: {} TFLOPS ({} at {s}³)", num(p.tflops), p.kernel));
            c.peak = Some(p);
        }
        Err(e) => {
            peer.clear_weights();
            log(&format!("matrix peak not measured: {e}"));
            c.peak_error = Some(e.to_string());
        }
    }
    c
}

/// Fills the ratio columns from median kernel times: % of the ceilings, speedups over the first
/// FP16 and W8A8 peers at the same shape and M.
pub fn derive_ratios(report: &mut BackendReport) {
    let copy = report.ceilings.copy.as_ref().map(|c| c.gbps);
    let peak = report.ceilings.peak.as_ref().map(|p| p.tflops);
    let peer_time = |rows: &[Row], shape: &Shape, m: usize, kind: BaselineKind| {
        rows.iter()
            .find(|r| {
                &r.shape == shape
                    && r.m == m
                    && r.kind == RowKind::Baseline { kind }
                    && r.kernel_time.is_some()
            })
            .and_then(|r| r.kernel_time.as_ref().map(|t| t.median_s))
    };
    let snapshot = report.rows.clone();
    for r in &mut report.rows {
        let Some(t) = r.kernel_time.as_ref().map(|t| t.median_s) else { continue };
        r.pct_copy_bw = copy.zip(r.gbps).map(|(c, g)| 100.0 * g / c);
        r.pct_peak = peak.zip(r.tops).map(|(p, t)| 100.0 * t / p);
        if matches!(r.kind, RowKind::W4A8 { .. }) {
            r.speedup_fp16 = peer_time(&snapshot, &r.shape, r.m, BaselineKind::Fp16).map(|b| b / t);
            r.speedup_w8a8 = peer_time(&snapshot, &r.shape, r.m, BaselineKind::Int8).map(|b| b / t);
        }
    }
}

/// Runs everything on one backend: ceilings, then per shape every W4A8 granularity and every peer.
pub fn run_backend<B: BenchBackend>(
    b: &B,
    cfg: &RunConfig,
    log: &mut dyn FnMut(&str),
) -> Result<BackendReport> {
    let device = b.device();
    log(&format!("== {}: {} ({})", device.backend, device.name, device.driver));
    let granularities = cfg.parsed_granularities().map_err(|reason| Error::InvalidValue {
        what: "granularity",
        index: 0,
        reason,
    })?;
    // Without its peers (cuBLAS missing, say) a backend still reports its own kernels.
    let (mut peers, peer_error) = match b.baselines() {
        Ok(p) => (p, None),
        Err(e) => {
            log(&format!("peer GEMMs unavailable: {e}"));
            (Vec::new(), Some(e.to_string()))
        }
    };
    let ceilings = ceilings(b, &mut peers, cfg, log);
    let mut rows = Vec::new();
    for shape in &cfg.shapes {
        for &g in &granularities {
            rows.extend(w4a8_rows(b, cfg, shape, g, log));
        }
        for peer in peers.iter_mut() {
            rows.extend(peer_rows(peer.as_mut(), cfg, shape, log));
        }
    }
    // Table order: shape, then M, then kernel as produced (W4A8 granularities, then peers).
    let order = |r: &Row| cfg.shapes.iter().position(|s| s == &r.shape).unwrap_or(usize::MAX);
    rows.sort_by_key(|r| (order(r), r.m));
    let mut report = BackendReport { device, ceilings, peer_error, rows };
    derive_ratios(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CopyOp, DeviceRecord};
    use crate::cpu::CpuBench;
    use crate::data::random_quantized_activations;
    use w4a8_core::oracle::reference_gemm;

    #[test]
    fn cpu_quick_run_fills_every_column_and_checks_pass() {
        let mut cfg = RunConfig::quick();
        cfg.shapes.truncate(2);
        cfg.m_values = vec![1, 7];
        let mut lines = Vec::new();
        let r = run_backend(&CpuBench::new(), &cfg, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(r.all_checks_pass(), "{:?}", r.failures());
        assert!(r.ceilings.copy.as_ref().unwrap().verified);
        assert!(r.ceilings.peak.as_ref().unwrap().check.ok());
        // 2 shapes × 2 M × (2 granularities + 2 peers).
        assert_eq!(r.rows.len(), 16);
        for row in &r.rows {
            assert!(row.error.is_none(), "{row:?}");
            let (kt, ct) = (row.kernel_time.as_ref().unwrap(), row.call_time.as_ref().unwrap());
            assert!(kt.runs >= cfg.min_iters && ct.runs >= cfg.min_iters && kt.median_s > 0.0);
            assert!(
                row.sets >= 2
                    && row.tops.unwrap() > 0.0
                    && row.pct_copy_bw.is_some()
                    && row.pct_peak.is_some()
            );
            let is_w4a8 = matches!(row.kind, RowKind::W4A8 { .. });
            assert_eq!(row.speedup_fp16.is_some(), is_w4a8);
            assert_eq!(row.speedup_w8a8.is_some(), is_w4a8);
            // Every W4A8 row says which kernel ran; peers have no plan.
            assert_eq!(row.plan.as_ref().is_some_and(|p| p.contains("oracle gemm_int8")), is_w4a8, "{row:?}");
        }
        assert!(lines.iter().any(|l| l.contains("copy bandwidth")));
    }

    #[test]
    fn speedups_come_from_kernel_times() {
        let mut cfg = RunConfig::quick();
        cfg.shapes.truncate(1);
        cfg.m_values = vec![2];
        let mut r = run_backend(&CpuBench::new(), &cfg, &mut |_| {}).unwrap();
        // Make whole-call times absurd: the ratios, recomputed, must not move.
        for row in &mut r.rows {
            row.call_time.as_mut().unwrap().median_s *= 1e6;
        }
        let before = r.clone();
        derive_ratios(&mut r);
        assert_eq!(r, before);
        let w = r.rows.iter().find(|x| matches!(x.kind, RowKind::W4A8 { .. })).unwrap();
        let fp16 = r.rows.iter().find(|x| x.kind == RowKind::Baseline { kind: BaselineKind::Fp16 }).unwrap();
        let want = fp16.kernel_time.as_ref().unwrap().median_s / w.kernel_time.as_ref().unwrap().median_s;
        assert!((w.speedup_fp16.unwrap() - want).abs() <= 1e-12 * want);
    }

    #[test]
    fn wrong_outputs_fail_and_a_backend_without_peers_still_reports() {
        /// The oracle with no peer GEMMs.
        struct NoPeers(CpuBench);
        impl BenchBackend for NoPeers {
            type G = w4a8_core::CpuOracle;
            fn gemm(&self) -> &Self::G {
                self.0.gemm()
            }
            fn device(&self) -> DeviceRecord {
                self.0.device()
            }
            fn time_gemm_batch(
                &self,
                runs: &[GemmRun<'_, Self::G>],
                y: &mut <Self::G as Gemm>::Output,
            ) -> Result<f64> {
                self.0.time_gemm_batch(runs, y)
            }
            fn copy_op(&self, bytes: usize) -> Result<Box<dyn CopyOp + '_>> {
                self.0.copy_op(bytes)
            }
            fn baselines(&self) -> Result<Vec<Box<dyn BaselineGemm + '_>>> {
                Ok(Vec::new())
            }
        }
        // Outputs computed from other weights than the ones checked against fail the check.
        let w = random_weights(9, 128, Granularity::PerChannel, 1).unwrap();
        let w_other = random_weights(9, 128, Granularity::PerChannel, 2).unwrap();
        let x = random_quantized_activations(2, 128, 3).unwrap();
        let y = reference_gemm(&x, &w_other).unwrap();
        let c = check_w4a8(&y, &x, &w, &sample_positions(2, 9, 18, 4));
        assert!(c.failed > 0);
        // And a backend with no peers still produces a full W4A8 table, with no speedups.
        let mut cfg = RunConfig::quick();
        cfg.shapes.truncate(1);
        cfg.m_values = vec![3];
        cfg.granularities = vec!["g64".into()];
        let r = run_backend(&NoPeers(CpuBench::new()), &cfg, &mut |_| {}).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert!(
            r.rows[0].speedup_fp16.is_none() && r.ceilings.peak.is_none() && r.ceilings.peak_error.is_some()
        );
    }
}
