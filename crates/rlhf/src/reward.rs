//! The reward model and the `reward_model` stage.
//!
//! A GPT backbone (usually the SFT model) plus a scalar head on the hidden
//! state of the last token, trained with the Bradley–Terry loss
//! `-log σ(r(chosen) − r(rejected))` on preference pairs, as an objective of
//! the training engine; accuracy on held-out pairs is the share where the
//! chosen answer scores higher. The folder is Hugging Face's
//! `GPT2ForSequenceClassification` with one label (`score.weight`
//! `[1, n_embd]`, no bias; `pad_token_id` set so batches work there too:
//! inputs never end in it, so its "last non-padding token" is the last token).

use crate::common::{self, encode_pairs, EncodedPair, Policy};
use crate::logps::Seq;
use crate::text::Formatter;
use forja_core::artifacts::Artifact;
use forja_core::metric;
use forja_core::stage::{outputs, FromInputs, OutDir, OutputSpec, StageCtx};
use forja_core::{Preference, Reject, TokenRow};
use forja_model::checkpoint::{self, Weights, WEIGHTS};
use forja_model::classifier::BertClassifier;
use forja_model::export::{reward_classifier_config, reward_head, write_reward, RewardExport, RewardHead};
use forja_model::{BertConfig, Gpt, LoraConfig};
use forja_train::batches::EpochBatches;
use forja_train::{run_key, Engine, EvalScore, EvalSplit, Objective, ParamGroup, RunSpec, TrainSummary, TrainerConfig, TrainerSetup};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

// The GPT head's weight name and the architecture a GPT reward model's
// `config.json` names (the folder's layout is `forja_model::export`'s).
pub use forja_model::export::REWARD_SCORE as SCORE;
use forja_model::gpt::LM_HEAD;

/// What computes the scalar.
pub enum Backbone {
    /// A GPT and `score.weight` `[1, n_embd]` on the last token's hidden state.
    Gpt { gpt: Box<Gpt>, score: Tensor },
    /// A BERT encoder with `BertForSequenceClassification`'s pooler and a
    /// one-output head over `[CLS] prompt [SEP] answer [SEP]`.
    Bert { clf: Box<BertClassifier>, cls: u32, sep: u32, pad: i64, max_len: usize },
}

/// A reward model: a backbone with a scalar head.
pub struct RewardModel {
    pub backbone: Backbone,
    /// GPT: the token that pads batches (never the last token of an input).
    pub pad: Option<u32>,
}

