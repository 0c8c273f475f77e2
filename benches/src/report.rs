//! The measurement driver, written once over [`BenchBackend`]: ceilings first, then every W4A8 kernel
//! and every peer GEMM at every shape and M, each timed with the device's timer (warm-up, rotating
//! input sets larger than L2, median of many runs) and each checked against a reference on a sample
//! of outputs.

use std::time::Instant;

use half::f16;
use serde::{Deserialize, Serialize};
use w4a8_core::oracle::{dot_i8, epilogue};
use w4a8_core::pack::words_per_row;
use w4a8_core::{DeviceTensor, Error, Gemm, Granularity, QuantizedActivations, Result, W4A8Weights};

use crate::backend::{Accumulation, BaselineGemm, BaselineKind, BenchBackend, DeviceRecord, HostData};
use crate::data::{
    SplitMix64, random_f16, random_i8, random_quantized_activations, random_weights, sample_positions,
};
use crate::meta::RunMeta;
use crate::shapes::{M_VALUES, QUICK_M_VALUES, Shape, llama_shapes, quick_shapes};
use crate::stats::{Summary, rotation_sets};

/// Everything that decides what a run measures. Recorded in the JSON beside the figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Weight shapes N×K.
    pub shapes: Vec<Shape>,
    /// Token counts M.
    pub m_values: Vec<usize>,
    /// W4A8 granularities, as printed (`per-channel`, `g128`, …).
    pub granularities: Vec<String>,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Timed runs per case (fewer if `max_case_seconds` runs out after `min_iters`).
    pub iters: usize,
    /// Timed runs always made, whatever the time budget.
    pub min_iters: usize,
    /// Stop timing a case after this much wall time once `min_iters` runs are in.
    pub max_case_seconds: f64,
    /// The rotating input sets of a case together hold at least this many bytes (≥ 2 × L2).
    pub rotate_bytes: usize,
    /// At most this many rotating sets (bounds memory for tiny shapes).
    pub max_sets: usize,
    /// Outputs checked against the reference per case.
    pub check_samples: usize,
    /// Bytes per device-to-device copy for the bandwidth ceiling.
    pub copy_bytes: usize,
    /// M = N = K of the f16 GEMM that measures the matrix peak.
    pub peak_size: usize,
    /// Seed of all random data.
    pub seed: u64,
    /// `--quick`: tiny shapes, few runs; timings labelled meaningless.
    pub quick: bool,
}

impl RunConfig {
    /// The full run of DESIGN.md: LLaMA-2 shapes, M from 1 to 4096, per-channel and g128.
    pub fn full() -> Self {
        RunConfig {
            shapes: llama_shapes(),
            m_values: M_VALUES.to_vec(),
            granularities: vec!["per-channel".into(), "g128".into()],
            warmup: 10,
            iters: 50,
            min_iters: 10,
            max_case_seconds: 2.0,
            rotate_bytes: 2 * 50 * 1_000_000,
            max_sets: 32,
            check_samples: 64,
            copy_bytes: 512 << 20,
            peak_size: 8192,
            seed: 0x5EED_04A8,
            quick: false,
        }
    }

    /// `--quick`: tiny shapes, three M values, a handful of runs; seconds on the CPU oracle even in a
    /// debug build.
    pub fn quick() -> Self {
        RunConfig {
            shapes: quick_shapes(),
            m_values: QUICK_M_VALUES.to_vec(),
            warmup: 1,
            iters: 5,
            min_iters: 3,
            max_case_seconds: 0.5,
            rotate_bytes: 1 << 20,
            max_sets: 3,
            check_samples: 32,
            copy_bytes: 8 << 20,
            peak_size: 128,
            quick: true,
            ..RunConfig::full()
        }
    }

    /// The granularities, parsed.
    pub fn parsed_granularities(&self) -> Result<Vec<Granularity>, String> {
        self.granularities.iter().map(|g| parse_granularity(g)).collect()
    }
}

