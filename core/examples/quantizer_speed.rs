//! Times the quantizers on a LLaMA-7B attention shape (4096×4096 weights, 4096 calibration tokens)
//! and on a MiniLM-sized layer, and prints a fingerprint of every result so that a speed change can be
//! checked for bit-identical output.
//!
//! ```sh
//! cargo run --release -p w4a8-core --example quantizer_speed            # everything
//! cargo run --release -p w4a8-core --example quantizer_speed -- rtn gptq  # some steps only
//! cargo run --release -p w4a8-core --example quantizer_speed -- gptq x5   # fastest of 5 runs
//! ```
//!
//! Steps: `rtn` (RTN of the 4096×4096 layer, g128 and per channel), `stats` (CalibStats over 4096
//! tokens, f64 XᵀX), `gptq` (quantize_layer GPTQ, g128 and per channel, act-order), `minilm`
//! (GPTQ + adaptive smoothing g128, and + clipping per channel, on every linear layer of a
//! MiniLM-L6-shaped model calibrated on 1417 tokens).
//! The data are the synthetic correlated activations of `w4a8-minilm eval`'s GPTQ timing.

use std::time::Instant;

use rayon::prelude::*;
use w4a8_core::calib::{CalibStats, Method, QuantizeConfig, Smoothing, quantize_layer};
use w4a8_core::quantize::quantize_weights_rtn;
use w4a8_core::{Granularity, W4A8Weights};

/// Uniform in [-1, 1) from an index (SplitMix64 finalizer), so every run sees the same data.
fn hash(i: u64) -> f32 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// Activations of rank-`rank` structure plus noise (M×K row-major), and weights (N×K) of scale 0.05.
fn layer(m: usize, n: usize, k: usize, rank: usize) -> (Vec<f32>, Vec<f32>) {
    let z: Vec<f32> = (0..m * rank).map(|i| hash(i as u64)).collect();
    let a: Vec<f32> = (0..rank * k).map(|i| hash(i as u64 + (1 << 40))).collect();
    let x: Vec<f32> = (0..m)
        .into_par_iter()
        .flat_map_iter(|t| {
            let (z, a) = (&z, &a);
            (0..k).map(move |j| {
                (0..rank).map(|r| z[t * rank + r] * a[r * k + j]).sum::<f32>()
                    + 0.1 * hash((t * k + j) as u64 + (2 << 40))
            })
        })
        .collect();
    let w: Vec<f32> = (0..n * k).map(|i| hash(i as u64 + (3 << 40)) * 0.05).collect();
    (x, w)
}

/// FNV-1a over the int4 values, the channel scales' bits and the group scales.
fn fingerprint(q: &W4A8Weights) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    q.int4().iter().for_each(|&v| eat(v as u8));
    q.channel_scales().iter().flat_map(|s| s.to_bits().to_le_bytes()).for_each(&mut eat);
    q.group_scales().iter().for_each(|&v| eat(v));
    h
}

/// CPU seconds this process has used (all threads; Linux `/proc/self/stat`, clock ticks of 1/100 s),
/// or NaN elsewhere. Other jobs on the machine lengthen the wall time, not this.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    if f.len() == 2 { (f[0] + f[1]) / 100.0 } else { f64::NAN }
}

/// How many times each step runs (`xN` on the command line; default 1): the fastest run is reported,
/// the least disturbed by other work on the machine.
static REPEATS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Runs `f` [`REPEATS`] times; its last result, and the wall and CPU seconds of the fastest run.
fn timed<R>(mut f: impl FnMut() -> R) -> (R, String) {
    let mut best = (f64::INFINITY, f64::NAN);
    let mut result = None;
    for _ in 0..*REPEATS.get().unwrap_or(&1) {
        drop(result.take());
        let (t, c) = (Instant::now(), cpu_seconds());
        result = Some(f());
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        if wall < best.0 {
            best = (wall, cpu);
        }
    }
    (result.expect("at least one run"), format!("{:7.3} s (cpu {:6.2} s)", best.0, best.1))
}

