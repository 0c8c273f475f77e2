//! SmolLM2-135M-Instruct, a Llama decoder read from its GGUF file, with every linear layer either f32
//! (the reference) or a W4A8 GEMM through the [`w4a8_core::Gemm`] trait; greedy generation and the
//! perplexity table of benches/QUALITY.md.
//!
//! - [`gguf`]: the GGUF v3 reader (metadata, tensor infos, Q4_1 / Q8_0 / F32 dequantization), typed
//!   errors for bad files.
//! - [`tokenizer`]: the byte-level BPE tokenizer from the file's metadata.
//! - [`model`]: the forward pass (batched with causal attention, or token by token with a KV cache).
//! - [`eval`]: calibration, quantization of all 210 layers, perplexity, the markdown table.

#![warn(missing_docs)]

pub mod eval;
pub mod gguf;
pub mod model;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use w4a8_core::calib::{Method, Smoothing};

/// Everything that can go wrong in this example.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GGUF file is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// The tokenizer metadata is unusable.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// A quantizer or backend error.
    #[error(transparent)]
    W4a8(#[from] w4a8_core::Error),
    /// The model's hyper-parameters or inputs do not fit.
    #[error("model: {0}")]
    Model(String),
    /// A text or output file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// File name of the model inside `.cache/smollm2` (scripts/fetch-smollm2.sh).
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `<repo>/.cache/smollm2`, where scripts/fetch-smollm2.sh puts the model and the texts.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/smollm2")
}

/// A weight quantization recipe of the table: quantizer and smoothing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recipe {
    /// Round to nearest.
    Rtn,
    /// GPTQ.
    Gptq,
    /// GPTQ after QQQ's adaptive smoothing.
    GptqAdaptive,
    /// GPTQ after FPTQ's log equalization.
    GptqLog,
}

impl Recipe {
    /// All four, in table order.
    pub const ALL: [Recipe; 4] = [Recipe::Rtn, Recipe::Gptq, Recipe::GptqAdaptive, Recipe::GptqLog];

    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Recipe::Rtn => "RTN",
            Recipe::Gptq => "GPTQ",
            Recipe::GptqAdaptive => "GPTQ + adaptive smoothing",
            Recipe::GptqLog => "GPTQ + log equalization",
        }
    }

    /// The quantizer and smoothing rule.
    pub fn parts(self) -> (Method, Smoothing) {
        match self {
            Recipe::Rtn => (Method::Rtn, Smoothing::None),
            Recipe::Gptq => (Method::Gptq, Smoothing::None),
            Recipe::GptqAdaptive => (Method::Gptq, Smoothing::Adaptive),
            Recipe::GptqLog => (Method::Gptq, Smoothing::Log),
        }
    }
}

/// Reads a text file.
pub fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}