/// Parses `per-channel` (or `pc`) and `gN` (N ∈ 32, 64, 128, 256).
pub fn parse_granularity(s: &str) -> Result<Granularity, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "per-channel" || t == "pc" || t == "channel" {
        return Ok(Granularity::PerChannel);
    }
    let g: usize = t
        .strip_prefix('g')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("granularity `{s}`: expected per-channel or g32/g64/g128/g256"))?;
    if !w4a8_core::GROUP_SIZES.contains(&g) {
        return Err(format!("granularity `{s}`: group size must be 32, 64, 128 or 256"));
    }
    Ok(Granularity::PerGroup { group_size: g })
}

/// The outcome of checking sampled outputs against the reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Outputs compared.
    pub checked: usize,
    /// Outputs outside the tolerance.
    pub failed: usize,
    /// Largest error seen: f16 ulps for W4A8, absolute for peers.
    pub max_err: f64,
    /// The first failure, described.
    pub first_failure: Option<String>,
}

impl Check {
    /// At least one output checked and none failed.
    pub fn ok(&self) -> bool {
        self.checked > 0 && self.failed == 0
    }

    fn record(&mut self, err: f64, ok: bool, describe: impl FnOnce() -> String) {
        self.checked += 1;
        // NaN and infinity count as the worst error; f64::MAX (not ∞) so that the JSON round-trips.
        let err = if err.is_finite() { err } else { f64::MAX };
        self.max_err = self.max_err.max(err);
        if !ok {
            self.failed += 1;
            if self.first_failure.is_none() {
                self.first_failure = Some(describe());
            }
        }
    }
}

/// What a table row times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RowKind {
    /// A W4A8 kernel of this backend, through the `Gemm` trait.
    W4A8 {
        /// `per-channel` or `gN`.
        granularity: String,
    },
    /// A peer GEMM.
    Baseline {
        /// Which speedup column it feeds.
        kind: BaselineKind,
    },
}

/// One kernel at one shape and one M.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Weight shape.
    pub shape: Shape,
    /// Tokens.
    pub m: usize,
    /// Kernel name for the table.
    pub kernel: String,
    /// W4A8 or a peer.
    pub kind: RowKind,
    /// Rotating input sets used.
    pub sets: usize,
    /// 2·M·N·K.
    pub ops: f64,
    /// Bytes a kernel must move at least: weights (+scales), activations, output.
    pub bytes: f64,
    /// Device times.
    pub time: Option<Summary>,
    /// ops / median time, in 10¹² per second.
    pub tops: Option<f64>,
    /// bytes / median time, in 10⁹ per second.
    pub gbps: Option<f64>,
    /// `gbps` as a percentage of the measured copy bandwidth.
    pub pct_copy_bw: Option<f64>,
    /// `tops` as a percentage of the measured f16 matrix peak.
    pub pct_peak: Option<f64>,
    /// FP16 peer's median time / this one's (W4A8 rows only).
    pub speedup_fp16: Option<f64>,
    /// W8A8 peer's median time / this one's (W4A8 rows only).
    pub speedup_w8a8: Option<f64>,
    /// The result check of this case.
    pub check: Option<Check>,
    /// Why the case has no timing (a device limit, a backend error).
    pub error: Option<String>,
}

/// The bandwidth ceiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyCeiling {
    /// How the copy is made and timed.
    pub method: String,
    /// Bytes per copy.
    pub bytes: usize,
    /// Device times.
    pub time: Summary,
    /// (read + write bytes) / median time, 10⁹ per second.
    pub gbps: f64,
    /// Whether the destination equalled the source.
    pub verified: bool,
}

/// The matrix ceiling: an f16 GEMM at a large square size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakCeiling {
    /// Which peer GEMM.
    pub kernel: String,
    /// M = N = K.
    pub size: usize,
    /// Device times.
    pub time: Summary,
    /// 2·size³ / median time, 10¹² per second.
    pub tflops: f64,
    /// The result check.
    pub check: Check,
}

