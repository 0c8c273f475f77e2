//! The Llama decoder of SmolLM2 (RMSNorm, rotary attention with grouped KV heads, SwiGLU, tied
//! embeddings), f32 on the CPU except the linear layers, which go through a [`Linears`]
//! implementation: f32 ([`FloatLinears`], the reference) or W4A8 through any [`Gemm`] backend
//! ([`W4A8Linears`]). The lm_head (the tied token embedding) always stays f32.
//!
//! One [`forward`] serves both uses: a window of M tokens at once with causal attention (perplexity,
//! W4A8 GEMMs of M×K), and token-by-token decoding against a [`KvCache`] (generation).

use std::collections::BTreeMap;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use w4a8_core::calib::QuantizedLayer;
use w4a8_core::{ActivationTransform, Gemm, f16};

use crate::Error;
use crate::gguf::{Gguf, GgufError};

/// Hyper-parameters, read from the GGUF metadata (`llama.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Decoder blocks.
    pub layers: usize,
    /// Hidden width (residual stream).
    pub hidden: usize,
    /// SwiGLU width.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads / kv_heads` query heads share one).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base θ.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size (rows of the token embedding).
    pub vocab: usize,
}

impl Config {
    /// Reads the `llama.*` metadata and checks that the numbers fit together.
    pub fn from_gguf(g: &Gguf) -> Result<Config, Error> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Model(format!("architecture {arch:?} (only llama)")));
        }
        let u = |key: &str| -> Result<usize, Error> {
            let v = g.get_u64(&format!("llama.{key}"))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 20)
                .ok_or_else(|| Error::Model(format!("llama.{key} = {v} is out of range")))
        };
        let (layers, hidden, ffn, heads) = (
            u("block_count")?,
            u("embedding_length")?,
            u("feed_forward_length")?,
            u("attention.head_count")?,
        );
        let kv_heads = match g.metadata.get("llama.attention.head_count_kv") {
            Some(_) => u("attention.head_count_kv")?,
            None => heads,
        };
        if !hidden.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
            return Err(Error::Model(format!(
                "{heads} heads / {kv_heads} KV heads do not divide hidden {hidden}"
            )));
        }
        let head_dim = hidden / heads;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Model(format!("head width {head_dim} is odd")));
        }
        if let Some(v) = g.metadata.get("llama.rope.dimension_count")
            && v.as_u64() != Some(head_dim as u64)
        {
            return Err(Error::Model(format!("partial rotary embedding ({v:?} of {head_dim})")));
        }
        let rope_base = match g.metadata.get("llama.rope.freq_base") {
            Some(_) => g.get_f64("llama.rope.freq_base")?,
            None => 10_000.0,
        };
        let rms_eps = g.get_f64("llama.attention.layer_norm_rms_epsilon")? as f32;
        let vocab = g.tensor_info("token_embd.weight")?.dims.get(1).copied().unwrap_or(0) as usize;
        if vocab == 0 {
            return Err(Error::Model("token_embd.weight is not 2-D".into()));
        }
        Ok(Config { layers, hidden, ffn, heads, kv_heads, head_dim, rope_base, rms_eps, vocab })
    }

    /// Width of the keys (and values) of one token: `kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The seven linear layers of a Llama block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Query, hidden → hidden.
    Q,
    /// Key, hidden → kv_dim.
    K,
    /// Value, hidden → kv_dim.
    V,
    /// Attention output, hidden → hidden.
    O,
    /// SwiGLU gate, hidden → ffn.
    Gate,
    /// SwiGLU up, hidden → ffn.
    Up,
    /// SwiGLU down, ffn → hidden.
    Down,
}

/// Where a linear layer's input comes from: layers that read the same activation share their
/// calibration statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The attention RMSNorm output (q, k, v).
    AttnIn,
    /// The attention context (o).
    AttnCtx,
    /// The FFN RMSNorm output (gate, up).
    FfnIn,
    /// The SwiGLU product (down).
    FfnAct,
}

impl Proj {
    /// All seven, in execution order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// Short name for tables (the GGUF tensor's).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// Which activation it reads.
    pub fn site(self) -> Site {
        match self {
            Proj::Q | Proj::K | Proj::V => Site::AttnIn,
            Proj::O => Site::AttnCtx,
            Proj::Gate | Proj::Up => Site::FfnIn,
            Proj::Down => Site::FfnAct,
        }
    }

