//! Trained models written as model folders: a chat model (SFT), a GPT policy
//! (DPO, PPO, GRPO), a sequence classifier, a reward model; LoRA adapters
//! merged, and for GPTs also written alone in the PEFT layout ([`crate::peft`]).
//! With [`crate::checkpoint`] (reading, plain folders) and [`crate::chat`]
//! (`tokenizer_config.json`) this is the only place a folder's layout is known;
//! trainers hand their variables here.

use crate::chat::{self, ChatTemplate};
use crate::checkpoint::{hf_config_json, CONFIG, TOKENIZER, WEIGHTS};
use crate::classifier::ClassifierConfig;
use crate::layers::{merge_lora, Layout, LoraConfig};
use crate::peft::{self, ADAPTER_DIR};
use crate::{Arch, BertConfig, GptConfig};
use anyhow::Context;
use forja_core::token_counts::TokenCounts;
use forja_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

/// Everything a fine-tuned chat model's folder is written from.
pub struct ChatExport<'a> {
    pub cfg: &'a GptConfig,
    /// The training prompts' tokens (the server's drift reference).
    pub counts: &'a TokenCounts,
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub lora: Option<&'a LoraConfig>,
    pub base: &'a Path,
}

/// Writes a chat model folder: weights (adapters merged), config with the
/// end-of-turn token as `eos_token_id`, tokenizer, template; with LoRA also
/// the adapters alone in the PEFT layout under `adapter/`.
pub fn write_chat_model(dir: &Path, vs: &nn::VarStore, e: &ChatExport) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let layout = e.cfg.arch.layout();
    if let Some(l) = e.lora {
        peft::write_adapter(&dir.join(ADAPTER_DIR), &named, l, e.base, layout)?;
        named = merge_lora(named, l.alpha / l.rank as f64, layout)?;
    }
    let weights = dir.join(WEIGHTS);
    Tensor::write_safetensors(&named, &weights).with_context(|| format!("writing {}", weights.display()))?;
    let eot = e.tokenizer.token_to_id(&e.template.end_of_turn);
    let hf = hf_config_json(e.cfg, e.tokenizer.token_to_id(forja_tokenizer::EOT).or(eot), eot);
    std::fs::write(dir.join(CONFIG), serde_json::to_string_pretty(&hf)?)?;
    e.tokenizer.save(&dir.join(TOKENIZER))?;
    e.counts.write(dir)?;
    chat::write_tokenizer_config(dir, e.template, e.cfg.block_size)
}

/// Files of a GPT folder that a trained copy keeps as they are.
const KEPT: [&str; 4] = [CONFIG, TOKENIZER, chat::TOKENIZER_CONFIG, forja_core::token_counts::FILE];

/// Writes a trained GPT policy as a model folder like `base` (config,
/// tokenizer, chat template kept): LoRA adapters merged, and also written
/// alone in the PEFT layout under `adapter/`. Variables of heads outside the
/// GPT (a value head) are left out.
pub fn write_policy(dir: &Path, vs: &nn::VarStore, base: &Path, lora: Option<&LoraConfig>) -> anyhow::Result<()> {
    let arch = crate::checkpoint::read_config(base)?.arch;
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| arch.owns(n)).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(l) = lora {
        peft::write_adapter(&dir.join(ADAPTER_DIR), &named, l, base, arch.layout())?;
    }
    write_merged(dir, named, lora, arch.layout())?;
    copy_kept(base, dir)
}

/// Writes decoder variables as `model.safetensors`, LoRA adapters merged into
/// their base weights (of `layout`).
fn write_merged(dir: &Path, mut named: Vec<(String, Tensor)>, lora: Option<&LoraConfig>, layout: Layout) -> anyhow::Result<()> {
    if let Some(l) = lora {
        named = merge_lora(named, l.alpha / l.rank as f64, layout)?;
    }
    Tensor::write_safetensors(&named, dir.join(WEIGHTS))?;
    Ok(())
}

/// Copies the config, tokenizer and template files of `base` that exist.
fn copy_kept(base: &Path, dir: &Path) -> anyhow::Result<()> {
    for f in KEPT {
        let from = base.join(f);
        if from.exists() {
            std::fs::copy(&from, dir.join(f)).map_err(|e| anyhow::anyhow!("copying {}: {e}", from.display()))?;
        }
    }
    Ok(())
}

