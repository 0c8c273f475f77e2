//! `w4a8-bench`: the roofline report. On one device per backend it measures the ceilings (copy
//! bandwidth, f16 matrix peak), times every W4A8 kernel beside its peers at the LLaMA-2 shapes — kernel
//! time of runs back to back, and whole-call time — checks every timed case, records the kernel plan
//! of every W4A8 row, and writes `report.md`, `report.json` and `speedup-<backend>.svg` under `--out`.
//!
//! `--quick` runs tiny shapes in seconds (CI: `--quick --backend cpu`); its timings mean nothing.
//! `--append-results benches/RESULTS.md` appends the run's section; with `--from-json` it does so
//! from a report.json fetched back from a GPU machine, without running anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use w4a8_benches::backend::BenchBackend;
use w4a8_benches::config::{RunConfig, parse_granularity};
use w4a8_benches::markdown::render;
use w4a8_benches::meta::RunMeta;
use w4a8_benches::model::{BackendReport, Report};
use w4a8_benches::open::{BackendVisitor, compiled_backends, visit_backend};
use w4a8_benches::plot::speedup_plot;
use w4a8_benches::results::append_results;
use w4a8_benches::run::run_backend;
use w4a8_benches::shapes::Shape;
use w4a8_core::{BackendKind, Error};

/// W4A8 roofline report: ceilings, every kernel beside cuBLAS / our f16 GEMM, checked results.
#[derive(Parser, Debug)]
#[command(name = "w4a8-bench", version)]
struct Args {
    /// cpu, wgpu, cuda, a comma list of them, or all (every GPU backend compiled in; with --quick the
    /// CPU oracle too).
    #[arg(long, default_value = "all")]
    backend: String,
    /// Tiny shapes and few runs: seconds on the CPU oracle or lavapipe. Timings meaningless.
    #[arg(long)]
    quick: bool,
    /// Output folder for report.md, report.json and the plots.
    #[arg(long, default_value = "target/w4a8-bench")]
    out: PathBuf,
    /// Weight shapes N×K, comma-separated (default: the LLaMA-2 shapes of DESIGN.md).
    #[arg(long, value_delimiter = ',')]
    shapes: Option<Vec<Shape>>,
    /// Token counts M, comma-separated (default: 1,16,32,64,128,256,1024,4096).
    #[arg(long = "m", value_delimiter = ',')]
    m_values: Option<Vec<usize>>,
    /// W4A8 granularities: per-channel, g32, g64, g128, g256 (default: per-channel,g128).
    #[arg(long, value_delimiter = ',')]
    granularity: Option<Vec<String>>,
    /// Untimed runs before timing each case.
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed samples per case, for each of the two times (the medians are reported).
    #[arg(long)]
    iters: Option<usize>,
    /// Runs queued back to back per kernel-time sample (the sample is their mean device time).
    #[arg(long)]
    batch: Option<usize>,
    /// Minimum total size of each case's rotating input sets, in MB (≥ 2 × L2).
    #[arg(long)]
    rotate_mb: Option<usize>,
    /// Outputs checked against the reference per case.
    #[arg(long)]
    samples: Option<usize>,
    /// M = N = K of the f16 GEMM that measures the matrix peak.
    #[arg(long)]
    peak_size: Option<usize>,
    /// Size of the device-to-device copy for the bandwidth ceiling, in MiB.
    #[arg(long)]
    copy_mib: Option<usize>,
    /// Seed of the random inputs.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop timing a case after this many seconds once the minimum number of runs is in.
    #[arg(long)]
    max_case_seconds: Option<f64>,
    /// Append this run's section to a results file (benches/RESULTS.md). Refused for --quick, CPU or
    /// lavapipe runs and for runs with a failed check.
    #[arg(long)]
    append_results: Option<PathBuf>,
    /// With --append-results: take the run from this report.json instead of running.
    #[arg(long, requires = "append_results")]
    from_json: Option<PathBuf>,
    /// Do not write the SVG plots.
    #[arg(long)]
    no_plot: bool,
}

