//! On-policy RL on the training engine: the `ppo` and `grpo` stages.
//!
//! Both are one [`Objective`] with a rollout phase: optimiser step `s` belongs
//! to rollout `s / updates_per_rollout`; at the first step of a rollout the
//! policy answers a batch of prompts (batched generation with a KV cache), the
//! answers are scored (a reward model, or a verifiable rule), and the
//! frozen reference's log-probabilities give the KL penalty. The updates of
//! that rollout are minibatch epochs over it, each one engine step — so the
//! optimiser, clipping, diagnosis, checkpoints, metrics and report are the
//! engine's. Checkpoints fall on rollout boundaries, and the adaptive KL
//! coefficient is objective state saved with them.
//!
//! - **PPO** (Ziegler et al. 2019, TRL's `PPOTrainer`): per-token rewards
//!   `−β·KL` plus the score on the last token, a value head on the policy's
//!   hidden states, GAE, whitened advantages, the clipped policy and value
//!   losses; fixed or adaptive β.
//! - **GRPO** (Shao et al. 2024): `group_size` answers per prompt, advantages
//!   relative to the group, no value model, the clipped objective plus β times
//!   the k3 KL estimate, averaged over the batch's tokens.
//!
//! With LoRA the reference is the policy with its adapters switched off
//! ([`Gpt::set_adapters`]): no second copy of the weights in memory.

use crate::common::{self, Policy};
use crate::logps::{self, Batch, Seq};
use crate::losses::{self, KlController};
use crate::reward::{self, LoadedReward};
use crate::text::{last_tokens, Formatter};
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, FromInputs, OutDir, OutputSpec, StageCtx};
use forja_core::{Generation, Message, Preference, SftExample, TokenRow};
use forja_model::generate::SamplingConfig;
use forja_model::{Gpt, LoraConfig};
use forja_train::batches::EpochBatches;
use forja_train::{run_key, Engine, EvalScore, EvalSplit, Objective, ParamGroup, RunSpec, TrainSummary, TrainerConfig, TrainerSetup};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::Module;
use tch::{nn, Kind, Tensor};

/// A prompt to answer, with a reference answer when the data has one.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// As `preferences` store prompts (a conversation as
    /// [`crate::text::messages_text`]): one form for every model folder,
    /// which [`Formatter::prompt_ids`] renders as it was trained.
    pub text: String,
    pub reference: Option<String>,
}

/// Reads prompts from a `preferences` artifact (its prompts, once each) or an
/// `sft_examples` artifact (the turns before the first assistant turn; that
/// turn is the reference answer).
pub fn read_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    if let Ok(pairs) = Preference::read(path) {
        let mut seen = std::collections::HashSet::new();
        return Ok(pairs
            .into_iter()
            .filter(|p| seen.insert(p.prompt.clone()))
            .map(|p| Prompt { text: p.prompt, reference: None })
            .collect());
    }
    let examples = SftExample::read(path).map_err(|e| anyhow::anyhow!("{}: neither preferences nor sft_examples ({e})", path.display()))?;
    Ok(examples
        .into_iter()
        .filter_map(|e| {
            let at = e.messages.iter().position(|m| m.role == "assistant");
            let messages: Vec<Message> = e.messages[..at.unwrap_or(e.messages.len())].to_vec();
            let reference = at.map(|i| e.messages[i].content.clone());
            (!messages.is_empty()).then(|| Prompt { text: crate::text::messages_text(&messages), reference })
        })
        .collect())
}

/// A reward computed from the answer itself (no model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The share of the answer's tokens that are `token` (one token of the
    /// policy's vocabulary).
    TokenShare { token: String },
    /// 1 when the answer's final number equals the reference answer's (after
    /// GSM8K's `####` when present, else the last number), else 0.
    FinalNumber,
}

/// The final number of a text: after the last `####` when there is one,
/// else the last number; commas and a trailing period dropped.
pub fn final_number(text: &str) -> Option<f64> {
    let marked = text.rsplit_once("####");
    let tail = marked.map_or(text, |(_, t)| t);
    let mut last = None;
    let mut cur = String::new();
    let flush = |cur: &mut String, last: &mut Option<f64>| {
        let t = cur.trim_end_matches('.').replace(',', "");
        if let Ok(v) = t.parse::<f64>() {
            *last = Some(v);
        }
        cur.clear();
    };
    for ch in tail.chars() {
        if ch.is_ascii_digit() || (ch == '-' && cur.is_empty()) || ((ch == '.' || ch == ',') && !cur.is_empty()) {
            cur.push(ch);
        } else if !cur.is_empty() {
            flush(&mut cur, &mut last);
            if marked.is_some() && last.is_some() {
                break;
            }
        }
    }
    if !cur.is_empty() {
        flush(&mut cur, &mut last);
    }
    last
}

/// Where rewards come from.
pub enum Scorer {
    Model(Box<LoadedReward>),
    Rule { rule: Rule, token: Option<u32> },
}

