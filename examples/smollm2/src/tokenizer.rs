//! The tokenizer built from the GGUF metadata: GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`)
//! from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`.
//!
//! SmolLM2's pre-tokenizer (`tokenizer.ggml.pre = smollm`, the StarCoder one) splits every digit on
//! its own, then applies GPT-2's regex: in `tokenizers` terms a `Digits(individual_digits)` step
//! followed by `ByteLevel(add_prefix_space = false, use_regex = true)`. Control and user-defined
//! tokens (`<|im_start|>`, `<|endoftext|>`, …) are added as special tokens so that they are matched
//! whole in text.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::{Gguf, GgufError, Value};

/// ggml token types (llama.cpp's `llama_token_type`) that are matched whole, never split by BPE.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// Why the tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or of the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The metadata describes something else than GPT-2 BPE, or is inconsistent.
    #[error("tokenizer metadata: {0}")]
    Unsupported(String),
    /// The `tokenizers` crate refused the vocabulary or merges.
    #[error("tokenizer: {0}")]
    Build(String),
}

/// Builds the byte-level BPE tokenizer described by the GGUF metadata.
pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(format!("model {model:?} (only gpt2 byte-level BPE)")));
    }
    let tokens = g.get_strings("tokenizer.ggml.tokens")?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    if vocab.len() != tokens.len() {
        return Err(TokenizerError::Unsupported("duplicate strings in tokenizer.ggml.tokens".into()));
    }
    let merges = g
        .get_strings("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // Byte-level tokens hold no raw space (it is mapped to `Ġ`), so the one space separates the pair.
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Unsupported(format!("merge {i} {m:?} is not a pair")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    let pre: Vec<tokenizers::PreTokenizerWrapper> =
        vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()];
    tok.with_pre_tokenizer(Some(Sequence::new(pre)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = match g.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t.as_u64(), Some(CONTROL | USER_DEFINED)))
            .map(|(_, s)| AddedToken::from(s.to_string(), true))
            .collect(),
        Some(_) => {
            return Err(GgufError::WrongType {
                key: "tokenizer.ggml.token_type".into(),
                expected: "an array of integers",
            }
            .into());
        }
        None => Vec::new(),
    };
    tok.add_special_tokens(&special);
    Ok(tok)
}

/// Token ids of `text` (no BOS: `tokenizer.ggml.add_bos_token` is false for SmolLM2).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, TokenizerError> {
    tok.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| TokenizerError::Build(e.to_string()))
}

/// The text of `ids`, special tokens included.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    tok.decode(ids, false).map_err(|e| TokenizerError::Build(e.to_string()))
}
