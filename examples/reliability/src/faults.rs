//! Fault scenarios. Each injects one fault into a working process and checks the contract: the
//! affected calls return their typed error (no panic, no abort), no earlier result is lost or
//! changed, no result returned as a success is wrong, and the process opens a new backend (or
//! writes again) and goes on. Each returns what happened, for the table in benches/RELIABILITY.md,
//! or the violation as an `Err`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use half::f16;
use w4a8_core::io::{Layer, layers_from_bytes, layers_to_bytes, load_layers, save_layers};
use w4a8_core::oracle::reference_gemm;
use w4a8_core::quantize::quantize_weights_rtn;
use w4a8_core::rng::SplitMix64;
use w4a8_core::{BackendKind, Error, Gemm, Granularity, W4A8Weights};
use w4a8_wgpu::{WgpuBackend, WgpuOptions};

use conformance::inputs::GemmShape;
use conformance::{mixed_inputs, mixed_shapes, quantize_gemm_read};

/// What one fault did.
#[derive(Clone, Debug)]
pub struct FaultOutcome {
    /// The fault, in words.
    pub fault: String,
    /// The error the affected calls returned (its `Display`), or what happened to a killed process.
    pub error: String,
    /// What was checked of the results from before the fault.
    pub earlier: String,
    /// How the process went on.
    pub recovery: String,
}

type Outcome = std::result::Result<FaultOutcome, String>;

fn err(context: &str) -> impl Fn(Error) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// The mixed shapes' inputs, their weights prepared on `b`, and one result per shape checked against
/// the oracle on the activations `b` quantized.
struct Batch {
    shapes: Vec<GemmShape>,
    inputs: Vec<(Vec<f16>, W4A8Weights)>,
    results: Vec<Vec<f16>>,
}

impl Batch {
    fn run<B: Gemm>(b: &B) -> std::result::Result<(Batch, Vec<B::Weights>), String> {
        let shapes = mixed_shapes();
        let inputs: Vec<_> = shapes.iter().map(mixed_inputs).collect();
        let prepared = inputs
            .iter()
            .map(|(_, w)| b.prepare(w))
            .collect::<w4a8_core::Result<Vec<_>>>()
            .map_err(err("prepare"))?;
        let mut results = Vec::new();
        for ((s, (x, w)), wd) in shapes.iter().zip(&inputs).zip(&prepared) {
            let got = quantize_gemm_read(b, x, s, wd).map_err(err("GEMM"))?;
            let xq = b.read_activations(&b.quantize_activations(x, s.m, s.k, None).map_err(err("quantize"))?);
            let want = reference_gemm(&xq.map_err(err("read"))?, w).map_err(err("oracle"))?;
            conformance::check_bit_equal(&got, &want, s.n).map_err(|e| format!("{s:?}: {e}"))?;
            results.push(got);
        }
        Ok((Batch { shapes, inputs, results }, prepared))
    }

    /// Runs every shape again on `b` (weights prepared there) and compares bit for bit.
    fn rerun_on<B: Gemm>(&self, b: &B) -> std::result::Result<(), String> {
        for ((s, (x, w)), want) in self.shapes.iter().zip(&self.inputs).zip(&self.results) {
            let wd = b.prepare(w).map_err(err("prepare on the new backend"))?;
            let got = quantize_gemm_read(b, x, s, &wd).map_err(err("GEMM on the new backend"))?;
            if !bits_eq(&got, want) {
                return Err(format!("{s:?}: the new backend's result differs from the first one"));
            }
        }
        Ok(())
    }
}