impl Scorer {
    /// Rewards of answers (`ids`, the policy's tokens) to prompts.
    fn scores(&self, fmt: &Formatter, items: &[(&Prompt, &[u32])]) -> anyhow::Result<Vec<f64>> {
        match self {
            Scorer::Model(r) => {
                let prompts: Vec<&str> = items.iter().map(|(p, _)| p.text.as_str()).collect();
                let answers: Vec<String> = items.iter().map(|(_, ids)| fmt.answer_text(ids)).collect::<anyhow::Result<_>>()?;
                r.score_answers(&prompts, &answers, 16)
            }
            Scorer::Rule { rule: Rule::TokenShare { .. }, token } => Ok(items
                .iter()
                .map(|(_, ids)| {
                    let body: Vec<&u32> = ids.iter().filter(|t| Some(**t) != fmt.end).collect();
                    body.iter().filter(|t| Some(***t) == *token).count() as f64 / body.len().max(1) as f64
                })
                .collect()),
            Scorer::Rule { rule: Rule::FinalNumber, .. } => items
                .iter()
                .map(|(p, ids)| {
                    let reference = p
                        .reference
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("the final_number rule needs reference answers (sft_examples prompts)"))?;
                    let got = final_number(&fmt.answer_text(ids)?);
                    Ok(f64::from(u8::from(got.is_some() && got == final_number(reference))))
                })
                .collect(),
        }
    }
}

/// One answer of a rank's share of a rollout: prompt ids, answer ids, reward.
type AnsweredPrompt = (Vec<u32>, Vec<u32>, f64);

/// The algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Ppo,
    Grpo,
}

/// Parameters of `ppo` and `grpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    /// Rollouts (the run has `rollouts × epochs × minibatches` optimiser steps).
    pub rollouts: u64,
    /// Prompts per rollout.
    pub prompts_per_rollout: usize,
    /// Answers per prompt (GRPO's group; 1 for PPO).
    pub group_size: usize,
    /// Passes over each rollout and minibatches per pass.
    pub epochs: usize,
    pub minibatches: usize,
    /// How answers are sampled (temperature 1, no top-k: the log-probabilities
    /// are the sampling distribution's).
    pub sampling: SamplingConfig,
    /// Prompt tokens kept (from the end); 0: half the context.
    pub max_prompt_length: usize,
    /// KL coefficient β (initial when adaptive).
    pub kl_coef: f64,
    /// Target KL per answer for the adaptive coefficient (PPO; none: fixed).
    pub kl_target: Option<f64>,
    pub kl_horizon: f64,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Whiten PPO's advantages over the rollout; scale GRPO's by the group's std.
    pub whiten: bool,
    /// A rule reward instead of a `reward_model` input (GRPO without either:
    /// `final_number`).
    pub rule: Option<Rule>,
    /// Prompts answered at each evaluation (from `val`, else `prompts`).
    pub eval_prompts: usize,
    /// Held-out answers written beside the model (`samples.arrow`, report).
    pub samples: usize,
    /// The trainer settings. `max_steps` 0 runs `rollouts × epochs ×
    /// minibatches` steps (set: that many); `batch_size` and `epochs` do not
    /// apply (each rollout is split into `minibatches`, passed over `epochs` times).
    pub train: TrainerConfig,
    pub lora: Option<LoraConfig>,
    pub dropout: Option<f64>,
}

impl RlConfig {
    /// PPO's defaults.
    pub fn ppo() -> Self {
        let mut train = common::train_defaults();
        train.optim.lr = 1e-5;
        train.optim.warmup_steps = 0;
        train.optim.min_lr = 1e-5;
        // RL losses are not a descending curve: spike detection would fire on
        // every good rollout. Non-finite values and explosions still count.
        train.diagnosis.spike_factor = 0.0;
        // A rollout whose rewards are all equal has no advantage and so no
        // gradient: normal in RL, not a vanishing gradient.
        train.diagnosis.vanish_threshold = 0.0;
        train.eval_interval = 20;
        train.checkpoint_interval = 20;
        // The policy exported is the last one (an evaluation's reward is a
        // noisy sample; `train.keep_best = true` picks the best evaluation).
        train.keep_best = false;
        Self {
            rollouts: 20,
            prompts_per_rollout: 16,
            group_size: 1,
            epochs: 2,
            minibatches: 2,
            sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, max_new_tokens: 48, seed: 0 },
            max_prompt_length: 0,
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 10_000.0,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten: true,
            rule: None,
            eval_prompts: 16,
            samples: 6,
            train,
            lora: None,
            dropout: Some(0.0),
        }
    }

    /// GRPO's defaults.
    pub fn grpo() -> Self {
        Self { group_size: 8, prompts_per_rollout: 4, epochs: 1, minibatches: 1, kl_coef: 0.04, ..Self::ppo() }
    }

    fn updates_per_rollout(&self) -> u64 {
        (self.epochs.max(1) * self.minibatches.max(1)) as u64
    }

    fn validate(&self, algo: Algorithm) -> anyhow::Result<()> {
        let d = common::train_defaults();
        anyhow::ensure!(
            self.train.batch_size == d.batch_size && self.train.epochs == d.epochs,
            "`train.batch_size` and `train.epochs` do not apply to PPO and GRPO: a rollout is split into `minibatches` and passed over `epochs` times"
        );
        anyhow::ensure!(self.rollouts > 0 && self.prompts_per_rollout > 0, "rollouts and prompts_per_rollout must be > 0");
        anyhow::ensure!(self.sampling.max_new_tokens > 0, "sampling.max_new_tokens must be > 0");
        anyhow::ensure!(self.sampling.temperature > 0.0, "sampling.temperature must be > 0 (on-policy RL samples)");
        let n = self.prompts_per_rollout * self.group_size.max(1);
        anyhow::ensure!(n >= self.minibatches.max(1), "{n} answers per rollout cannot fill {} minibatches", self.minibatches);
        if algo == Algorithm::Grpo {
            anyhow::ensure!(self.group_size >= 2, "GRPO needs group_size >= 2, got {}", self.group_size);
        }
        Ok(())
    }
}

