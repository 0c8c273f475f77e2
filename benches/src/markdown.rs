//! Markdown rendering of a report: the console/`report.md` view and the RESULTS.md section.

use std::fmt::Write;

use crate::report::{BackendReport, Report, Row};

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

/// Fixed point with more decimals for small numbers; scientific below 0.01 (CPU/lavapipe figures).
pub(crate) fn num(v: f64) -> String {
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

/// The table of one backend: one row per (shape, M, kernel).
pub fn table(b: &BackendReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| shape N×K | layer | M | kernel | time µs | TOPS | GB/s | % copy BW | % f16 peak | × FP16 | × W8A8 | check |\n",
    );
    s.push_str("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for r in &b.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.shape,
            r.shape.layer,
            r.m,
            r.kernel,
            fmt_opt(r.time.as_ref().map(|t| t.median_s * 1e6), num),
            fmt_opt(r.tops, num),
            fmt_opt(r.gbps, num),
            fmt_opt(r.pct_copy_bw, |v| format!("{v:.1}")),
            fmt_opt(r.pct_peak, |v| format!("{v:.1}")),
            fmt_opt(r.speedup_fp16, |v| format!("{v:.2}×")),
            fmt_opt(r.speedup_w8a8, |v| format!("{v:.2}×")),
            check_cell(r),
        );
    }
    s
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
    let _ = writeln!(s, "- timer: {}", d.timer);
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

/// How the figures were taken, in one paragraph.
pub fn method(r: &Report) -> String {
    let c = &r.config;
    format!(
        "Device timers; {} warm-up runs, then the median of up to {} runs (at least {}, at most {:.1} s per case); \
         inputs rotate through ≥ 2 sets totalling ≥ {} MB (fewer sets only for huge shapes), random non-zero data; \
         every case checked on {} sampled outputs (W4A8: within 1 f16 ulp of the CPU oracle's arithmetic; peers: \
         against an f64 reference). TOPS = 2·M·N·K / time; GB/s = (weights + scales + activations + output bytes) / \
         time; × FP16 and × W8A8 = peer median time / W4A8 median time at the same shape and M.",
        c.warmup,
        c.iters,
        c.min_iters,
        c.max_case_seconds,
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