/// The ceilings of one device, measured first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Copy bandwidth, if measured.
    pub copy: Option<CopyCeiling>,
    /// Why the copy could not be measured.
    pub copy_error: Option<String>,
    /// Matrix peak, if this backend has an f16 peer.
    pub peak: Option<PeakCeiling>,
    /// Why the peak could not be measured.
    pub peak_error: Option<String>,
}

/// Everything measured on one backend's device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The device.
    pub device: DeviceRecord,
    /// Ceilings.
    pub ceilings: Ceilings,
    /// Why the peer GEMMs could not be set up, if they could not.
    pub peer_error: Option<String>,
    /// One row per (shape, M, kernel), in table order.
    pub rows: Vec<Row>,
}

impl BackendReport {
    /// Every check that ran passed (ceilings included).
    pub fn all_checks_pass(&self) -> bool {
        self.failures().is_empty()
    }

    /// Descriptions of every failed check.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.ceilings.copy
            && !c.verified
        {
            out.push(format!("{}: copy destination differs from its source", self.device.backend));
        }
        if let Some(p) = &self.ceilings.peak
            && !p.check.ok()
        {
            out.push(format!("{}: peak {}: {:?}", self.device.backend, p.kernel, p.check.first_failure));
        }
        for r in &self.rows {
            if let Some(c) = &r.check
                && !c.ok()
            {
                let what = c.first_failure.clone().unwrap_or_else(|| "nothing checked".into());
                out.push(format!("{}: {} M={} {}: {what}", self.device.backend, r.shape, r.m, r.kernel));
            }
        }
        out
    }
}

/// A whole run: metadata, configuration and one report per backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Date, commit, command line.
    pub meta: RunMeta,
    /// What was measured.
    pub config: RunConfig,
    /// One per backend that ran.
    pub backends: Vec<BackendReport>,
    /// Backends asked for that found no device: (name, reason).
    pub unavailable: Vec<(String, String)>,
}

/// Times `run(set)` after `warmup` untimed runs, rotating through `sets` input sets.
fn measure(cfg: &RunConfig, sets: usize, mut run: impl FnMut(usize) -> Result<f64>) -> Result<Summary> {
    for i in 0..cfg.warmup {
        run(i % sets)?;
    }
    let start = Instant::now();
    let mut times = Vec::with_capacity(cfg.iters);
    for i in 0..cfg.iters.max(1) {
        times.push(run((cfg.warmup + i) % sets)?);
        if times.len() >= cfg.min_iters && start.elapsed().as_secs_f64() > cfg.max_case_seconds {
            break;
        }
    }
    Summary::of(&times).ok_or_else(|| Error::InvalidValue {
        what: "timer output",
        index: times.iter().position(|t| !t.is_finite() || *t < 0.0).unwrap_or(0),
        reason: format!("the timer returned a negative or non-finite time among {times:?}"),
    })
}

/// A seed for one piece of data: (run seed, shape, what, set) mixed through SplitMix64.
fn seed_for(cfg: &RunConfig, n: usize, k: usize, what: u64, set: usize) -> u64 {
    let mut r = SplitMix64::with_stream(
        cfg.seed ^ ((n as u64) << 32) ^ k as u64,
        what.wrapping_mul(1 << 20) ^ set as u64,
    );
    r.next_u64()
}

/// Distance between two f16 values in units in the last place (NaN → infinity).
pub fn f16_ulp_distance(a: f16, b: f16) -> f64 {
    w4a8_core::oracle::f16_ulp_distance(a, b).map_or(f64::INFINITY, f64::from)
}

