//! What the trainers of this crate share: the loop settings every stage
//! exposes, loading a GPT policy (full or LoRA) from a model folder (written
//! back by `forja_model::export::write_policy`), encoding preference pairs,
//! and the engine's output files.

use crate::logps::Seq;
use crate::text::{fit, Formatter};
use forja_core::stage::{outputs, OutDir, OutputSpec};
use forja_core::{Preference, Reject};
use forja_model::checkpoint::{self, Weights, WEIGHTS};
use forja_model::generate::{generate_batch, SamplingConfig};
use forja_model::{Gpt, GptConfig, LoraConfig, Precision};
use forja_train::{DiagnosisConfig, EngineConfig, EngineOutputs, OptimConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device};

/// `given` parameters over `defaults`, nested tables merged key by key, so
/// `sampling = { max_new_tokens = 8 }` keeps the stage's other sampling
/// defaults (plain `#[serde(default)]` would take `SamplingConfig`'s own);
/// unknown keys are still errors naming them.
pub fn over<T: Serialize + serde::de::DeserializeOwned>(defaults: T, given: serde_json::Value) -> Result<T, serde_json::Error> {
    fn merge(base: &mut serde_json::Value, given: serde_json::Value) {
        match (base, given) {
            (serde_json::Value::Object(b), serde_json::Value::Object(g)) => {
                for (k, v) in g {
                    match b.get_mut(&k) {
                        Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                        _ => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (b, g) => *b = g,
        }
    }
    let mut base = serde_json::to_value(defaults)?;
    merge(&mut base, given);
    serde_json::from_value(base)
}

/// A stage's parameters read over its own defaults ([`over`]).
macro_rules! params_over_defaults {
    ($(#[$doc:meta])* $name:ident($inner:ty) = $defaults:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::common::over($defaults, serde::Deserialize::deserialize(d)?).map(Self).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use params_over_defaults;

/// The training loop's settings, as every stage of this crate takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimiser steps (0: from `epochs`, where the stage has a finite set).
    pub max_steps: u64,
    /// Passes over the training pairs (sets `max_steps` when that is 0).
    pub epochs: f64,
    pub grad_accum: u64,
    pub optim: OptimConfig,
    pub eval_interval: u64,
    /// Validation batches per estimate (0: all of them).
    pub eval_iters: u64,
    pub checkpoint_interval: u64,
    pub early_stopping_patience: u64,
    pub log_interval: u64,
    pub diagnosis: DiagnosisConfig,
    pub keep_best: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            max_steps: 0,
            epochs: 1.0,
            grad_accum: 1,
            optim: OptimConfig { lr: 5e-5, min_lr: 5e-6, warmup_steps: 10, weight_decay: 0.0, ..e.optim },
            eval_interval: 50,
            eval_iters: 0,
            checkpoint_interval: 50,
            early_stopping_patience: 0,
            log_interval: 10,
            diagnosis: e.diagnosis,
            keep_best: true,
        }
    }
}

impl LoopConfig {
    /// The engine's settings for a set of `n` training items drawn
    /// `batch` at a time, validated over `val_batches` batches.
    pub fn engine(&self, n: usize, batch: usize, val_batches: u64) -> EngineConfig {
        let per_epoch = n.div_ceil(batch.max(1) * self.grad_accum.max(1) as usize).max(1) as u64;
        let max_steps = if self.max_steps > 0 { self.max_steps } else { ((self.epochs * per_epoch as f64).ceil() as u64).max(1) };
        EngineConfig {
            optim: self.optim.clone(),
            grad_accum: self.grad_accum,
            max_steps,
            eval_interval: self.eval_interval,
            eval_iters: if self.eval_iters == 0 { val_batches } else { self.eval_iters.min(val_batches) },
            checkpoint_interval: self.checkpoint_interval,
            early_stopping_patience: self.early_stopping_patience,
            log_interval: self.log_interval,
            diagnosis: self.diagnosis.clone(),
            keep_best: self.keep_best,
        }
    }
}

pub const MODEL: OutputSpec = OutputSpec { name: "model", path: "model" };
pub const GRAD_PLOT: OutputSpec = OutputSpec { name: "grad_plot", path: "grad_norms.svg" };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow" };

/// Where the engine writes a stage's model, metrics, plots and report.
pub fn engine_outputs(out: &OutDir) -> EngineOutputs {
    EngineOutputs {
        model: out.path(&MODEL),
        metrics: out.path(&outputs::METRICS),
        plot: out.path(&outputs::PLOT),
        grad_plot: out.path(&GRAD_PLOT),
        report: out.path(&outputs::REPORT),
    }
}

/// What every trainer starts with: its seed and device, the thread count
/// in force for the stage, libtorch's RNG seeded.
pub struct Setup {
    pub seed: u64,
    pub device_name: String,
    pub device: Device,
    _threads: forja_train::ThreadsGuard,
}

/// Resolves seed and device (the stage's own or the run's) and sets threads.
pub fn setup(seed: Option<u64>, device: Option<&str>, threads: i32, ctx: &forja_core::stage::StageCtx) -> anyhow::Result<Setup> {
    let seed = seed.unwrap_or(ctx.seed);
    let device_name = device.unwrap_or(&ctx.device).to_string();
    let device = forja_model::parse_device(&device_name)?;
    let threads = forja_train::ThreadsGuard::set(threads);
    tch::manual_seed(seed as i64);
    Ok(Setup { seed, device_name, device, _threads: threads })
}

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
    anyhow::ensure!(found == "gpt2", "a GPT model folder is needed; {} is `{found}`", dir.display());
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
