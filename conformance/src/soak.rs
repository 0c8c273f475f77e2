//! Long runs: many prepare → quantize → GEMM → read cycles of mixed shapes on one backend, with the
//! process's resident memory and the backend's own count of live device bytes sampled between
//! cycles, and every result checked bit for bit against the first run of its shape.
//!
//! The property: after a warm-up (pipelines compiled, allocator pools filled) neither series grows.
//! Device bytes are exact (every handle of a cycle is dropped before sampling, so the count must
//! come back to the same value); resident memory is noisy (allocator, driver), so it is held to a
//! tolerance. [`long_run`] collects the series, [`LongRun::check`] judges it, and
//! [`LongRun::markdown`] prints it (the table in benches/RELIABILITY.md comes from that).

use std::fmt::Write as _;
use std::time::Instant;

use half::f16;
use w4a8_core::oracle::reference_gemm;
use w4a8_core::{Error, Gemm, Result};

use crate::{check_bit_equal, mixed_inputs, mixed_shapes, quantize_gemm_read};

/// Resident memory of this process from `/proc/self/statm` (resident pages × 4 KiB, the page size
/// of x86-64 and most aarch64 Linux), or `None` where there is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One sample, taken between cycles with no handle of the run alive.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Cycles completed.
    pub cycle: usize,
    /// [`resident_bytes`].
    pub resident_bytes: Option<u64>,
    /// The backend's live device bytes, where it counts them.
    pub device_bytes: Option<u64>,
    /// Seconds since the start of the run.
    pub seconds: f64,
}

/// The series of a long run.
#[derive(Clone, Debug)]
pub struct LongRun {
    /// The backend's device name.
    pub device: String,
    /// Cycles run.
    pub cycles: usize,
    /// Cycles before the baseline sample (pipelines compiled, pools warm).
    pub warmup: usize,
    /// Distinct shapes cycled through.
    pub shapes: usize,
    /// Samples: one before any work, one at the end of the warm-up, then evenly spaced.
    pub samples: Vec<Sample>,
}

/// Runs `cycles` cycles on `b`. Cycle `i` takes shape `i mod S` of [`mixed_shapes`]: prepares its
/// weights, quantizes its activations on the device, runs the GEMM into a NaN-poisoned output, reads
/// it back, and drops every handle. The first result of each shape is checked against the oracle
/// (within 1 ulp); every later one must be bit-equal to it. `samples` samples are taken after the
/// warm-up (a tenth of the run, at least two rounds of shapes); `device_bytes` reads the backend's
/// live-byte count (`None` where it has none).
///
/// Returns the series, or the first error or mismatch (as [`Error::Backend`] naming the cycle).
pub fn long_run<B: Gemm>(
    b: &B,
    cycles: usize,
    samples: usize,
    device_bytes: impl Fn(&B) -> Option<u64>,
) -> Result<LongRun> {
    let shapes = mixed_shapes();
    let inputs: Vec<_> = shapes.iter().map(mixed_inputs).collect();
    let warmup = (cycles / 10).max(2 * shapes.len()).min(cycles);
    let every = (cycles - warmup).div_ceil(samples.max(1)).max(1);
    let start = Instant::now();
    let sample = |cycle| Sample {
        cycle,
        resident_bytes: resident_bytes(),
        device_bytes: device_bytes(b),
        seconds: start.elapsed().as_secs_f64(),
    };
    let fail = |cycle: usize, message: String| Error::Backend {
        backend: b.info().backend,
        message: format!("long run, cycle {cycle}: {message}"),
    };
    let mut series = vec![sample(0)];
    let mut first: Vec<Option<Vec<f16>>> = vec![None; shapes.len()];
    for cycle in 0..cycles {
        let i = cycle % shapes.len();
        let (s, (x, w)) = (&shapes[i], &inputs[i]);
        let wd = b.prepare(w)?;
        let got = quantize_gemm_read(b, x, s, &wd)?;
        match &first[i] {
            Some(want) => {
                if let Some(j) = got.iter().zip(want).position(|(a, c)| a.to_bits() != c.to_bits()) {
                    return Err(fail(
                        cycle,
                        format!("{s:?}: Y[{j}] = {} but the first run gave {}", got[j], want[j]),
                    ));
                }
            }
            None => {
                let xq = b.read_activations(&b.quantize_activations(x, s.m, s.k, None)?)?;
                check_bit_equal(&got, &reference_gemm(&xq, w)?, s.n)
                    .map_err(|e| fail(cycle, format!("{s:?} against the oracle: {e}")))?;
                first[i] = Some(got);
            }
        }
        drop(wd);
        let done = cycle + 1;
        if done == warmup || (done > warmup && ((done - warmup).is_multiple_of(every) || done == cycles)) {
            b.synchronize()?;
            series.push(sample(done));
        }
    }
    Ok(LongRun { device: b.info().name.clone(), cycles, warmup, shapes: shapes.len(), samples: series })
}

