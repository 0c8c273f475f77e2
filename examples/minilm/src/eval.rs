//! Calibration, quantization of the whole model, and the quality table of benches/QUALITY.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use rayon::prelude::*;
use tokenizers::Tokenizer;
use w4a8_core::calib::{
    CalibStats, GptqConfig, Method, QuantizeConfig, Smoothing, quantize_layer, quantize_layer_rotated,
};
use w4a8_core::{Gemm, Granularity, Result};

use crate::model::{self, Bert, FloatLinears, LinearId, Proj, QuantizedLayers, W4A8Linears};
use crate::{CALIB_SENTENCES, EVAL_SENTENCES, tokenize};

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// Runs the FP32 model on the calibration sentences and accumulates every linear layer's input statistics.
pub fn calibrate(bert: &Bert, tok: &Tokenizer) -> Result<BTreeMap<LinearId, CalibStats>, String> {
    let ids = tokenize(tok, &lines(CALIB_SENTENCES))?;
    let mut stats: BTreeMap<LinearId, CalibStats> = LinearId::all()
        .into_iter()
        .map(|id| Ok((id, CalibStats::new(id.proj.shape().1)?)))
        .collect::<Result<_>>()
        .map_err(|e| e.to_string())?;
    let float = FloatLinears(&bert.linears);
    let mut failure = None;
    for s in &ids {
        model::embed(bert, &float, s, &mut |id, x, _| {
            if let Err(e) = stats.get_mut(&id).expect("every layer has stats").update(x, s.len()) {
                failure.get_or_insert(e);
            }
        })
        .map_err(|e| e.to_string())?;
    }
    match failure {
        Some(e) => Err(e.to_string()),
        None => Ok(stats),
    }
}

/// The Hadamard block a layer of input width `k` gets for `--rotate b`: b, or the largest power of two
/// dividing K when b does not (MiniLM's K = 384 = 3 · 128 takes blocks up to 128, K = 1536 up to 512).
pub use w4a8_core::transform::block_for_width as layer_block;

/// Quantizes every linear layer with `cfg`, rotated by blocks of `rotate` ([`layer_block`]) when
/// given; the bias rides along in the weights. Returns the layers and the seconds it took.
pub fn quantize_model(
    bert: &Bert,
    calib: &BTreeMap<LinearId, CalibStats>,
    cfg: &QuantizeConfig,
    rotate: Option<usize>,
) -> Result<(QuantizedLayers, f64)> {
    let t = Instant::now();
    let mut out = BTreeMap::new();
    for (id, l) in &bert.linears {
        let (n, k) = id.proj.shape();
        let block = rotate.map(|b| layer_block(b, k));
        let q = quantize_layer_rotated(&l.w, n, k, cfg, block, Some(&calib[id]))?;
        out.insert(*id, (q.weights.with_bias(Some(l.b.clone()))?, q.smooth, q.hadamard_block));
    }
    Ok((out, t.elapsed().as_secs_f64()))
}

/// Held-out FP32 reference: embeddings, and every linear layer's inputs and outputs (all sentences
/// concatenated along M).
struct Reference {
    embeddings: Vec<Vec<f32>>,
    io: BTreeMap<LinearId, (Vec<f32>, Vec<f32>, usize)>,
    tokens: usize,
}

fn reference(bert: &Bert, ids: &[Vec<u32>]) -> Result<Reference> {
    let float = FloatLinears(&bert.linears);
    let mut io: BTreeMap<LinearId, (Vec<f32>, Vec<f32>, usize)> = BTreeMap::new();
    let mut embeddings = Vec::new();
    for s in ids {
        embeddings.push(model::embed(bert, &float, s, &mut |id, x, y| {
            let e = io.entry(id).or_default();
            e.0.extend_from_slice(x);
            e.1.extend_from_slice(y);
            e.2 += s.len();
        })?);
    }
    Ok(Reference { embeddings, io, tokens: ids.iter().map(Vec::len).sum() })
}