impl RewardModel {
    /// A GPT with a new head at `vs / score`, N(0, 0.02) as Hugging Face initialises it.
    pub fn gpt(vs: &nn::Path, gpt: Gpt, pad: Option<u32>) -> Self {
        let score = (vs / "score").var("weight", &[1, gpt.cfg.n_embd], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
        Self { backbone: Backbone::Gpt { gpt: Box::new(gpt), score }, pad }
    }

    /// A BERT classifier with one output; `tok` gives `[CLS]` and `[SEP]`.
    pub fn bert(clf: BertClassifier, cfg: &BertConfig, tok: &forja_tokenizer::Tokenizer) -> anyhow::Result<Self> {
        let id = |t: &str| tok.token_to_id(t).ok_or_else(|| anyhow::anyhow!("the BERT tokenizer has no `{t}` token"));
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        Ok(Self {
            backbone: Backbone::Bert { clf: Box::new(clf), cls, sep, pad: cfg.pad_token_id, max_len: cfg.max_position_embeddings as usize },
            pad: None,
        })
    }

    /// Longest input in tokens.
    pub fn max_len(&self) -> usize {
        match &self.backbone {
            Backbone::Gpt { gpt, .. } => gpt.cfg.block_size as usize,
            Backbone::Bert { max_len, .. } => *max_len,
        }
    }

    /// The ids the model scores. GPT: prompt and answer without trailing
    /// padding tokens (so Hugging Face's last-non-padding rule finds the same
    /// token), the last `max_len` kept. BERT: `[CLS] prompt [SEP] answer
    /// [SEP]`, the prompt cut from its start to fit.
    pub fn input(&self, s: &Seq) -> Vec<u32> {
        match &self.backbone {
            Backbone::Gpt { .. } => {
                let mut ids: Vec<u32> = s.prompt.iter().chain(&s.answer).copied().collect();
                while ids.len() > 1 && ids.last().copied() == self.pad {
                    ids.pop();
                }
                ids.drain(..ids.len().saturating_sub(self.max_len()));
                ids
            }
            Backbone::Bert { cls, sep, max_len, .. } => {
                let room = max_len.saturating_sub(3);
                let answer = &s.answer[..s.answer.len().min(room.saturating_sub(1))];
                let prompt = &s.prompt[s.prompt.len().saturating_sub(room - answer.len())..];
                std::iter::once(*cls).chain(prompt.iter().copied()).chain([*sep]).chain(answer.iter().copied()).chain([*sep]).collect()
            }
        }
    }

    /// Rewards of inputs (from [`RewardModel::input`]), `[b]`.
    pub fn scores(&self, seqs: &[Vec<u32>], train: bool) -> anyhow::Result<Tensor> {
        anyhow::ensure!(seqs.iter().all(|s| !s.is_empty()), "an empty sequence to score");
        let t = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let pad_id = match &self.backbone {
            Backbone::Gpt { .. } => 0,
            Backbone::Bert { pad, .. } => *pad,
        };
        let (mut ids, mut mask, mut last) = (Vec::with_capacity(seqs.len() * t), Vec::with_capacity(seqs.len() * t), Vec::new());
        for s in seqs {
            ids.extend(s.iter().map(|&x| i64::from(x)).chain(std::iter::repeat_n(pad_id, t - s.len())));
            mask.extend(std::iter::repeat_n(1i64, s.len()).chain(std::iter::repeat_n(0, t - s.len())));
            last.push((s.len() - 1) as i64);
        }
        match &self.backbone {
            Backbone::Gpt { gpt, score } => {
                let device = gpt.device();
                let idx = Tensor::from_slice(&ids).to(device).view([seqs.len() as i64, t as i64]);
                let hidden = gpt.hidden(&idx, train, None)?; // [b, t, c]
                let c = hidden.size()[2];
                let last = Tensor::from_slice(&last).to(device).view([-1, 1, 1]).expand([-1, 1, c], false);
                let h = hidden.gather(1, &last, false).squeeze_dim(1); // [b, c]
                Ok(h.matmul(&score.tr()).squeeze_dim(1))
            }
            Backbone::Bert { clf, .. } => {
                let device = clf.bert.word_embeddings.ws.device();
                let shape = [seqs.len() as i64, t as i64];
                let (idx, mask) = (Tensor::from_slice(&ids).to(device).view(shape), Tensor::from_slice(&mask).to(device).view(shape));
                Ok(clf.forward(&idx, &mask, train)?.squeeze_dim(1))
            }
        }
    }

    /// Rewards without gradients, in chunks.
    pub fn score_all(&self, seqs: &[Vec<u32>], batch: usize) -> anyhow::Result<Vec<f64>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch.max(1)) {
            out.extend(Vec::<f64>::try_from(&self.scores(chunk, false)?.to_kind(Kind::Double).to(Device::Cpu))?);
        }
        Ok(out)
    }
}

/// A reward model folder loaded for scoring.
pub struct LoadedReward {
    pub vs: nn::VarStore,
    pub model: RewardModel,
    pub fmt: Formatter,
}

impl LoadedReward {
    /// Rewards of answers (text) to prompts (text, as `preferences` store
    /// them), tokenised the way this model was trained.
    pub fn score_answers(&self, prompts: &[&str], answers: &[String], batch: usize) -> anyhow::Result<Vec<f64>> {
        let seqs: Vec<Vec<u32>> = prompts
            .iter()
            .zip(answers)
            .map(|(p, a)| Ok(self.model.input(&Seq { prompt: self.fmt.prompt_ids(p)?, answer: self.fmt.answer_ids(p, a)? })))
            .collect::<anyhow::Result<_>>()?;
        self.model.score_all(&seqs, batch)
    }
}

