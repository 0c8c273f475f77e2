//! The report as plain data: rows, ceilings, checks, one report per backend and the whole run.
//! Filled by [`crate::run`], written by [`crate::markdown`], [`crate::results`] and [`crate::plot`],
//! and (de)serialized as `report.json`, so that RESULTS.md can be written from a fetched run.

use serde::{Deserialize, Serialize};

use crate::backend::{BaselineKind, DeviceRecord};
use crate::config::RunConfig;
use crate::meta::RunMeta;
use crate::shapes::Shape;
use crate::stats::Summary;

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

    /// Counts one compared output with error `err`, within tolerance or not.
    pub(crate) fn record(&mut self, err: f64, ok: bool, describe: impl FnOnce() -> String) {
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
    /// W4A8 rows: the kernels and configuration the backend launches at this (M, N, K), as
    /// `Gemm::kernel_plan` prints it, so that a time is never attributed to the wrong kernel.
    pub plan: Option<String>,
    /// Rotating input sets used.
    pub sets: usize,
    /// 2·M·N·K.
    pub ops: f64,
    /// Bytes a kernel must move at least: weights (+scales), activations, output.
    pub bytes: f64,
    /// Kernel time per run: device time of runs queued back to back, one sample per batch.
    pub kernel_time: Option<Summary>,
    /// Whole-call time: host clock around one call and the wait for it, one sample per call.
    pub call_time: Option<Summary>,
    /// ops / median kernel time, in 10¹² per second.
    pub tops: Option<f64>,
    /// bytes / median kernel time, in 10⁹ per second.
    pub gbps: Option<f64>,
    /// `gbps` as a percentage of the measured copy bandwidth.
    pub pct_copy_bw: Option<f64>,
    /// `tops` as a percentage of the measured f16 matrix peak.
    pub pct_peak: Option<f64>,
    /// FP16 peer's median kernel time / this one's (W4A8 rows only).
    pub speedup_fp16: Option<f64>,
    /// W8A8 peer's median kernel time / this one's (W4A8 rows only).
    pub speedup_w8a8: Option<f64>,
    /// The result check of this case.
    pub check: Option<Check>,
    /// Why the case has no timing (a device limit, a backend error).
    pub error: Option<String>,
}

impl Row {
    /// A row with its identity and operation count, not yet timed.
    pub fn new(shape: &Shape, m: usize, kernel: String, kind: RowKind) -> Row {
        Row {
            shape: shape.clone(),
            m,
            kernel,
            kind,
            plan: None,
            sets: 0,
            ops: 2.0 * m as f64 * shape.n as f64 * shape.k as f64,
            bytes: 0.0,
            kernel_time: None,
            call_time: None,
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

    /// The row of a case that could not be timed, saying why.
    pub fn failed(self, error: impl std::fmt::Display) -> Row {
        Row { error: Some(error.to_string()), ..self }
    }

    /// The row of a measured case: rotating sets used, bytes moved per run, both times and the
    /// check. TOPS and GB/s come from the median kernel time.
    pub fn measured(self, sets: usize, bytes: f64, kernel: Summary, call: Summary, check: Check) -> Row {
        Row {
            sets,
            bytes,
            tops: Some(self.ops / kernel.median_s / 1e12),
            gbps: Some(bytes / kernel.median_s / 1e9),
            kernel_time: Some(kernel),
            call_time: Some(call),
            check: Some(check),
            ..self
        }
    }
}

/// The bandwidth ceiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyCeiling {
    /// How the copy is made and timed.
    pub method: String,
    /// Bytes per copy.
    pub bytes: usize,
    /// Device time per copy, copies queued back to back.
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
    /// Kernel time per run, runs queued back to back.
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
