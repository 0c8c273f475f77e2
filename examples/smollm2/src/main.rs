//! `w4a8-smollm2`: SmolLM2-135M-Instruct from its GGUF file, with every linear layer f32 (reference)
//! or W4A8 through the `Gemm` trait; greedy generation and the perplexity table.
//!
//! ```text
//! scripts/fetch-smollm2.sh                  # model and texts into .cache/smollm2 (not committed)
//! cargo run --release -p w4a8-smollm2 -- generate --prompt "The capital of France is"
//! cargo run --release -p w4a8-smollm2 -- generate --prompt "..." --method gptq-adaptive --group 64
//! cargo run --release -p w4a8-smollm2 -- eval --out benches/QUALITY.md
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use tokenizers::Tokenizer;
use w4a8_core::calib::GptqConfig;
use w4a8_core::transform::block_for_width;
use w4a8_core::{Gemm, Granularity};
use w4a8_smollm2::eval::{self, EvalSettings};
use w4a8_smollm2::gguf::Gguf;
use w4a8_smollm2::model::{FloatLinears, Linears, Llama, W4A8Linears};
use w4a8_smollm2::{Error, MODEL_FILE, Recipe, default_dir, read_text, tokenizer};

#[derive(Parser)]
#[command(name = "w4a8-smollm2", about = "SmolLM2-135M-Instruct with W4A8 linear layers")]
struct Cli {
    /// The GGUF file (scripts/fetch-smollm2.sh puts it in .cache/smollm2).
    #[arg(long, global = true, env = "W4A8_SMOLLM2_MODEL")]
    model: Option<PathBuf>,
    /// Folder with calib.txt and eval.txt (default: the model's folder).
    #[arg(long, global = true)]
    text_dir: Option<PathBuf>,
    /// Where the W4A8 layers run: auto (best found), cpu, wgpu or cuda.
    #[arg(long, global = true, default_value = "auto", env = "W4A8_BACKEND")]
    backend: String,
    #[command(subcommand)]
    command: Command,
}

/// A weight quantization recipe on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RecipeArg {
    Rtn,
    Gptq,
    GptqAdaptive,
    GptqLog,
}

impl From<RecipeArg> for Recipe {
    fn from(r: RecipeArg) -> Recipe {
        match r {
            RecipeArg::Rtn => Recipe::Rtn,
            RecipeArg::Gptq => Recipe::Gptq,
            RecipeArg::GptqAdaptive => Recipe::GptqAdaptive,
            RecipeArg::GptqLog => Recipe::GptqLog,
        }
    }
}

/// How `generate` runs the linear layers.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    /// f32 (no quantization).
    Reference,
    Rtn,
    Gptq,
    GptqAdaptive,
    GptqLog,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClipArg {
    No,
    Yes,
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the greedy continuation of a prompt.
    Generate {
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Most new tokens.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// f32 reference, or the W4A8 recipe.
        #[arg(long, value_enum, default_value = "reference")]
        method: MethodArg,
        /// Search clipping ratios on the layer output error.
        #[arg(long)]
        clip: bool,
        /// Group size (32, 64, 128, 256; a divisor of 576 and 1536), or 0 for per-channel scales.
        #[arg(long, default_value_t = 64)]
        group: usize,
        /// Wrap the prompt in the model's ChatML template (system, user, assistant turns).
        #[arg(long)]
        chat: bool,
        /// Rotate every layer's input online by Walsh–Hadamard blocks of up to B channels (see `eval`).
        #[arg(long, value_name = "B", default_value_t = 0)]
        rotate: usize,
        /// Calibration tokens for GPTQ, smoothing and clipping (from calib.txt).
        #[arg(long, default_value_t = 4096)]
        calib_tokens: usize,
        #[command(flatten)]
        gptq: GptqArgs,
    },
    /// Measures the perplexity of the reference and of every W4A8 configuration on held-out text.
    Eval {
        /// Also write the table into this markdown file, between `<!-- SECTION:begin/end -->`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The section of `--out` this run owns (a run with other settings can keep its own table).
        #[arg(long, default_value = "smollm2")]
        section: String,
        /// Held-out tokens (whole windows).
        #[arg(long, default_value_t = 2048)]
        eval_tokens: usize,
        /// Calibration tokens (whole windows).
        #[arg(long, default_value_t = 8192)]
        calib_tokens: usize,
        /// Tokens per window.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Recipes, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["rtn", "gptq", "gptq-adaptive", "gptq-log"])]
        methods: Vec<RecipeArg>,
        /// Clipping search: no, yes or both.
        #[arg(long, value_enum, default_value = "both")]
        clip: ClipArg,
        /// Group sizes, comma-separated; 0 is per-channel.
        #[arg(long, value_delimiter = ',', default_values_t = [64usize, 0])]
        groups: Vec<usize>,
        /// Also measure each configuration's int4 weights alone, with f32 activations (a diagnostic,
        /// simulated in f32: one more forward pass per configuration).
        #[arg(long)]
        weight_only: bool,
        /// Rotate every layer's input online by Walsh–Hadamard blocks of up to B channels (the largest
        /// power of two ≤ B dividing the layer's K: 64 at K = 576); 0: no rotation.
        #[arg(long, value_name = "B", default_value_t = 0)]
        rotate: usize,
        #[command(flatten)]
        gptq: GptqArgs,
    },
}