impl Args {
    fn config(&self) -> Result<RunConfig, String> {
        let mut c = if self.quick { RunConfig::quick() } else { RunConfig::full() };
        if let Some(s) = &self.shapes {
            c.shapes = s.clone();
        }
        if let Some(m) = &self.m_values {
            if m.contains(&0) {
                return Err("--m: M must be at least 1".into());
            }
            c.m_values = m.clone();
        }
        if let Some(g) = &self.granularity {
            for v in g {
                parse_granularity(v)?;
            }
            c.granularities = g.clone();
        }
        c.warmup = self.warmup.unwrap_or(c.warmup);
        c.iters = self.iters.unwrap_or(c.iters).max(1);
        c.min_iters = c.min_iters.min(c.iters);
        c.batch = self.batch.unwrap_or(c.batch).max(1);
        c.rotate_bytes = self.rotate_mb.map_or(c.rotate_bytes, |mb| mb * 1_000_000);
        c.check_samples = self.samples.unwrap_or(c.check_samples).max(1);
        c.peak_size = self.peak_size.unwrap_or(c.peak_size).max(1);
        c.copy_bytes = self.copy_mib.map_or(c.copy_bytes, |m| m.max(1) << 20);
        c.seed = self.seed.unwrap_or(c.seed);
        c.max_case_seconds = self.max_case_seconds.unwrap_or(c.max_case_seconds);
        Ok(c)
    }

    /// The backends to run, and whether each was named explicitly (then absence is an error).
    fn backends(&self) -> Result<(Vec<BackendKind>, bool), String> {
        let b = self.backend.trim().to_ascii_lowercase();
        if b == "all" {
            let all = compiled_backends()
                .into_iter()
                .filter(|&k| self.quick || k != BackendKind::Cpu)
                .collect::<Vec<_>>();
            if all.is_empty() {
                return Err("--backend all: no GPU backend compiled in (build with --features wgpu,cuda), \
                            and the CPU oracle runs only with --quick; name it with --backend cpu"
                    .into());
            }
            return Ok((all, false));
        }
        let kinds = b
            .split(',')
            .map(|n| {
                BackendKind::from_name(n)
                    .ok_or_else(|| format!("--backend: unknown backend `{n}` (cpu, wgpu, cuda, all)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((kinds, true))
    }
}

/// Runs the report on one backend, logging progress to stderr.
struct RunOne<'a>(&'a RunConfig);

impl BackendVisitor for RunOne<'_> {
    type Output = w4a8_core::Result<BackendReport>;
    fn visit<B: BenchBackend>(self, b: &B) -> Self::Output {
        run_backend(b, self.0, &mut |line| eprintln!("{line}"))
    }
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn append_from_json(json: &Path, results: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    append_results(results, &report)?;
    eprintln!(
        "appended the run of {} ({}) to {}",
        report.meta.date_utc,
        report.meta.commit,
        results.display()
    );
    Ok(())
}

fn run(args: &Args) -> Result<bool, String> {
    if let (Some(json), Some(results)) = (&args.from_json, &args.append_results) {
        append_from_json(json, results)?;
        return Ok(true);
    }
    let config = args.config()?;
    let (kinds, explicit) = args.backends()?;
    let mut report = Report {
        meta: RunMeta::collect(),
        config: config.clone(),
        backends: Vec::new(),
        unavailable: Vec::new(),
    };
    for kind in kinds {
        match visit_backend(kind, RunOne(&config)) {
            Ok(Ok(r)) => report.backends.push(r),
            Ok(Err(e)) => return Err(format!("{kind}: {e}")),
            Err(e @ Error::Unavailable { .. }) if !explicit => {
                eprintln!("skipping {kind}: {e}");
                report.unavailable.push((kind.name().into(), e.to_string()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if report.backends.is_empty() {
        return Err("no backend ran".into());
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    write(&args.out.join("report.json"), &json)?;
    let md = render(&report);
    write(&args.out.join("report.md"), &md)?;
    if !args.no_plot {
        for b in &report.backends {
            let path = args.out.join(format!("speedup-{}.svg", b.device.backend));
            if speedup_plot(b, &path)? {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    println!("{md}");
    eprintln!("wrote {} and report.md", args.out.join("report.json").display());
    let failures: Vec<String> = report.backends.iter().flat_map(|b| b.failures()).collect();
    for f in &failures {
        eprintln!("CHECK FAILED: {f}");
    }
    if let Some(results) = &args.append_results {
        append_results(results, &report)?;
        eprintln!("appended this run to {}", results.display());
    }
    Ok(failures.is_empty())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("w4a8-bench: {e}");
            ExitCode::from(2)
        }
    }
}