/// Loads a folder written by `reward_model` (GPT or BERT backbone).
pub fn load(dir: &Path, device: Device) -> anyhow::Result<LoadedReward> {
    let head = reward_head(dir)?;
    let fmt = Formatter::for_model(dir)?;
    match head {
        RewardHead::Gpt { pad } => {
            let cfg = checkpoint::read_config(dir)?;
            let mut vs = nn::VarStore::new(device);
            let gpt = Gpt::new(&vs.root(), &cfg)?;
            let model = RewardModel::gpt(&vs.root(), gpt, pad);
            // An untied decoder's language-model head is neither trained nor
            // written (`…ForSequenceClassification` has none).
            Weights::read(&dir.join(WEIGHTS))?.load_into(&mut vs, &|n| n == LM_HEAD)?;
            Ok(LoadedReward { vs, model, fmt })
        }
        RewardHead::Bert => {
            let loaded = forja_model::classifier::load_classifier(dir, device)?;
            let cfg = checkpoint::read_bert_config(dir)?;
            let model = RewardModel::bert(loaded.model, &cfg, &loaded.tokenizer)?;
            Ok(LoadedReward { vs: loaded.vs, model, fmt })
        }
    }
}

/// Parameters of `reward_model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Longest prompt + answer in tokens (0: the model's context).
    pub max_length: usize,
    /// The trainer settings (`batch_size`: pairs per micro-batch).
    pub train: TrainerConfig,
    pub lora: Option<LoraConfig>,
    pub dropout: Option<f64>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self { max_length: 0, train: common::train_defaults(), lora: None, dropout: None }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `reward_model`.
    pub struct RewardInputs {
        /// The GPT (or BERT) folder the backbone starts from.
        model: one[MODEL],
        train: one[PREFERENCES],
        val: optional[PREFERENCES],
    }
}

pub const OUTPUTS: [OutputSpec; 6] = [common::MODEL, outputs::METRICS, outputs::PLOT, common::GRAD_PLOT, outputs::REPORT, common::REJECTS];

/// The Bradley–Terry objective.
pub struct BradleyTerry<'a> {
    pub model: &'a RewardModel,
    pub train: Vec<EncodedPair>,
    pub val: Vec<EncodedPair>,
    pub batches: EpochBatches,
    pub write: forja_train::ModelWriter<'a>,
}

impl BradleyTerry<'_> {
    /// Loss and accuracy of pairs: chosen and rejected in one forward pass.
    fn score(&self, pairs: &[&EncodedPair], train: bool) -> anyhow::Result<(Tensor, Tensor)> {
        let mut seqs: Vec<Vec<u32>> = pairs.iter().map(|p| self.model.input(&p.chosen)).collect();
        seqs.extend(pairs.iter().map(|p| self.model.input(&p.rejected)));
        let r = self.model.scores(&seqs, train)?;
        let n = pairs.len() as i64;
        let margin = r.narrow(0, 0, n) - r.narrow(0, n, n);
        let loss = -margin.log_sigmoid().mean(Kind::Float);
        let acc = margin.gt(0.0).to_kind(Kind::Float).mean(Kind::Float);
        Ok((loss, acc))
    }
}

impl Objective for BradleyTerry<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let idx = self.batches.indices(step, micro);
        let pairs: Vec<&EncodedPair> = idx.iter().map(|&i| &self.train[i]).collect();
        Ok(self.score(&pairs, true)?.0)
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let data = if split == EvalSplit::Val { &self.val } else { &self.train };
        let pairs: Vec<&EncodedPair> = data[self.batches.fixed(i, data.len())].iter().collect();
        anyhow::ensure!(!pairs.is_empty(), "no {} pairs to evaluate", split.name());
        let (loss, acc) = self.score(&pairs, false)?;
        Ok(EvalScore { loss: loss.double_value(&[]), metrics: vec![(metric::ACCURACY, acc.double_value(&[]))] })
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
                let p = &self.train[i];
                [("chosen", &p.chosen), ("rejected", &p.rejected)]
                    .map(|(w, s)| TokenRow { doc_id: format!("pair{i}.{w}"), ids: self.model.input(s) })
            })
            .collect())
    }

    fn tokens_per_micro(&self) -> f64 {
        let tokens: usize = self.train.iter().map(|p| p.chosen.len() + p.rejected.len()).sum();
        tokens as f64 / self.train.len().max(1) as f64 * self.batches.batch_size as f64
    }
}

