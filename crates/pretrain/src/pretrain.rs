//! The `pretrain` stage: builds the model the configuration names (GPT, BERT,
//! LSTM), optionally from an `init` model folder (continued pre-training from a
//! forja or an imported HF checkpoint), and trains it with the engine on its
//! objective (next-token prediction, or masked-LM for BERT).

use crate::objectives::{CausalLm, MaskedLm, MlmConfig, MlmTokens, Streams};
use anyhow::{bail, Context};
use forja_core::artifacts::Artifact;
use forja_core::stage::{FromInputs, OutDir, StageCtx};
use forja_core::token_counts::TokenCounts;
use forja_core::TokenRow;
use forja_model::bert::{Bert, BertConfig, BertMlmHead};
use forja_model::checkpoint::{self, load_weights, write_folder, write_model_files, WEIGHTS};
use forja_model::lstm::{LstmConfig, LstmLm, LSTM_MODEL_TYPE};
use forja_model::{Gpt, GptConfig};
use forja_tokenizer::Tokenizer;
use forja_train::batches::TokenStream;
use forja_train::engine::StepHook;
use forja_train::{run_key, Engine, EngineConfig, ModelWriter, Objective, ParamGroup, RunSpec, TrainSummary, TrainerConfig, TrainerSetup};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use tch::{nn, Device};

/// The model trained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Decoder-only Transformer, next-token prediction.
    #[default]
    Gpt,
    /// Encoder Transformer, masked-LM.
    Bert,
    /// Recurrent baseline, next-token prediction.
    Lstm,
}

/// Parameters of the `pretrain` stage: the model and its objective here, the
/// trainer settings (steps, batch, optimizer, validation, precision, seed,
/// device, threads) under `train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub architecture: Architecture,
    /// Sizes: `block_size` is the context (BERT: positions; LSTM: training
    /// sequence length), `n_embd` the width, `n_layer` the depth, `n_head` the
    /// attention heads (Transformers).
    pub model: GptConfig,
    /// Masked-LM settings (BERT).
    pub mlm: MlmConfig,
    /// The trainer settings; `batch_size` is sequences per micro-batch
    /// (`epochs` does not apply: windows are sampled from the token stream).
    pub train: TrainerConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self { architecture: Architecture::Gpt, model: GptConfig::default(), mlm: MlmConfig::default(), train: TrainerConfig::default() }
    }
}

impl PretrainConfig {
    /// The engine's part of the configuration.
    pub fn engine(&self) -> EngineConfig {
        self.train.engine(self.train.max_steps, self.train.eval_iters)
    }
}

forja_core::stage_inputs! {
    /// Inputs of the `pretrain` stage.
    pub struct PretrainInputs {
        tokenizer: one[TOKENIZER],
        train: one[TOKENS],
        val: one[TOKENS],
        /// A model folder to continue pre-training from (forja's or imported).
        init: optional[MODEL],
    }
}

/// Outputs of `pretrain`: every trainer's standard ones.
pub use forja_train::trainer::{engine_outputs, GRAD_PLOT, MODEL, STANDARD_OUTPUTS as OUTPUTS};

/// Trains; writes `model/` (best or last weights), `metrics.arrow`, `loss.svg`,
/// `grad_norms.svg`, `report.md` and `checkpoint/` under `out`. Resumes from `out/checkpoint`
/// when it matches this run.
pub fn run(cfg: &PretrainConfig, inputs: &PretrainInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<TrainSummary> {
    run_with_hook(cfg, inputs, out, ctx, &mut |_| ControlFlow::Continue(()))
}

/// What every architecture needs to be built and trained.
struct Setup<'a> {
    cfg: &'a PretrainConfig,
    inputs: &'a PretrainInputs,
    tokenizer: Tokenizer,
    device: Device,
    seed: u64,
    run_key: String,
    out: &'a OutDir,
    ctx: &'a StageCtx,
}

/// [`run`] with a hook called after every step; `Break` stops the run at once,
/// without final outputs, as if the process were killed there.
pub fn run_with_hook(
    cfg: &PretrainConfig,
    inputs: &PretrainInputs,
    out: &OutDir,
    ctx: &StageCtx,
    hook: StepHook,
) -> anyhow::Result<TrainSummary> {
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let tokenizer = Tokenizer::load(&inputs.tokenizer)?;
    let run_key = run_key(cfg, seed, device_name, &inputs.named_paths(), ctx)?;
    let setup = Setup { cfg, inputs, tokenizer, device, seed, run_key, out, ctx };
    let summary = match cfg.architecture {
        Architecture::Gpt => train_gpt(&setup, hook)?,
        Architecture::Lstm => train_lstm(&setup, hook)?,
        Architecture::Bert => train_bert(&setup, hook)?,
    };
    println!(
        "{}: {} steps, final val loss {:.4} (best {:.4}{}), {:.0} tokens/s, {} incident(s)",
        ctx.name,
        summary.steps,
        summary.final_val_loss,
        summary.best_val_loss,
        summary.best_step.map_or(String::new(), |s| format!(" at step {s}")),
        summary.tokens_per_s,
        summary.incidents.len()
    );
    Ok(summary)
}

