//! Markdown rendering of a report: the console/`report.md` view and the RESULTS.md section, plus the
//! one-line progress log of a case.

use std::fmt::Write;

use crate::model::{BackendReport, Report, Row};

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

/// Fixed point with more decimals for small numbers; scientific below 0.01 (CPU/lavapipe figures).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && a < 0.01 {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn check_cell(r: &Row) -> String {
    match (&r.check, &r.error) {
        (Some(c), _) if c.ok() => format!("ok {}/{}", c.checked, c.checked),
        (Some(c), _) => format!("**FAILED {}/{}**", c.failed, c.checked),
        (None, Some(e)) => format!("not run: {}", e.replace('|', "/")),
        (None, None) => "—".into(),
    }
}

/// Microseconds of a median time, or a dash.
fn micros(t: Option<&crate::stats::Summary>) -> String {
    fmt_opt(t.map(|t| t.median_s * 1e6), num)
}

/// The table of one backend: one row per (shape, M, kernel), then the kernel plans the W4A8 rows
/// refer to (`P1`, `P2`, … in the plan column; each distinct plan listed once).
pub fn table(b: &BackendReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| shape N×K | layer | M | kernel | plan | kernel µs | call µs | TOPS | GB/s | % copy BW | % f16 peak \
         | × FP16 | × W8A8 | check |\n",
    );
    s.push_str("|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
    let mut plans: Vec<&str> = Vec::new();
    for r in &b.rows {
        let plan = match r.plan.as_deref() {
            Some(p) => {
                let i = plans.iter().position(|q| *q == p).unwrap_or_else(|| {
                    plans.push(p);
                    plans.len() - 1
                });
                format!("P{}", i + 1)
            }
            None => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.shape,
            r.shape.layer,
            r.m,
            r.kernel,
            plan,
            micros(r.kernel_time.as_ref()),
            micros(r.call_time.as_ref()),
            fmt_opt(r.tops, num),
            fmt_opt(r.gbps, num),
            fmt_opt(r.pct_copy_bw, |v| format!("{v:.1}")),
            fmt_opt(r.pct_peak, |v| format!("{v:.1}")),
            fmt_opt(r.speedup_fp16, |v| format!("{v:.2}×")),
            fmt_opt(r.speedup_w8a8, |v| format!("{v:.2}×")),
            check_cell(r),
        );
    }
    if !plans.is_empty() {
        s.push_str("\nKernel plans (what the W4A8 rows launched, as `Gemm::kernel_plan` reports it):\n\n");
        for (i, p) in plans.iter().enumerate() {
            let _ = writeln!(s, "- P{}: `{}`", i + 1, p.replace('`', "'"));
        }
    }
    s
}

/// One line of progress per case for the log: both times, TOPS and the check.
pub fn progress_line(r: &Row) -> String {
    match (&r.kernel_time, &r.error) {
        (Some(t), _) => format!(
            "  {} M={:<5} {:<32} kernel {:>10.1} µs  call {:>10.1} µs  {:>8} TOPS  check {}",
            r.shape,
            r.m,
            r.kernel,
            t.median_s * 1e6,
            r.call_time.as_ref().map_or(f64::NAN, |c| c.median_s * 1e6),
            num(r.tops.unwrap_or(0.0)),
            r.check.as_ref().map_or("-".into(), |c| if c.ok() { "ok".to_string() } else { "FAILED".into() })
        ),
        (None, e) => {
            format!("  {} M={:<5} {:<32} error: {}", r.shape, r.m, r.kernel, e.as_deref().unwrap_or("?"))
        }
    }
}