impl LongRun {
    /// The samples from the end of the warm-up on.
    fn after_warmup(&self) -> &[Sample] {
        let at = self.samples.iter().position(|s| s.cycle >= self.warmup).unwrap_or(self.samples.len());
        &self.samples[at..]
    }

    /// Largest resident size after the warm-up minus the resident size at its end, in bytes.
    pub fn resident_growth(&self) -> Option<i64> {
        let after = self.after_warmup();
        let base = after.first()?.resident_bytes? as i64;
        after.iter().filter_map(|s| s.resident_bytes).map(|r| r as i64 - base).max()
    }

    /// Largest live device-byte count after the warm-up minus the count at its end.
    pub fn device_growth(&self) -> Option<i64> {
        let after = self.after_warmup();
        let base = after.first()?.device_bytes? as i64;
        after.iter().filter_map(|s| s.device_bytes).map(|d| d as i64 - base).max()
    }

    /// The property: no device-byte growth at all after the warm-up, and resident growth within
    /// `resident_tolerance` bytes (allocator and driver noise; a leak of even 1 KiB per cycle over
    /// 10 000 cycles is ten times a 1 MiB tolerance).
    pub fn check(&self, resident_tolerance: u64) -> std::result::Result<(), String> {
        if let Some(d) = self.device_growth().filter(|&d| d != 0) {
            return Err(format!("{}: live device bytes grew by {d} after the warm-up", self.device));
        }
        if let Some(r) = self.resident_growth().filter(|&r| r > resident_tolerance as i64) {
            return Err(format!(
                "{}: resident memory grew by {r} bytes after the warm-up (tolerance {resident_tolerance})",
                self.device
            ));
        }
        Ok(())
    }

    /// The series as a markdown table, with the growth after the warm-up below it.
    pub fn markdown(&self) -> String {
        let mib =
            |b: Option<u64>| b.map_or("—".to_string(), |b| format!("{:.2}", b as f64 / (1 << 20) as f64));
        let mut out = format!(
            "{} cycles on {} ({} shapes in turn), warm-up {} cycles:\n\n\
             | cycle | seconds | resident MiB | live device bytes |\n|---:|---:|---:|---:|\n",
            self.cycles, self.device, self.shapes, self.warmup
        );
        for s in &self.samples {
            let dev = s.device_bytes.map_or("—".to_string(), |d| d.to_string());
            let _ = writeln!(
                out,
                "| {}{} | {:.1} | {} | {dev} |",
                s.cycle,
                if s.cycle == self.warmup { " (end of warm-up)" } else { "" },
                s.seconds,
                mib(s.resident_bytes)
            );
        }
        let growth =
            |g: Option<i64>, unit: &str| g.map_or("not measured".to_string(), |g| format!("{g:+} {unit}"));
        let _ = writeln!(
            out,
            "\nGrowth after the warm-up (largest sample minus the warm-up sample): resident {}, live device {}.",
            growth(self.resident_growth(), "bytes"),
            growth(self.device_growth(), "bytes")
        );
        out
    }
}