/// GPTQ settings (defaults: those of the paper).
#[derive(clap::Args)]
struct GptqArgs {
    /// GPTQ: Hessian dampening as a fraction of its mean diagonal.
    #[arg(long, default_value_t = GptqConfig::default().damp)]
    gptq_damp: f64,
    /// GPTQ: columns per lazy batch.
    #[arg(long, default_value_t = GptqConfig::default().block_size)]
    gptq_block: usize,
    /// GPTQ: quantize columns in canonical order instead of by decreasing Hessian diagonal.
    #[arg(long)]
    no_act_order: bool,
}

impl GptqArgs {
    fn config(&self) -> GptqConfig {
        GptqConfig { block_size: self.gptq_block, damp: self.gptq_damp, act_order: !self.no_act_order }
    }
}

fn granularity(group: usize, model: &Llama) -> Result<Granularity, Error> {
    let g = if group == 0 { Granularity::PerChannel } else { Granularity::PerGroup { group_size: group } };
    g.validate(model.config.hidden)?;
    g.validate(model.config.ffn)?;
    Ok(g)
}

/// `--rotate B`: `None` for 0, else B once every layer width accepts the block it gets.
fn check_rotate(b: usize, model: &Llama) -> Result<Option<usize>, Error> {
    if b == 0 {
        return Ok(None);
    }
    for k in [model.config.hidden, model.config.ffn] {
        w4a8_core::transform::check_hadamard_block(block_for_width(b, k), k)?;
    }
    Ok(Some(b))
}