fn bits_eq(a: &[f16], b: &[f16]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn is_lost(e: &Error) -> bool {
    matches!(e, Error::DeviceLost { backend: BackendKind::Wgpu, .. })
}

/// A wgpu device destroyed (`Device::destroy`, what a driver reset or a removed GPU looks like to
/// wgpu) while `threads` threads are in the middle of a batch of quantize/GEMM/read calls on it.
///
/// Checked: every thread's first failing call returns [`Error::DeviceLost`] and so does every call
/// after it, on every method; every call that returned a result before the loss returned the right
/// one (bit-equal to the first run); a new backend computes the same results.
pub fn device_lost_mid_batch(threads: usize) -> Outcome {
    let b = WgpuBackend::new().map_err(err("open"))?;
    let (batch, prepared) = Batch::run(&b)?;
    let completed = AtomicUsize::new(0);
    let started = Instant::now();
    let finals: Vec<std::result::Result<(usize, Error), String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (b, batch, prepared, completed) = (&b, &batch, &prepared, &completed);
                scope.spawn(move || {
                    for g in 0.. {
                        let i = (t + g) % batch.shapes.len();
                        match quantize_gemm_read(b, &batch.inputs[i].0, &batch.shapes[i], &prepared[i]) {
                            Ok(y) if bits_eq(&y, &batch.results[i]) => {
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => return Err(format!("thread {t}: call {g} returned a wrong result")),
                            Err(e) => return Ok((g, e)),
                        }
                        if started.elapsed() > Duration::from_secs(120) {
                            return Err(format!("thread {t}: no error 120 s after the loss"));
                        }
                    }
                    unreachable!("the loop only ends by returning")
                })
            })
            .collect();
        // Let the batch get going on every thread, then pull the device out from under it.
        while completed.load(Ordering::SeqCst) < 4 * threads && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        b.device().destroy();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let before = completed.load(Ordering::SeqCst);
    let mut first = None;
    for (t, f) in finals.into_iter().enumerate() {
        let (calls, e) = f?;
        if !is_lost(&e) {
            return Err(format!("thread {t}, call {calls}: expected DeviceLost, got {e:?}"));
        }
        first.get_or_insert(e);
    }
    let first = first.ok_or("no thread ran")?;
    // Every later call, of every kind, reports the loss.
    let (s, (x, w)) = (&batch.shapes[0], &batch.inputs[0]);
    let checks: [(&str, w4a8_core::Result<()>); 6] = [
        ("prepare", b.prepare(w).map(drop)),
        ("quantize_activations", b.quantize_activations(x, s.m, s.k, None).map(drop)),
        ("alloc_output", b.alloc_output(s.m, s.n, f16::ZERO).map(drop)),
        ("gemm", quantize_gemm_read(&b, x, s, &prepared[0]).map(drop)),
        ("read_weights", b.read_weights(&prepared[0]).map(drop)),
        ("synchronize", b.synchronize()),
    ];
    for (what, r) in checks {
        match r {
            Err(e) if is_lost(&e) => {}
            other => return Err(format!("{what} after the loss: expected DeviceLost, got {other:?}")),
        }
    }
    drop(prepared);
    drop(b);
    let fresh = WgpuBackend::new().map_err(err("open a new backend"))?;
    batch.rerun_on(&fresh)?;
    Ok(FaultOutcome {
        fault: format!("wgpu device destroyed while {threads} threads run quantize/GEMM/read"),
        error: first.to_string(),
        earlier: format!(
            "{} results from before the loss ({before} calls in the threads) all bit-equal to the first run; \
             every later call of every method: DeviceLost",
            batch.results.len()
        ),
        recovery: format!("new wgpu backend: the {} GEMMs again, bit-equal", batch.results.len()),
    })
}

