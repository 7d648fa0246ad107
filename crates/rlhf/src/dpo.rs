//! The `dpo` stage: direct preference optimisation (Rafailov et al. 2023), or
//! IPO, or its length-normalised form, as an objective of the training engine.
//!
//! The reference model's log-probabilities of every pair are computed once,
//! before training (the policy's starting weights are the reference), and
//! written as the `pair_logps` artifact `reference.arrow`; a later run can take
//! it as its `reference` input and skip that pass. No reference model stays
//! in memory while training. Chosen and rejected answers go through the
//! policy in one batch, and only answer positions through its vocabulary
//! projection ([`crate::logps`]).

use crate::common::{self, encode_pairs, EncodedPair, Policy};
use crate::logps::{self, Seq};
use crate::losses::{self, DpoLoss};
use forja_core::artifacts::Artifact;
use forja_core::metric;
use forja_core::stage::{outputs, port, FromInputs, OutDir, OutputSpec, StageCtx};
use forja_core::{PairLogps, Preference, Reject, TokenRow};
use forja_model::{Gpt, LoraConfig};
use forja_train::batches::EpochBatches;
use forja_train::{run_key, Engine, EvalScore, EvalSplit, Objective, ParamGroup, RunSpec, TrainSummary, TrainerConfig, TrainerSetup};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Parameters of `dpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Strength of the pull towards the reference (the KL weight).
    pub beta: f64,
    pub loss: DpoLoss,
    /// Longest prompt + answer in tokens (0: the model's context).
    pub max_length: usize,
    /// The trainer settings (`batch_size`: pairs per micro-batch).
    pub train: TrainerConfig,
    pub lora: Option<LoraConfig>,
    /// Dropout while training (the model's own when absent; 0 keeps the
    /// policy's log-probabilities comparable to the reference's).
    pub dropout: Option<f64>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self { beta: 0.1, loss: DpoLoss::Sigmoid, max_length: 0, train: common::train_defaults(), lora: None, dropout: Some(0.0) }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `dpo`.
    pub struct DpoInputs {
        /// The GPT folder to align (the reference too).
        model: one[MODEL],
        train: one[PREFERENCES],
        val: optional[PREFERENCES],
        /// A `pair_logps` artifact of the same model (an earlier run's `reference`).
        reference: optional[PAIR_LOGPS],
    }
}

pub const REFERENCE: OutputSpec = OutputSpec { name: "reference", path: "reference.arrow", kind: port::PAIR_LOGPS };
pub const OUTPUTS: [OutputSpec; 7] =
    [common::MODEL, outputs::METRICS, outputs::PLOT, common::GRAD_PLOT, outputs::REPORT, common::REJECTS, REFERENCE];

/// Metric names.
pub const CHOSEN_REWARD: &str = "rewards_chosen";
pub const REJECTED_REWARD: &str = "rewards_rejected";
pub const MARGIN: &str = "rewards_margin";

/// A pair with its reference log-probabilities.
pub struct RefPair {
    pub pair: EncodedPair,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

/// The DPO objective.
pub struct Dpo<'a> {
    pub model: &'a Gpt,
    pub beta: f64,
    pub loss: DpoLoss,
    pub train: Vec<RefPair>,
    pub val: Vec<RefPair>,
    pub batches: EpochBatches,
    pub write: forja_train::ModelWriter<'a>,
    last: Vec<(&'static str, f64)>,
}

impl<'a> Dpo<'a> {
    pub fn new(
        model: &'a Gpt,
        cfg: &DpoConfig,
        train: Vec<RefPair>,
        val: Vec<RefPair>,
        seed: u64,
        write: forja_train::ModelWriter<'a>,
    ) -> Self {
        let batches = EpochBatches::new(train.len(), cfg.train.batch_size, cfg.train.global_accum(), seed);
        Self { model, beta: cfg.beta, loss: cfg.loss, train, val, batches, write, last: Vec::new() }
    }

    /// Mean loss, and the mean implicit rewards, accuracy and margin.
    pub fn score(&self, pairs: &[&RefPair], train: bool) -> anyhow::Result<(Tensor, Vec<(&'static str, f64)>)> {
        let device = self.model.device();
        let mut seqs: Vec<&Seq> = pairs.iter().map(|p| &p.pair.chosen).collect();
        seqs.extend(pairs.iter().map(|p| &p.pair.rejected));
        let b = logps::batch(&seqs, device)?;
        let s = logps::token_scores(self.model, &b, train, false)?;
        let sums = logps::per_seq_sum(&b, &s.logps);
        let n = pairs.len() as i64;
        let f = |v: Vec<f64>| Tensor::from_slice(&v).to_kind(Kind::Float).to(device);
        let lengths = f(b.lengths.iter().map(|&l| l as f64).collect());
        let terms = losses::dpo(
            self.loss,
            self.beta,
            &losses::PairLogps {
                policy_chosen: &sums.narrow(0, 0, n),
                policy_rejected: &sums.narrow(0, n, n),
                reference_chosen: &f(pairs.iter().map(|p| p.ref_chosen).collect()),
                reference_rejected: &f(pairs.iter().map(|p| p.ref_rejected).collect()),
                chosen_tokens: &lengths.narrow(0, 0, n),
                rejected_tokens: &lengths.narrow(0, n, n),
            },
        );
        let loss = terms.losses.mean(Kind::Float);
        let _g = tch::no_grad_guard();
        let margin = &terms.chosen_rewards - &terms.rejected_rewards;
        let metrics = vec![
            (CHOSEN_REWARD, terms.chosen_rewards.mean(Kind::Float).double_value(&[])),
            (REJECTED_REWARD, terms.rejected_rewards.mean(Kind::Float).double_value(&[])),
            (MARGIN, margin.mean(Kind::Float).double_value(&[])),
            (metric::ACCURACY, margin.gt(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])),
        ];
        Ok((loss, metrics))
    }
}

impl Objective for Dpo<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let idx = self.batches.indices(step, micro);
        let pairs: Vec<&RefPair> = idx.iter().map(|&i| &self.train[i]).collect();
        let (loss, metrics) = self.score(&pairs, true)?;
        self.last = metrics;
        Ok(loss)
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let data = if split == EvalSplit::Val { &self.val } else { &self.train };
        let pairs: Vec<&RefPair> = data[self.batches.fixed(i, data.len())].iter().collect();
        anyhow::ensure!(!pairs.is_empty(), "no {} pairs to evaluate", split.name());
        let (loss, metrics) = self.score(&pairs, false)?;
        Ok(EvalScore { loss: loss.double_value(&[]), metrics })
    }

    fn has_val(&self) -> bool {
        !self.val.is_empty()
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        (self.write)(vs, dir)
    }

    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        Ok(self
            .batches
            .peek(step, micro)
            .into_iter()
            .flat_map(|i| {
                let p = &self.train[i].pair;
                [("chosen", &p.chosen), ("rejected", &p.rejected)]
                    .map(|(w, s)| TokenRow { doc_id: format!("pair{i}.{w}"), ids: s.prompt.iter().chain(&s.answer).copied().collect() })
            })
            .collect())
    }

    fn tokens_per_micro(&self) -> f64 {
        let tokens: usize = self.train.iter().map(|p| p.pair.chosen.len() + p.pair.rejected.len()).sum();
        tokens as f64 / self.train.len().max(1) as f64 * self.batches.batch_size as f64
    }

    fn step_metrics(&mut self) -> Vec<(&'static str, f64)> {
        std::mem::take(&mut self.last)
    }
}

/// Summed log-probabilities of both answers of every pair under `model`.
pub fn pair_logps(model: &Gpt, pairs: &[EncodedPair], batch: usize) -> anyhow::Result<Vec<PairLogps>> {
    let seqs: Vec<Seq> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let sums = logps::sequence_logps(model, &seqs, batch * 2)?;
    Ok(pairs
        .iter()
        .zip(sums.chunks(2))
        .map(|(p, s)| PairLogps {
            key: p.key.clone(),
            chosen_logp: s[0],
            rejected_logp: s[1],
            chosen_tokens: p.chosen.answer.len() as u64,
            rejected_tokens: p.rejected.answer.len() as u64,
        })
        .collect())
}

/// Joins pairs with their reference rows (by content key and answer length).
fn join(pairs: Vec<EncodedPair>, table: &HashMap<String, PairLogps>, file: &Path) -> anyhow::Result<Vec<RefPair>> {
    pairs
        .into_iter()
        .map(|pair| {
            let r = table.get(&pair.key).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no reference log-probabilities for a pair (key {}); was it computed for other pairs?",
                    file.display(),
                    &pair.key[..12]
                )
            })?;
            anyhow::ensure!(
                r.chosen_tokens == pair.chosen.answer.len() as u64 && r.rejected_tokens == pair.rejected.answer.len() as u64,
                "{}: reference log-probabilities of pair {} were computed for other token counts (another tokenizer or max_length)",
                file.display(),
                &pair.key[..12]
            );
            Ok(RefPair { ref_chosen: r.chosen_logp, ref_rejected: r.rejected_logp, pair })
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct DpoSummary {
    pub train: TrainSummary,
    pub pairs: usize,
    pub val_pairs: usize,
    pub rejected: usize,
    pub truncated: usize,
    /// Whether the reference log-probabilities came from the `reference` input.
    pub reused_reference: bool,
    /// Mean implicit reward margin over the training pairs, before (0 by
    /// construction) and after training (the exported weights).
    pub train_margin_after: f64,
    pub train_accuracy_after: f64,
}

pub fn run(cfg: &DpoConfig, inputs: &DpoInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<DpoSummary> {
    anyhow::ensure!(cfg.beta > 0.0, "beta must be > 0, got {}", cfg.beta);
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let Policy { mut vs, model, fmt, cfg: gpt_cfg } =
        common::load_policy(&inputs.model, device, cfg.lora.as_ref(), cfg.dropout, cfg.train.precision)?;
    let max_len = match cfg.max_length {
        0 => gpt_cfg.block_size as usize,
        n => n.min(gpt_cfg.block_size as usize),
    };
    let mut rejects = Vec::new();
    let (train, cut_t) = encode_pairs(&fmt, &Preference::read(&inputs.train)?, max_len, &inputs.train, &mut rejects);
    let (val, cut_v) = match &inputs.val {
        Some(v) => encode_pairs(&fmt, &Preference::read(v)?, max_len, v, &mut rejects),
        None => (Vec::new(), 0),
    };
    Reject::write(&out.path(&common::REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    anyhow::ensure!(!train.is_empty(), "{}: no usable training pair ({} rejected)", inputs.train.display(), rejects.len());

    // The reference: the starting policy (LoRA adapters start at zero), once.
    let (table, reused) = match &inputs.reference {
        Some(path) => (PairLogps::read(path)?, true),
        None => {
            let started = std::time::Instant::now();
            let all: Vec<EncodedPair> = train.iter().chain(&val).cloned().collect();
            let rows = pair_logps(&model, &all, cfg.train.batch_size)?;
            println!("{}: reference log-probabilities of {} pairs in {:.1} s", ctx.name, rows.len(), started.elapsed().as_secs_f64());
            (rows, false)
        }
    };
    PairLogps::write(&out.path(&REFERENCE), &ctx.name, &ctx.config_hash, &table)?;
    let by_key: HashMap<String, PairLogps> = table.into_iter().map(|r| (r.key.clone(), r)).collect();
    let ref_file = inputs.reference.clone().unwrap_or_else(|| out.path(&REFERENCE));
    let train = join(train, &by_key, &ref_file)?;
    let val = join(val, &by_key, &ref_file)?;
    let (n_train, n_val) = (train.len(), val.len());

    let groups = match cfg.lora {
        Some(_) => ParamGroup::train_only(&vs, |n| n.contains(".lora_"), cfg.train.optim.weight_decay),
        None => ParamGroup::decay_split(&vs, cfg.train.optim.weight_decay),
    };
    let base = inputs.model.clone();
    let lora = cfg.lora.clone();
    let write: forja_train::ModelWriter = Box::new(move |vs, dir| forja_model::export::write_policy(dir, vs, &base, lora.as_ref()));
    let mut obj = Dpo::new(&model, cfg, train, val, seed, write);
    let engine_cfg = cfg.train.engine_for_examples(n_train, obj.batches.covering(n_val));
    println!(
        "{}: {n_train} pairs, {n_val} held out, {} rejected, {} cut to {max_len} tokens; {} steps, beta {}, {:?} loss",
        ctx.name,
        rejects.len(),
        cut_t + cut_v,
        engine_cfg.max_steps,
        cfg.beta,
        cfg.loss
    );
    let spec = RunSpec { seed, run_key: run_key(cfg, seed, device_name, &inputs.named_paths(), ctx)?, ctx, out_dir: out.dir() };
    let outs = common::engine_outputs(out);
    let summary = Engine::new(&engine_cfg, &mut vs, groups, spec)?.run(&mut obj, &outs, &mut |_| std::ops::ControlFlow::Continue(()))?;

    // The exported weights' margin over every training pair.
    let (margin, accuracy) = {
        let trained = common::load_policy(&outs.model, device, None, Some(0.0), cfg.train.precision)?;
        let pairs: Vec<EncodedPair> = obj.train.iter().map(|p| p.pair.clone()).collect();
        let now = pair_logps(&trained.model, &pairs, cfg.train.batch_size)?;
        let margins: Vec<f64> = now
            .iter()
            .zip(&obj.train)
            .map(|(n, r)| cfg.beta * ((n.chosen_logp - r.ref_chosen) - (n.rejected_logp - r.ref_rejected)))
            .collect();
        let mean = margins.iter().sum::<f64>() / margins.len() as f64;
        (mean, margins.iter().filter(|m| **m > 0.0).count() as f64 / margins.len() as f64)
    };
    drop(obj);
    let mut report = std::fs::read_to_string(&outs.report).unwrap_or_default();
    report += &format!(
        "\n## DPO\n\n| | |\n|---|---|\n| loss | {:?} (beta {}) |\n| training pairs | {n_train} |\n| held-out pairs | {n_val} |\n| rejected / cut pairs | {} / {} |\n| reference log-probabilities | {} |\n| mean implicit reward margin on training pairs (exported weights; 0 at the start) | {margin:.4} |\n| training pairs with a positive margin | {:.1}% |\n",
        cfg.loss,
        cfg.beta,
        rejects.len(),
        cut_t + cut_v,
        if reused { format!("reused from {}", ref_file.display()) } else { "computed once before training (`reference.arrow`)".into() },
        100.0 * accuracy
    );
    forja_core::fsutil::atomic_write(&outs.report, report.as_bytes())?;
    Ok(DpoSummary {
        train: summary,
        pairs: n_train,
        val_pairs: n_val,
        rejected: rejects.len(),
        truncated: cut_t + cut_v,
        reused_reference: reused,
        train_margin_after: margin,
        train_accuracy_after: accuracy,
    })
}
