//! Writes the seed corpora of the fuzz targets: real files written by the project's own writers
//! (`io::layers_to_bytes`, `io::float_tensors_to_bytes`; F16/BF16 model files through the same
//! safetensors serializer), plus truncations and bit flips of each.
//!
//! `cargo run -p w4a8-core --example fuzz_seeds -- fuzz/corpus` writes
//! `fuzz/corpus/{weight_file,model_file,calibration_file}/seed-*`; libFuzzer adds to those folders.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, tensor::TensorView};
use w4a8_core::io::{FloatTensor, Layer, float_tensors_to_bytes, layers_to_bytes};
use w4a8_core::quantize::quantize_weights_rtn;
use w4a8_core::rng::SplitMix64;
use w4a8_core::{Granularity, Result};

fn gran(group: usize) -> Granularity {
    if group == 0 { Granularity::PerChannel } else { Granularity::PerGroup { group_size: group } }
}

/// A quantized layer N×K of random weights (some rows 10× larger), optionally with bias/smoothing.
fn layer(rng: &mut SplitMix64, n: usize, k: usize, group: usize, bias: bool, smooth: bool) -> Result<Layer> {
    let w: Vec<f32> =
        (0..n * k).map(|i| rng.normal() * if (i / k).is_multiple_of(3) { 1.0 } else { 0.1 }).collect();
    let b = bias.then(|| (0..n).map(|_| rng.normal()).collect());
    let weights = quantize_weights_rtn(&w, n, k, gran(group), b)?;
    let s = smooth.then(|| (0..k).map(|_| 0.25 + rng.unit() * 4.0).collect());
    Layer::new(weights, s)
}

/// One layer of a seed file: name, N, K, group size (0: per channel), bias, smoothing.
type LayerSpec = (&'static str, usize, usize, usize, bool, bool);

fn weight_files(rng: &mut SplitMix64) -> Result<Vec<Vec<u8>>> {
    let specs: [&[LayerSpec]; 6] = [
        &[("l", 4, 64, 32, true, false)],
        &[("proj.weight", 3, 13, 0, false, false)], // K % 8 ≠ 0: padding nibbles
        &[("a", 2, 256, 256, false, true), ("b", 5, 128, 128, true, true)],
        &[("x", 1, 64, 64, false, false)],
        &[("q", 8, 96, 32, true, true), ("k", 8, 96, 0, true, false), ("v", 1, 8, 0, false, true)],
        &[("model.layers.0.mlp.down_proj.weight", 6, 128, 64, false, false)],
    ];
    specs
        .iter()
        .map(|spec| {
            let layers = spec
                .iter()
                .map(|&(name, n, k, g, b, s)| Ok((name.to_string(), layer(rng, n, k, g, b, s)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            layers_to_bytes(&layers)
        })
        .collect()
}

fn tensor(rng: &mut SplitMix64, shape: &[usize], scale: f32) -> FloatTensor {
    let len = shape.iter().product();
    FloatTensor { shape: shape.to_vec(), data: (0..len).map(|_| rng.normal() * scale).collect() }
}

/// The same tensors stored as F16 or BF16 (the reader converts both to f32).
fn half_file(tensors: &BTreeMap<String, FloatTensor>, dtype: Dtype) -> Vec<u8> {
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes = t
                .data
                .iter()
                .flat_map(|&v| match dtype {
                    Dtype::F16 => f16::from_f32(v).to_le_bytes(),
                    _ => bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            (name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = blobs
        .iter()
        .map(|(n, s, d)| (n.clone(), TensorView::new(dtype, s.clone(), d).expect("consistent view")))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).expect("serializable")
}

fn model_files(rng: &mut SplitMix64) -> Result<Vec<Vec<u8>>> {
    let model = BTreeMap::from([
        ("l0.weight".to_string(), tensor(rng, &[12, 32], 0.05)),
        ("l0.bias".to_string(), tensor(rng, &[12], 0.1)),
        ("norm.weight".to_string(), tensor(rng, &[32], 1.0)),
        ("emb".to_string(), tensor(rng, &[3, 4, 5], 1.0)),
    ]);
    let single = BTreeMap::from([("w".to_string(), tensor(rng, &[4, 8], 1.0))]);
    Ok(vec![
        float_tensors_to_bytes(&model)?,
        float_tensors_to_bytes(&single)?,
        half_file(&model, Dtype::F16),
        half_file(&single, Dtype::BF16),
    ])
}

fn calibration_files(rng: &mut SplitMix64) -> Result<Vec<Vec<u8>>> {
    // Inputs of the fixed model of fuzz_targets/calibration_file.rs: l0 (K 256), l1 (K 128),
    // attn.q (K 64), under both accepted names (NAME.input and NAME).
    let mut x0 = tensor(rng, &[3, 256], 1.0);
    x0.data.iter_mut().skip(5).step_by(256).for_each(|v| *v *= 40.0); // an outlier channel
    let a = BTreeMap::from([
        ("l0.input".to_string(), x0),
        ("l1".to_string(), tensor(rng, &[4, 128], 1.0)),
        ("attn.q.input".to_string(), tensor(rng, &[2, 64], 2.0)),
    ]);
    let b = BTreeMap::from([("attn.q".to_string(), tensor(rng, &[5, 64], 0.5))]);
    Ok(vec![float_tensors_to_bytes(&a)?, float_tensors_to_bytes(&b)?])
}

/// Each file, plus truncations at the header boundaries and in the data, plus bit flips spread over
/// the header and the data.
fn variants(rng: &mut SplitMix64, files: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        out.push(f.clone());
        let header_end = 8 + u64::from_le_bytes(f[..8].try_into().expect("8 bytes")) as usize;
        for cut in
            [0, 7, 8, header_end / 2, header_end - 1, header_end, (header_end + f.len()) / 2, f.len() - 1]
        {
            out.push(f[..cut.min(f.len())].to_vec());
        }
        for _ in 0..6 {
            let mut g = f.clone();
            let at = rng.int(0, f.len() as i64 - 1) as usize;
            g[at] ^= 1 << rng.int(0, 7);
            out.push(g);
        }
    }
    out
}

fn write_corpus(dir: &Path, files: Vec<Vec<u8>>) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), f)?;
    }
    Ok(files.len())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let mut rng = SplitMix64::new(0xF0CC);
    let sets = [
        ("weight_file", weight_files(&mut rng)?),
        ("model_file", model_files(&mut rng)?),
        ("calibration_file", calibration_files(&mut rng)?),
    ];
    for (target, files) in sets {
        let largest = files.iter().map(Vec::len).max().unwrap_or(0);
        let count = write_corpus(&root.join(target), variants(&mut rng, &files))?;
        println!("{target}: {count} seeds ({} files, largest {largest} bytes)", files.len());
    }
    Ok(())
}