/// An out-of-memory on prepare: weights larger than the device memory the backend may use. On
/// lavapipe device memory is host memory and there is no fault to inject safely, so the backend is
/// opened with a budget ([`WgpuOptions::max_device_bytes`], 1 MiB) and a smaller binding size, so
/// that the 2 MiB of weights are split into chunks and the refusal comes after some were uploaded.
///
/// Checked: [`Error::OutOfMemory`] naming the device; the live device bytes are what they were before
/// the call (the chunks already uploaded are released); weights prepared earlier still compute the
/// same results; prepare succeeds again once memory is freed, and a new backend without the budget
/// prepares the large weights.
pub fn out_of_memory_on_prepare() -> Outcome {
    let budget = 1u64 << 20;
    let options = WgpuOptions {
        max_device_bytes: Some(budget),
        max_binding_bytes: Some(256 << 10),
        ..Default::default()
    };
    let b = WgpuBackend::new_with(options).map_err(err("open"))?;
    let (batch, prepared) = Batch::run(&b)?;
    let live = b.device_bytes();
    let (n, k) = (2048, 2048);
    let mut rng = SplitMix64::new(3);
    let w: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
    let big = quantize_weights_rtn(&w, n, k, Granularity::PerGroup { group_size: 128 }, None)
        .map_err(err("quantize"))?;
    let e = match b.prepare(&big) {
        Err(e @ Error::OutOfMemory { backend: Some(BackendKind::Wgpu), .. }) => e,
        Err(e) => return Err(format!("expected OutOfMemory, got {e:?}")),
        Ok(_) => return Err(format!("{} bytes of weights fit a {budget}-byte budget", big.storage_bytes())),
    };
    if b.device_bytes() != live {
        return Err(format!(
            "the refused prepare leaked: {} live bytes before, {} after",
            live,
            b.device_bytes()
        ));
    }
    for ((s, (x, _)), (wd, want)) in
        batch.shapes.iter().zip(&batch.inputs).zip(prepared.iter().zip(&batch.results))
    {
        let got = quantize_gemm_read(&b, x, s, wd).map_err(err("GEMM after the refusal"))?;
        if !bits_eq(&got, want) {
            return Err(format!("{s:?}: a result changed after the refusal"));
        }
    }
    drop(prepared);
    let again = b.prepare(&batch.inputs[0].1).map_err(err("prepare after freeing"));
    drop(again?);
    let roomy = WgpuBackend::new().map_err(err("open a new backend"))?;
    let wd = roomy.prepare(&big).map_err(err("prepare on the new backend"))?;
    if roomy.read_weights(&wd).map_err(err("read back"))? != big {
        return Err("the large weights read back differently".into());
    }
    batch.rerun_on(&roomy)?;
    Ok(FaultOutcome {
        fault: format!(
            "prepare of {:.1} MiB of weights on a backend limited to {} MiB of device memory",
            big.storage_bytes() as f64 / (1 << 20) as f64,
            budget >> 20
        ),
        error: e.to_string(),
        earlier: format!(
            "live device bytes unchanged by the refusal ({live}); the {} weights prepared before still give bit-equal results",
            batch.results.len()
        ),
        recovery: "prepare works again after freeing; a new backend without the budget prepares the large weights (read back equal) and reruns the batch bit-equal".into(),
    })
}

/// The layers the weight-file scenarios write: `seed` picks the values; about 1 MiB in all.
pub fn sample_layers(seed: u64) -> BTreeMap<String, Layer> {
    let mut rng = SplitMix64::new(seed);
    (0..4)
        .map(|i| {
            let (n, k) = (512, 1024);
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
            let q = quantize_weights_rtn(&w, n, k, Granularity::PerGroup { group_size: 128 }, None)
                .expect("valid sample layer");
            (format!("layers.{i}.weight"), Layer::from(q))
        })
        .collect()
}

/// The writer the interrupted-write scenario kills: `w4a8-reliability write-weights PATH SEED`
/// writes [`sample_layers`] with the library's `save_layers`.
pub fn write_weights(path: &Path, seed: u64) -> w4a8_core::Result<()> {
    save_layers(path, &sample_layers(seed))
}