    /// (N, K) = (out_features, in_features).
    pub fn shape(self, c: &Config) -> (usize, usize) {
        match self {
            Proj::Q | Proj::O => (c.hidden, c.hidden),
            Proj::K | Proj::V => (c.kv_dim(), c.hidden),
            Proj::Gate | Proj::Up => (c.ffn, c.hidden),
            Proj::Down => (c.hidden, c.ffn),
        }
    }
}

/// One linear layer of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    /// Block index.
    pub layer: usize,
    /// Which projection.
    pub proj: Proj,
}

impl LinearId {
    /// Every linear layer of a model with `layers` blocks, in execution order.
    pub fn all(layers: usize) -> Vec<LinearId> {
        (0..layers).flat_map(|layer| Proj::ALL.map(|proj| LinearId { layer, proj })).collect()
    }
}

impl std::fmt::Display for LinearId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blk.{}.{}", self.layer, self.proj.name())
    }
}

/// A float linear layer without bias (Llama has none): W, N×K row-major.
#[derive(Clone, Debug)]
pub struct FloatLinear {
    /// Weights, N×K row-major.
    pub w: Vec<f32>,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
}

/// The model's weights, dequantized to f32.
#[derive(Clone, Debug)]
pub struct Llama {
    /// Hyper-parameters.
    pub config: Config,
    /// Token embedding, vocab×hidden row-major; also the lm_head (tied).
    embed: Vec<f32>,
    /// A separate lm_head (vocab×hidden) when the file has `output.weight`.
    lm_head: Option<Vec<f32>>,
    attn_norm: Vec<Vec<f32>>,
    ffn_norm: Vec<Vec<f32>>,
    out_norm: Vec<f32>,
    /// Every linear layer.
    pub linears: BTreeMap<LinearId, FloatLinear>,
}