/// A reward model to train, built over the folder `base`: a GPT, or a BERT
/// encoder (an imported one such as all-MiniLM-L6-v2).
struct Built {
    vs: nn::VarStore,
    model: RewardModel,
    fmt: Formatter,
    /// Longest prompt + answer (special tokens left out).
    max_len: usize,
    export: RewardExport,
    /// Variables of the head (trained in full under LoRA).
    head: fn(&str) -> bool,
}

fn build(cfg: &RewardConfig, base: &Path, device: Device) -> anyhow::Result<Built> {
    let kind = checkpoint::model_type(base)?;
    let limit = |ctx: usize| if cfg.max_length == 0 { ctx } else { cfg.max_length.min(ctx) };
    match kind.as_str() {
        k if checkpoint::is_decoder(k) => {
            let Policy { vs, model: gpt, cfg: gpt_cfg, fmt } =
                common::load_policy(base, device, cfg.lora.as_ref(), cfg.dropout, cfg.train.precision)?;
            let pad = pad_token(&fmt);
            let model = RewardModel::gpt(&vs.root(), gpt, pad);
            let export = RewardExport::Gpt { base: base.to_path_buf(), pad, arch: gpt_cfg.arch };
            Ok(Built { vs, model, fmt, max_len: limit(gpt_cfg.block_size as usize), export, head: |n| n == SCORE })
        }
        forja_model::bert::BERT_MODEL_TYPE => {
            let mut bert_cfg = checkpoint::read_bert_config(base)?;
            if let Some(p) = cfg.dropout {
                (bert_cfg.hidden_dropout_prob, bert_cfg.attention_probs_dropout_prob) = (p, p);
            }
            let clf_cfg = reward_classifier_config(&bert_cfg);
            let mut vs = nn::VarStore::new(device);
            let mut clf = BertClassifier::new(&vs.root(), &clf_cfg, cfg.lora.as_ref())?;
            clf.bert.precision = cfg.train.precision;
            let fresh = |n: &str| n.starts_with("classifier.") || n.starts_with("bert.pooler.") || n.contains(".lora_");
            checkpoint::load_weights(&mut vs, &base.join(WEIGHTS), &fresh)?;
            let tok = forja_tokenizer::Tokenizer::load(&base.join(checkpoint::TOKENIZER))?;
            let model = RewardModel::bert(clf, &bert_cfg, &tok)?;
            let max_len = limit(bert_cfg.max_position_embeddings as usize).saturating_sub(3);
            let export = RewardExport::Bert { cfg: Box::new(clf_cfg), tok: Box::new(tok) };
            let head = |n: &str| n.starts_with("classifier.") || n.starts_with("bert.pooler.");
            Ok(Built { vs, model, fmt: Formatter::for_model(base)?, max_len, export, head })
        }
        other => anyhow::bail!("{}: a reward model is built on a GPT or a BERT folder, this one is `{other}`", base.display()),
    }
}

/// The padding token of a reward model over `fmt`: `<|endoftext|>` when the
/// tokenizer has it.
pub fn pad_token(fmt: &Formatter) -> Option<u32> {
    fmt.tokenizer.token_to_id(forja_tokenizer::EOT)
}