/// Checks W4A8 outputs (M×N) at `positions` against the oracle's arithmetic: within 1 f16 ulp.
pub fn check_w4a8(
    y: &[f16],
    x: &QuantizedActivations,
    w: &W4A8Weights,
    positions: &[(usize, usize)],
) -> Check {
    let (n, k) = (w.n(), w.k());
    let mut check = Check::default();
    if y.len() != x.m() * n {
        check.record(f64::INFINITY, false, || {
            format!("output has {} elements, expected {}", y.len(), x.m() * n)
        });
        return check;
    }
    let mut cached: Option<(usize, Vec<i8>)> = None;
    for &(row, col) in positions {
        if cached.as_ref().is_none_or(|(c, _)| *c != col) {
            cached = Some((col, w.int8_row(col)));
        }
        let w8 = &cached.as_ref().expect("just set").1;
        let acc = dot_i8(&x.values()[row * k..(row + 1) * k], w8);
        let want = epilogue(acc, x.scales()[row], w.channel_scales()[col], w.bias().map(|b| b[col]));
        let got = y[row * n + col];
        let d = f16_ulp_distance(got, want);
        check.record(d, d <= 1.0, || format!("Y[{row},{col}] = {got}, oracle {want} ({d} ulp)"));
    }
    check
}

/// Checks a peer's output at `positions` against an f64 reference from its host inputs (set 0).
fn check_peer(
    y: &[f64],
    x: HostData<'_>,
    w: HostData<'_>,
    (m, n, k): (usize, usize, usize),
    accumulation: Accumulation,
    positions: &[(usize, usize)],
) -> Check {
    let mut check = Check::default();
    if y.len() != m * n {
        check.record(f64::INFINITY, false, || format!("output has {} elements, expected {}", y.len(), m * n));
        return check;
    }
    let value = |d: HostData<'_>, i: usize| match d {
        HostData::F16(v) => v[i].to_f64(),
        HostData::I8(v) => v[i] as f64,
    };
    for &(row, col) in positions {
        let (mut exact, mut abs_sum, mut sq_sum) = (0.0f64, 0.0f64, 0.0f64);
        for kk in 0..k {
            let p = value(x, row * k + kk) * value(w, col * k + kk);
            exact += p;
            abs_sum += p.abs();
            sq_sum += p * p;
        }
        let tol = match accumulation {
            Accumulation::Int32 => 0.0,
            // f32 sums: K·2⁻²⁴·Σ|x·w| (the textbook bound) plus the f16 output rounding, 2⁻¹⁰·|y|.
            Accumulation::F32 => k as f64 * 2f64.powi(-24) * abs_sum + 2f64.powi(-10) * exact.abs(),
            // f16 sums: about √K roundings of partial sums of size ~√(Σ(x·w)²), 4σ, plus output rounding.
            Accumulation::F16 => {
                4.0 * (k as f64).sqrt() * 2f64.powi(-11) * sq_sum.sqrt() + 2f64.powi(-10) * exact.abs()
            }
        };
        let got = y[row * n + col];
        let err = (got - exact).abs();
        check.record(err, err <= tol, || {
            format!("Y[{row},{col}] = {got}, reference {exact} (tolerance {tol:.3e})")
        });
    }
    check
}

/// Bytes of canonical W4A8 weights, as [`W4A8Weights::storage_bytes`] will count them.
fn w4a8_weight_bytes(n: usize, k: usize, g: Granularity) -> usize {
    n * words_per_row(k) * 4 + n * 4 + g.groups(k) * n
}

fn row_label(g: Granularity) -> String {
    format!("W4A8 {g}")
}

/// A row with its identity and operation count, not yet timed.
fn base_row(shape: &Shape, m: usize, kernel: String, kind: RowKind) -> Row {
    Row {
        shape: shape.clone(),
        m,
        kernel,
        kind,
        sets: 0,
        ops: 2.0 * m as f64 * shape.n as f64 * shape.k as f64,
        bytes: 0.0,
        time: None,
        tops: None,
        gbps: None,
        pct_copy_bw: None,
        pct_peak: None,
        speedup_fp16: None,
        speedup_w8a8: None,
        check: None,
        error: None,
    }
}