/// What one configuration scored.
struct Score {
    mean_cos: f64,
    min_cos: f64,
    layer_err: BTreeMap<LinearId, f64>,
    quant_s: f64,
}

/// Measures a quantized model on any backend: embedding cosine to FP32 and each layer's relative output
/// error `‖Y_q − Y‖_F / ‖Y‖_F` on its FP32 held-out inputs.
fn evaluate<G: Gemm>(
    gemm: G,
    bert: &Bert,
    layers: &QuantizedLayers,
    ids: &[Vec<u32>],
    reference: &Reference,
) -> Result<(f64, f64, BTreeMap<LinearId, f64>)> {
    let lin = W4A8Linears::new(gemm, layers)?;
    let mut cos = Vec::with_capacity(ids.len());
    for (s, fp) in ids.iter().zip(&reference.embeddings) {
        let e = model::embed(bert, &lin, s, &mut |_, _, _| {})?;
        cos.push(model::cosine(&e, fp));
    }
    let mut layer_err = BTreeMap::new();
    for (id, (x, y, m)) in &reference.io {
        let yq = model::Linears::linear(&lin, *id, x, *m)?;
        let (num, den) = yq
            .par_iter()
            .zip(y.par_iter())
            .map(|(&a, &b)| (((a - b) as f64).powi(2), (b as f64).powi(2)))
            .reduce(|| (0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1));
        layer_err.insert(*id, (num / den).sqrt());
    }
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((mean, min, layer_err))
}

/// The methods of the table, in order: (label, method, smoothing).
const METHODS: [(&str, Method, Smoothing); 4] = [
    ("RTN", Method::Rtn, Smoothing::None),
    ("GPTQ", Method::Gptq, Smoothing::None),
    ("GPTQ + adaptive smoothing", Method::Gptq, Smoothing::Adaptive),
    ("GPTQ + log equalization", Method::Gptq, Smoothing::Log),
];

const GRANULARITIES: [Granularity; 2] = [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }];

