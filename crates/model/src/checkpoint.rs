//! Model folders: `model.safetensors` + `config.json` (Hugging Face format where
//! an HF architecture matches) + `tokenizer.json`, written atomically; loading
//! dispatches on `config.json`'s `model_type` (`gpt2`, `bert`, `forja-lstm`).
//! Weights load only from safetensors (no code runs on load).

use crate::bert::{Bert, BertConfig, BertMlmHead, BERT_MODEL_TYPE};
use crate::gpt::{Activation, Gpt, GptConfig};
use crate::lm::LanguageModel;
use crate::lstm::{LstmConfig, LstmLm, LSTM_MODEL_TYPE};
use anyhow::{bail, Context};
use forja_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";

/// `config.json` as Hugging Face's `GPT2Config` reads and writes it. Fields that
/// Hugging Face leaves out take its defaults; other fields are ignored, and the
/// ones that would change the computation are checked in [`HfGpt2Config::to_gpt`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfGpt2Config {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub n_positions: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<i64>,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Inner MLP width; `None` means 4 × `n_embd` (the only width forja builds).
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "hf_gpt2_activation")]
    pub activation_function: String,
    #[serde(default = "hf_gpt2_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "hf_gpt2_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "hf_gpt2_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "hf_gpt2_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "hf_gpt2_init")]
    pub initializer_range: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "hf_float32", alias = "dtype")]
    pub torch_dtype: String,
    /// `<|endoftext|>` when the tokenizer has it, else null.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn hf_gpt2_activation() -> String {
    "gelu_new".into()
}
fn hf_gpt2_dropout() -> f64 {
    0.1
}
fn hf_gpt2_eps() -> f64 {
    1e-5
}
fn hf_gpt2_init() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}
fn hf_float32() -> String {
    "float32".into()
}

impl From<&GptConfig> for HfGpt2Config {
    fn from(c: &GptConfig) -> Self {
        Self {
            model_type: "gpt2".into(),
            architectures: vec!["GPT2LMHeadModel".into()],
            vocab_size: c.vocab_size,
            n_positions: c.block_size,
            n_ctx: Some(c.block_size),
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_inner: None,
            activation_function: c.activation.hf_name().into(),
            resid_pdrop: c.dropout,
            embd_pdrop: c.dropout,
            attn_pdrop: c.dropout,
            layer_norm_epsilon: c.layer_norm_epsilon,
            initializer_range: 0.02,
            tie_word_embeddings: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
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
        let activation = match self.activation_function.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
            other => bail!("activation_function `{other}` is not supported (gelu, gelu_new)"),
        };
        if let Some(inner) = self.n_inner.filter(|&n| n != 4 * self.n_embd) {
            bail!("n_inner {inner} is not supported (forja's MLP is 4 × n_embd = {})", 4 * self.n_embd);
        }
        if !self.tie_word_embeddings {
            bail!("tie_word_embeddings = false is not supported (forja's GPT ties its head to wte)");
        }
        if !self.scale_attn_weights || self.scale_attn_by_inverse_layer_idx {
            bail!("attention scaling other than 1/sqrt(head_dim) is not supported");
        }
        Ok(GptConfig {
            vocab_size: self.vocab_size,
            block_size: self.n_positions,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            dropout: self.resid_pdrop,
            layer_norm_epsilon: self.layer_norm_epsilon,
            activation,
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
    let eot = tokenizer.token_to_id(forja_tokenizer::EOT);
    let hf = HfGpt2Config { bos_token_id: eot, eos_token_id: eot, ..HfGpt2Config::from(cfg) };
    write_folder(dir, vs, &hf, tokenizer)
}

/// Writes weights (safetensors), `config.json` and `tokenizer.json` into `dir`.
pub fn write_folder<C: Serialize>(dir: &Path, vs: &nn::VarStore, config: &C, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    vs.save(dir.join(WEIGHTS)).with_context(|| format!("writing {}", dir.join(WEIGHTS).display()))?;
    std::fs::write(dir.join(CONFIG), serde_json::to_string_pretty(config)?)?;
    tokenizer.save(&dir.join(TOKENIZER))?;
    Ok(())
}

/// Saves a model folder atomically (a crash leaves the old folder or none).
pub fn save_model(dir: &Path, vs: &nn::VarStore, cfg: &GptConfig, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    forja_core::fsutil::atomic_dir(dir, |tmp| write_model_files(tmp, vs, cfg, tokenizer))
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, what: &str) -> anyhow::Result<T> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a {what} config", path.display()))
}

/// `model_type` of a model folder's `config.json`.
pub fn model_type(dir: &Path) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Head {
        model_type: String,
    }
    Ok(read_json::<Head>(dir, "model")?.model_type)
}

/// Reads `config.json` of a GPT model folder.
pub fn read_config(dir: &Path) -> anyhow::Result<GptConfig> {
    let hf: HfGpt2Config = read_json(dir, "GPT-2")?;
    hf.to_gpt().with_context(|| dir.join(CONFIG).display().to_string())
}

/// Reads `config.json` of a BERT model folder.
pub fn read_bert_config(dir: &Path) -> anyhow::Result<BertConfig> {
    let cfg: BertConfig = read_json(dir, "BERT")?;
    cfg.validate().with_context(|| dir.join(CONFIG).display().to_string())?;
    Ok(cfg)
}

/// Reads `config.json` of an LSTM model folder.
pub fn read_lstm_config(dir: &Path) -> anyhow::Result<LstmConfig> {
    read_json(dir, "LSTM")
}

/// The tensors of a `model.safetensors`, read once.
pub struct Weights {
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let tensors = Tensor::read_safetensors(file).with_context(|| format!("reading weights {}", file.display()))?.into_iter().collect();
        Ok(Self { file: file.to_path_buf(), tensors })
    }

