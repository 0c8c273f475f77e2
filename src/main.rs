//! The `w4a8` command-line tool: `info`, `demo`, `quantize`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use w4a8::calib::{GptqConfig, Method, QuantizeConfig, Smoothing, layer_calibration, quantize_layer_rotated};
use w4a8::io::{FloatTensor, Layer, load_float_tensors, save_layers};
use w4a8::oracle::{f16_ulp_distance, reference_gemm};
use w4a8::quantize::{quantize_activations, quantize_weights_rtn};
use w4a8::rng::SplitMix64;
use w4a8::{Backend, DEFAULT_GROUP_SIZE, Gemm, Granularity, Result, f16};

#[derive(Parser)]
#[command(name = "w4a8", version, about = "W4A8 LLM inference kernels: 4-bit weights, 8-bit activations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the backends compiled in, the devices they find, the limits that matter, and which
    /// kernel each runs for a few GEMMs.
    Info {
        /// A GEMM to show the kernel plan of, as `MxNxK` with an optional `:g32|:g64|:g128|:g256|:pc`
        /// (default g128); repeatable. Without it: M = 1, 16, 64, 128, 4096 on 4096x4096 g128.
        #[arg(long = "plan", value_name = "MxNxK[:G]")]
        plans: Vec<String>,
    },
    /// Quantize a LLaMA-shaped layer, run it on a backend, compare with the oracle, print error and time.
    Demo {
        /// auto (best found), cpu, wgpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Tokens (rows of X).
        #[arg(long, default_value_t = 16)]
        m: usize,
        /// Output features.
        #[arg(long, default_value_t = 4096)]
        n: usize,
        /// Input features.
        #[arg(long, default_value_t = 4096)]
        k: usize,
        /// Group size (32, 64, 128, 256), or 0 for per-channel scales.
        #[arg(long, default_value_t = DEFAULT_GROUP_SIZE)]
        group: usize,
        /// Timed repetitions.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Seed of the random layer.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Quantize the 2-D float (f32/f16/bf16) weights of a safetensors file into a W4A8 file.
    Quantize {
        /// Input safetensors file (e.g. a model's `model.safetensors`).
        input: PathBuf,
        /// Output W4A8 safetensors file.
        output: PathBuf,
        /// Group size (32, 64, 128, 256), or 0 for per-channel scales.
        #[arg(long, default_value_t = DEFAULT_GROUP_SIZE)]
        group: usize,
        /// Weight quantizer: rtn (round to nearest) or gptq (Hessian-based error compensation).
        #[arg(long, default_value = "rtn")]
        method: String,
        /// Smoothing: none, adaptive (QQQ's α search), log (FPTQ's log equalization) or omniquant
        /// (OmniQuant's scales and clipping learned on each layer's output error; feature `learn`).
        #[arg(long, default_value = "none")]
        smooth: String,
        /// Search a clipping ratio per output channel on the layer's output error.
        #[arg(long)]
        clip: bool,
        /// Rotate each layer's input by blockwise Walsh–Hadamard transforms of this size (a power of
        /// two dividing K, at most 4096; QuaRot uses K): the weights are quantized from W·H/B, the
        /// file records B per layer (`NAME.hadamard_block`), and the activation quantizer rotates
        /// online. Applied after smoothing.
        #[arg(long, value_name = "B")]
        rotate: Option<usize>,
        /// Calibration activations (safetensors): for weight `NAME.weight`, tensor `NAME.input` (or
        /// `NAME`) holds that layer's inputs as [tokens, K]. Needed by gptq, smoothing and clipping.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Only tensors whose name contains this (default: every 2-D tensor named `*.weight`).
        #[arg(long)]
        filter: Option<String>,
    },
}

fn granularity(group: usize) -> Granularity {
    if group == 0 { Granularity::PerChannel } else { Granularity::PerGroup { group_size: group } }
}