fn error_row(shape: &Shape, m: usize, kernel: String, kind: RowKind, err: &Error) -> Row {
    Row { error: Some(err.to_string()), ..base_row(shape, m, kernel, kind) }
}

/// Fills in the timing of a row: `bytes` moved per run, the device times and the result check.
fn timed(row: Row, sets: usize, bytes: f64, time: Summary, check: Check) -> Row {
    Row {
        sets,
        bytes,
        tops: Some(row.ops / time.median_s / 1e12),
        gbps: Some(bytes / time.median_s / 1e9),
        time: Some(time),
        check: Some(check),
        ..row
    }
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
    let kind = || RowKind::W4A8 { granularity: g.to_string() };
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
            return cfg.m_values.iter().map(|&m| error_row(shape, m, row_label(g), kind(), &e)).collect();
        }
    };
    let mut rows = Vec::new();
    for &m in &cfg.m_values {
        let case = (|| -> Result<Row> {
            let host_x = random_quantized_activations(m, k, seed_for(cfg, m, k, 2, 0))?;
            let mut dev_x = vec![gemm.upload_activations(&host_x)?];
            for s in 1..sets {
                dev_x.push(gemm.upload_activations(&random_quantized_activations(
                    m,
                    k,
                    seed_for(cfg, m, k, 2, s),
                )?)?);
            }
            let mut y = gemm.alloc_output(m, n, f16::NAN)?;
            let time = measure(cfg, sets, |i| b.time_gemm(&dev_x[i], &dev_w[i], &mut y))?;
            // The check: set 0 into a freshly poisoned output, so an unwritten element shows as NaN.
            let mut y0 = gemm.alloc_output(m, n, f16::NAN)?;
            gemm.gemm_into(&dev_x[0], &dev_w[0], &mut y0)?;
            let out = gemm.read_output(&y0)?;
            let positions = sample_positions(m, n, cfg.check_samples, seed_for(cfg, m, n, 3, 0));
            let check = check_w4a8(&out, &host_x, &host_w, &positions);
            let x_bytes = m * k + 4 * m;
            let bytes = (host_w.storage_bytes() + x_bytes + 2 * m * n) as f64;
            debug_assert_eq!(dev_w[0].shape(), (n, k));
            Ok(timed(base_row(shape, m, row_label(g), kind()), sets, bytes, time, check))
        })();
        let row = case.unwrap_or_else(|e| error_row(shape, m, row_label(g), kind(), &e));
        log(&describe_row(&row));
        rows.push(row);
    }
    rows
}

/// Host data of one peer set: f16 or int8 per the peer's kind.
enum Owned {
    F16(Vec<f16>),
    I8(Vec<i8>),
}

impl Owned {
    fn random(kind: BaselineKind, len: usize, seed: u64) -> Owned {
        match kind {
            BaselineKind::Fp16 => Owned::F16(random_f16(len, seed)),
            BaselineKind::Int8 => Owned::I8(random_i8(len, seed)),
        }
    }
    fn view(&self) -> HostData<'_> {
        match self {
            Owned::F16(v) => HostData::F16(v),
            Owned::I8(v) => HostData::I8(v),
        }
    }
}

fn elem_bytes(kind: BaselineKind) -> usize {
    match kind {
        BaselineKind::Fp16 => 2,
        BaselineKind::Int8 => 1,
    }
}

/// Loads `sets` weight sets into a peer, returning set 0's host copy.
fn load_peer_weights(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    n: usize,
    k: usize,
    sets: usize,
) -> Result<Owned> {
    peer.clear_weights();
    let kind = peer.kind();
    let host0 = Owned::random(kind, n * k, seed_for(cfg, n, k, 4, 0));
    peer.add_weights(n, k, host0.view())?;
    for s in 1..sets {
        peer.add_weights(n, k, Owned::random(kind, n * k, seed_for(cfg, n, k, 4, s)).view())?;
    }
    Ok(host0)
}