/// The ChatML prompt of SmolLM2-Instruct's template (its default system turn included).
fn chat_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn run() -> Result<(), Error> {
    let cli = Cli::parse();
    let path = cli.model.unwrap_or_else(|| default_dir().join(MODEL_FILE));
    let text_dir = cli.text_dir.unwrap_or_else(|| path.parent().map(PathBuf::from).unwrap_or_default());
    let t = Instant::now();
    let load_err = |e: Error| Error::Model(format!("{}: {e} (run scripts/fetch-smollm2.sh)", path.display()));
    let gguf = Gguf::open(&path).map_err(|e| load_err(e.into()))?;
    let model = Llama::from_gguf(&gguf).map_err(load_err)?;
    let tok: Tokenizer = tokenizer::from_gguf(&gguf).map_err(|e| load_err(e.into()))?;
    eprintln!(
        "loaded {} ({} layers, hidden {}, {} tensors) in {:.1} s",
        path.display(),
        model.config.layers,
        model.config.hidden,
        gguf.tensors.len(),
        t.elapsed().as_secs_f64()
    );
    let text = |name: &str| read_text(&text_dir.join(name));
    match cli.command {
        Command::Generate { prompt, max_tokens, method, clip, group, chat, rotate, calib_tokens, gptq } => {
            let rotate = check_rotate(rotate, &model)?;
            let prompt = if chat { chat_prompt(&prompt) } else { prompt };
            let ids = tokenizer::encode(&tok, &prompt)?;
            // Stop at the end-of-sequence token and at <|endoftext|>.
            let mut stop: Vec<u32> =
                gguf.get_u64("tokenizer.ggml.eos_token_id").ok().map(|v| v as u32).into_iter().collect();
            stop.extend(tok.token_to_id("<|endoftext|>"));
            let recipe = match method {
                MethodArg::Reference => None,
                MethodArg::Rtn => Some(Recipe::Rtn),
                MethodArg::Gptq => Some(Recipe::Gptq),
                MethodArg::GptqAdaptive => Some(Recipe::GptqAdaptive),
                MethodArg::GptqLog => Some(Recipe::GptqLog),
            };
            let lin: Box<dyn Linears> = match recipe {
                None => Box::new(FloatLinears(&model)),
                Some(recipe) => {
                    let cfg = eval::config(recipe, clip, granularity(group, &model)?, gptq.config());
                    let calib = if cfg.needs_calibration() {
                        let calib_ids = tokenizer::encode(&tok, &text("calib.txt")?)?;
                        let w = eval::windows(&calib_ids, 256, calib_tokens);
                        Some(eval::calibrate(&model, &w)?)
                    } else {
                        None
                    };
                    let (layers, secs) = eval::quantize_model(&model, calib.as_ref(), &cfg, rotate)?;
                    let backend = w4a8::Backend::open_named(&cli.backend)?;
                    eprintln!(
                        "{} {}{}: 210 layers quantized in {secs:.1} s; W4A8 on {} ({})",
                        recipe.label(),
                        cfg.granularity,
                        if clip { " + clip" } else { "" },
                        backend.kind(),
                        backend.info().name
                    );
                    Box::new(W4A8Linears::new(backend, &layers)?)
                }
            };
            let t = Instant::now();
            let out = eval::generate(&model, lin.as_ref(), &ids, max_tokens, &stop, &mut |_| {})?;
            let secs = t.elapsed().as_secs_f64();
            println!("{prompt}{}", tokenizer::decode(&tok, &out)?);
            eprintln!(
                "{} prompt tokens, {} new tokens in {secs:.2} s ({:.1} tokens/s)",
                ids.len(),
                out.len(),
                out.len() as f64 / secs.max(1e-9)
            );
        }
        Command::Eval {
            out,
            eval_tokens,
            calib_tokens,
            window,
            methods,
            clip,
            groups,
            weight_only,
            rotate,
            section,
            gptq,
        } => {
            if window < 2 {
                return Err(Error::Model("--window must be at least 2 tokens".into()));
            }
            let rotate = check_rotate(rotate, &model)?;
            let granularities =
                groups.iter().map(|&g| granularity(g, &model)).collect::<Result<Vec<_>, _>>()?;
            let t = Instant::now();
            let eval_ids = tokenizer::encode(&tok, &text("eval.txt")?)?;
            let calib_ids = tokenizer::encode(&tok, &text("calib.txt")?)?;
            eprintln!("tokenized the texts in {:.1} s", t.elapsed().as_secs_f64());
            let text_source = read_text(&text_dir.join("text-source.txt"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "calib.txt / eval.txt".into());
            let settings = EvalSettings {
                window,
                eval_tokens,
                calib_tokens,
                recipes: methods.into_iter().map(Recipe::from).collect(),
                clips: match clip {
                    ClipArg::No => vec![false],
                    ClipArg::Yes => vec![true],
                    ClipArg::Both => vec![false, true],
                },
                granularities,
                backend: cli.backend.clone(),
                text_source: format!("{text_source} (scripts/fetch-smollm2.sh)"),
                weight_only,
                gptq: gptq.config(),
                rotate,
                // The arguments from the subcommand on (paths before it are the user's own).
                command: std::env::args().skip_while(|a| a != "eval").collect::<Vec<_>>().join(" "),
            };
            // The file's section is rewritten after every configuration, so an interrupted run keeps
            // what it measured.
            let write = |path: &Path, md: &str| w4a8_core::report::write_section(path, &section, md);
            let md = eval::run_eval(&model, &eval_ids, &calib_ids, &settings, &mut |md| match &out {
                Some(path) => Ok(write(path, md)?),
                None => Ok(()),
            })?;
            if let Some(path) = &out {
                write(path, &md)?;
                eprintln!("wrote the {section} section of {}", path.display());
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
