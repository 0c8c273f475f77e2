//! `w4a8-minilm`: all-MiniLM-L6-v2 sentence embeddings with every linear layer through the W4A8 `Gemm`
//! trait, and the quantizer quality table (benches/QUALITY.md).
//!
//! ```text
//! scripts/fetch-minilm.sh                                   # model into .cache/minilm (not committed)
//! cargo run --release -p w4a8-minilm -- embed "A sentence." "Another one."
//! cargo run --release -p w4a8-minilm -- eval --out benches/QUALITY.md
//! ```

#![warn(missing_docs)]

mod eval;
mod model;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use tokenizers::Tokenizer;
use w4a8::Backend;
use w4a8_core::Granularity;
use w4a8_core::calib::{GptqConfig, Method, QuantizeConfig, Smoothing};

/// Sentences the quantizers are calibrated on (one per line).
pub const CALIB_SENTENCES: &str = include_str!("../data/calib.txt");
/// Held-out sentences the quality is measured on (one per line, none shared with the calibration set).
pub const EVAL_SENTENCES: &str = include_str!("../data/eval.txt");

#[derive(Parser)]
#[command(name = "w4a8-minilm", about = "all-MiniLM-L6-v2 with W4A8 linear layers")]
struct Cli {
    /// Folder with model.safetensors and tokenizer.json (scripts/fetch-minilm.sh puts them in .cache/minilm).
    #[arg(long, global = true, env = "W4A8_MINILM_DIR")]
    model_dir: Option<PathBuf>,
    /// Where the W4A8 layers run: auto (best found), cpu, wgpu or cuda.
    #[arg(long, global = true, default_value = "auto", env = "W4A8_BACKEND")]
    backend: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    Rtn,
    Gptq,
}

#[derive(Clone, Copy, ValueEnum)]
enum SmoothArg {
    None,
    Adaptive,
    Log,
    /// OmniQuant's scales and clipping, learned per layer (feature `learn`).
    Omniquant,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the W4A8 embedding of each text and its cosine similarity to the FP32 embedding.
    Embed {
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Weight quantizer.
        #[arg(long, value_enum, default_value = "gptq")]
        method: MethodArg,
        /// Smoothing rule.
        #[arg(long, value_enum, default_value = "adaptive")]
        smooth: SmoothArg,
        /// Search clipping ratios on the layer output error.
        #[arg(long)]
        clip: bool,
        /// Group size (32, 64, 128, 256), or 0 for per-channel scales.
        #[arg(long, default_value_t = 128)]
        group: usize,
        /// Rotate every layer's input online by Walsh–Hadamard blocks of B (a power of two; a layer
        /// whose K it does not divide takes the largest power of two that does), folded into the
        /// weights after smoothing.
        #[arg(long, value_name = "B")]
        rotate: Option<usize>,
        /// Print the FP32 embeddings instead (no quantization).
        #[arg(long)]
        fp32: bool,
    },
    /// Calibrates every method, measures it on the held-out sentences and prints the quality table.
    Eval {
        /// Also write the tables into this markdown file (e.g. benches/QUALITY.md), between
        /// `<!-- minilm:begin/end -->`; the rest of the file is kept.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Skip the 4096×4096 GPTQ timing.
        #[arg(long)]
        no_timing: bool,
        /// Also score every configuration with its layers rotated by Walsh–Hadamard blocks of B
        /// (0: unrotated only).
        #[arg(long, value_name = "B", default_value_t = 128)]
        rotate: usize,
    },
}

fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/minilm")
}

/// Loads tokenizer.json with padding off (the checkpoint's file pads to 128; we run one sentence at a time).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, String> {
    let path = dir.join("tokenizer.json");
    let mut tok = Tokenizer::from_file(&path)
        .map_err(|e| format!("{}: {e} (run scripts/fetch-minilm.sh)", path.display()))?;
    tok.with_padding(None);
    Ok(tok)
}