fn streams(s: &Setup, vocab_size: i64, block: i64) -> anyhow::Result<Streams> {
    let train = TokenStream::load(&s.inputs.train, vocab_size, s.device)?;
    let val = TokenStream::load(&s.inputs.val, vocab_size, s.device)?;
    for (name, stream) in [("train", &train), ("val", &val)] {
        if !stream.fits(block) {
            bail!("{name} split has {} tokens, fewer than block_size + 1 = {}", stream.len(), block + 1);
        }
    }
    Ok(Streams { train, val, batch_size: s.cfg.train.batch_size as i64, block, grad_accum: s.cfg.train.global_accum(), seed: s.seed })
}

/// Runs the engine over `obj` with the usual parameter groups of `vs`.
fn train(s: &Setup, vs: &mut nn::VarStore, obj: &mut dyn Objective, hook: StepHook) -> anyhow::Result<TrainSummary> {
    let engine_cfg = s.cfg.engine();
    let groups = ParamGroup::decay_split(vs, s.cfg.train.optim.weight_decay);
    let spec = RunSpec { seed: s.seed, run_key: s.run_key.clone(), ctx: s.ctx, out_dir: s.out.dir() };
    let mut engine = Engine::new(&engine_cfg, vs, groups, spec)?;
    engine.run(obj, &engine_outputs(s.out), hook)
}

/// Loads `init` weights into `vs` (variables for which `optional` holds may be missing).
fn load_init(s: &Setup, vs: &mut nn::VarStore, optional: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    if let Some(init) = &s.inputs.init {
        load_weights(vs, &init.join(WEIGHTS), optional).with_context(|| format!("continuing from {}", init.display()))?;
    }
    Ok(())
}

/// The init folder's `model_type` must be the architecture's.
fn check_init_type(s: &Setup, expected: &str) -> anyhow::Result<()> {
    if let Some(init) = &s.inputs.init {
        let found = checkpoint::model_type(init)?;
        anyhow::ensure!(
            found == expected,
            "init model {} is `{found}`, but architecture = {:?} needs `{expected}`",
            init.display(),
            s.cfg.architecture
        );
    }
    Ok(())
}

/// The GPT's configuration: the stage's, with the vocabulary taken from the
/// tokenizer (or the init model) when not given; an init model must match it.
fn gpt_config(s: &Setup) -> anyhow::Result<GptConfig> {
    let mut model_cfg = s.cfg.model.clone();
    if let Some(init) = &s.inputs.init {
        let found = checkpoint::model_type(init)?;
        anyhow::ensure!(
            checkpoint::is_decoder(&found),
            "init model {} is `{found}`, but architecture = {:?} needs a decoder ({})",
            init.display(),
            s.cfg.architecture,
            checkpoint::DECODER_TYPES.join(", ")
        );
        let init_cfg = checkpoint::read_config(init)?;
        if model_cfg.vocab_size == 0 {
            model_cfg.vocab_size = init_cfg.vocab_size;
        }
        // The activation is the init model's (an HF GPT-2 uses `gelu_new`).
        model_cfg.activation = init_cfg.activation;
        anyhow::ensure!(
            GptConfig { dropout: model_cfg.dropout, zero_init_proj: model_cfg.zero_init_proj, ..init_cfg.clone() } == model_cfg,
            "init model {} has config {init_cfg:?}, but this stage asks for {model_cfg:?}",
            init.display()
        );
    }
    if model_cfg.vocab_size == 0 {
        model_cfg.vocab_size = s.tokenizer.vocab_size() as i64;
    }
    model_cfg.validate()?;
    Ok(model_cfg)
}

/// How often each token occurs in the training split: written beside the
/// weights for the server's drift monitor.
fn training_counts(s: &Setup, vocab: i64) -> anyhow::Result<TokenCounts> {
    let rows = TokenRow::read(&s.inputs.train)?;
    Ok(TokenCounts::of(rows.iter().map(|r| r.ids.as_slice()), vocab as usize, "pretrain train split"))
}

