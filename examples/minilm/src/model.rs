//! The all-MiniLM-L6-v2 encoder (BERT: 6 layers, hidden 384, 12 heads, GELU, post-LayerNorm) with
//! mean pooling and L2 normalization. Every linear layer goes through a [`Linears`] implementation:
//! f32 on the CPU ([`FloatLinears`]) or W4A8 through any [`Gemm`] backend ([`W4A8Linears`]); the rest
//! (embeddings, attention softmax, LayerNorm, GELU, pooling) is f32 on the CPU.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use w4a8_core::io::load_float_tensors;
use w4a8_core::{ActivationTransform, Error, Gemm, Result, W4A8Weights, f16};

/// Encoder layers.
pub const LAYERS: usize = 6;
/// Hidden width.
pub const HIDDEN: usize = 384;
/// Attention heads.
pub const HEADS: usize = 12;
/// Width of one head.
pub const HEAD_DIM: usize = HIDDEN / HEADS;
/// Feed-forward width.
pub const INTERMEDIATE: usize = 1536;
/// LayerNorm epsilon of the checkpoint's config.
const LN_EPS: f32 = 1e-12;

/// The six linear layers of a BERT block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Attention query, 384 → 384.
    Query,
    /// Attention key, 384 → 384.
    Key,
    /// Attention value, 384 → 384.
    Value,
    /// Attention output projection, 384 → 384.
    AttnOut,
    /// Feed-forward up projection, 384 → 1536.
    Intermediate,
    /// Feed-forward down projection, 1536 → 384.
    Output,
}

impl Proj {
    /// All six, in execution order.
    pub const ALL: [Proj; 6] =
        [Proj::Query, Proj::Key, Proj::Value, Proj::AttnOut, Proj::Intermediate, Proj::Output];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Query => "q",
            Proj::Key => "k",
            Proj::Value => "v",
            Proj::AttnOut => "attn-out",
            Proj::Intermediate => "fc1",
            Proj::Output => "fc2",
        }
    }

    fn tensor_prefix(self, layer: usize) -> String {
        let p = match self {
            Proj::Query => "attention.self.query",
            Proj::Key => "attention.self.key",
            Proj::Value => "attention.self.value",
            Proj::AttnOut => "attention.output.dense",
            Proj::Intermediate => "intermediate.dense",
            Proj::Output => "output.dense",
        };
        format!("encoder.layer.{layer}.{p}")
    }

    /// (N, K) = (out_features, in_features).
    pub fn shape(self) -> (usize, usize) {
        match self {
            Proj::Intermediate => (INTERMEDIATE, HIDDEN),
            Proj::Output => (HIDDEN, INTERMEDIATE),
            _ => (HIDDEN, HIDDEN),
        }
    }
}

/// One linear layer of the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    /// Block index, 0..6.
    pub layer: usize,
    /// Which projection.
    pub proj: Proj,
}

impl LinearId {
    /// Every linear layer of the model, in execution order.
    pub fn all() -> Vec<LinearId> {
        (0..LAYERS).flat_map(|layer| Proj::ALL.map(|proj| LinearId { layer, proj })).collect()
    }
}

impl std::fmt::Display for LinearId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L{}.{}", self.layer, self.proj.name())
    }
}

/// A float linear layer: W (N×K row-major) and bias (N).
#[derive(Clone, Debug)]
pub struct FloatLinear {
    /// Weights, N×K row-major.
    pub w: Vec<f32>,
    /// Bias, length N.
    pub b: Vec<f32>,
}

#[derive(Clone, Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// The checkpoint's float weights.
#[derive(Clone, Debug)]
pub struct Bert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_norm: Norm,
    attn_norms: Vec<Norm>,
    out_norms: Vec<Norm>,
    /// Every linear layer's float weights.
    pub linears: BTreeMap<LinearId, FloatLinear>,
}