impl Llama {
    /// Dequantizes every tensor of a Llama GGUF file to f32, checking each shape.
    pub fn from_gguf(g: &Gguf) -> Result<Llama, Error> {
        let c = Config::from_gguf(g)?;
        let (h, v) = (c.hidden as u64, c.vocab as u64);
        let embed = g.dequantize_shaped("token_embd.weight", &[h, v])?;
        let lm_head = match g.tensor_info("output.weight") {
            Ok(_) => Some(g.dequantize_shaped("output.weight", &[h, v])?),
            Err(GgufError::MissingTensor(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let norm = |name: String| g.dequantize_shaped(&name, &[h]);
        let attn_norm =
            (0..c.layers).map(|l| norm(format!("blk.{l}.attn_norm.weight"))).collect::<Result<_, _>>()?;
        let ffn_norm =
            (0..c.layers).map(|l| norm(format!("blk.{l}.ffn_norm.weight"))).collect::<Result<_, _>>()?;
        let out_norm = norm("output_norm.weight".into())?;
        // 210 independent tensors: dequantized in parallel.
        let linears = LinearId::all(c.layers)
            .into_par_iter()
            .map(|id| {
                let (n, k) = id.proj.shape(&c);
                let w = g.dequantize_shaped(&format!("{id}.weight"), &[k as u64, n as u64])?;
                Ok((id, FloatLinear { w, n, k }))
            })
            .collect::<Result<BTreeMap<_, _>, GgufError>>()?;
        Ok(Llama { config: c, embed, lm_head, attn_norm, ffn_norm, out_norm, linears })
    }

    /// Whether the lm_head is the token embedding (no `output.weight` in the file).
    pub fn tied_embeddings(&self) -> bool {
        self.lm_head.is_none()
    }
}

/// `y = x · Wᵀ` in f32 (x M×K, W N×K, both row-major; y M×N), on rayon's threads through faer.
pub fn matmul_t(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert_eq!((x.len(), w.len()), (m * k, n * k), "matmul_t shapes");
    let mut y = vec![0.0f32; m * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut y, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(x, m, k),
        MatRef::from_row_major_slice(w, n, k).transpose(),
        1.0,
        Par::rayon(0),
    );
    y
}

/// How the decoder runs its linear layers: `y = x · Wᵀ` for x (M×K row-major), M×N out.
pub trait Linears {
    /// Runs linear layer `id` on `m` tokens.
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>, Error>;
}

/// The reference: every linear layer in f32.
pub struct FloatLinears<'a>(pub &'a Llama);

impl Linears for FloatLinears<'_> {
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>, Error> {
        let l = self.0.linears.get(&id).ok_or_else(|| Error::Model(format!("no weights for {id}")))?;
        Ok(matmul_t(x, m, l.k, &l.w, l.n))
    }
}

/// The quantized layers of a model, as [`w4a8_core::calib::quantize_layer`] returned them.
pub type QuantizedLayers = BTreeMap<LinearId, QuantizedLayer>;

/// One W4A8 layer prepared (repacked, uploaded) on a backend, with what its input needs before the
/// per-token quantization (smoothing, then the online rotation).
pub struct PreparedLinear<G: Gemm> {
    weights: G::Weights,
    k: usize,
    smooth: Option<Vec<f32>>,
    hadamard_block: Option<usize>,
}

impl<G: Gemm> PreparedLinear<G> {
    /// Uploads one quantized layer.
    pub fn new(gemm: &G, q: &QuantizedLayer) -> Result<Self, Error> {
        Ok(PreparedLinear {
            weights: gemm.prepare(&q.weights)?,
            k: q.weights.k(),
            smooth: q.smooth.clone(),
            hadamard_block: q.hadamard_block,
        })
    }
}

/// Applies one quantized linear layer to x (M×K f32): f16 input → per-token int8 quantization on the
/// device (times the layer's smoothing vector, then rotated by its Walsh–Hadamard blocks) → exact int32
/// GEMM with the f16 epilogue → read back.
///
/// The only place a W4A8 layer is applied: a change to how activations are prepared (smoothing,
/// rotation) belongs here and in [`PreparedLinear::new`].
pub fn apply_quantized<G: Gemm>(
    gemm: &G,
    l: &PreparedLinear<G>,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>, Error> {
    let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let t = ActivationTransform { smooth: l.smooth.as_deref(), hadamard_block: l.hadamard_block };
    let xq = gemm.quantize_activations_with(&xh, m, l.k, &t)?;
    let y = gemm.gemm(&xq, &l.weights)?;
    Ok(gemm.read_output(&y)?.into_iter().map(f16::to_f32).collect())
}

/// Every linear layer as a W4A8 GEMM on one [`Gemm`] backend.
pub struct W4A8Linears<G: Gemm> {
    gemm: G,
    layers: BTreeMap<LinearId, PreparedLinear<G>>,
}

impl<G: Gemm> W4A8Linears<G> {
    /// Prepares every quantized layer on `gemm`.
    pub fn new(gemm: G, layers: &QuantizedLayers) -> Result<Self, Error> {
        let layers = layers
            .iter()
            .map(|(id, q)| Ok((*id, PreparedLinear::new(&gemm, q)?)))
            .collect::<Result<_, Error>>()?;
        Ok(W4A8Linears { gemm, layers })
    }
}

impl<G: Gemm> Linears for W4A8Linears<G> {
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>, Error> {
        let l = self.layers.get(&id).ok_or_else(|| Error::Model(format!("no quantized weights for {id}")))?;
        apply_quantized(&self.gemm, l, x, m)
    }
}

/// A quantized layer's weights dequantized to f32 (N×K), with its input multiplier and rotation block.
type DequantizedLinear = (Vec<f32>, Option<Vec<f32>>, Option<usize>);

/// Diagnostics: one half of W4A8 at a time, simulated in f32 on the CPU (not through [`Gemm`]), to
/// tell how much of a configuration's loss comes from the int4 weights and how much from the int8
/// activations.
pub struct SimulatedLinears<'a> {
    model: &'a Llama,
    /// Dequantized int4 weights (of `W·s`) and the input multiplier `1/s`, or `None` for f32 weights.
    weights: Option<BTreeMap<LinearId, DequantizedLinear>>,
    quantize_activations: bool,
}

impl<'a> SimulatedLinears<'a> {
    /// f32 weights, activations quantized per token to int8 and dequantized ("W16A8").
    pub fn int8_activations(model: &'a Llama) -> Self {
        SimulatedLinears { model, weights: None, quantize_activations: true }
    }

