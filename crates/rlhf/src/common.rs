//! What the trainers of this crate share: their trainer defaults, loading a GPT policy (full or LoRA) from a model folder (written
//! back by `forja_model::export::write_policy`), encoding preference pairs,
//! and the engine's output files.

use crate::logps::Seq;
use crate::text::{fit, Formatter};
use forja_core::stage::{port, OutputSpec};
use forja_core::{Preference, Reject};
use forja_model::checkpoint::{self, Weights, WEIGHTS};
use forja_model::generate::{generate_batch, SamplingConfig};
use forja_model::{Gpt, GptConfig, LoraConfig, Precision};
use forja_train::{OptimConfig, TrainerConfig};
use std::path::Path;
use tch::{nn, Device};

/// A stage's parameters with the stage's own defaults (`Default`), which the
/// stage adapter reads partial tables over.
macro_rules! params_over_defaults {
    ($(#[$doc:meta])* $name:ident($inner:ty) = $defaults:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        /// The stage's own defaults, which the stage adapter reads the given
        /// parameters over ([`forja_core::params::over`]).
        impl Default for $name {
            fn default() -> Self {
                Self($defaults)
            }
        }
    };
}
pub(crate) use params_over_defaults;

/// The trainer defaults of this crate's stages: one epoch of batches of 8,
/// AdamW at 5e-5 without weight decay, validation and checkpoints every 50
/// steps over every validation batch.
pub fn train_defaults() -> TrainerConfig {
    let d = TrainerConfig::default();
    TrainerConfig {
        max_steps: 0,
        epochs: 1.0,
        batch_size: 8,
        optim: OptimConfig { lr: 5e-5, min_lr: 5e-6, warmup_steps: 10, weight_decay: 0.0, ..d.optim },
        eval_interval: 50,
        eval_iters: 0,
        checkpoint_interval: 50,
        log_interval: 10,
        ..d
    }
}

pub use forja_train::trainer::{engine_outputs, GRAD_PLOT, MODEL};
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };

/// A GPT loaded for training: full, or frozen with LoRA adapters.
pub struct Policy {
    pub vs: nn::VarStore,
    pub model: Gpt,
    pub cfg: GptConfig,
    pub fmt: Formatter,
}

/// Loads the GPT folder `dir` into a fresh var store (adapters when `lora`).
pub fn load_policy(
    dir: &Path,
    device: Device,
    lora: Option<&LoraConfig>,
    dropout: Option<f64>,
    precision: Precision,
) -> anyhow::Result<Policy> {
    let found = checkpoint::model_type(dir)?;
    anyhow::ensure!(
        checkpoint::is_decoder(&found),
        "a decoder model folder is needed ({}); {} is `{found}`",
        checkpoint::DECODER_TYPES.join(", "),
        dir.display()
    );
    let mut cfg = checkpoint::read_config(dir)?;
    if let Some(p) = dropout {
        cfg.dropout = p;
    }
    let mut vs = nn::VarStore::new(device);
    let mut model = Gpt::with_lora(&vs.root(), &cfg, lora)?;
    model.precision = precision;
    Weights::read(&dir.join(WEIGHTS))?.load_into(&mut vs, &|n| n.contains(".lora_"))?;
    Ok(Policy { vs, model, cfg, fmt: Formatter::for_model(dir)? })
}

/// Answers of `model` to prompts given as ids, in one batched generation
/// stopping at `fmt`'s end token, which is kept at the end of an answer that
/// stopped (it was sampled: an action, and part of what rewards see).
pub fn generate_answers(model: &Gpt, fmt: &Formatter, prompts: &[Vec<u32>], sampling: &SamplingConfig) -> anyhow::Result<Vec<Vec<u32>>> {
    let stop: Vec<u32> = fmt.end.into_iter().collect();
    Ok(generate_batch(model, prompts, &stop, sampling)?
        .into_iter()
        .map(|g| {
            let mut answer = g.tokens;
            if g.stopped {
                answer.extend(fmt.end);
            }
            answer
        })
        .collect())
}

/// A preference pair as two sequences sharing a prompt.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    pub chosen: Seq,
    pub rejected: Seq,
    /// Content hash of (prompt, chosen, rejected).
    pub key: String,
}

/// The content hash of a pair.
pub fn pair_key(p: &Preference) -> String {
    forja_core::hash::hash_json(&(&p.prompt, &p.chosen, &p.rejected))
}

/// Encodes pairs for `fmt`, fitted into `max_len` tokens (cut as
/// [`fit`] does, counted in the second value); a pair that cannot be encoded
/// becomes a reject naming `file` and its row.
pub fn encode_pairs(
    fmt: &Formatter,
    pairs: &[Preference],
    max_len: usize,
    file: &Path,
    rejects: &mut Vec<Reject>,
) -> (Vec<EncodedPair>, usize) {
    let mut out = Vec::with_capacity(pairs.len());
    let mut cut = 0;
    let source = file.display().to_string();
    for (i, p) in pairs.iter().enumerate() {
        let encoded = (|| -> anyhow::Result<EncodedPair> {
            let mut prompt = fmt.prompt_ids(&p.prompt)?;
            let mut c = fmt.answer_ids(&p.prompt, &p.chosen)?;
            let mut r = fmt.answer_ids(&p.prompt, &p.rejected)?;
            anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
            if fit(&mut prompt, &mut [&mut c, &mut r], max_len, 8) {
                cut += 1;
            }
            anyhow::ensure!(!c.is_empty() && !r.is_empty(), "an answer encodes to no tokens");
            anyhow::ensure!(c != r, "the answers are the same tokens after fitting into {max_len}");
            Ok(EncodedPair { chosen: Seq { prompt: prompt.clone(), answer: c }, rejected: Seq { prompt, answer: r }, key: pair_key(p) })
        })();
        match encoded {
            Ok(e) => out.push(e),
            Err(e) => rejects.push(Reject::new(
                &source,
                i as u64 + 1,
                format!("{e:#}"),
                &serde_json::json!([p.prompt, p.chosen, p.rejected]).to_string(),
            )),
        }
    }
    (out, cut)
}