impl Bert {
    /// Loads `model.safetensors` of all-MiniLM-L6-v2 (f32, f16 or bf16), checking every shape.
    pub fn load(path: &Path) -> Result<Bert> {
        let mut t = load_float_tensors(path)?;
        // The vocabulary size is whatever the word-embedding table holds.
        let vocab = match t.get("embeddings.word_embeddings.weight") {
            Some(ft) if ft.shape.len() == 2 && ft.shape[0] > 0 => ft.shape[0],
            _ => return Err(Error::Format("embeddings.word_embeddings.weight missing or not 2-D".into())),
        };
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let ft = t.remove(name).ok_or_else(|| Error::Format(format!("missing tensor {name}")))?;
            if ft.shape != shape {
                return Err(Error::Format(format!("{name} has shape {:?}, expected {shape:?}", ft.shape)));
            }
            Ok(ft.data)
        };
        let word = take("embeddings.word_embeddings.weight", &[vocab, HIDDEN])?;
        let position = take("embeddings.position_embeddings.weight", &[512, HIDDEN])?;
        let token_type0 = take("embeddings.token_type_embeddings.weight", &[2, HIDDEN])?[..HIDDEN].to_vec();
        let mut norm = |prefix: &str| -> Result<Norm> {
            Ok(Norm {
                gamma: take(&format!("{prefix}.LayerNorm.weight"), &[HIDDEN])?,
                beta: take(&format!("{prefix}.LayerNorm.bias"), &[HIDDEN])?,
            })
        };
        let emb_norm = norm("embeddings")?;
        let attn_norms = (0..LAYERS)
            .map(|l| norm(&format!("encoder.layer.{l}.attention.output")))
            .collect::<Result<_>>()?;
        let out_norms =
            (0..LAYERS).map(|l| norm(&format!("encoder.layer.{l}.output"))).collect::<Result<_>>()?;
        let mut linears = BTreeMap::new();
        for id in LinearId::all() {
            let (n, k) = id.proj.shape();
            let prefix = id.proj.tensor_prefix(id.layer);
            let w = take(&format!("{prefix}.weight"), &[n, k])?;
            let b = take(&format!("{prefix}.bias"), &[n])?;
            linears.insert(id, FloatLinear { w, b });
        }
        Ok(Bert { word, position, token_type0, emb_norm, attn_norms, out_norms, linears })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.word.len() / HIDDEN
    }
}

/// The quantized layers of a model: weights (bias included), each layer's smoothing multiplier, and
/// the block of its online Walsh–Hadamard rotation (`None`: unrotated).
pub type QuantizedLayers = BTreeMap<LinearId, (W4A8Weights, Option<Vec<f32>>, Option<usize>)>;

/// A hook that sees every linear layer's input `x` (M×K) and output `y` (M×N).
pub type Observer<'a> = &'a mut dyn FnMut(LinearId, &[f32], &[f32]);

/// How the encoder runs its linear layers: `y = x · Wᵀ + b` for x (M×K row-major), M×N out.
pub trait Linears {
    /// Runs linear layer `id` on `m` tokens.
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>>;
}

/// The float model's linear layers (f32 on the CPU, multi-threaded).
pub struct FloatLinears<'a>(pub &'a BTreeMap<LinearId, FloatLinear>);

impl Linears for FloatLinears<'_> {
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = id.proj.shape();
        let l = &self.0[&id];
        Ok(matmul_bias(x, m, k, &l.w, &l.b, n))
    }
}

/// `x · Wᵀ + b` in f32, rows in parallel.
pub fn matmul_bias(x: &[f32], m: usize, k: usize, w: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    debug_assert_eq!((x.len(), w.len(), b.len()), (m * k, n * k, n));
    x.par_chunks(k)
        .flat_map_iter(|xr| {
            w.chunks(k)
                .zip(b)
                .map(move |(wr, &bias)| xr.iter().zip(wr).map(|(a, c)| a * c).sum::<f32>() + bias)
        })
        .collect()
}

/// A W4A8 layer prepared on a backend, with its activation smoothing multiplier and rotation block.
pub struct PreparedLinear<G: Gemm> {
    weights: G::Weights,
    smooth: Option<Vec<f32>>,
    hadamard_block: Option<usize>,
}

/// The encoder's linear layers as W4A8 GEMMs on any [`Gemm`] backend: each call quantizes the f16 input
/// per token on the device (times the layer's smoothing vector, then rotated when the layer is) and
/// runs the int8 GEMM with the fused epilogue (bias included).
pub struct W4A8Linears<G: Gemm> {
    gemm: G,
    layers: BTreeMap<LinearId, PreparedLinear<G>>,
}

impl<G: Gemm> W4A8Linears<G> {
    /// Prepares (repacks and uploads) every quantized layer on `gemm`.
    pub fn new(gemm: G, layers: &QuantizedLayers) -> Result<Self> {
        let mut prepared = BTreeMap::new();
        for (id, (w, smooth, hadamard_block)) in layers {
            let weights = gemm.prepare(w)?;
            prepared.insert(
                *id,
                PreparedLinear { weights, smooth: smooth.clone(), hadamard_block: *hadamard_block },
            );
        }
        Ok(W4A8Linears { gemm, layers: prepared })
    }
}

impl<G: Gemm> Linears for W4A8Linears<G> {
    fn linear(&self, id: LinearId, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let l =
            self.layers.get(&id).ok_or_else(|| Error::Format(format!("no quantized weights for {id}")))?;
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let t = ActivationTransform { smooth: l.smooth.as_deref(), hadamard_block: l.hadamard_block };
        let y = self.gemm.linear_with(&xh, m, &l.weights, &t)?;
        Ok(y.into_iter().map(f16::to_f32).collect())
    }
}