/// Synthetic GPTQ timing at a LLaMA-7B attention shape: 4096×4096 weights, 4096 calibration tokens of
/// correlated activations (rank-64 structure plus noise). Returns (statistics s, GPTQ s per granularity).
fn gptq_timing() -> Result<(f64, Vec<(Granularity, f64)>)> {
    let (m, n, k, rank) = (4096usize, 4096usize, 4096usize, 64usize);
    let hash = |i: u64| -> f32 {
        let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
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
    let t = Instant::now();
    let mut stats = CalibStats::new(k)?;
    for batch in x.chunks(512 * k) {
        stats.update(batch, batch.len() / k)?;
    }
    let t_stats = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for g in GRANULARITIES {
        let cfg = QuantizeConfig {
            granularity: g,
            method: Method::Gptq,
            smoothing: Smoothing::None,
            clip: false,
            gptq: GptqConfig::default(),
        };
        let t = Instant::now();
        let q = quantize_layer(&w, n, k, &cfg, Some(&stats))?;
        times.push((g, t.elapsed().as_secs_f64()));
        assert_eq!(q.weights.n(), n);
    }
    Ok((t_stats, times))
}

/// Calibrates, quantizes and scores every configuration; prints progress to stderr and returns the
/// markdown report (also printed to stdout).
pub fn run_eval(
    bert: &Bert,
    tok: &Tokenizer,
    backend: &str,
    timing: bool,
    rotate: Option<usize>,
) -> Result<String, String> {
    let s = |e: w4a8_core::Error| e.to_string();
    let calib_sentences = lines(CALIB_SENTENCES);
    let eval_sentences = lines(EVAL_SENTENCES);
    let calib = calibrate(bert, tok)?;
    let eval_ids = tokenize(tok, &eval_sentences)?;
    let reference = reference(bert, &eval_ids).map_err(s)?;
    let calib_tokens = calib.values().next().map_or(0, CalibStats::tokens);
    eprintln!(
        "calibration: {} sentences, {} tokens; held-out: {} sentences, {} tokens",
        calib_sentences.len(),
        calib_tokens,
        eval_sentences.len(),
        reference.tokens
    );
    // Each configuration unrotated, and rotated when `rotate` is given: (method, clip, granularity,
    // rotation) → score.
    let rotations: Vec<Option<usize>> = std::iter::once(None).chain(rotate.map(Some)).collect();
    let rot_label = |r: Option<usize>| r.map_or("none".to_string(), |b| format!("H{b}"));
    let mut scores: BTreeMap<(usize, bool, usize, Option<usize>), Score> = BTreeMap::new();
    for (mi, (label, method, smoothing)) in METHODS.iter().enumerate() {
        for clip in [false, true] {
            for (gi, g) in GRANULARITIES.iter().enumerate() {
                for &rot in &rotations {
                    let cfg = QuantizeConfig {
                        granularity: *g,
                        method: *method,
                        smoothing: *smoothing,
                        clip,
                        gptq: GptqConfig::default(),
                    };
                    let (layers, quant_s) = quantize_model(bert, &calib, &cfg, rot).map_err(s)?;
                    let (mean_cos, min_cos, layer_err) = evaluate(
                        w4a8::Backend::open_named(backend).map_err(s)?,
                        bert,
                        &layers,
                        &eval_ids,
                        &reference,
                    )
                    .map_err(s)?;
                    eprintln!(
                        "{label:<28} clip={clip:<5} {g:<11} rotate={:<5} mean cos {mean_cos:.5}  min {min_cos:.5}  ({quant_s:.2} s to quantize)",
                        rot_label(rot)
                    );
                    scores.insert((mi, clip, gi, rot), Score { mean_cos, min_cos, layer_err, quant_s });
                }
            }
        }
    }

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# W4A8 quantization quality: all-MiniLM-L6-v2\n");
    let _ = writeln!(
        w,
        "Produced by `cargo run --release -p w4a8-minilm -- eval --out benches/QUALITY.md` (model: \
         `scripts/fetch-minilm.sh`). Every linear layer (q, k, v, attn-out, fc1, fc2 of 6 blocks) runs as \
         a W4A8 GEMM through the `Gemm` trait on `{}`; embeddings, attention, LayerNorm, GELU and pooling \
         stay f32. Calibration: {} sentences ({} tokens) in `examples/minilm/data/calib.txt`; held-out: {} \
         other sentences ({} tokens) in `data/eval.txt`. GPTQ: block 128, dampening 1 %, act-order. \
         Clipping: per-row ratio grid {{1.0, 0.95, …, 0.5}} on the calibration output error `e H eᵀ`. \
         Adaptive smoothing: α ∈ {{0, 0.05, …, 1}} (and no smoothing) per layer on up to 512 calibration tokens.\n",
        w4a8::Backend::open_named(backend).map_err(s)?.info().name,
        calib_sentences.len(),
        calib_tokens,
        eval_sentences.len(),
        reference.tokens
    );
    if let Some(b) = rotate {
        let _ = writeln!(
            w,
            "Rotation `H{b}` (`--rotate {b}`): each layer's input rotated online by Walsh–Hadamard blocks \
             (QuaRot-style; {} channels at K = 384, {} at K = 1536), fused into the activation quantizer \
             and folded into the weights as W·H/b after smoothing; GPTQ and clipping use the rotated \
             input's Hessian, and the adaptive α search runs with the rotation in the loop.\n",
            layer_block(b, 384),
            layer_block(b, 1536)
        );
    }
    let _ = writeln!(w, "## Sentence-embedding cosine similarity to FP32 (held-out set)\n");
    let _ = writeln!(
        w,
        "| method | rotation | clip | per-channel mean | per-channel min | g128 mean | g128 min |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (mi, (label, ..)) in METHODS.iter().enumerate() {
        for &rot in &rotations {
            for clip in [false, true] {
                let (a, b) = (&scores[&(mi, clip, 0, rot)], &scores[&(mi, clip, 1, rot)]);
                let _ = writeln!(
                    w,
                    "| {label} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                    rot_label(rot),
                    if clip { "yes" } else { "no" },
                    a.mean_cos,
                    a.min_cos,
                    b.mean_cos,
                    b.min_cos
                );
            }
        }
    }
    let config_label = |(mi, clip, _, rot): (usize, bool, usize, Option<usize>)| {
        format!(
            "{}{}{}",
            METHODS[mi].0,
            rot.map_or(String::new(), |b| format!(" + H{b} rotation")),
            if clip { " + clip" } else { "" }
        )
    };
    for (gi, g) in GRANULARITIES.iter().enumerate() {
        let best =
            scores.iter().filter(|(k, _)| k.2 == gi).max_by(|a, b| a.1.mean_cos.total_cmp(&b.1.mean_cos));
        if let Some((key, sc)) = best {
            let _ = writeln!(w, "\nBest {g}: **{}**, mean cosine {:.4}.", config_label(*key), sc.mean_cos);
        }
    }
    let _ = writeln!(
        w,
        "\n## Per-layer relative output error (held-out, ‖Y_q − Y‖ / ‖Y‖, mean over the 6 blocks)\n"
    );
    let _ = writeln!(
        w,
        "| method | rotation | clip | granularity | q | k | v | attn-out | fc1 | fc2 | quantize time (s) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (gi, g) in GRANULARITIES.iter().enumerate() {
        for (mi, (label, ..)) in METHODS.iter().enumerate() {
            for (&rot, clip) in rotations.iter().flat_map(|r| [(r, false), (r, true)]) {
                let sc = &scores[&(mi, clip, gi, rot)];
                let cols: Vec<String> = Proj::ALL
                    .iter()
                    .map(|p| {
                        let v: Vec<f64> =
                            sc.layer_err.iter().filter(|(id, _)| id.proj == *p).map(|(_, e)| *e).collect();
                        format!("{:.4}", v.iter().sum::<f64>() / v.len() as f64)
                    })
                    .collect();
                let _ = writeln!(
                    w,
                    "| {label} | {} | {} | {g} | {} | {:.2} |",
                    rot_label(rot),
                    if clip { "yes" } else { "no" },
                    cols.join(" | "),
                    sc.quant_s
                );
            }
        }
    }
    let _ = writeln!(w, "\n## Every layer, RTN vs the best g128 configuration\n");
    let best_g128 = scores
        .iter()
        .filter(|(k, _)| k.2 == 1)
        .max_by(|a, b| a.1.mean_cos.total_cmp(&b.1.mean_cos))
        .map(|(k, _)| *k)
        .expect("scored");
    let _ = writeln!(w, "| layer | RTN g128 | {} g128 |", config_label(best_g128));
    let _ = writeln!(w, "|---|---|---|");
    for id in LinearId::all() {
        let _ = writeln!(
            w,
            "| {id} | {:.4} | {:.4} |",
            scores[&(0, false, 1, None)].layer_err[&id],
            scores[&best_g128].layer_err[&id]
        );
    }
    if timing {
        eprintln!("timing GPTQ on a 4096×4096 layer with 4096 calibration tokens …");
        let (t_stats, times) = gptq_timing().map_err(s)?;
        let _ = writeln!(w, "\n## GPTQ speed: 4096×4096 layer, 4096 calibration tokens\n");
        let _ = writeln!(
            w,
            "Synthetic correlated activations; CPU, {} rayon threads (faer for the blocked GEMMs, \
             Cholesky and triangular inverse). Statistics (`CalibStats::update`, `XᵀX` in f64, 8 batches of \
             512 tokens): **{t_stats:.2} s**.\n",
            rayon::current_num_threads()
        );
        let _ = writeln!(w, "| granularity | `quantize_layer` (GPTQ, act-order) |");
        let _ = writeln!(w, "|---|---|");
        for (g, t) in times {
            let _ = writeln!(w, "| {g} | {t:.2} s |");
        }
    }
    println!("{md}");
    Ok(md)
}
