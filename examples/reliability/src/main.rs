//! `w4a8-reliability`: the concurrency, long-run and fault tables of benches/RELIABILITY.md.
//!
//! ```sh
//! cargo run --release -p w4a8-reliability            # full size: 10 000 cycles, 16 threads x 64 GEMMs
//! cargo run --release -p w4a8-reliability -- --cycles 500 --threads 4 --gemms 8   # a quick look
//! ```
//!
//! Prints markdown on stdout (paste it under the matching headings) and fails with a non-zero exit
//! if any property does not hold. The wgpu parts need an adapter (lavapipe here); without one they
//! are reported as skipped, or fail under `W4A8_REQUIRE=wgpu`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use w4a8_core::CpuOracle;
use w4a8_reliability::faults::{self, FaultOutcome};
use w4a8_reliability::{concurrent_gemms_match_serial, long_run_wgpu, soak, wgpu_or_skip};
use w4a8_wgpu::WgpuOptions;

#[derive(Parser)]
#[command(
    name = "w4a8-reliability",
    about = "Threads, long runs and faults: the tables of benches/RELIABILITY.md"
)]
struct Cli {
    /// Prepare/quantize/GEMM/read cycles of the long run, per backend.
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Samples of the long run's memory series after the warm-up.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Threads sharing one backend in the concurrency run.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// GEMMs per thread in the concurrency run.
    #[arg(long, default_value_t = 64)]
    gemms: usize,
    /// Resident-memory growth allowed after the long run's warm-up, in MiB.
    #[arg(long, default_value_t = 8)]
    tolerance_mib: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the sample weight file of the interrupted-write fault (the process that gets killed).
    #[command(hide = true)]
    WriteWeights { path: PathBuf, seed: u64 },
}

fn fault_rows(out: &mut String, outcomes: Vec<(&str, Result<FaultOutcome, String>)>) -> bool {
    let mut ok = true;
    out.push_str("| fault | error returned | earlier results | afterwards |\n|---|---|---|---|\n");
    for (name, outcome) in outcomes {
        match outcome {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "| {} | `{}` | {} | {} |",
                    f.fault,
                    f.error.replace('|', "\\|"),
                    f.earlier,
                    f.recovery
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "| {name} | **FAILED**: {e} | | |");
            }
        }
    }
    ok
}

fn run(cli: &Cli) -> Result<bool, String> {
    let mut ok = true;
    let mut out = String::new();
    let wgpu = wgpu_or_skip(WgpuOptions::default());
    let cpu = CpuOracle::new();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        out,
        "Printed by `w4a8-reliability{}{}` (examples/reliability), {} threads available.\n",
        if args.is_empty() { "" } else { " " },
        args.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // The long run first, in a fresh process: its first sample comes before any GEMM ran.
    out.push_str("### Long run\n\n");
    let tolerance = cli.tolerance_mib << 20;
    let mut runs = Vec::new();
    if let Some(b) = &wgpu {
        runs.push(long_run_wgpu(b, cli.cycles, cli.samples).map_err(|e| e.to_string())?);
    }
    runs.push(soak::long_run(&cpu, cli.cycles, cli.samples, |_| None).map_err(|e| e.to_string())?);
    for run in &runs {
        out.push_str(&run.markdown());
        match run.check(tolerance) {
            Ok(()) => {
                let _ = writeln!(out, "Verdict: no growth (resident tolerance {} MiB).\n", cli.tolerance_mib);
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "Verdict: **FAILED**: {e}\n");
            }
        }
    }

    out.push_str("### Concurrency\n\n| backend | threads | GEMMs per thread | GEMMs in all | shapes | seconds | every result bit-equal to the single-threaded run |\n|---|---:|---:|---:|---:|---:|---|\n");
    let mut reports = vec![concurrent_gemms_match_serial(&cpu, cli.threads, cli.gemms)];
    if let Some(b) = &wgpu {
        reports.push(concurrent_gemms_match_serial(b, cli.threads, cli.gemms));
    }
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} | yes |",
            r.device,
            r.threads,
            r.gemms_per_thread,
            r.threads * r.gemms_per_thread,
            r.shapes,
            r.seconds
        );
    }

    out.push_str("\n### Faults\n\n");
    let dir = std::env::temp_dir().join(format!("w4a8-reliability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    if wgpu.is_some() {
        outcomes.push(("device lost", faults::device_lost_mid_batch(8)));
        outcomes.push(("out of memory", faults::out_of_memory_on_prepare()));
    }
    #[cfg(unix)]
    outcomes.push(("interrupted write", faults::interrupted_write(&exe, &dir)));
    let _ = &exe;
    outcomes.push(("damaged file", faults::truncated_file_while_serving(&cpu, &dir)));
    if let Some(b) = &wgpu {
        outcomes.push(("damaged file", faults::truncated_file_while_serving(b, &dir)));
    }
    ok &= fault_rows(&mut out, outcomes);
    let _ = std::fs::remove_dir_all(&dir);
    if wgpu.is_none() {
        out.push_str("\n(no wgpu adapter: the wgpu rows were skipped)\n");
    }
    print!("{out}");
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::WriteWeights { path, seed }) = &cli.command {
        return match faults::write_weights(path, *seed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