/// Times one peer at (M, N, K) on already loaded weights; returns (sets, time, check).
fn time_peer(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    host_w: &Owned,
    (m, n, k): (usize, usize, usize),
    sets: usize,
) -> Result<(Summary, Check)> {
    peer.clear_activations();
    let kind = peer.kind();
    let host_x = Owned::random(kind, m * k, seed_for(cfg, m, k, 5, 0));
    peer.add_activations(m, k, host_x.view())?;
    for s in 1..sets {
        peer.add_activations(m, k, Owned::random(kind, m * k, seed_for(cfg, m, k, 5, s)).view())?;
    }
    let time = measure(cfg, sets, |i| peer.run_timed(i))?;
    peer.run_timed(0)?;
    let out = peer.read_output()?;
    let positions = sample_positions(m, n, cfg.check_samples, seed_for(cfg, m, n, 6, 0));
    let check = check_peer(&out, host_x.view(), host_w.view(), (m, n, k), peer.accumulation(), &positions);
    peer.clear_activations();
    Ok((time, check))
}

/// Times one peer at one shape for every M.
fn peer_rows(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    shape: &Shape,
    log: &mut dyn FnMut(&str),
) -> Vec<Row> {
    let (n, k) = (shape.n, shape.k);
    let (name, kind) = (peer.name(), peer.kind());
    let row_kind = || RowKind::Baseline { kind };
    let sets = rotation_sets(n * k * elem_bytes(kind), cfg.rotate_bytes, cfg.max_sets);
    let host_w = match load_peer_weights(peer, cfg, n, k, sets) {
        Ok(w) => w,
        Err(e) => {
            log(&format!("  {shape} {name}: weights not loaded: {e}"));
            peer.clear_weights();
            return cfg.m_values.iter().map(|&m| error_row(shape, m, name.clone(), row_kind(), &e)).collect();
        }
    };
    let mut rows = Vec::new();
    for &m in &cfg.m_values {
        let row = match time_peer(peer, cfg, &host_w, (m, n, k), sets) {
            Ok((time, check)) => {
                let bytes = (elem_bytes(kind) * (n * k + m * k) + peer.output_bytes() * m * n) as f64;
                timed(base_row(shape, m, name.clone(), row_kind()), sets, bytes, time, check)
            }
            Err(e) => {
                peer.clear_activations();
                error_row(shape, m, name.clone(), row_kind(), &e)
            }
        };
        log(&describe_row(&row));
        rows.push(row);
    }
    peer.clear_weights();
    rows
}

