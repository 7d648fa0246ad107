//! The served model: what request handlers need (tokenizer, chat template, id,
//! hash, context, drift reference) apart from the weights, which only the
//! engine thread touches.

use crate::drift::Reference;
use anyhow::Context;
use forja_model::chat::{self, ChatTemplate};
use forja_model::{checkpoint, quant, AnyModel, Bert, Gpt, Quantization};
use forja_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use tch::nn;

/// What a model can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A causal LM: completions and chat.
    Generator,
    /// An encoder: embeddings.
    Encoder,
}

/// The request-side view of a loaded model.
pub struct Frontend {
    pub id: String,
    /// `blake3:HEX` over the weights, config and tokenizer files.
    pub hash: String,
    /// `forja-<12 hex>`: the `system_fingerprint` of every response.
    pub fingerprint: String,
    pub dir: PathBuf,
    pub created: u64,
    pub kind: Kind,
    pub tokenizer: Tokenizer,
    /// Positions the model can attend over.
    pub context: usize,
    /// The model's chat template (ChatML when its folder has none).
    pub template: ChatTemplate,
    /// The weights' precision as served.
    pub quantization: Quantization,
    /// Tokens that end generation: end of text, and the end-of-turn token.
    pub stop_ids: Vec<u32>,
    /// End-of-turn markers the vocabulary lacks, stopped on as text.
    pub stop_texts: Vec<String>,
    /// Distribution of the training tokens, when the folder records it.
    pub reference: Option<Reference>,
}

impl Frontend {
    /// `id@blake3:…`: how responses, logs and feedback name the model.
    pub fn label(&self) -> String {
        format!("{}@{}", self.id, self.hash)
    }
}

/// The weights, owned by the engine thread.
pub enum Weights {
    Gpt { _vs: nn::VarStore, model: Box<Gpt> },
    Bert { _vs: nn::VarStore, model: Box<Bert> },
}

/// Files whose bytes make a model's hash.
const HASHED: [&str; 4] = [checkpoint::WEIGHTS, checkpoint::CONFIG, checkpoint::TOKENIZER, chat::TOKENIZER_CONFIG];

fn hash_folder(dir: &Path) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    for name in HASHED {
        let path = dir.join(name);
        if path.exists() {
            h.update(name.as_bytes());
            let mut file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
            std::io::copy(&mut file, &mut h).with_context(|| format!("reading {}", path.display()))?;
        }
    }
    Ok(format!("blake3:{}", h.finalize().to_hex()))
}

/// The id a folder is served under: its name, or its parent's when it is
/// called `model` (as every stage's output is).
pub fn default_id(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    match name(dir).as_deref() {
        Some("model") | None => dir.parent().and_then(name).unwrap_or_else(|| "model".to_string()),
        Some(n) => n.to_string(),
    }
}

/// How a folder is loaded for serving.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The id it is served under (default: [`default_id`]).
    pub id: Option<&'a str>,
    pub device: tch::Device,
    /// int8 or float32 weights (`None`: as the folder is, int8 for a
    /// quantized folder).
    pub quantize: Option<Quantization>,
    /// float32 decoder weights packed once for forja's CPU kernels
    /// (`Gpt::pack_f32`; for one engine thread on the CPU).
    pub pack: bool,
}

impl LoadOptions<'_> {
    /// float32 (or as the folder is) on the CPU under the default id.
    pub fn cpu() -> Self {
        Self { id: None, device: tch::Device::Cpu, quantize: None, pack: false }
    }
}

/// Loads a model folder: weights from `model.safetensors` only (a pickle such as
/// `pytorch_model.bin` would run code on load, so it is never read).
pub fn load(dir: &Path, opts: &LoadOptions) -> anyhow::Result<(Frontend, Weights)> {
    let (id, device) = (opts.id, opts.device);
    let weights = dir.join(checkpoint::WEIGHTS);
    if !weights.exists() {
        let pickle = ["pytorch_model.bin", "model.bin", "model.pt"].iter().find(|n| dir.join(n).exists());
        match pickle {
            Some(p) => anyhow::bail!(
                "{}: only safetensors weights are served (found {p}, a pickle that runs code when loaded; convert it to model.safetensors)",
                dir.display()
            ),
            None => anyhow::bail!("{}: no model.safetensors (not a model folder?)", dir.display()),
        }
    }
    let hash = hash_folder(dir)?;
    let loaded = checkpoint::load_model(dir, device).with_context(|| format!("loading {}", dir.display()))?;
    let tokenizer = loaded.tokenizer;
    let quantization = match opts.quantize {
        Some(q) => q,
        None => quant::folder_quantization(dir)?,
    };
    let (kind, context, weights) = match loaded.model {
        AnyModel::Gpt(mut model) => {
            let stats = model.quantize(quantization).with_context(|| format!("quantizing {}", dir.display()))?;
            if quantization == Quantization::None && opts.pack && device == tch::Device::Cpu {
                model.pack_f32().with_context(|| format!("packing {}", dir.display()))?;
            }
            if quantization != Quantization::None {
                tracing::info!(
                    projections = stats.projections,
                    mb_before = stats.bytes_before as f64 / 1e6,
                    mb_after = stats.bytes_after as f64 / 1e6,
                    "weights quantized to int8 (per output channel)"
                );
            }
            (Kind::Generator, model.cfg.block_size as usize, Weights::Gpt { _vs: loaded.vs, model: Box::new(model) })
        }
        AnyModel::Bert(_) if quantization != Quantization::None => {
            anyhow::bail!("{}: int8 serving is for decoders; serve this encoder with --quantize none", dir.display())
        }
        AnyModel::Bert(b) => {
            let context = b.bert.cfg.max_position_embeddings as usize;
            (Kind::Encoder, context, Weights::Bert { _vs: loaded.vs, model: Box::new(b.bert) })
        }
        other => anyhow::bail!(
            "{}: `{}` models are not served (GPT for completions and chat, BERT for embeddings)",
            dir.display(),
            other.model_type()
        ),
    };
    let template = chat::read_template(dir)?.unwrap_or_else(ChatTemplate::chatml);
    let mut stop_ids = Vec::new();
    let mut stop_texts = Vec::new();
    for marker in [forja_tokenizer::EOT, template.end_of_turn.as_str()] {
        match tokenizer.token_to_id(marker) {
            Some(id) => stop_ids.push(id),
            None if marker == template.end_of_turn => stop_texts.push(marker.to_string()),
            None => {}
        }
    }
    stop_ids.dedup();
    let reference = Reference::read(dir, tokenizer.vocab_size())?;
    let created = std::fs::metadata(dir.join(checkpoint::WEIGHTS))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let id = id.map_or_else(|| default_id(dir), str::to_string);
    let fingerprint = format!("forja-{}", hash.trim_start_matches("blake3:").chars().take(12).collect::<String>());
    let front = Frontend {
        id,
        hash,
        fingerprint,
        dir: dir.to_path_buf(),
        created,
        kind,
        tokenizer,
        context,
        template,
        quantization,
        stop_ids,
        stop_texts,
        reference,
    };
    Ok((front, weights))
}