forja_core::stage_inputs! {
    /// Inputs of `ppo` / `grpo`.
    pub struct RlInputs {
        /// The GPT folder to train (the reference too).
        model: one[MODEL],
        /// Prompts: `preferences` or `sft_examples`.
        prompts: one[PREFERENCES, SFT_EXAMPLES],
        val: optional[PREFERENCES, SFT_EXAMPLES],
        /// A folder written by `reward_model` (else `rule`).
        reward_model: optional[MODEL],
    }
}

pub const SAMPLES: OutputSpec = OutputSpec { name: "samples", path: "samples.arrow", kind: port::GENERATIONS };
/// Reward, KL, entropy and clip fraction per step.
pub const RL_PLOT: OutputSpec = OutputSpec { name: "rl_plot", path: "rl.svg", kind: port::SVG };
pub const OUTPUTS: [OutputSpec; 7] = [common::MODEL, outputs::METRICS, outputs::PLOT, common::GRAD_PLOT, outputs::REPORT, SAMPLES, RL_PLOT];

/// Metric names logged per step.
pub mod names {
    pub const REWARD: &str = "reward";
    pub const KL: &str = "kl";
    pub const KL_COEF: &str = "kl_coef";
    pub const ENTROPY: &str = "entropy";
    pub const CLIP_FRACTION: &str = "clip_fraction";
    pub const VALUE_LOSS: &str = "value_loss";
    pub const VALUE_CLIP_FRACTION: &str = "value_clip_fraction";
    pub const POLICY_LOSS: &str = "policy_loss";
    pub const ANSWER_LENGTH: &str = "answer_length";
    pub const ROLLOUT_TOKENS_PER_S: &str = "rollout_tokens_per_s";
    /// Share of GRPO groups whose rewards are all equal (no learning signal).
    pub const ZERO_STD_GROUPS: &str = "zero_std_groups";
    /// Mean reward and answer length of greedy answers at an evaluation
    /// (split `train` or `val`; the per-step names are the rollouts').
    pub const EVAL_REWARD: &str = "eval_reward";
    pub const EVAL_ANSWER_LENGTH: &str = "eval_answer_length";
}

/// The frozen reference: the policy without adapters, or its own copy.
pub enum Reference {
    AdaptersOff,
    Copy(Box<Policy>),
    None,
}

/// One rollout: answers, and per-token tensors `[n, t]` laid out by
/// [`logps::to_padded`].
struct Rollout {
    index: u64,
    seqs: Vec<Seq>,
    old_logps: Tensor,
    ref_logps: Option<Tensor>,
    values: Option<Tensor>,
    advantages: Tensor,
    returns: Option<Tensor>,
    stats: Vec<(&'static str, f64)>,
}

/// The PPO / GRPO objective.
pub struct Rl<'a> {
    pub algo: Algorithm,
    pub cfg: &'a RlConfig,
    pub model: &'a Gpt,
    pub value_head: Option<nn::Linear>,
    pub reference: &'a Reference,
    pub fmt: &'a Formatter,
    pub scorer: &'a Scorer,
    pub prompts: Vec<Prompt>,
    pub val: Vec<Prompt>,
    pub seed: u64,
    pub kl: KlController,
    pub write: forja_train::ModelWriter<'a>,
    max_prompt: usize,
    /// Which prompts each rollout answers.
    order: EpochBatches,
    rollout: Option<Rollout>,
    /// The current rollout's statistics until a step of it is applied.
    unreported: Vec<(&'static str, f64)>,
    last: Vec<(&'static str, f64)>,
}

impl<'a> Rl<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        algo: Algorithm,
        cfg: &'a RlConfig,
        model: &'a Gpt,
        value_head: Option<nn::Linear>,
        reference: &'a Reference,
        fmt: &'a Formatter,
        scorer: &'a Scorer,
        prompts: Vec<Prompt>,
        val: Vec<Prompt>,
        seed: u64,
        write: forja_train::ModelWriter<'a>,
    ) -> Self {
        let block = model.cfg.block_size as usize;
        let max_prompt = if cfg.max_prompt_length == 0 { block / 2 } else { cfg.max_prompt_length.min(block - 1) };
        let kl = KlController { coef: cfg.kl_coef, target: cfg.kl_target, horizon: cfg.kl_horizon };
        Self {
            algo,
            cfg,
            model,
            value_head,
            reference,
            fmt,
            scorer,
            order: EpochBatches::new(prompts.len(), 1, cfg.prompts_per_rollout as u64, seed),
            prompts,
            val,
            seed,
            kl,
            write,
            max_prompt,
            rollout: None,
            unreported: Vec::new(),
            last: Vec::new(),
        }
    }

    fn prompt_ids(&self, p: &Prompt) -> anyhow::Result<Vec<u32>> {
        Ok(last_tokens(self.fmt.prompt_ids(&p.text)?, self.max_prompt))
    }