fn describe_row(r: &Row) -> String {
    match (&r.time, &r.error) {
        (Some(t), _) => format!(
            "  {} M={:<5} {:<32} {:>10.1} µs  {:>8} TOPS  check {}",
            r.shape,
            r.m,
            r.kernel,
            t.median_s * 1e6,
            crate::markdown::num(r.tops.unwrap_or(0.0)),
            r.check.as_ref().map_or("-".into(), |c| if c.ok() { "ok".to_string() } else { "FAILED".into() })
        ),
        (None, e) => {
            format!("  {} M={:<5} {:<32} error: {}", r.shape, r.m, r.kernel, e.as_deref().unwrap_or("?"))
        }
    }
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
        let time = measure(cfg, 1, |_| op.run_timed())?;
        let verified = op.verify()?;
        let gbps = 2.0 * op.bytes() as f64 / time.median_s / 1e9;
        Ok(CopyCeiling { method: op.method(), bytes: op.bytes(), time, gbps, verified })
    })();
    match copy {
        Ok(cc) => {
            log(&format!(
                "copy bandwidth: {} GB/s (read+write of {} MiB)",
                crate::markdown::num(cc.gbps),
                cc.bytes >> 20
            ));
            c.copy = Some(cc);
        }
        Err(e) => {
            log(&format!("copy bandwidth not measured: {e}"));
            c.copy_error = Some(e.to_string());
        }
    }
    match peers.iter_mut().find(|p| p.kind() == BaselineKind::Fp16) {
        None => c.peak_error = Some("no f16 GEMM on this backend".into()),
        Some(peer) => {
            let s = cfg.peak_size;
            let peak = (|| -> Result<PeakCeiling> {
                let host_w = load_peer_weights(peer.as_mut(), cfg, s, s, 1)?;
                let (time, check) = time_peer(peer.as_mut(), cfg, &host_w, (s, s, s), 1)?;
                peer.clear_weights();
                let tflops = 2.0 * (s as f64).powi(3) / time.median_s / 1e12;
                Ok(PeakCeiling { kernel: peer.name(), size: s, time, tflops, check })
            })();
            match peak {
                Ok(p) => {
                    log(&format!(
                        "matrix peak: {} TFLOPS ({} at {s}³)",
                        crate::markdown::num(p.tflops),
                        p.kernel
                    ));
                    c.peak = Some(p);
                }
                Err(e) => {
                    peer.clear_weights();
                    log(&format!("matrix peak not measured: {e}"));
                    c.peak_error = Some(e.to_string());
                }
            }
        }
    }
    c
}