/// The device and ceilings of one backend, as a bullet list.
pub fn device_block(b: &BackendReport) -> String {
    let d = &b.device;
    let mut s = String::new();
    if let Some(why) = &d.meaningless {
        let _ = writeln!(s, "**Timings below are meaningless: {why}.** They show that the pipeline runs.\n");
    }
    let _ = writeln!(s, "- device: {} ({} backend)", d.name, d.backend);
    let _ = writeln!(s, "- driver: {}", d.driver);
    let _ = writeln!(s, "- kernel timer: {}", d.kernel_timer);
    let _ = writeln!(s, "- whole-call timer: {WHOLE_CALL_TIMER}");
    if !d.details.is_empty() {
        let details: Vec<String> = d.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "- details: {}", details.join("; "));
    }
    if let Some(e) = &b.peer_error {
        let _ = writeln!(s, "- peer GEMMs: unavailable ({e})");
    }
    let c = &b.ceilings;
    match (&c.copy, &c.copy_error) {
        (Some(cc), _) => {
            let _ = writeln!(
                s,
                "- copy bandwidth: {} GB/s ({} of {} MiB; read + write bytes / median time of {}{})",
                num(cc.gbps),
                cc.method,
                cc.bytes >> 20,
                cc.time.runs,
                if cc.verified { "" } else { ", **destination differs from source**" }
            );
        }
        (None, e) => {
            let _ = writeln!(s, "- copy bandwidth: not measured ({})", e.as_deref().unwrap_or("?"));
        }
    }
    match (&c.peak, &c.peak_error) {
        (Some(p), _) => {
            let status = if p.check.ok() {
                format!("check ok {}/{}", p.check.checked, p.check.checked)
            } else {
                "**check FAILED**".into()
            };
            let _ = writeln!(
                s,
                "- f16 matrix peak: {} TFLOPS ({} at {}³, median of {}, {status})",
                num(p.tflops),
                p.kernel,
                p.size,
                p.time.runs
            );
        }
        (None, e) => {
            let _ = writeln!(s, "- f16 matrix peak: not measured ({})", e.as_deref().unwrap_or("?"));
        }
    }
    s
}

/// How whole-call times are taken, on every backend.
pub const WHOLE_CALL_TIMER: &str = "host clock around one call and the wait for its completion \
     (W4A8: `gemm_into` + `synchronize`; peers: the GEMM call + the device wait), from an idle device";

/// How the figures were taken, in one paragraph.
pub fn method(r: &Report) -> String {
    let c = &r.config;
    format!(
        "Two times per case, each the median of up to {} samples (at least {}, at most {:.1} s of sampling \
         per time and case), after {} untimed warm-up run(s). **Kernel time**: device time per run, each sample \
         the mean of {} runs queued back to back, so that host launch latency is not inside it (per \
         backend: 'kernel timer' below). **Whole-call time** (call µs): {WHOLE_CALL_TIMER}; what one \
         decode step pays, launch latency and library overhead included. Inputs rotate through ≥ 2 sets \
         totalling ≥ {} MB (fewer sets only for huge shapes), random non-zero data; every case checked on {} \
         sampled outputs (W4A8: within 1 f16 ulp of the CPU oracle's arithmetic; peers: against an f64 \
         reference). TOPS, GB/s, the % columns and the speedups come from median kernel times: TOPS = \
         2·M·N·K / time; GB/s = (weights + scales + activations + output bytes) / time; × FP16 and × W8A8 = \
         peer kernel time / W4A8 kernel time at the same shape and M. Plan: the kernels and configuration \
         each W4A8 row launched (listed under each table).",
        c.iters,
        c.min_iters,
        c.max_case_seconds,
        c.warmup,
        c.batch,
        c.rotate_bytes / 1_000_000,
        c.check_samples
    )
}

/// The whole report as markdown.
pub fn render(r: &Report) -> String {
    let mut s = String::from("# w4a8-bench report\n\n");
    let _ = writeln!(s, "- date: {}", r.meta.date_utc);
    let _ = writeln!(s, "- commit: {}", r.meta.commit);
    let _ = writeln!(s, "- command: `{}`", r.meta.command);
    let _ = writeln!(s, "- tool: {}", r.meta.tool);
    if r.config.quick {
        let _ = writeln!(s, "- mode: **--quick** (tiny shapes, few runs: timings meaningless)");
    }
    for (name, why) in &r.unavailable {
        let _ = writeln!(s, "- {name}: not run ({why})");
    }
    let _ = writeln!(s, "\n{}\n", method(r));
    for b in &r.backends {
        let _ = writeln!(s, "## {} — {}\n", b.device.backend, b.device.name);
        s.push_str(&device_block(b));
        s.push('\n');
        s.push_str(&table(b));
        s.push('\n');
    }
    s
}