    /// Answers of the policy to `prompts` (each `group` times).
    fn answer(&self, prompts: &[&Prompt], group: usize, sampling: &SamplingConfig) -> anyhow::Result<Vec<Seq>> {
        let mut ids = Vec::with_capacity(prompts.len() * group);
        for p in prompts {
            let p = self.prompt_ids(p)?;
            ids.extend(std::iter::repeat_n(p, group));
        }
        let answers = common::generate_answers(self.model, self.fmt, &ids, sampling)?;
        Ok(ids.into_iter().zip(answers).map(|(prompt, answer)| Seq { prompt, answer }).collect())
    }

    /// Per-token log-probabilities `[n, t]` of `seqs` under the policy (or
    /// the reference), without gradients, with values when the head exists.
    fn score_tokens(&self, seqs: &[Seq], reference: bool) -> anyhow::Result<(Tensor, Option<Tensor>, Tensor)> {
        let _g = tch::no_grad_guard();
        let refs: Vec<&Seq> = seqs.iter().collect();
        let b = logps::batch(&refs, self.model.device())?;
        let (model, head) = match (reference, self.reference) {
            (true, Reference::Copy(p)) => (&p.model, None),
            (true, _) => (self.model, None),
            (false, _) => (self.model, self.value_head.as_ref()),
        };
        let adapters_off = reference && matches!(self.reference, Reference::AdaptersOff);
        if adapters_off {
            self.model.set_adapters(false);
        }
        let s = logps::token_scores(model, &b, false, false);
        if adapters_off {
            self.model.set_adapters(true);
        }
        let s = s?;
        let values = head.map(|h| logps::to_padded(&b, &h.forward(&s.hidden).squeeze_dim(1)));
        Ok((logps::to_padded(&b, &s.logps), values, logps::answer_mask(&b, self.model.device())))
    }