fn layer_norm(x: &mut [f32], norm: &Norm) {
    for row in x.chunks_mut(HIDDEN) {
        let mean = row.iter().sum::<f32>() / HIDDEN as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / HIDDEN as f32;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// erf(x) to about 1e-7 absolute (Abramowitz & Stegun 7.1.26 is 1.5e-7; this is its f64 evaluation).
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    (if x < 0.0 { -y } else { y }) as f32
}

/// BERT's exact GELU, `x · Φ(x) = x/2 · (1 + erf(x / √2))`.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Runs the encoder on one tokenized sentence (no padding) and returns the L2-normalized mean-pooled
/// embedding (384). `observe(id, x, y)` sees every linear layer's input and output.
pub fn embed<L: Linears>(bert: &Bert, lin: &L, ids: &[u32], observe: Observer<'_>) -> Result<Vec<f32>> {
    let m = ids.len();
    if m == 0 || m > 512 {
        return Err(Error::EmptyDimension { what: "tokens (1..=512)" });
    }
    let vocab = bert.vocab();
    let mut h = Vec::with_capacity(m * HIDDEN);
    for (pos, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= vocab {
            return Err(Error::InvalidValue {
                what: "token id",
                index: pos,
                reason: format!("{id} ≥ vocabulary {vocab}"),
            });
        }
        for j in 0..HIDDEN {
            h.push(bert.word[id * HIDDEN + j] + bert.position[pos * HIDDEN + j] + bert.token_type0[j]);
        }
    }
    layer_norm(&mut h, &bert.emb_norm);
    let mut run = |id: LinearId, x: &[f32]| -> Result<Vec<f32>> {
        let y = lin.linear(id, x, m)?;
        observe(id, x, &y);
        Ok(y)
    };
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    for layer in 0..LAYERS {
        let id = |proj| LinearId { layer, proj };
        let q = run(id(Proj::Query), &h)?;
        let k = run(id(Proj::Key), &h)?;
        let v = run(id(Proj::Value), &h)?;
        let mut ctx = vec![0.0f32; m * HIDDEN];
        ctx.par_chunks_mut(HIDDEN).enumerate().for_each(|(i, out)| {
            let mut p = vec![0.0f32; m];
            for head in 0..HEADS {
                let o = head * HEAD_DIM;
                let qi = &q[i * HIDDEN + o..i * HIDDEN + o + HEAD_DIM];
                for (j, pj) in p.iter_mut().enumerate() {
                    let kj = &k[j * HIDDEN + o..j * HIDDEN + o + HEAD_DIM];
                    *pj = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                let mx = p.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                for d in 0..HEAD_DIM {
                    out[o + d] = (0..m).map(|j| p[j] * v[j * HIDDEN + o + d]).sum::<f32>() / sum;
                }
            }
        });
        let attn = run(id(Proj::AttnOut), &ctx)?;
        h.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        layer_norm(&mut h, &bert.attn_norms[layer]);
        let mut inter = run(id(Proj::Intermediate), &h)?;
        inter.iter_mut().for_each(|v| *v = gelu(*v));
        let out = run(id(Proj::Output), &inter)?;
        h.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        layer_norm(&mut h, &bert.out_norms[layer]);
    }
    let mut pooled = vec![0.0f32; HIDDEN];
    for row in h.chunks(HIDDEN) {
        pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v / m as f32);
    }
    let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    pooled.iter_mut().for_each(|v| *v /= norm);
    Ok(pooled)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_match_known_values() {
        // erf(0.5) = 0.5204998778, erf(1) = 0.8427007929, erf(-2) = -0.9953222650.
        for (x, want) in [(0.5f32, 0.520_499_9f32), (1.0, 0.842_700_8), (-2.0, -0.995_322_3), (0.0, 0.0)] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
        // GELU(1) = 0.8413447, GELU(-1) = -0.1586553.
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_normalizes() {
        let norm = Norm { gamma: vec![1.0; HIDDEN], beta: vec![0.0; HIDDEN] };
        let mut x: Vec<f32> = (0..2 * HIDDEN).map(|i| (i % 17) as f32 * 0.3 - 1.0).collect();
        layer_norm(&mut x, &norm);
        for row in x.chunks(HIDDEN) {
            let mean = row.iter().sum::<f32>() / HIDDEN as f32;
            let var = row.iter().map(|v| v * v).sum::<f32>() / HIDDEN as f32;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3);
        }
    }
}
