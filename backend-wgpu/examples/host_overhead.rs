//! Host time per `gemm_into` at M = 1 on small layers: what the backend costs the CPU per decode
//! step, apart from the GPU work itself.
//!
//! ```text
//! XDG_RUNTIME_DIR=/tmp cargo run --release -p w4a8-wgpu --example host_overhead [-- CALLS]
//! ```
//!
//! For each layer (N = K = 384 and 1024, per-channel and per-group g = 128, no bias and with bias) it
//! checks one result bit for bit against the CPU oracle, warms up, then times `CALLS` calls (default
//! 2000) two ways, on the host clock:
//! - `call`: the `gemm_into` call alone — argument checks, recording, `queue.submit` — with the wait
//!   for the device done after the clock stops, so that no work is queued when the next call starts;
//! - `call+wait`: the call followed by `synchronize` (the device finishing the GEMM) inside the clock;
//! - `call CPU`: the calling thread's CPU time during the call (`CLOCK_THREAD_CPUTIME_ID`, Unix
//!   only), which, unlike wall time, does not count time the thread spent preempted — the figure
//!   to compare on a machine shared with other work.
//!
//! It prints the median, 10th and 90th percentiles in microseconds, and the time to build the
//! backend (adapter, device, shader modules and pipelines). On a software adapter (lavapipe) the
//! `call` column is meaningful — it is host work — while the GPU share of `call+wait` is not.

use std::time::Instant;

use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::rng::SplitMix64;
use w4a8_core::{Gemm, Granularity, QuantizedActivations, W4A8Weights};
use w4a8_wgpu::WgpuBackend;

/// Calls before timing: pipelines, driver caches and wgpu's internal pools settle.
const WARM_UP: usize = 200;

fn weights(rng: &mut SplitMix64, n: usize, k: usize, gran: Granularity, bias: bool) -> W4A8Weights {
    let q: Vec<i8> = (0..n * k).map(|_| rng.int(-8, 7) as i8).collect();
    let cs: Vec<f32> = (0..n).map(|_| 1e-3 + rng.unit() * 0.05).collect();
    let gs: Vec<u8> = (0..gran.groups(k) * n).map(|_| rng.int(1, 16) as u8).collect();
    let b = bias.then(|| (0..n).map(|_| rng.unit() * 4.0 - 2.0).collect());
    W4A8Weights::from_int4(n, k, gran, &q, cs, gs, b).expect("valid weights")
}

fn activations(rng: &mut SplitMix64, m: usize, k: usize) -> QuantizedActivations {
    let v: Vec<i8> = (0..m * k).map(|_| rng.int(-127, 127) as i8).collect();
    let s: Vec<f32> = (0..m).map(|_| 1e-3 + rng.unit() * 0.02).collect();
    QuantizedActivations::new(m, k, v, s).expect("valid activations")
}

/// CPU time of the calling thread, in seconds (Unix); `None` elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
        // CLOCK_THREAD_CPUTIME_ID is a clock every Unix the example targets provides.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(unix))]
    None
}

/// (median, p10, p90) in microseconds.
fn summary(mut seconds: Vec<f64>) -> (f64, f64, f64) {
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| seconds[((seconds.len() - 1) as f64 * q).round() as usize] * 1e6;
    (at(0.5), at(0.1), at(0.9))
}

fn main() -> Result<(), w4a8_core::Error> {
    let calls: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| w4a8_core::Error::Backend {
            backend: w4a8_core::BackendKind::Wgpu,
            message: format!("CALLS must be a count, got {a:?}"),
        })?,
        None => 2000,
    };
    let start = Instant::now();
    let b = WgpuBackend::new()?;
    let setup = start.elapsed();
    let detail = |key: &str| {
        b.info().details.iter().find(|(k, _)| k == key).map_or("?".to_string(), |(_, v)| v.clone())
    };
    println!("device: {} ({}), driver {}", b.info().name, detail("backend API"), detail("driver"));
    println!("backend construction: {:.1} ms", setup.as_secs_f64() * 1e3);
    println!("M = 1, {calls} timed calls after {WARM_UP} warm-up calls; microseconds, median [p10, p90]");
    println!();
    println!("| N = K | granularity | bias | call | call CPU | call+wait |");
    println!("|------:|-------------|------|-----:|---------:|----------:|");
    let mut rng = SplitMix64::new(2024);
    for nk in [384, 1024] {
        for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
            for bias in [false, true] {
                let (n, k) = (nk, nk);
                let hw = weights(&mut rng, n, k, gran, bias);
                let hx = activations(&mut rng, 1, k);
                let (w, x) = (b.prepare(&hw)?, b.upload_activations(&hx)?);
                let mut y = b.alloc_output(1, n, f16::NAN)?;
                b.gemm_into(&x, &w, &mut y)?;
                let want = reference_gemm(&hx, &hw)?;
                let got = b.read_output(&y)?;
                assert!(
                    got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                    "N = K = {nk} {gran}: the GEMM does not match the oracle"
                );
                for _ in 0..WARM_UP {
                    b.gemm_into(&x, &w, &mut y)?;
                    b.synchronize()?;
                }
                let mut call = Vec::with_capacity(calls);
                let mut call_cpu = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let cpu = thread_cpu_seconds();
                    let t = Instant::now();
                    b.gemm_into(&x, &w, &mut y)?;
                    call.push(t.elapsed().as_secs_f64());
                    if let (Some(c0), Some(c1)) = (cpu, thread_cpu_seconds()) {
                        call_cpu.push(c1 - c0);
                    }
                    b.synchronize()?;
                }
                let mut call_wait = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t = Instant::now();
                    b.gemm_into(&x, &w, &mut y)?;
                    b.synchronize()?;
                    call_wait.push(t.elapsed().as_secs_f64());
                }
                // The timed calls computed the same result.
                let again = b.read_output(&y)?;
                assert!(again.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()));
                let (c, c10, c90) = summary(call);
                let cpu = if call_cpu.is_empty() {
                    "—".to_string()
                } else {
                    let (u, u10, u90) = summary(call_cpu);
                    format!("{u:.1} [{u10:.1}, {u90:.1}]")
                };
                let (cw, cw10, cw90) = summary(call_wait);
                println!(
                    "| {nk} | {gran} | {} | {c:.1} [{c10:.1}, {c90:.1}] | {cpu} | {cw:.1} [{cw10:.1}, {cw90:.1}] |",
                    if bias { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}