    /// The tensor for variable `name`, found under that name or without a
    /// leading `bert.` (HF's `BertModel` files have no prefix,
    /// `BertForMaskedLM`'s do).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).or_else(|| name.strip_prefix("bert.").and_then(|n| self.tensors.get(n)))
    }

    /// Replaces (or adds) the tensor `name`.
    pub fn insert(&mut self, name: &str, tensor: Tensor) {
        self.tensors.insert(name.to_string(), tensor);
    }

    /// Copies the tensors into the variables of `vs`, by name. Variables for
    /// which `optional` holds may be absent (new heads, LoRA adapters); any other
    /// missing variable, or a shape mismatch, is an error naming it.
    pub fn load_into(&self, vs: &mut nn::VarStore, optional: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let mut missing = Vec::new();
        for (name, mut var) in vs.variables() {
            match self.get(&name) {
                Some(t) => {
                    anyhow::ensure!(
                        t.size() == var.size(),
                        "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                        self.file.display(),
                        t.size(),
                        var.size()
                    );
                    var.copy_(&t.to_kind(var.kind()).to(var.device()));
                }
                None if optional(&name) => {}
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            missing.sort();
            bail!("{}: lacks {} tensor(s) the model needs: {}", self.file.display(), missing.len(), missing.join(", "));
        }
        Ok(())
    }
}

/// Reads a safetensors file into the variables of `vs` ([`Weights::load_into`]).
pub fn load_weights(vs: &mut nn::VarStore, file: &Path, optional: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    Weights::read(file)?.load_into(vs, optional)
}

/// A BERT encoder with its masked-LM head when the checkpoint has one.
#[derive(Debug)]
pub struct BertModel {
    pub bert: Bert,
    pub mlm: Option<BertMlmHead>,
}

/// A model of any supported architecture.
#[derive(Debug)]
pub enum AnyModel {
    Gpt(Gpt),
    Bert(Box<BertModel>),
    Lstm(LstmLm),
}

impl AnyModel {
    /// The model as a causal language model, if it is one.
    pub fn as_lm(&self) -> Option<&dyn LanguageModel> {
        match self {
            AnyModel::Gpt(g) => Some(g),
            AnyModel::Lstm(l) => Some(l),
            AnyModel::Bert(_) => None,
        }
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            AnyModel::Gpt(_) => "gpt2",
            AnyModel::Bert(_) => BERT_MODEL_TYPE,
            AnyModel::Lstm(_) => LSTM_MODEL_TYPE,
        }
    }
}

/// A model loaded from its folder.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: AnyModel,
    pub tokenizer: Tokenizer,
}

/// The `model_type`s forja builds.
pub const MODEL_TYPES: [&str; 3] = ["gpt2", BERT_MODEL_TYPE, LSTM_MODEL_TYPE];

/// Builds the model a folder describes under `vs` (random weights; a BERT gets
/// its masked-LM head when `weights` hold one).
fn build_model(dir: &Path, model_type: &str, vs: &nn::VarStore, weights: &Weights) -> anyhow::Result<AnyModel> {
    let root = vs.root();
    Ok(match model_type {
        "gpt2" => AnyModel::Gpt(Gpt::new(&root, &read_config(dir)?)?),
        BERT_MODEL_TYPE => {
            let cfg = read_bert_config(dir)?;
            let bert = Bert::new(&(&root / "bert"), &cfg, None)?;
            let mlm = weights.get("cls.predictions.bias").is_some().then(|| BertMlmHead::new(&(&root / "cls" / "predictions"), &cfg));
            AnyModel::Bert(Box::new(BertModel { bert, mlm }))
        }
        LSTM_MODEL_TYPE => AnyModel::Lstm(LstmLm::new(&root, &read_lstm_config(dir)?)?),
        other => bail!("{}: model_type `{other}` is not supported ({})", dir.join(CONFIG).display(), MODEL_TYPES.join(", ")),
    })
}

/// Loads a model folder of any supported `model_type` onto `device`.
pub fn load_model(dir: &Path, device: Device) -> anyhow::Result<LoadedModel> {
    let tokenizer = Tokenizer::load(&dir.join(TOKENIZER))?;
    let mut vs = nn::VarStore::new(device);
    // config.json first: a folder that is not a model folder, or of another
    // architecture, is refused by it before any weights are read.
    let kind = model_type(dir)?;
    anyhow::ensure!(
        MODEL_TYPES.contains(&kind.as_str()),
        "{}: model_type `{kind}` is not supported ({})",
        dir.join(CONFIG).display(),
        MODEL_TYPES.join(", ")
    );
    let weights = Weights::read(&dir.join(WEIGHTS))?;
    let model = build_model(dir, &kind, &vs, &weights)?;
    weights.load_into(&mut vs, &|_| false)?;
    Ok(LoadedModel { vs, model, tokenizer })
}

/// Loads a GPT model folder (an error names the folder's other `model_type`).
pub fn load_gpt(dir: &Path, device: Device) -> anyhow::Result<(nn::VarStore, Gpt, Tokenizer)> {
    let loaded = load_model(dir, device)?;
    match loaded.model {
        AnyModel::Gpt(g) => Ok((loaded.vs, g, loaded.tokenizer)),
        other => bail!("{}: a GPT model is needed, this is `{}`", dir.display(), other.model_type()),
    }
}