/// Writes a classifier folder: weights (adapters merged), `config.json`, `tokenizer.json`.
pub fn write_classifier(
    dir: &Path,
    vs: &nn::VarStore,
    cfg: &ClassifierConfig,
    lora: Option<&LoraConfig>,
    tok: &Tokenizer,
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(l) = lora {
        named = merge_lora(named, l.alpha / l.rank as f64, Layout::OutIn)?;
    }
    let weights = dir.join(WEIGHTS);
    Tensor::write_safetensors(&named, &weights).with_context(|| format!("writing {}", weights.display()))?;
    std::fs::write(dir.join(CONFIG), serde_json::to_string_pretty(cfg)?)?;
    tok.save(&dir.join(TOKENIZER))
}

/// Name of a GPT reward model's head weight, as Hugging Face names it.
pub const REWARD_SCORE: &str = "score.weight";
/// The label of a reward model's one output.
pub const REWARD_LABEL: &str = "LABEL_0";

/// `config.json` of a BERT reward model: a one-label regression
/// `BertForSequenceClassification` over the encoder `bert`.
pub fn reward_classifier_config(bert: &BertConfig) -> ClassifierConfig {
    ClassifierConfig { problem_type: Some("regression".into()), ..ClassifierConfig::new(bert, &[REWARD_LABEL.to_string()]) }
}

/// How a reward model folder is written.
pub enum RewardExport {
    /// The decoder's folder with a config Hugging Face reads as a one-label
    /// `GPT2ForSequenceClassification` (`LlamaForSequenceClassification`, …).
    Gpt { base: PathBuf, pad: Option<u32>, arch: Arch },
    /// `BertForSequenceClassification` with one label.
    Bert { cfg: Box<ClassifierConfig>, tok: Box<Tokenizer> },
}

impl RewardExport {
    /// The Hugging Face class the folder loads as.
    pub fn architecture(&self) -> &'static str {
        match self {
            RewardExport::Gpt { arch, .. } => crate::hf::classifier_architecture(*arch),
            RewardExport::Bert { .. } => crate::classifier::SEQUENCE_CLASSIFIER,
        }
    }
}

/// Writes the reward model folder: weights (LoRA merged), config, tokenizer
/// (and for a GPT its chat template).
pub fn write_reward(dir: &Path, vs: &nn::VarStore, export: &RewardExport, lora: Option<&LoraConfig>) -> anyhow::Result<()> {
    let (base, pad, arch) = match export {
        RewardExport::Bert { cfg, tok } => return write_classifier(dir, vs, cfg, lora, tok),
        RewardExport::Gpt { base, pad, arch } => (base, pad, *arch),
    };
    // A sequence classifier has no language-model head.
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| n != crate::gpt::LM_HEAD).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_merged(dir, named, lora, arch.layout())?;
    copy_kept(base, dir)?;
    let path = dir.join(CONFIG);
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    cfg["architectures"] = serde_json::json!([crate::hf::classifier_architecture(arch)]);
    cfg["id2label"] = serde_json::json!({"0": REWARD_LABEL});
    cfg["label2id"] = serde_json::json!({REWARD_LABEL: 0});
    cfg["pad_token_id"] = serde_json::json!(pad);
    cfg["problem_type"] = serde_json::json!("regression");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

/// The head of a reward model folder, as its `config.json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardHead {
    /// A decoder's `…ForSequenceClassification`, with the token that pads batches.
    Gpt { pad: Option<u32> },
    /// `BertForSequenceClassification` with one label.
    Bert,
}

/// Reads which reward head the folder `dir` holds; an error for any other folder.
pub fn reward_head(dir: &Path) -> anyhow::Result<RewardHead> {
    use crate::classifier::SEQUENCE_CLASSIFIER;
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG))?)?;
    let arch = raw["architectures"].get(0).and_then(|a| a.as_str()).unwrap_or("");
    let labels = raw["id2label"].as_object().map_or(0, |m| m.len());
    let decoders = Arch::ALL.map(crate::hf::classifier_architecture);
    match arch {
        a if decoders.contains(&a) => Ok(RewardHead::Gpt { pad: raw["pad_token_id"].as_u64().map(|p| p as u32) }),
        SEQUENCE_CLASSIFIER if labels == 1 => Ok(RewardHead::Bert),
        _ => anyhow::bail!(
            "{}: not a reward model (architecture `{arch}` with {labels} label(s); expected one of {} or `{SEQUENCE_CLASSIFIER}` with one label)",
            dir.display(),
            decoders.join(", ")
        ),
    }
}