/// Parses `MxNxK[:G]` (G = g32, g64, g128, g256 or pc; default g128).
fn parse_plan_shape(text: &str) -> Result<(usize, usize, usize, Granularity)> {
    let bad =
        || bad_arg(format!("--plan `{text}`: expected MxNxK with an optional :g32/:g64/:g128/:g256/:pc"));
    let (dims, gran) = text.split_once(':').unwrap_or((text, "g128"));
    let dims: Vec<usize> =
        dims.split('x').map(|d| d.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?;
    let [m, n, k] = dims[..] else { return Err(bad()) };
    let granularity = match gran {
        "pc" => Granularity::PerChannel,
        g => {
            granularity(g.strip_prefix('g').and_then(|v| v.parse().ok()).filter(|&v| v > 0).ok_or_else(bad)?)
        }
    };
    Ok((m, n, k, granularity))
}

fn info(plans: &[String]) -> Result<()> {
    let shapes: Vec<_> = if plans.is_empty() {
        [1, 16, 64, 128, 4096].map(|m| (m, 4096, 4096, granularity(DEFAULT_GROUP_SIZE))).to_vec()
    } else {
        plans.iter().map(|p| parse_plan_shape(p)).collect::<Result<_>>()?
    };
    println!("w4a8 {} — backends compiled in: {:?}", env!("CARGO_PKG_VERSION"), Backend::compiled());
    for kind in Backend::compiled() {
        let backend = match Backend::open(kind) {
            Ok(b) => b,
            Err(e) => {
                println!("\n[{kind}] {e}");
                continue;
            }
        };
        let d = backend.info();
        println!("\n[{kind}] {}", d.name);
        for (key, value) in &d.details {
            println!("    {key:<28} {value}");
        }
        println!("    kernel plans:");
        for &(m, n, k, g) in &shapes {
            let plan =
                backend.kernel_plan(m, n, k, g).map_or_else(|e| format!("error: {e}"), |p| p.to_string());
            println!("      M={m:<5} {n}x{k} {g:<11} {plan}");
        }
    }
    let best = Backend::best()?;
    println!("\nbest backend: {} ({})", best.kind(), best.info().name);
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[allow(clippy::too_many_arguments)]
fn demo(backend: &str, m: usize, n: usize, k: usize, group: usize, iters: usize, seed: u64) -> Result<()> {
    let backend = Backend::open_named(backend)?;
    let granularity = granularity(group);
    println!("backend: {} ({})", backend.kind(), backend.info().name);
    println!("layer:   X {m}×{k} f16 · Wᵀ ({n}×{k}, {granularity} int4) → Y {m}×{n} f16");
    println!("kernel:  {}", backend.kernel_plan(m, n, k, granularity)?);

    // A LLaMA-like layer: normal weights with a few heavy rows; activations with outlier channels.
    let mut rng = SplitMix64::new(seed);
    let w: Vec<f32> =
        (0..n * k).map(|i| rng.normal() * if (i / k).is_multiple_of(97) { 4.0 } else { 0.02 }).collect();
    let gain: Vec<f32> = (0..k).map(|_| if rng.chance(0.01) { 30.0 } else { 1.0 }).collect();
    let x: Vec<f16> = (0..m * k).map(|i| f16::from_f32(rng.normal() * gain[i % k])).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();

    let t = Instant::now();
    let weights = quantize_weights_rtn(&w, n, k, granularity, Some(bias.clone()))?;
    println!("quantize weights (RTN, CPU): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let prepared = backend.prepare(&weights)?;

    // Warm up (compiles pipelines), then time quantize + GEMM end to end from the host.
    let xq = backend.quantize_activations(&x, m, k, None)?;
    let mut y = backend.alloc_output(m, n, f16::NAN)?;
    backend.gemm_into(&xq, &prepared, &mut y)?;
    backend.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        let xq = backend.quantize_activations(&x, m, k, None)?;
        backend.gemm_into(&xq, &prepared, &mut y)?;
        backend.synchronize()?;
        times.push(t.elapsed());
    }
    let got = backend.read_output(&y)?;
    let t_med = median(times);

    // The oracle on the same quantized activations, and FP32 on the unquantized operands.
    let xq_host = backend.read_activations(&xq)?;
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let oracle_x = quantize_activations(&xf, m, k, None)?;
    let want = reference_gemm(&xq_host, &weights)?;
    let max_ulp =
        got.iter().zip(&want).map(|(&a, &b)| f16_ulp_distance(a, b).unwrap_or(u32::MAX)).max().unwrap_or(0);
    let equal = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    let q_diff = xq_host.values().iter().zip(oracle_x.values()).filter(|(a, b)| a != b).count();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..m {
        for j in 0..n {
            let exact: f64 =
                (0..k).map(|kk| xf[i * k + kk] as f64 * w[j * k + kk] as f64).sum::<f64>() + bias[j] as f64;
            num += (got[i * n + j].to_f64() - exact).powi(2);
            den += exact * exact;
        }
    }
    let ops = 2.0 * (m * n * k) as f64;
    println!(
        "time (quantize X + GEMM, median of {iters}, host-timed): {:.3} ms  ({:.1} GOP/s)",
        t_med.as_secs_f64() * 1e3,
        ops / t_med.as_secs_f64() / 1e9
    );
    println!(
        "vs oracle:   {equal}/{} outputs bit-equal, max difference {max_ulp} f16 ulp; {q_diff} of {} activation codes differ",
        m * n,
        m * k
    );
    println!(
        "vs FP32:     relative Frobenius error of W4A8 output {:.4}",
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    );
    if max_ulp > 1 {
        return Err(w4a8::Error::Backend {
            backend: backend.kind(),
            message: format!("output differs from the oracle by {max_ulp} ulp"),
        });
    }
    Ok(())
}

/// What `w4a8 quantize` was asked to do.
struct QuantizeArgs<'a> {
    input: &'a PathBuf,
    output: &'a PathBuf,
    cfg: QuantizeConfig,
    rotate: Option<usize>,
    calib: Option<&'a PathBuf>,
    filter: Option<&'a str>,
}

fn bad_arg(message: String) -> w4a8::Error {
    w4a8::Error::InvalidValue { what: "command-line argument", index: 0, reason: message }
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    let QuantizeArgs { input, output, cfg, rotate, calib, filter } = args;
    if let Some(b) = rotate {
        // The block alone (a power of two in range); whether it divides K is checked per layer.
        w4a8::transform::check_hadamard_block(b, b).map_err(|e| bad_arg(format!("--rotate {b}: {e}")))?;
    }
    let calib = match calib {
        Some(path) => Some(load_float_tensors(path)?),
        None if cfg.needs_calibration() => {
            return Err(bad_arg(format!(
                "--method {} --smooth {}{} needs calibration activations: pass --calib FILE",
                cfg.method.name(),
                cfg.smoothing.name(),
                if cfg.clip { " --clip" } else { "" }
            )));
        }
        None => None,
    };
    let tensors = load_float_tensors(input)?;
    let chosen: Vec<(&String, &FloatTensor)> = tensors
        .iter()
        .filter(|(name, t)| {
            t.shape.len() == 2 && filter.map_or(name.ends_with(".weight"), |f| name.contains(f))
        })
        .collect();
    let bar = ProgressBar::new(chosen.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("static template"));
    let mut layers = BTreeMap::new();
    let mut skipped = Vec::new();
    for (name, t) in chosen {
        bar.set_message(name.clone());
        let (n, k) = (t.shape[0], t.shape[1]);
        let bias = name
            .strip_suffix(".weight")
            .and_then(|p| tensors.get(&format!("{p}.bias")))
            .filter(|b| b.shape == [n])
            .map(|b| b.data.clone());
        let layer = (|| {
            let stats = calib.as_ref().map(|c| layer_calibration(c, name, k)).transpose()?;
            let q = quantize_layer_rotated(&t.data, n, k, &cfg, rotate, stats.as_ref())?;
            Layer::new(q.weights.with_bias(bias)?, q.smooth)?.with_hadamard_block(q.hadamard_block)
        })();
        match layer {
            Ok(l) => {
                layers.insert(name.clone(), l);
            }
            // A tensor this configuration can't hold (K not a multiple of the group, no calibration
            // data for it) is reported, not fatal: the others are still useful.
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if layers.is_empty() {
        return Err(bad_arg(format!("no tensor could be quantized; skipped: {}", skipped.join("; "))));
    }
    save_layers(output, &layers)?;
    let bytes: usize = layers.values().map(|l| l.weights.storage_bytes()).sum();
    println!(
        "wrote {} layers ({} {}, smoothing {}{}{}, {:.2} MB) to {}",
        layers.len(),
        cfg.method.name(),
        cfg.granularity,
        cfg.smoothing.name(),
        if cfg.clip { ", clipped" } else { "" },
        rotate.map_or(String::new(), |b| format!(", rotated by Hadamard blocks of {b}")),
        bytes as f64 / 1e6,
        output.display()
    );
    for s in &skipped {
        println!("skipped {s}");
    }
    Ok(())
}

fn quantize_config(group: usize, method: &str, smooth: &str, clip: bool) -> Result<QuantizeConfig> {
    let granularity = granularity(group);
    // Validating against K = g itself checks only that the group size is supported.
    granularity.validate(granularity.group_size().unwrap_or(1))?;
    Ok(QuantizeConfig {
        granularity,
        method: Method::from_name(method)
            .ok_or_else(|| bad_arg(format!("--method {method:?}: expected rtn or gptq")))?,
        smoothing: Smoothing::from_name(smooth).ok_or_else(|| {
            bad_arg(format!("--smooth {smooth:?}: expected none, adaptive, log or omniquant"))
        })?,
        clip,
        gptq: GptqConfig::default(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { plans } => info(&plans),
        Command::Demo { backend, m, n, k, group, iters, seed } => demo(&backend, m, n, k, group, iters, seed),
        Command::Quantize { input, output, group, method, smooth, clip, rotate, calib, filter } => {
            quantize_config(group, &method, &smooth, clip).and_then(|cfg| {
                quantize(QuantizeArgs {
                    input: &input,
                    output: &output,
                    cfg,
                    rotate,
                    calib: calib.as_ref(),
                    filter: filter.as_deref(),
                })
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