/// Reads and encodes a preferences file (rejects collected).
pub fn read_encoded(fmt: &Formatter, path: &Path, max_len: usize, rejects: &mut Vec<Reject>) -> anyhow::Result<(Vec<EncodedPair>, usize)> {
    let pairs = Preference::read(path)?;
    Ok(encode_pairs(fmt, &pairs, max_len, path, rejects))
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RewardSummary {
    pub train: TrainSummary,
    pub pairs: usize,
    pub val_pairs: usize,
    pub rejected: usize,
    pub truncated: usize,
    /// Held-out accuracy of the exported model (NaN without held-out pairs).
    pub val_accuracy: f64,
}

pub fn run(cfg: &RewardConfig, inputs: &RewardInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<RewardSummary> {
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let Built { mut vs, model, fmt, max_len, export, head } = build(cfg, &inputs.model, device)?;
    let mut rejects = Vec::new();
    let (train, cut_t) = read_encoded(&fmt, &inputs.train, max_len, &mut rejects)?;
    let (val, cut_v) = match &inputs.val {
        Some(v) => read_encoded(&fmt, v, max_len, &mut rejects)?,
        None => (Vec::new(), 0),
    };
    Reject::write(&out.path(&common::REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    anyhow::ensure!(!train.is_empty(), "{}: no usable training pair ({} rejected)", inputs.train.display(), rejects.len());
    let groups = match cfg.lora {
        // The head learns in full; the backbone through its adapters.
        Some(_) => ParamGroup::train_only(&vs, |n| n.contains(".lora_") || head(n), cfg.train.optim.weight_decay),
        // An untied language-model head has no part in a score: frozen, not exported.
        None => ParamGroup::train_only(&vs, |n| n != LM_HEAD, cfg.train.optim.weight_decay),
    };
    let (n_train, n_val) = (train.len(), val.len());
    let lora = cfg.lora.clone();
    let architecture = export.architecture();
    let write: forja_train::ModelWriter = Box::new(move |vs, dir| write_reward(dir, vs, &export, lora.as_ref()));
    let mut obj = BradleyTerry {
        model: &model,
        batches: EpochBatches::new(n_train, cfg.train.batch_size, cfg.train.global_accum(), seed),
        train,
        val,
        write,
    };
    let engine_cfg = cfg.train.engine_for_examples(n_train, obj.batches.covering(n_val));
    println!(
        "{}: {n_train} training pairs, {n_val} held out, {} rejected, {} cut to {max_len} tokens; {} steps",
        ctx.name,
        rejects.len(),
        cut_t + cut_v,
        engine_cfg.max_steps
    );
    let spec = RunSpec { seed, run_key: run_key(cfg, seed, device_name, &inputs.named_paths(), ctx)?, ctx, out_dir: out.dir() };
    let outs = common::engine_outputs(out);
    let summary = Engine::new(&engine_cfg, &mut vs, groups, spec)?.run(&mut obj, &outs, &mut |_| std::ops::ControlFlow::Continue(()))?;
    drop(obj);
    // The exported model's held-out accuracy, for the report.
    let val_accuracy = match &inputs.val {
        Some(v) if n_val > 0 => held_out_accuracy(&outs.model, v, max_len, device)?,
        _ => f64::NAN,
    };
    let mut report = std::fs::read_to_string(&outs.report).unwrap_or_default();
    report += &format!(
        "\n## Reward model\n\n| | |\n|---|---|\n| training pairs | {n_train} |\n| held-out pairs | {n_val} |\n| held-out accuracy (exported model) | {} |\n| rejected pairs | {} |\n| pairs cut to {max_len} tokens | {} |\n\nThe folder loads in Hugging Face transformers as `{}` with one label.\n",
        if val_accuracy.is_nan() { "-".to_string() } else { format!("{:.3}", val_accuracy) },
        rejects.len(),
        cut_t + cut_v,
        architecture
    );
    forja_core::fsutil::atomic_write(&outs.report, report.as_bytes())?;
    Ok(RewardSummary { train: summary, pairs: n_train, val_pairs: n_val, rejected: rejects.len(), truncated: cut_t + cut_v, val_accuracy })
}

/// Share of pairs in `path` whose chosen answer the reward model folder `dir`
/// scores above the rejected one.
pub fn held_out_accuracy(dir: &Path, path: &Path, max_len: usize, device: Device) -> anyhow::Result<f64> {
    let r = load(dir, device)?;
    let mut rejects = Vec::new();
    let (pairs, _) = read_encoded(&r.fmt, path, max_len.min(r.model.max_len()), &mut rejects)?;
    anyhow::ensure!(!pairs.is_empty(), "{}: no pairs to score", path.display());
    let c: Vec<Vec<u32>> = pairs.iter().map(|p| r.model.input(&p.chosen)).collect();
    let rj: Vec<Vec<u32>> = pairs.iter().map(|p| r.model.input(&p.rejected)).collect();
    let (sc, sr) = (r.model.score_all(&c, 16)?, r.model.score_all(&rj, 16)?);
    Ok(sc.iter().zip(&sr).filter(|(a, b)| a > b).count() as f64 / pairs.len() as f64)
}