fn stats_of(x: &[f32], k: usize) -> (CalibStats, String) {
    timed(|| {
        let mut stats = CalibStats::new(k).expect("stats");
        for batch in x.chunks(512 * k) {
            stats.update(batch, batch.len() / k).expect("finite");
        }
        stats
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a.starts_with('x') && a[1..].parse::<usize>().is_ok()) {
        REPEATS.set(args.remove(i)[1..].parse::<usize>().expect("checked").max(1)).expect("set once");
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let g128 = Granularity::PerGroup { group_size: 128 };
    println!("{} threads", rayon::current_num_threads());

    if want("rtn") || want("stats") || want("gptq") {
        let (m, n, k) = (4096, 4096, 4096);
        let (x, w) = layer(m, n, k, 64);
        if want("rtn") {
            for g in [g128, Granularity::PerChannel] {
                let (q, t) = timed(|| quantize_weights_rtn(&w, n, k, g, None).expect("rtn"));
                println!("rtn   {n}x{k} {g:<11}  {t}   fingerprint {:016x}", fingerprint(&q));
            }
        }
        if want("stats") || want("gptq") {
            let (stats, t) = stats_of(&x, k);
            println!("stats {m} tokens x {k} (f64 XᵀX)  {t}");
            if want("rtn") {
                // Same again after faer has run on the worker threads (see calib's clear_upper_simd_state).
                let (q, t) = timed(|| quantize_weights_rtn(&w, n, k, g128, None).expect("rtn"));
                println!(
                    "rtn   {n}x{k} {g128:<11}  {t}   fingerprint {:016x}  (after faer)",
                    fingerprint(&q)
                );
            }
            if want("gptq") {
                for g in [g128, Granularity::PerChannel] {
                    let cfg = QuantizeConfig { granularity: g, method: Method::Gptq, ..Default::default() };
                    let (q, t) = timed(|| quantize_layer(&w, n, k, &cfg, Some(&stats)).expect("gptq"));
                    println!("gptq  {n}x{k} {g:<11}  {t}   fingerprint {:016x}", fingerprint(&q.weights));
                }
            }
        }
    }

    if want("minilm") {
        // The linear layers of all-MiniLM-L6-v2 (6 blocks of q, k, v, attn-out 384×384, fc1 1536×384,
        // fc2 384×1536), calibrated on 1417 tokens as `w4a8-minilm eval` does: the time is what eval
        // reports as "s to quantize" (its `quantize_model`), which depends on the shapes only. Synthetic
        // weights and activations; the fingerprint covers every layer.
        let m = 1417;
        let (x384, _) = layer(m, 1, 384, 32);
        let (x1536, _) = layer(m, 1, 1536, 32);
        let (s384, _) = stats_of(&x384, 384);
        let (s1536, _) = stats_of(&x1536, 1536);
        let shapes = [(384, 384), (384, 384), (384, 384), (384, 384), (1536, 384), (384, 1536)];
        let weights: Vec<(usize, usize, Vec<f32>)> =
            (0..6).flat_map(|_| shapes).map(|(n, k)| (n, k, layer(1, n, k, 1).1)).collect();
        for (g, clip) in [(g128, false), (Granularity::PerChannel, true)] {
            let cfg = QuantizeConfig {
                granularity: g,
                method: Method::Gptq,
                smoothing: Smoothing::Adaptive,
                clip,
                ..Default::default()
            };
            let (fp, t) = timed(|| {
                let mut h = 0u64;
                for (n, k, w) in &weights {
                    let stats = if *k == 384 { &s384 } else { &s1536 };
                    let q = quantize_layer(w, *n, *k, &cfg, Some(stats)).expect("gptq + adaptive");
                    h = h.rotate_left(5) ^ fingerprint(&q.weights);
                }
                h
            });
            let what = if clip { "gptq+adaptive+clip" } else { "gptq+adaptive" };
            println!("{what} MiniLM-L6 (36 layers) {g:<11}  {t}   fingerprint {fp:016x}");
        }
    }
}