/// A weight-file write interrupted mid-way, twice: the writer process killed by the kernel once it
/// has written 64 KiB (a file-size limit, `ulimit -f`, raising SIGXFSZ), and the same limit with
/// SIGXFSZ ignored (the write fails with EFBIG). `exe` is a binary with the `write-weights`
/// subcommand (this crate's); needs `bash` (unix).
///
/// Checked: the killed writer dies by SIGXFSZ and the failing one exits with an error naming the
/// file, not a panic; after each the previous file is unchanged and loads; an unhindered writer
/// then replaces it.
#[cfg(unix)]
pub fn interrupted_write(exe: &Path, dir: &Path) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let path = dir.join("weights.safetensors");
    write_weights(&path, 1).map_err(err("first write"))?;
    let previous = std::fs::read(&path).map_err(|e| e.to_string())?;
    let limited = |trap: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!("{trap} ulimit -f 64; exec \"$0\" write-weights \"$1\" 2"))
            .arg(exe)
            .arg(&path)
            .output()
            .map_err(|e| format!("running {}: {e}", exe.display()))
    };
    let unchanged = |after: &str| -> std::result::Result<(), String> {
        let now = std::fs::read(&path).map_err(|e| e.to_string())?;
        if now != previous {
            return Err(format!(
                "{after}: the previous file changed ({} bytes, was {})",
                now.len(),
                previous.len()
            ));
        }
        load_layers(&path).map_err(err(after)).map(drop)
    };
    let killed = limited("")?;
    if killed.status.signal() != Some(25) {
        return Err(format!("expected the writer to die by SIGXFSZ (25), got {:?}", killed.status));
    }
    unchanged("after the killed write")?;
    let failed = limited("trap '' XFSZ;")?;
    let message = String::from_utf8_lossy(&failed.stderr).trim().to_string();
    if failed.status.success() || failed.status.signal().is_some() || !message.contains("weights.safetensors")
    {
        return Err(format!("expected an error exit naming the file, got {:?}: {message}", failed.status));
    }
    unchanged("after the failed write")?;
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    let ok =
        Command::new(exe).arg("write-weights").arg(&path).arg("2").status().map_err(|e| e.to_string())?;
    if !ok.success() || load_layers(&path).map_err(err("after the rewrite"))? != sample_layers(2) {
        return Err("the unhindered rewrite did not replace the file".into());
    }
    Ok(FaultOutcome {
        fault: format!(
            "weight-file write stopped at 64 KiB of {:.1} MiB: writer killed (SIGXFSZ), then the same with the signal ignored",
            previous.len() as f64 / (1 << 20) as f64
        ),
        error: format!("killed: {}; signal ignored: \"{message}\"", killed.status),
        earlier: format!(
            "previous file byte-identical and loads after both; temporary files left: {} (the killed writer's)",
            leftovers.len()
        ),
        recovery: "an unhindered write replaces the file; it loads with the new layers".into(),
    })
}

/// A weight file damaged on disk (cut in half) while a backend serves layers loaded before:
/// loading it is [`Error::Format`], and the layers already prepared keep computing.
pub fn truncated_file_while_serving<B: Gemm>(b: &B, dir: &Path) -> Outcome {
    let (batch, prepared) = Batch::run(b)?;
    let layers = BTreeMap::from([("l".to_string(), Layer::from(batch.inputs[0].1.clone()))]);
    let bytes = layers_to_bytes(&layers).map_err(err("serialize"))?;
    let path = dir.join("cut.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).map_err(|e| e.to_string())?;
    let e = match load_layers(&path) {
        Err(e @ Error::Format(_)) => e,
        other => return Err(format!("expected a format error, got {other:?}")),
    };
    if layers_from_bytes(&bytes).map_err(err("the whole file"))? != layers {
        return Err("the uncut file does not read back".into());
    }
    for ((s, (x, _)), (wd, want)) in
        batch.shapes.iter().zip(&batch.inputs).zip(prepared.iter().zip(&batch.results))
    {
        if !bits_eq(&quantize_gemm_read(b, x, s, wd).map_err(err("GEMM"))?, want) {
            return Err(format!("{s:?}: a result changed after the bad file"));
        }
    }
    Ok(FaultOutcome {
        fault: format!("loading a weight file cut to half its length, on {}", b.info().name),
        error: e.to_string(),
        earlier: format!("the {} layers already prepared give bit-equal results", batch.results.len()),
        recovery: "the backend is never affected; the intact file loads".into(),
    })
}