    /// Builds rollout `r` with the current weights.
    fn make_rollout(&mut self, r: u64) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        // Prompt j of rollout r: position r·k + j of shuffled epochs over the prompts.
        let idx: Vec<usize> = (0..self.cfg.prompts_per_rollout as u64).flat_map(|j| self.order.indices(r, j)).collect();
        let prompts: Vec<&Prompt> = idx.iter().map(|&i| &self.prompts[i]).collect();
        let group = self.cfg.group_size.max(1);
        let sampling = SamplingConfig { seed: self.seed.wrapping_mul(1_000_003).wrapping_add(r), ..self.cfg.sampling.clone() };
        let (seqs, scores) = self.answer_and_score(&prompts, group, &sampling)?;
        let gen_s = started.elapsed().as_secs_f64();
        let (old_logps, values, mask) = self.score_tokens(&seqs, false)?;
        let ref_logps = match (self.reference, self.kl.coef > 0.0 || self.algo == Algorithm::Ppo) {
            (Reference::None, _) | (_, false) => None,
            _ => Some(self.score_tokens(&seqs, true)?.0),
        };
        let device = self.model.device();
        let n = seqs.len() as i64;
        let lengths: Vec<i64> = seqs.iter().map(|s| s.answer.len() as i64).collect();
        let kl_tokens = ref_logps.as_ref().map(|r| (&old_logps - r) * &mask);
        let kl_per_answer = kl_tokens.as_ref().map_or(0.0, |k| k.sum(Kind::Float).double_value(&[]) / n as f64);
        let score_t = Tensor::from_slice(&scores).to_kind(Kind::Float).to(device);
        let (advantages, returns) = match self.algo {
            Algorithm::Ppo => {
                // −β·KL per token, the score on each answer's last token.
                let mut rewards = kl_tokens.as_ref().map_or_else(|| Tensor::zeros_like(&old_logps), |k| k * -self.kl.coef);
                let last = Tensor::from_slice(&lengths.iter().map(|l| l - 1).collect::<Vec<_>>()).to(device);
                let rows = Tensor::arange(n, (Kind::Int64, device));
                rewards = rewards.index_put(&[Some(rows), Some(last)], &score_t, true);
                let values = values.as_ref().map(|v| v * &mask).ok_or_else(|| anyhow::anyhow!("PPO needs a value head"))?;
                let (adv, ret) = losses::gae(&rewards, &values, self.cfg.gamma, self.cfg.lam);
                let adv = if self.cfg.whiten { losses::masked_whiten(&adv, &mask) } else { adv * &mask };
                (adv, Some(ret))
            }
            Algorithm::Grpo => {
                let adv = losses::group_advantages(&scores, group, self.cfg.whiten);
                let adv = Tensor::from_slice(&adv).to_kind(Kind::Float).to(device).unsqueeze(1) * &mask;
                (adv, None)
            }
        };
        let tokens: i64 = lengths.iter().sum();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let mut stats = vec![
            (names::REWARD, mean(&scores)),
            (names::KL, kl_per_answer),
            (names::KL_COEF, self.kl.coef),
            (names::ANSWER_LENGTH, tokens as f64 / n as f64),
            (names::ROLLOUT_TOKENS_PER_S, tokens as f64 / gen_s.max(1e-9)),
        ];
        if self.algo == Algorithm::Grpo {
            let flat = scores.chunks(group).filter(|g| g.iter().all(|r| *r == g[0])).count();
            stats.push((names::ZERO_STD_GROUPS, flat as f64 / prompts.len() as f64));
        }
        if ref_logps.is_some() {
            self.kl.update(kl_per_answer, seqs.len());
        }
        self.rollout = Some(Rollout { index: r, seqs, old_logps, ref_logps, values, advantages, returns, stats });
        Ok(())
    }

    /// Answers (`group` per prompt) and their rewards. On several ranks each
    /// answers and scores its share of the prompts (prompt j on rank j mod W,
    /// with its own sampling stream), and the shares are gathered, so every
    /// rank holds the whole rollout in prompt order.
    fn answer_and_score(&self, prompts: &[&Prompt], group: usize, sampling: &SamplingConfig) -> anyhow::Result<(Vec<Seq>, Vec<f64>)> {
        let own = |prompts: &[&Prompt], sampling: &SamplingConfig| -> anyhow::Result<(Vec<Seq>, Vec<f64>)> {
            if prompts.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let seqs = self.answer(prompts, group, sampling)?;
            let items: Vec<(&Prompt, &[u32])> = seqs.iter().enumerate().map(|(i, s)| (prompts[i / group], s.answer.as_slice())).collect();
            let scores = self.scorer.scores(self.fmt, &items)?;
            Ok((seqs, scores))
        };
        let Some(dist) = forja_dist::current() else {
            return own(prompts, sampling);
        };
        let (rank, world) = (dist.rank(), dist.world());
        let mine: Vec<&Prompt> = prompts.iter().enumerate().filter(|(j, _)| j % world == rank).map(|(_, p)| *p).collect();
        let stream = SamplingConfig { seed: sampling.seed.wrapping_mul(1_000_003).wrapping_add(rank as u64), ..sampling.clone() };
        let (seqs, scores) = own(&mine, &stream)?;
        let share: Vec<(&[u32], &[u32], f64)> =
            seqs.iter().zip(&scores).map(|(s, &r)| (s.prompt.as_slice(), s.answer.as_slice(), r)).collect();
        let shares = dist.all_gather_bytes("rollout answers", &serde_json::to_vec(&share)?)?;
        let shares: Vec<Vec<AnsweredPrompt>> = shares.iter().map(|b| serde_json::from_slice(b)).collect::<Result<_, _>>()?;
        let (mut seqs, mut scores) = (Vec::with_capacity(prompts.len() * group), Vec::with_capacity(prompts.len() * group));
        for j in 0..prompts.len() {
            let share = &shares[j % world];
            for g in 0..group {
                let (prompt, answer, reward) =
                    share.get((j / world) * group + g).ok_or_else(|| anyhow::anyhow!("rank {} sent too few answers", j % world))?;
                seqs.push(Seq { prompt: prompt.clone(), answer: answer.clone() });
                scores.push(*reward);
            }
        }
        Ok((seqs, scores))
    }

    /// The answers of minibatch `(step, micro)` of the current rollout.
    fn minibatch(&self, step: u64, micro: u64) -> Vec<usize> {
        let per = self.cfg.updates_per_rollout();
        let (r, within) = (step / per, step % per);
        let (epoch, mb) = (within / self.cfg.minibatches.max(1) as u64, within % self.cfg.minibatches.max(1) as u64);
        let n = self.rollout.as_ref().map_or(0, |ro| ro.seqs.len());
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed ^ r.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch.wrapping_mul(0x9E37_79B9)));
        let size = n.div_ceil(self.cfg.minibatches.max(1));
        let chunk: Vec<usize> = order.into_iter().skip(mb as usize * size).take(size).collect();
        // Micro-batches split the minibatch (gradient accumulation, and ranks:
        // rank r takes micro-batches m·W + r).
        let accum = self.cfg.train.global_accum() as usize;
        let part = chunk.len().div_ceil(accum);
        chunk.into_iter().skip(micro as usize * part).take(part).collect()
    }

    /// The loss of answers `idx` of the rollout, with its statistics.
    fn loss(&self, idx: &[usize]) -> anyhow::Result<(Tensor, Vec<(&'static str, f64)>)> {
        let ro = self.rollout.as_ref().ok_or_else(|| anyhow::anyhow!("no rollout"))?;
        let device = self.model.device();
        let refs: Vec<&Seq> = idx.iter().map(|&i| &ro.seqs[i]).collect();
        let b: Batch = logps::batch(&refs, device)?;
        let s = logps::token_scores(self.model, &b, true, true)?;
        let t = b.max_answer as i64;
        let rows = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to(device);
        let pick = |x: &Tensor| x.index_select(0, &rows).narrow(1, 0, t);
        let mask = logps::answer_mask(&b, device);
        let new = logps::to_padded(&b, &s.logps);
        let (old, adv) = (pick(&ro.old_logps), pick(&ro.advantages));
        let (pg_loss, clipfrac) = losses::ppo_policy(&new, &old, &adv, &mask, self.cfg.cliprange);
        let entropy = s.entropy.as_ref().map_or(0.0, |e| e.mean(Kind::Float).double_value(&[]));
        let mut stats = vec![
            (names::CLIP_FRACTION, clipfrac.double_value(&[])),
            (names::ENTROPY, entropy),
            (names::POLICY_LOSS, pg_loss.double_value(&[])),
        ];
        let loss = match self.algo {
            Algorithm::Ppo => {
                let head = self.value_head.as_ref().ok_or_else(|| anyhow::anyhow!("PPO needs a value head"))?;
                let vpred = logps::to_padded(&b, &head.forward(&s.hidden).squeeze_dim(1));
                let (Some(values), Some(returns)) = (&ro.values, &ro.returns) else { anyhow::bail!("a PPO rollout without values") };
                let (old_v, ret) = (pick(values), pick(returns));
                let (vf_loss, vf_clip) = losses::ppo_value(&vpred, &old_v, &ret, &mask, self.cfg.cliprange_value);
                stats.push((names::VALUE_LOSS, vf_loss.double_value(&[])));
                stats.push((names::VALUE_CLIP_FRACTION, vf_clip.double_value(&[])));
                pg_loss + vf_loss * self.cfg.vf_coef
            }
            Algorithm::Grpo => match &ro.ref_logps {
                Some(r) if self.kl.coef > 0.0 => {
                    // k3: exp(ref − logp) − (ref − logp) − 1, per token.
                    let d = pick(r) - &new;
                    let k3 = d.exp() - &d - 1.0;
                    pg_loss + losses::masked_mean(&k3, &mask) * self.kl.coef
                }
                _ => pg_loss,
            },
        };
        Ok((loss, stats))
    }

    /// Mean reward of greedy answers to fixed prompts (`i`-th window of the split).
    fn evaluate(&self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let data = if split == EvalSplit::Val && !self.val.is_empty() { &self.val } else { &self.prompts };
        let n = self.cfg.eval_prompts.min(data.len()).max(1);
        let per = self.cfg.prompts_per_rollout.min(n);
        let start = (i as usize * per) % n;
        let prompts: Vec<&Prompt> = data[start..(start + per).min(n)].iter().collect();
        // Greedy: the evaluation compares policies, not samples of them.
        let sampling = SamplingConfig { temperature: 0.0, ..self.cfg.sampling.clone() };
        let seqs = self.answer(&prompts, 1, &sampling)?;
        let items: Vec<(&Prompt, &[u32])> = seqs.iter().zip(&prompts).map(|(s, p)| (*p, s.answer.as_slice())).collect();
        let scores = self.scorer.scores(self.fmt, &items)?;
        let reward = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        let length = seqs.iter().map(|s| s.answer.len()).sum::<usize>() as f64 / seqs.len().max(1) as f64;
        Ok(EvalScore { loss: -reward, metrics: vec![(names::EVAL_REWARD, reward), (names::EVAL_ANSWER_LENGTH, length)] })
    }

    /// Eval batches that cover `eval_prompts` of the validation prompts once.
    pub fn eval_batches(&self) -> u64 {
        let data = if self.val.is_empty() { &self.prompts } else { &self.val };
        let n = self.cfg.eval_prompts.min(data.len()).max(1);
        n.div_ceil(self.cfg.prompts_per_rollout.min(n).max(1)) as u64
    }
}

