//! Model folders: `model.safetensors` + `config.json` (Hugging Face format where
//! an HF architecture matches) + `tokenizer.json`, written atomically; loading
//! dispatches on `config.json`'s `model_type` (`gpt2`, `llama`, `qwen2`, `bert`,
//! `forja-lstm`; `forja-gpt2` / `forja-llama` for decoders with settings
//! Hugging Face's classes lack).
//! Weights load only from safetensors (no code runs on load).

use crate::bert::{Bert, BertConfig, BertMlmHead, BERT_MODEL_TYPE};
use crate::gpt::{Gpt, GptConfig};
pub use crate::hf::{hf_config_json, HfGpt2Config, HfLlamaConfig, DECODER_TYPES};
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
    write_folder(dir, vs, &hf_config_json(cfg, eot, eot), tokenizer)
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

/// Whether `model_type` is a decoder forja builds as a [`Gpt`] (GPT-2 or the Llama family).
pub fn is_decoder(model_type: &str) -> bool {
    DECODER_TYPES.contains(&model_type)
}

/// `model_type` of a model folder's `config.json`.
pub fn model_type(dir: &Path) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Head {
        model_type: String,
    }
    Ok(read_json::<Head>(dir, "model")?.model_type)
}

/// Reads `config.json` of a decoder model folder (GPT-2 or the Llama family).
pub fn read_config(dir: &Path) -> anyhow::Result<GptConfig> {
    let raw: serde_json::Value = read_json(dir, "model")?;
    crate::hf::gpt_config(&raw).with_context(|| dir.join(CONFIG).display().to_string())
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
        let mut tensors =
            Tensor::read_safetensors(file).with_context(|| format!("reading weights {}", file.display()))?.into_iter().collect();
        // A quantized folder's int8 weights load as the float32 they stand for.
        crate::quant::dequantize_all(&mut tensors, file)?;
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
            AnyModel::Gpt(g) => crate::hf::model_type(&g.cfg),
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

/// The `model_type`s forja builds: the decoders ([`DECODER_TYPES`]), BERT and the LSTM.
pub const MODEL_TYPES: [&str; 8] = [
    DECODER_TYPES[0],
    DECODER_TYPES[1],
    DECODER_TYPES[2],
    DECODER_TYPES[3],
    DECODER_TYPES[4],
    DECODER_TYPES[5],
    BERT_MODEL_TYPE,
    LSTM_MODEL_TYPE,
];

/// Builds the model a folder describes under `vs` (random weights; a BERT gets
/// its masked-LM head when `weights` hold one).
fn build_model(dir: &Path, model_type: &str, vs: &nn::VarStore, weights: &Weights) -> anyhow::Result<AnyModel> {
    let root = vs.root();
    Ok(match model_type {
        t if DECODER_TYPES.contains(&t) => AnyModel::Gpt(Gpt::new(&root, &read_config(dir)?)?),
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