fn train_gpt(s: &Setup, hook: StepHook) -> anyhow::Result<TrainSummary> {
    let model_cfg = gpt_config(s)?;
    let data = streams(s, model_cfg.vocab_size, model_cfg.block_size)?;
    tch::manual_seed(s.seed as i64);
    let mut vs = nn::VarStore::new(s.device);
    let mut model = Gpt::new(&vs.root(), &model_cfg)?;
    model.precision = s.cfg.train.precision;
    load_init(s, &mut vs, &|_| false)?;
    let counts = training_counts(s, model_cfg.vocab_size)?;
    let write: ModelWriter = Box::new(|vs, dir| {
        write_model_files(dir, vs, &model_cfg, &s.tokenizer)?;
        counts.write(dir)
    });
    let mut obj = CausalLm { model: &model, data, write };
    train(s, &mut vs, &mut obj, hook)
}

fn train_lstm(s: &Setup, hook: StepHook) -> anyhow::Result<TrainSummary> {
    let m = &s.cfg.model;
    let mut lstm_cfg = LstmConfig {
        model_type: LSTM_MODEL_TYPE.into(),
        vocab_size: if m.vocab_size > 0 { m.vocab_size } else { s.tokenizer.vocab_size() as i64 },
        n_embd: m.n_embd,
        n_layer: m.n_layer,
        dropout: m.dropout,
        block_size: m.block_size,
    };
    if let Some(init) = &s.inputs.init {
        check_init_type(s, LSTM_MODEL_TYPE)?;
        let init_cfg = checkpoint::read_lstm_config(init)?;
        anyhow::ensure!(
            LstmConfig { dropout: lstm_cfg.dropout, block_size: lstm_cfg.block_size, ..init_cfg.clone() } == lstm_cfg,
            "init model {} has config {init_cfg:?}, but this stage asks for {lstm_cfg:?}",
            init.display()
        );
        lstm_cfg.vocab_size = init_cfg.vocab_size;
    }
    let data = streams(s, lstm_cfg.vocab_size, lstm_cfg.block_size)?;
    tch::manual_seed(s.seed as i64);
    let mut vs = nn::VarStore::new(s.device);
    let mut model = LstmLm::new(&vs.root(), &lstm_cfg)?;
    model.precision = s.cfg.train.precision;
    load_init(s, &mut vs, &|_| false)?;
    let write: ModelWriter = Box::new(|vs, dir| write_folder(dir, vs, &lstm_cfg, &s.tokenizer));
    let mut obj = CausalLm { model: &model, data, write };
    train(s, &mut vs, &mut obj, hook)
}

/// The id of the first of `names` the tokenizer has.
fn special_id(tok: &Tokenizer, names: &[&str]) -> Option<i64> {
    names.iter().find_map(|n| tok.token_to_id(n)).map(i64::from)
}

fn train_bert(s: &Setup, hook: StepHook) -> anyhow::Result<TrainSummary> {
    s.cfg.mlm.validate()?;
    let m = &s.cfg.model;
    let bert_cfg = match &s.inputs.init {
        Some(init) => {
            check_init_type(s, "bert")?;
            BertConfig { hidden_dropout_prob: m.dropout, attention_probs_dropout_prob: m.dropout, ..checkpoint::read_bert_config(init)? }
        }
        None => {
            let vocab = if m.vocab_size > 0 { m.vocab_size } else { s.tokenizer.vocab_size() as i64 };
            BertConfig::sized(vocab, m.n_embd, m.n_layer, m.n_head, m.block_size, m.dropout)
        }
    };
    let mask = special_id(&s.tokenizer, &["[MASK]", "<mask>"]).context(
        "masked-LM needs a mask token: the tokenizer has neither `[MASK]` nor `<mask>` (add it to train_tokenizer's special_tokens)",
    )?;
    let tokens = MlmTokens {
        mask,
        cls: special_id(&s.tokenizer, &["[CLS]", "<s>"]),
        sep: special_id(&s.tokenizer, &["[SEP]", "</s>"]),
        vocab_size: bert_cfg.vocab_size,
    };
    let block = m.block_size.min(bert_cfg.max_position_embeddings);
    let data = streams(s, bert_cfg.vocab_size, block)?;
    tch::manual_seed(s.seed as i64);
    let mut vs = nn::VarStore::new(s.device);
    let root = vs.root();
    let mut bert = Bert::new(&(&root / "bert"), &bert_cfg, None)?;
    bert.precision = s.cfg.train.precision;
    let head = BertMlmHead::new(&(&root / "cls" / "predictions"), &bert_cfg);
    // An imported encoder (e.g. MiniLM) has no masked-LM head: it starts fresh.
    load_init(s, &mut vs, &|name| name.starts_with("cls."))?;
    let write: ModelWriter = Box::new(|vs, dir| write_folder(dir, vs, &bert_cfg, &s.tokenizer));
    let mut obj = MaskedLm { bert: &bert, head: &head, data, cfg: s.cfg.mlm.clone(), tokens, write };
    train(s, &mut vs, &mut obj, hook)
}