    /// The quantized layers' int4 weights dequantized, f32 activations ("W4A16").
    pub fn int4_weights(model: &'a Llama, layers: &QuantizedLayers) -> Self {
        let weights = layers
            .iter()
            .map(|(id, q)| {
                let w: Vec<f32> = q.weights.dequantize_f64().into_iter().map(|v| v as f32).collect();
                (*id, (w, q.smooth.clone(), q.hadamard_block))
            })
            .collect();
        SimulatedLinears { model, weights: Some(weights), quantize_activations: false }
    }
}

impl Linears for SimulatedLinears<'_> {
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>, Error> {
        let l = self.model.linears.get(&id).ok_or_else(|| Error::Model(format!("no weights for {id}")))?;
        let (w, smooth, block) = match &self.weights {
            None => (&l.w, None, None),
            Some(q) => {
                let (w, s, b) =
                    q.get(&id).ok_or_else(|| Error::Model(format!("no quantized weights for {id}")))?;
                (w, s.as_deref(), *b)
            }
        };
        let mut x: Vec<f32> = match smooth {
            Some(s) => x.chunks(l.k).flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b)).collect(),
            None => x.to_vec(),
        };
        // Rotated weights hold W·H/b: the input is rotated by H (unnormalized) to match.
        if let Some(b) = block {
            w4a8_core::transform::fwht_blocks(&mut x, b);
        }
        if self.quantize_activations {
            x = w4a8_core::quantize::quantize_activations(&x, m, l.k, None)?.dequantize();
        }
        Ok(matmul_t(&x, m, l.k, w, l.n))
    }
}

/// Keys and values of the tokens seen so far, per layer (`[position][kv_dim]` row-major).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which rows of logits [`forward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every input position (M×vocab): perplexity.
    All,
    /// The last position only (vocab): decoding.
    Last,
}

/// A hook that sees every linear layer's input `x` (M×K) and `m`.
pub type Observer<'a> = &'a mut dyn FnMut(LinearId, &[f32], usize);

/// `x · w / rms(x)` per row of `hidden`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let hidden = w.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, r) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
        let ms = r.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / hidden as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
            *o = v * inv * g;
        }
    }
    out
}