/// Token ids of each text (`[CLS]` … `[SEP]`, truncated to 128 as the checkpoint's tokenizer says).
pub fn tokenize(tok: &Tokenizer, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
    texts
        .iter()
        .map(|t| tok.encode(*t, true).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string()))
        .collect()
}

fn granularity(group: usize) -> Result<Granularity, String> {
    let g = if group == 0 { Granularity::PerChannel } else { Granularity::PerGroup { group_size: group } };
    g.validate(384).map_err(|e| e.to_string())?;
    Ok(g)
}

/// A rotation block must be a power of two from 2 to the format's largest (4096).
fn check_rotate(b: usize) -> Result<(), String> {
    w4a8_core::transform::check_hadamard_block(b, b).map_err(|e| format!("--rotate {b}: {e}"))
}

fn run() -> Result<(), String> {
    let cli = Cli::parse();
    let dir = cli.model_dir.unwrap_or_else(default_model_dir);
    let model_path = dir.join("model.safetensors");
    let load = || -> Result<(model::Bert, Tokenizer), String> {
        let bert = model::Bert::load(&model_path)
            .map_err(|e| format!("{}: {e} (run scripts/fetch-minilm.sh)", model_path.display()))?;
        Ok((bert, load_tokenizer(&dir)?))
    };
    match cli.command {
        Command::Embed { texts, method, smooth, clip, group, rotate, fp32 } => {
            if let Some(b) = rotate {
                check_rotate(b)?;
            }
            let (bert, tok) = load()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = tokenize(&tok, &refs)?;
            let float = model::FloatLinears(&bert.linears);
            let fp: Vec<Vec<f32>> = ids
                .iter()
                .map(|s| model::embed(&bert, &float, s, &mut |_, _, _| {}))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let embeddings = if fp32 {
                fp.clone()
            } else {
                let cfg = QuantizeConfig {
                    granularity: granularity(group)?,
                    method: match method {
                        MethodArg::Rtn => Method::Rtn,
                        MethodArg::Gptq => Method::Gptq,
                    },
                    smoothing: match smooth {
                        SmoothArg::None => Smoothing::None,
                        SmoothArg::Adaptive => Smoothing::Adaptive,
                        SmoothArg::Log => Smoothing::Log,
                        SmoothArg::Omniquant => Smoothing::OmniQuant,
                    },
                    clip,
                    gptq: GptqConfig::default(),
                };
                let calib = eval::calibrate(&bert, &tok)?;
                let (layers, _) =
                    eval::quantize_model(&bert, &calib, &cfg, rotate).map_err(|e| e.to_string())?;
                let backend = Backend::open_named(&cli.backend).map_err(|e| e.to_string())?;
                eprintln!("W4A8 layers on {} ({})", backend.kind(), w4a8::Gemm::info(&backend).name);
                let lin = model::W4A8Linears::new(backend, &layers).map_err(|e| e.to_string())?;
                ids.iter()
                    .map(|s| model::embed(&bert, &lin, s, &mut |_, _, _| {}))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?
            };
            for ((text, e), f) in texts.iter().zip(&embeddings).zip(&fp) {
                println!("# {text}");
                if !fp32 {
                    println!("# cosine to FP32: {:.6}", model::cosine(e, f));
                }
                let values: Vec<String> = e.iter().map(|v| format!("{v:.6}")).collect();
                println!("[{}]", values.join(", "));
            }
        }
        Command::Eval { out, no_timing, rotate } => {
            let rotate = (rotate != 0).then_some(rotate);
            if let Some(b) = rotate {
                check_rotate(b)?;
            }
            let (bert, tok) = load()?;
            let md = eval::run_eval(&bert, &tok, &cli.backend, !no_timing, rotate)?;
            if let Some(path) = out {
                w4a8_core::report::write_section(&path, "minilm", &md).map_err(|e| e.to_string())?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