impl Objective for Rl<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let r = step / self.cfg.updates_per_rollout();
        if self.rollout.as_ref().is_none_or(|ro| ro.index != r) {
            self.make_rollout(r)?;
            // Reported with the first step of the rollout that is applied.
            self.unreported = self.rollout.as_ref().map(|ro| ro.stats.clone()).unwrap_or_default();
        }
        let idx = self.minibatch(step, micro);
        anyhow::ensure!(!idx.is_empty(), "minibatch {micro} of step {step} is empty");
        let (loss, stats) = self.loss(&idx)?;
        if micro == 0 {
            self.last = self.unreported.clone();
            self.last.extend(stats);
        }
        Ok(loss)
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        self.evaluate(split, i)
    }

    fn has_val(&self) -> bool {
        !self.val.is_empty()
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        (self.write)(vs, dir)
    }

    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        let Some(ro) = &self.rollout else { return Ok(Vec::new()) };
        Ok(self
            .minibatch(step, micro)
            .into_iter()
            .map(|i| TokenRow {
                doc_id: format!("rollout{}.{i}", ro.index),
                ids: ro.seqs[i].prompt.iter().chain(&ro.seqs[i].answer).copied().collect(),
            })
            .collect())
    }

    fn tokens_per_micro(&self) -> f64 {
        let n = self.cfg.prompts_per_rollout * self.cfg.group_size.max(1);
        (n as f64 / self.cfg.minibatches.max(1) as f64 / self.cfg.train.global_accum() as f64)
            * (self.max_prompt as f64 / 2.0 + self.cfg.sampling.max_new_tokens as f64 / 2.0)
    }

    fn step_metrics(&mut self) -> Vec<(&'static str, f64)> {
        self.unreported.clear();
        std::mem::take(&mut self.last)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "kl_coef": self.kl.coef })
    }

    fn load_state(&mut self, state: &serde_json::Value) -> anyhow::Result<()> {
        if let Some(c) = state.get("kl_coef").and_then(|v| v.as_f64()) {
            self.kl.coef = c;
        }
        self.rollout = None;
        self.unreported.clear();
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RlSummary {
    pub train: TrainSummary,
    pub prompts: usize,
    /// Mean reward of the first and the last rollout.
    pub first_reward: f64,
    pub last_reward: f64,
    /// Mean KL (per answer) to the reference in the last rollout.
    pub last_kl: f64,
    /// Bytes of weights a separate reference copy would have taken (LoRA: 0 taken).
    pub reference_bytes_saved: i64,
}

fn first_last(metrics: &[forja_core::MetricRow], name: &str) -> (f64, f64) {
    let v: Vec<f64> = metrics.iter().filter(|m| m.name == name && m.split == forja_core::metric::split::TRAIN).map(|m| m.value).collect();
    (v.first().copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
}

pub fn run(algo: Algorithm, cfg: &RlConfig, inputs: &RlInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<RlSummary> {
    run_with_hook(algo, cfg, inputs, out, ctx, &mut |_| std::ops::ControlFlow::Continue(()))
}

/// [`run`] with a hook after every step (tests stop a run there as a crash would).
pub fn run_with_hook(
    algo: Algorithm,
    cfg: &RlConfig,
    inputs: &RlInputs,
    out: &OutDir,
    ctx: &StageCtx,
    hook: forja_train::engine::StepHook,
) -> anyhow::Result<RlSummary> {
    cfg.validate(algo)?;
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let Policy { mut vs, model, fmt, cfg: gpt_cfg } =
        common::load_policy(&inputs.model, device, cfg.lora.as_ref(), cfg.dropout, cfg.train.precision)?;
    anyhow::ensure!(
        fmt.end.is_some(),
        "{}: the tokenizer has no end-of-turn or <|endoftext|> token, so answers could never end",
        inputs.model.display()
    );
    let value_head = (algo == Algorithm::Ppo).then(|| nn::linear(vs.root() / "v_head", gpt_cfg.n_embd, 1, Default::default()));
    let scorer = match (&inputs.reward_model, &cfg.rule) {
        (Some(dir), None) => Scorer::Model(Box::new(reward::load(dir, device)?)),
        (None, Some(rule)) => {
            let token = match rule {
                Rule::TokenShare { token } => Some(
                    fmt.tokenizer
                        .token_to_id(token)
                        .ok_or_else(|| anyhow::anyhow!("token_share: `{token}` is not one token of the policy's vocabulary"))?,
                ),
                Rule::FinalNumber => None,
            };
            Scorer::Rule { rule: rule.clone(), token }
        }
        (Some(_), Some(_)) => anyhow::bail!("give either a reward_model input or a rule, not both"),
        (None, None) if algo == Algorithm::Grpo => Scorer::Rule { rule: Rule::FinalNumber, token: None },
        (None, None) => anyhow::bail!("no reward: give a reward_model input or set rule (token_share, final_number)"),
    };
    let arch = gpt_cfg.arch;
    let n_params: i64 = vs.variables().iter().filter(|(n, _)| arch.owns(n) && !n.contains(".lora_")).map(|(_, t)| t.numel() as i64).sum();
    let param_bytes = n_params * 4;
    let reference = if cfg.kl_coef <= 0.0 && algo == Algorithm::Grpo {
        Reference::None
    } else if cfg.lora.is_some() {
        Reference::AdaptersOff
    } else {
        Reference::Copy(Box::new(common::load_policy(&inputs.model, device, None, Some(0.0), cfg.train.precision)?))
    };
    let saved = if matches!(reference, Reference::AdaptersOff) { param_bytes } else { 0 };
    let reference_text = match &reference {
        Reference::AdaptersOff => format!("the base with LoRA adapters switched off — no second copy, {:.1} MB saved", saved as f64 / 1e6),
        Reference::Copy(_) => format!("a frozen copy of the starting weights ({:.1} MB)", param_bytes as f64 / 1e6),
        Reference::None => "none (kl_coef 0: no KL term)".into(),
    };
    let prompts = read_prompts(&inputs.prompts)?;
    anyhow::ensure!(!prompts.is_empty(), "{}: no prompts", inputs.prompts.display());
    let val = match &inputs.val {
        Some(v) => read_prompts(v)?,
        None => Vec::new(),
    };
    let groups = match cfg.lora {
        Some(_) => ParamGroup::train_only(&vs, |n| n.contains(".lora_") || n.starts_with("v_head."), cfg.train.optim.weight_decay),
        None => ParamGroup::decay_split(&vs, cfg.train.optim.weight_decay),
    };
    let base = inputs.model.clone();
    let lora = cfg.lora.clone();
    let write: forja_train::ModelWriter = Box::new(move |vs, dir| forja_model::export::write_policy(dir, vs, &base, lora.as_ref()));
    let n_prompts = prompts.len();
    let mut obj = Rl::new(algo, cfg, &model, value_head, &reference, &fmt, &scorer, prompts, val, seed, write);
    let per = cfg.updates_per_rollout();
    let eval_batches = obj.eval_batches();
    let eval_iters = if cfg.train.eval_iters == 0 { eval_batches } else { cfg.train.eval_iters.min(eval_batches) };
    let max_steps = if cfg.train.max_steps > 0 { cfg.train.max_steps } else { cfg.rollouts * per };
    let mut engine_cfg = cfg.train.engine(max_steps, eval_iters);
    engine_cfg.grad_accum = cfg.train.grad_accum.max(1);
    // Checkpoints on rollout boundaries (a rollout is rebuilt from its start weights).
    engine_cfg.checkpoint_interval = engine_cfg.checkpoint_interval.div_ceil(per) * per;
    engine_cfg.eval_interval = engine_cfg.eval_interval.div_ceil(per) * per;
    println!(
        "{}: {:?} on {n_prompts} prompts, {} rollouts of {} answers, {} updates each; reference: {}",
        ctx.name,
        algo,
        cfg.rollouts,
        cfg.prompts_per_rollout * cfg.group_size.max(1),
        per,
        reference_text
    );
    let spec = RunSpec { seed, run_key: run_key(&(algo, cfg), seed, device_name, &inputs.named_paths(), ctx)?, ctx, out_dir: out.dir() };
    let outs = common::engine_outputs(out);
    let summary = Engine::new(&engine_cfg, &mut vs, groups, spec)?.run(&mut obj, &outs, hook)?;
    let samples = write_samples(&obj, cfg.samples, out, ctx, &outs.model)?;
    drop(obj);
    let metrics = forja_core::MetricRow::read(&outs.metrics)?;
    let (first_reward, last_reward) = first_last(&metrics, names::REWARD);
    let (_, last_kl) = first_last(&metrics, names::KL);
    write_rl_plot(&out.path(&RL_PLOT), &ctx.name, &metrics)?;
    let mut report = std::fs::read_to_string(&outs.report).unwrap_or_default();
    report += &format!(
        "\n## {}\n\n| | |\n|---|---|\n| prompts | {n_prompts} |\n| rollouts × answers | {} × {} |\n| updates per rollout | {per} |\n| mean reward, first → last rollout | {first_reward:.4} → {last_reward:.4} |\n| KL to the reference per answer, last rollout | {last_kl:.4} |\n| reference | {} |\n\nPer-step reward, KL, entropy, clip fraction{} and answer length: `rl.svg` and `metrics.arrow`.\n{samples}",
        if algo == Algorithm::Ppo { "PPO" } else { "GRPO" },
        cfg.rollouts,
        cfg.prompts_per_rollout * cfg.group_size.max(1),
        reference_text,
        if algo == Algorithm::Ppo { ", value loss" } else { "" },
    );
    forja_core::fsutil::atomic_write(&outs.report, report.as_bytes())?;
    Ok(RlSummary { train: summary, prompts: n_prompts, first_reward, last_reward, last_kl, reference_bytes_saved: saved })
}

/// Answers of the exported model (the weights a user gets) to held-out
/// prompts: `samples.arrow` with rewards, and a Markdown section.
fn write_samples(obj: &Rl, n: usize, out: &OutDir, ctx: &StageCtx, model_dir: &Path) -> anyhow::Result<String> {
    let data = if obj.val.is_empty() { &obj.prompts } else { &obj.val };
    let prompts: Vec<&Prompt> = data.iter().take(n).collect();
    let mut rows = Vec::new();
    let mut md = String::from("\n## Sample answers\n\n");
    if !prompts.is_empty() {
        let exported = common::load_policy(model_dir, obj.model.device(), None, Some(0.0), obj.model.precision)?;
        let ids: Vec<Vec<u32>> =
            prompts.iter().map(|p| Ok(last_tokens(exported.fmt.prompt_ids(&p.text)?, obj.max_prompt))).collect::<anyhow::Result<_>>()?;
        let sampling = SamplingConfig { temperature: 0.0, seed: obj.seed, ..obj.cfg.sampling.clone() };
        let answers = common::generate_answers(&exported.model, &exported.fmt, &ids, &sampling)?;
        let items: Vec<(&Prompt, &[u32])> = prompts.iter().zip(&answers).map(|(p, a)| (*p, a.as_slice())).collect();
        let scores = obj.scorer.scores(&exported.fmt, &items)?;
        for ((a, p), r) in answers.iter().zip(&prompts).zip(&scores) {
            let answer = exported.fmt.answer_text(a)?;
            md += &format!("**Prompt:** {}\n\n**Answer** (reward {r:.3}): {}\n\n---\n\n", one_line(&p.text), one_line(&answer));
            rows.push(Generation {
                prompt: p.text.clone(),
                completion: answer,
                model: model_dir.display().to_string(),
                reward: Some(*r as f32),
            });
        }
    }
    Generation::write(&out.path(&SAMPLES), &ctx.name, &ctx.config_hash, &rows)?;
    Ok(md)
}

/// Text on one bounded line.
pub fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// Reward, KL and entropy per step, as SVG.
fn write_rl_plot(path: &Path, stage: &str, metrics: &[forja_core::MetricRow]) -> anyhow::Result<()> {
    use forja_render::Series;
    let pick = |name: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter(|m| m.name == name && m.split == forja_core::metric::split::TRAIN).map(|m| (m.step as f64, m.value)).collect()
    };
    let series = [
        Series { label: "reward", color: "#2ca02c", points: pick(names::REWARD) },
        Series { label: "KL", color: "#d62728", points: pick(names::KL) },
        Series { label: "entropy", color: "#1f77b4", points: pick(names::ENTROPY) },
        Series { label: "clip fraction", color: "#ff7f0e", points: pick(names::CLIP_FRACTION) },
    ];
    let svg = forja_render::line_chart(&format!("{stage}: rollouts"), "step", "value", &series).unwrap_or_else(|| {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\" height=\"30\"><text x=\"5\" y=\"20\">no points</text></svg>".into()
    });
    forja_core::fsutil::atomic_write(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_numbers_follow_gsm8k_and_plain_answers() {
        assert_eq!(final_number("so 3 + 4 = 7.\n#### 1,234"), Some(1234.0));
        assert_eq!(final_number("The answer is 42."), Some(42.0));
        assert_eq!(final_number("from 5 to -3"), Some(-3.0));
        assert_eq!(final_number("2.5 apples"), Some(2.5));
        assert_eq!(final_number("none"), None);
        assert_eq!(final_number("#### 18 dollars and 3"), Some(18.0));
    }
}