/// Fills the ratio columns: % of the ceilings, speedups over the first FP16 and W8A8 peers.
pub fn derive_ratios(report: &mut BackendReport) {
    let copy = report.ceilings.copy.as_ref().map(|c| c.gbps);
    let peak = report.ceilings.peak.as_ref().map(|p| p.tflops);
    let peer_time = |rows: &[Row], shape: &Shape, m: usize, kind: BaselineKind| {
        rows.iter()
            .find(|r| {
                &r.shape == shape && r.m == m && r.kind == RowKind::Baseline { kind } && r.time.is_some()
            })
            .and_then(|r| r.time.as_ref().map(|t| t.median_s))
    };
    let snapshot = report.rows.clone();
    for r in &mut report.rows {
        let Some(t) = r.time.as_ref().map(|t| t.median_s) else { continue };
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
    use crate::cpu::CpuBench;
    use w4a8_core::oracle::reference_gemm;

    #[test]
    fn ulp_distance() {
        let one = f16::ONE;
        let next = f16::from_bits(one.to_bits() + 1);
        assert_eq!(f16_ulp_distance(one, next), 1.0);
        assert_eq!(f16_ulp_distance(f16::ZERO, f16::NEG_ZERO), 0.0);
        assert_eq!(f16_ulp_distance(f16::from_bits(1), f16::from_bits(0x8001)), 2.0);
        assert_eq!(f16_ulp_distance(f16::NAN, one), f64::INFINITY);
    }

    #[test]
    fn w4a8_check_accepts_the_oracle_and_catches_errors() {
        let w = random_weights(37, 256, Granularity::PerGroup { group_size: 128 }, 1).unwrap();
        let x = random_quantized_activations(5, 256, 2).unwrap();
        let mut y = reference_gemm(&x, &w).unwrap();
        let pos = sample_positions(5, 37, 40, 3);
        let c = check_w4a8(&y, &x, &w, &pos);
        assert!(c.ok() && c.max_err == 0.0, "{c:?}");
        // One ulp is tolerated, two are not; an unwritten (NaN) element is caught.
        let (r, col) = pos[pos.len() / 2];
        y[r * 37 + col] = f16::from_bits(y[r * 37 + col].to_bits() + 1);
        assert!(check_w4a8(&y, &x, &w, &pos).ok());
        y[r * 37 + col] = f16::from_bits(y[r * 37 + col].to_bits() + 1);
        assert_eq!(check_w4a8(&y, &x, &w, &pos).failed, 1);
        y[0] = f16::NAN;
        let c = check_w4a8(&y, &x, &w, &pos);
        assert_eq!((c.failed, c.max_err), (2, f64::MAX));
        // A transposed output (N×M read as M×N) fails almost everywhere.
        let yt: Vec<f16> =
            (0..5 * 37).map(|i| reference_gemm(&x, &w).unwrap()[(i % 5) * 37 + i / 5]).collect();
        assert!(check_w4a8(&yt, &x, &w, &pos).failed > pos.len() / 2);
    }

    #[test]
    fn peer_check_tolerances() {
        let (m, n, k) = (3, 11, 4096);
        let x = random_f16(m * k, 1);
        let w = random_f16(n * k, 2);
        let exact: Vec<f64> = (0..m * n)
            .map(|i| (0..k).map(|kk| x[(i / n) * k + kk].to_f64() * w[(i % n) * k + kk].to_f64()).sum())
            .collect();
        let pos = sample_positions(m, n, 33, 4);
        let shape = (m, n, k);
        // f16-rounded exact results pass the f32 bound.
        let rounded: Vec<f64> = exact.iter().map(|&v| f16::from_f64(v).to_f64()).collect();
        assert!(
            check_peer(&rounded, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F32, &pos).ok()
        );
        // Results of another column (a layout bug) fail.
        let shifted: Vec<f64> = (0..m * n).map(|i| rounded[(i + 1) % (m * n)]).collect();
        let c = check_peer(&shifted, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F32, &pos);
        assert!(c.failed > pos.len() / 2, "{c:?}");
        let c = check_peer(&shifted, HostData::F16(&x), HostData::F16(&w), shape, Accumulation::F16, &pos);
        assert!(c.failed > pos.len() / 2, "{c:?}");
        // Int32 must be exact.
        let xi = random_i8(m * 64, 5);
        let wi = random_i8(n * 64, 6);
        let yi: Vec<f64> = (0..m * n)
            .map(|i| (0..64).map(|kk| xi[(i / n) * 64 + kk] as f64 * wi[(i % n) * 64 + kk] as f64).sum())
            .collect();
        let ok = check_peer(&yi, HostData::I8(&xi), HostData::I8(&wi), (m, n, 64), Accumulation::Int32, &pos);
        assert!(ok.ok());
        let mut off = yi.clone();
        off[0] += 1.0;
        let c = check_peer(&off, HostData::I8(&xi), HostData::I8(&wi), (m, n, 64), Accumulation::Int32, &pos);
        assert_eq!(c.failed, 1);
    }

    #[test]
    fn parses_granularities() {
        assert_eq!(parse_granularity("per-channel"), Ok(Granularity::PerChannel));
        assert_eq!(parse_granularity("G64"), Ok(Granularity::PerGroup { group_size: 64 }));
        assert!(parse_granularity("g100").is_err());
        assert!(parse_granularity("x").is_err());
    }

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
            assert!(
                row.sets >= 2
                    && row.tops.unwrap() > 0.0
                    && row.pct_copy_bw.is_some()
                    && row.pct_peak.is_some()
            );
            let is_w4a8 = matches!(row.kind, RowKind::W4A8 { .. });
            assert_eq!(row.speedup_fp16.is_some(), is_w4a8);
            assert_eq!(row.speedup_w8a8.is_some(), is_w4a8);
        }
        assert!(lines.iter().any(|l| l.contains("copy bandwidth")));
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
            fn time_gemm(
                &self,
                x: &<Self::G as Gemm>::Activations,
                w: &<Self::G as Gemm>::Weights,
                y: &mut <Self::G as Gemm>::Output,
            ) -> Result<f64> {
                self.0.time_gemm(x, w, y)
            }
            fn copy_op(&self, bytes: usize) -> Result<Box<dyn crate::backend::CopyOp + '_>> {
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
