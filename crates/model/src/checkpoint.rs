//! Model folders: `model.safetensors` + `config.json` (Hugging Face GPT-2 format)
//! + `tokenizer.json`, written atomically.

use crate::gpt::{Gpt, GptConfig};
use anyhow::{bail, Context};
use forja_data::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device};

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";

/// `config.json` as Hugging Face's `GPT2Config` reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfGpt2Config {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_ctx: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub activation_function: String,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
    pub tie_word_embeddings: bool,
    pub torch_dtype: String,
    /// `<|endoftext|>` when the tokenizer has it, else null.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl From<&GptConfig> for HfGpt2Config {
    fn from(c: &GptConfig) -> Self {
        Self {
            model_type: "gpt2".into(),
            architectures: vec!["GPT2LMHeadModel".into()],
            vocab_size: c.vocab_size,
            n_positions: c.block_size,
            n_ctx: c.block_size,
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            activation_function: "gelu".into(),
            resid_pdrop: c.dropout,
            embd_pdrop: c.dropout,
            attn_pdrop: c.dropout,
            layer_norm_epsilon: c.layer_norm_epsilon,
            initializer_range: 0.02,
            tie_word_embeddings: true,
            torch_dtype: "float32".into(),
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

impl HfGpt2Config {
    pub fn to_gpt(&self) -> anyhow::Result<GptConfig> {
        if self.model_type != "gpt2" {
            bail!("model_type `{}` is not supported (expected `gpt2`)", self.model_type);
        }
        if self.activation_function != "gelu" {
            bail!("activation_function `{}` is not supported (expected `gelu`)", self.activation_function);
        }
        Ok(GptConfig {
            vocab_size: self.vocab_size,
            block_size: self.n_positions,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            dropout: self.resid_pdrop,
            layer_norm_epsilon: self.layer_norm_epsilon,
        })
    }
}

/// Parses a device name: `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => bail!("unknown device `{name}` (expected cpu, cuda or cuda:N)"),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            bail!("device `{name}` requested but {count} CUDA device(s) are available");
        }
    }
    Ok(device)
}

/// Writes the model's files into `dir` (which must exist).
pub fn write_model_files(dir: &Path, vs: &nn::VarStore, cfg: &GptConfig, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    vs.save(dir.join(WEIGHTS)).with_context(|| format!("writing {}", dir.join(WEIGHTS).display()))?;
    let eot = tokenizer.token_to_id(forja_data::tokenizer::EOT);
    let hf = HfGpt2Config { bos_token_id: eot, eos_token_id: eot, ..HfGpt2Config::from(cfg) };
    let hf = serde_json::to_string_pretty(&hf)?;
    std::fs::write(dir.join(CONFIG), hf)?;
    tokenizer.save(&dir.join(TOKENIZER))?;
    Ok(())
}

/// Saves a model folder atomically (a crash leaves the old folder or none).
pub fn save_model(dir: &Path, vs: &nn::VarStore, cfg: &GptConfig, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    forja_core::fsutil::atomic_dir(dir, |tmp| write_model_files(tmp, vs, cfg, tokenizer))
}

/// Reads `config.json` of a model folder.
pub fn read_config(dir: &Path) -> anyhow::Result<GptConfig> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let hf: HfGpt2Config = serde_json::from_str(&text).with_context(|| format!("{}: not a GPT-2 config", path.display()))?;
    hf.to_gpt().with_context(|| path.display().to_string())
}

/// A model loaded from its folder.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: Gpt,
    pub tokenizer: Tokenizer,
}

/// Loads a model folder onto `device`.
pub fn load_model(dir: &Path, device: Device) -> anyhow::Result<LoadedModel> {
    let cfg = read_config(dir)?;
    let tokenizer = Tokenizer::load(&dir.join(TOKENIZER))?;
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &cfg)?;
    let weights = dir.join(WEIGHTS);
    vs.load(&weights).with_context(|| format!("loading weights {}", weights.display()))?;
    Ok(LoadedModel { vs, model, tokenizer })
}