/// Rotary embedding on consecutive pairs (ggml's "normal" mode, which GGUF Llama files use: the
/// converter permutes HF's q/k rows from half-split to interleaved pairs): for pair i of a head,
/// θ = pos · base^(−2i/d), `(x₂ᵢ, x₂ᵢ₊₁) ← (x₂ᵢ cos θ − x₂ᵢ₊₁ sin θ, x₂ᵢ sin θ + x₂ᵢ₊₁ cos θ)`.
fn rope(x: &mut [f32], width: usize, head_dim: usize, pos0: usize, base: f64) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| base.powf(-2.0 * i as f64 / head_dim as f64)).collect();
    for (t, row) in x.chunks_mut(width).enumerate() {
        let pos = (pos0 + t) as f64;
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|f| {
                let (s, c) = (pos * f).sin_cos();
                (c as f32, s as f32)
            })
            .collect();
        for head in row.chunks_mut(head_dim) {
            for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(&cs) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Runs the decoder on `tokens`, which follow the `cache.len()` tokens already cached (whose keys
/// and values it appends to). Attention is causal. Returns the logits of every new position
/// (M×vocab) or of the last one. `observe` sees every linear layer's input.
pub fn forward<L: Linears + ?Sized>(
    model: &Llama,
    lin: &L,
    tokens: &[u32],
    cache: &mut KvCache,
    logits: Logits,
    observe: Observer<'_>,
) -> Result<Vec<f32>, Error> {
    let c = &model.config;
    let (m, hidden, hd, kv_dim) = (tokens.len(), c.hidden, c.head_dim, c.kv_dim());
    if m == 0 {
        return Err(Error::Model("no tokens to run".into()));
    }
    if cache.k.is_empty() {
        cache.k = vec![Vec::new(); c.layers];
        cache.v = vec![Vec::new(); c.layers];
    }
    let pos0 = cache.len;
    let mut h = Vec::with_capacity(m * hidden);
    for &t in tokens {
        let t = t as usize;
        if t >= c.vocab {
            return Err(Error::Model(format!("token id {t} ≥ vocabulary {}", c.vocab)));
        }
        h.extend_from_slice(&model.embed[t * hidden..(t + 1) * hidden]);
    }
    let mut run = |id: LinearId, x: &[f32]| -> Result<Vec<f32>, Error> {
        observe(id, x, m);
        lin.linear(id, x, m)
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let group = c.heads / c.kv_heads;
    for layer in 0..c.layers {
        let id = |proj| LinearId { layer, proj };
        let x = rms_norm(&h, &model.attn_norm[layer], c.rms_eps);
        let mut q = run(id(Proj::Q), &x)?;
        let mut k = run(id(Proj::K), &x)?;
        let v = run(id(Proj::V), &x)?;
        rope(&mut q, hidden, hd, pos0, c.rope_base);
        rope(&mut k, kv_dim, hd, pos0, c.rope_base);
        cache.k[layer].extend_from_slice(&k);
        cache.v[layer].extend_from_slice(&v);
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let mut ctx = vec![0.0f32; m * hidden];
        ctx.par_chunks_mut(hidden).enumerate().for_each(|(i, out)| {
            // Causal: new token i sits at position pos0 + i and sees positions 0..=pos0 + i.
            let seen = pos0 + i + 1;
            let mut p = vec![0.0f32; seen];
            for head in 0..c.heads {
                let (qo, ko) = (head * hd, (head / group) * hd);
                let qi = &q[i * hidden + qo..i * hidden + qo + hd];
                for (j, pj) in p.iter_mut().enumerate() {
                    let kj = &kc[j * kv_dim + ko..j * kv_dim + ko + hd];
                    *pj = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                let mx = p.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0.0f32;
                for pj in p.iter_mut() {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                let o = &mut out[qo..qo + hd];
                for (j, &pj) in p.iter().enumerate() {
                    let vj = &vc[j * kv_dim + ko..j * kv_dim + ko + hd];
                    o.iter_mut().zip(vj).for_each(|(a, b)| *a += pj * b);
                }
                o.iter_mut().for_each(|a| *a /= sum);
            }
        });
        let attn = run(id(Proj::O), &ctx)?;
        h.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        let x = rms_norm(&h, &model.ffn_norm[layer], c.rms_eps);
        let gate = run(id(Proj::Gate), &x)?;
        let up = run(id(Proj::Up), &x)?;
        let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        let down = run(id(Proj::Down), &act)?;
        h.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    cache.len += m;
    let x = rms_norm(&h, &model.out_norm, c.rms_eps);
    let head = model.lm_head.as_deref().unwrap_or(&model.embed);
    Ok(match logits {
        Logits::All => matmul_t(&x, m, hidden, head, c.vocab),
        Logits::Last => matmul_t(&x[(m - 1) * hidden..], 1, hidden, head, c.vocab),
    })
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
        .0
}

/// `−log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = logits.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln() + mx;
    lse - logits[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_consecutive_pairs() {
        // Position 1, head width 4, base 100: pair 0 turns by 1 rad, pair 1 by 1/10 rad.
        let mut x = vec![1.0f32, 0.0, 0.0, 1.0];
        rope(&mut x, 4, 4, 1, 100.0);
        let want = [1f32.cos(), 1f32.sin(), -(0.1f32).sin(), 0.1f32.cos()];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
        // Position 0 is the identity.
        let mut y = vec![0.3f32, -0.7, 2.0, 5.0];
        rope(&mut y, 4, 4, 0, 100.0);
        assert_eq!(y, [0.3, -0.7, 2.0, 5.0]);
    }

    #[test]
    fn rms_norm_and_matmul() {
        let x = [3.0f32, 4.0];
        let y = rms_norm(&x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
        // [1 2; 3 4] · [1 0; 1 1 ; 0 1]ᵀ.
        let y = matmul_t(&[1.0, 2.0, 3.0, 4.0], 2, 2, &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0], 3);
        assert_eq!(y, [1.0, 3.0, 2.0, 3.0, 7.0, 4.0]);
    }

    #[test]
    fn nll_of_uniform_is_log_vocab() {
        assert!((nll(&[0.5; 8], 3) - 8f64.ln()).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }
}
