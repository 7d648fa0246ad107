//! The `sft` stage: instruction tuning of a GPT on conversations, as an
//! [`Objective`] of the training engine.
//!
//! - The chat template (the model's own, a given one, or ChatML) renders each
//!   conversation; its special tokens are added to the tokenizer and the
//!   embedding matrix (new rows start at the mean embedding).
//! - The loss covers assistant tokens only.
//! - Packing: several examples share a row of `block_size` tokens (first-fit
//!   decreasing); positions
//!   restart at each example and attention is block-diagonal (SDPA with a
//!   causal mask per segment), so no example sees another. Without packing
//!   each example is its own row, padded to the longest of its batch.
//! - LoRA: adapters on the chosen projections, the base frozen, only adapters
//!   in AdamW; the adapters are also written alone in the PEFT layout, and the
//!   exported model has them merged.
//!
//! The exported folder keeps the template (`tokenizer_config.json`) and names
//! the end-of-turn token as `eos_token_id`, so generation stops after a turn.

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, FromInputs, OutDir, OutputSpec, StageCtx};
use forja_core::token_counts::TokenCounts;
use forja_core::{Generation, Message, Reject, SftExample, TokenRow};
use forja_model::chat::{self, respond, ChatConfig, ChatTemplate, Encoded, IM_END, IM_START};
use forja_model::checkpoint::{self, Weights, TOKENIZER, WEIGHTS};
use forja_model::export::{write_chat_model, ChatExport};
use forja_model::gpt::LM_HEAD;
use forja_model::lm::cross_entropy;
use forja_model::{load_gpt, Gpt, GptConfig, LoraConfig};
use forja_tokenizer::Tokenizer;
use forja_train::batches::EpochBatches;
use forja_train::engine::StepHook;
use forja_train::{run_key, TrainSummary, TrainerConfig, TrainerSetup};
use forja_train::{Engine, EngineOutputs, EvalScore, EvalSplit, Objective, OptimConfig, ParamGroup, RunSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Parameters of `sft`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Jinja chat template; when absent, the model folder's own, else ChatML.
    pub template: Option<String>,
    /// The token that ends an assistant turn (with `template`).
    pub end_of_turn: Option<String>,
    /// Special tokens added to the tokenizer and embeddings when missing.
    pub add_tokens: Vec<String>,
    /// Longest conversation in tokens (0: the model's context + 1); longer ones are rejected.
    pub max_length: usize,
    /// Pack several examples per row (true) or pad each to its batch's longest.
    pub packing: bool,
    /// Dropout during fine-tuning (the model's own when absent).
    pub dropout: Option<f64>,
    pub lora: Option<LoraConfig>,
    /// Held-out conversations answered in the report (from `prompts`, else `val`).
    pub samples: usize,
    /// How sample answers are generated.
    pub chat: ChatConfig,
    /// The trainer settings (`batch_size`: rows per micro-batch; `epochs`
    /// sets `max_steps` when that is 0; `eval_iters` 0: every validation batch).
    pub train: TrainerConfig,
}

/// `sft`'s trainer defaults: one epoch, batches of 8 rows, AdamW at 1e-4
/// without weight decay, every validation batch.
pub fn train_defaults() -> TrainerConfig {
    let d = TrainerConfig::default();
    TrainerConfig {
        max_steps: 0,
        epochs: 1.0,
        batch_size: 8,
        optim: OptimConfig { lr: 1e-4, min_lr: 1e-5, warmup_steps: 20, weight_decay: 0.0, ..d.optim },
        eval_interval: 100,
        eval_iters: 0,
        checkpoint_interval: 100,
        log_interval: 10,
        ..d
    }
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            template: None,
            end_of_turn: None,
            add_tokens: vec![IM_START.into(), IM_END.into()],
            max_length: 0,
            packing: true,
            dropout: None,
            lora: None,
            samples: 5,
            chat: ChatConfig::default(),
            train: train_defaults(),
        }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `sft`.
    pub struct SftInputs {
        /// The GPT model folder to fine-tune.
        model: one[MODEL],
        train: one[SFT_EXAMPLES],
        val: optional[SFT_EXAMPLES],
        /// Held-out conversations to answer in the report (never trained on).
        prompts: optional[SFT_EXAMPLES],
    }
}

pub use forja_train::trainer::{engine_outputs, GRAD_PLOT, MODEL};
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const SAMPLES: OutputSpec = OutputSpec { name: "samples", path: "samples.arrow", kind: port::GENERATIONS };
pub const OUTPUTS: [OutputSpec; 7] = [MODEL, outputs::METRICS, outputs::PLOT, GRAD_PLOT, outputs::REPORT, REJECTS, SAMPLES];

/// One training row: inputs, next-token targets (-100 where not learned),
/// positions and the segment (example) of each token.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ids: Vec<i64>,
    pub targets: Vec<i64>,
    pub positions: Vec<i64>,
    pub segments: Vec<i64>,
}

impl Row {
    fn new() -> Self {
        Self { ids: Vec::new(), targets: Vec::new(), positions: Vec::new(), segments: Vec::new() }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Appends one example as segment `seg`: inputs `ids[..n-1]`, targets
    /// `ids[1..]` where the target token is an assistant token.
    fn push(&mut self, e: &Encoded, seg: i64) {
        let n = e.ids.len();
        for i in 0..n - 1 {
            self.ids.push(i64::from(e.ids[i]));
            self.targets.push(if e.assistant[i + 1] { i64::from(e.ids[i + 1]) } else { -100 });
            self.positions.push(i as i64);
            self.segments.push(seg);
        }
    }

    /// Tokens that are learned.
    pub fn targets_count(&self) -> usize {
        self.targets.iter().filter(|&&t| t != -100).count()
    }
}

/// Rows of at most `block` tokens. Without `packing`, one example per row, in
/// order. With it, first-fit decreasing: examples from longest to shortest,
/// each into the first row with room (ties keep input order), so rows fill
/// up with little padding. Every example must have 2 ..= block + 1 tokens.
pub fn build_rows(examples: &[Encoded], block: usize, packing: bool) -> Vec<Row> {
    if !packing {
        return examples
            .iter()
            .map(|e| {
                let mut row = Row::new();
                row.push(e, 0);
                row
            })
            .collect();
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].ids.len()));
    let mut rows: Vec<(Row, i64)> = Vec::new(); // row and its next segment id
    for i in order {
        let e = &examples[i];
        let len = e.ids.len() - 1;
        match rows.iter_mut().find(|(r, _)| r.len() + len <= block) {
            Some((row, seg)) => {
                row.push(e, *seg);
                *seg += 1;
            }
            None => {
                let mut row = Row::new();
                row.push(e, 0);
                rows.push((row, 1));
            }
        }
    }
    rows.into_iter().map(|(r, _)| r).collect()
}

/// `[b, t]` tensors of `rows`, right-padded to the longest: pads are their own
/// segment (-1) at position 0 with no target.
pub fn collate(rows: &[&Row], device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let mut out: [Vec<i64>; 4] = Default::default();
    for r in rows {
        let pad = t - r.len();
        for (buf, (vals, fill)) in out.iter_mut().zip([(&r.ids, 0), (&r.targets, -100), (&r.positions, 0), (&r.segments, -1)]) {
            buf.extend_from_slice(vals);
            buf.extend(std::iter::repeat_n(fill, pad));
        }
    }
    let b = rows.len() as i64;
    let [ids, targets, positions, segments] = out.map(|v| Tensor::from_slice(&v).view([b, -1]).to(device));
    (ids, targets, positions, segments)
}

/// The instruction-tuning objective.
pub struct Instruct<'a> {
    pub model: &'a Gpt,
    pub train: Vec<Row>,
    pub val: Vec<Row>,
    pub batches: EpochBatches,
    pub write: forja_train::ModelWriter<'a>,
}

impl Instruct<'_> {
    /// Mean cross-entropy over the learned tokens; the vocabulary projection
    /// runs only at those positions (the others would be discarded).
    fn loss(&self, rows: &[&Row], train: bool) -> anyhow::Result<Tensor> {
        let (ids, targets, positions, segments) = collate(rows, self.model.device());
        let hidden = self.model.hidden_packed(&ids, &positions, &segments, train)?; // [b, t, c]
        let targets = targets.view([-1]);
        let keep = targets.ne(-100).nonzero().squeeze_dim(1); // [n]
        anyhow::ensure!(keep.size()[0] > 0, "a batch without any assistant token");
        let c = hidden.size()[2];
        let picked = hidden.view([-1, c]).index_select(0, &keep); // [n, c]
        Ok(cross_entropy(&self.model.lm_head(&picked), &targets.index_select(0, &keep)))
    }
}

impl Objective for Instruct<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let idx = self.batches.indices(step, micro);
        let rows: Vec<&Row> = idx.iter().map(|&i| &self.train[i]).collect();
        self.loss(&rows, true)
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let data = if split == EvalSplit::Val { &self.val } else { &self.train };
        let rows: Vec<&Row> = data[self.batches.fixed(i, data.len())].iter().collect();
        anyhow::ensure!(!rows.is_empty(), "no {} rows to evaluate", split.name());
        Ok(EvalScore { loss: self.loss(&rows, false)?.double_value(&[]), metrics: Vec::new() })
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
            .map(|i| TokenRow { doc_id: format!("row{i}"), ids: self.train[i].ids.iter().map(|&t| t as u32).collect() })
            .collect())
    }

    fn tokens_per_micro(&self) -> f64 {
        let tokens: usize = self.train.iter().map(Row::len).sum();
        tokens as f64 / self.train.len().max(1) as f64 * self.batches.batch_size as f64
    }
}

/// The tokenizer, template and model a run fine-tunes.
pub struct Prepared {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub cfg: GptConfig,
    /// Ids of the special tokens added to the vocabulary.
    pub added: Vec<u32>,
}

/// Loads the model folder's tokenizer and config, picks the template and adds
/// its special tokens (growing the vocabulary when needed).
pub fn prepare(model_dir: &Path, cfg: &SftConfig) -> anyhow::Result<Prepared> {
    let found = checkpoint::model_type(model_dir)?;
    anyhow::ensure!(
        checkpoint::is_decoder(&found),
        "sft needs a decoder model folder ({}); {} is `{found}`",
        checkpoint::DECODER_TYPES.join(", "),
        model_dir.display()
    );
    let mut tokenizer = Tokenizer::load(&model_dir.join(TOKENIZER))?;
    let template = match (&cfg.template, chat::read_template(model_dir)?) {
        (Some(src), _) => ChatTemplate::new(src, cfg.end_of_turn.as_deref().unwrap_or(IM_END))?,
        (None, Some(own)) => own,
        (None, None) => ChatTemplate::chatml(),
    };
    let added = tokenizer.add_special_tokens(&cfg.add_tokens);
    anyhow::ensure!(
        tokenizer.token_to_id(&template.end_of_turn).is_some(),
        "the end-of-turn token `{}` is not in the vocabulary: add it with add_tokens",
        template.end_of_turn
    );
    let mut gpt_cfg = checkpoint::read_config(model_dir)?;
    gpt_cfg.vocab_size = gpt_cfg.vocab_size.max(tokenizer.vocab_size() as i64);
    if let Some(p) = cfg.dropout {
        gpt_cfg.dropout = p;
    }
    Ok(Prepared { tokenizer, template, cfg: gpt_cfg, added })
}

/// Base weights of the model `cfg` (as [`prepare`] read it) with the embedding
/// rows of `added` tokens (and any rows beyond the base vocabulary) set to the
/// mean embedding; an untied output head's rows likewise.
pub fn base_weights(model_dir: &Path, added: &[u32], cfg: &GptConfig) -> anyhow::Result<Weights> {
    let mut w = Weights::read(&model_dir.join(WEIGHTS))?;
    grow_rows(&mut w, model_dir, cfg.arch.embedding_name(), added, cfg.vocab_size)?;
    if !cfg.tie_word_embeddings {
        grow_rows(&mut w, model_dir, LM_HEAD, added, cfg.vocab_size)?;
    }
    Ok(w)
}

/// Grows the rows of the `[vocab, c]` tensor `name` to `vocab`, new rows and the
/// rows of `added` tokens set to the mean row.
fn grow_rows(w: &mut Weights, model_dir: &Path, name: &str, added: &[u32], vocab: i64) -> anyhow::Result<()> {
    let wte = w.get(name).with_context(|| format!("{}: no {name}", model_dir.display()))?.shallow_clone();
    let (old, c) = wte.size2()?;
    let mean = wte.mean_dim([0i64].as_slice(), true, Kind::Float).to_kind(wte.kind()); // [1, c]
    let mut grown = if vocab > old { Tensor::cat(&[wte.shallow_clone(), mean.expand([vocab - old, c], false)], 0) } else { wte.copy() };
    for &id in added.iter().filter(|&&id| i64::from(id) < old) {
        grown.get(i64::from(id)).copy_(&mean.squeeze_dim(0));
    }
    grown = grown.contiguous();
    w.insert(name, grown);
    Ok(())
}

/// Encodes conversations; over-long or target-less ones become rejects.
fn encode_all(
    examples: &[SftExample],
    p: &Prepared,
    max_len: usize,
    file: &Path,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let raw = || serde_json::json!(ex.messages).to_string();
        let source = format!("{} ({})", file.display(), ex.source);
        let enc = match p.template.encode(&p.tokenizer, &ex.messages) {
            Ok(enc) => enc,
            Err(e) => {
                rejects.push(Reject::new(&source, i as u64 + 1, format!("{e:#}"), &raw()));
                continue;
            }
        };
        if enc.ids.len() > max_len {
            rejects.push(Reject::new(
                &source,
                i as u64 + 1,
                format!("{} tokens after templating, over max_length {max_len}", enc.ids.len()),
                &raw(),
            ));
        } else if !enc.assistant.iter().skip(1).any(|&a| a) {
            rejects.push(Reject::new(&source, i as u64 + 1, "no assistant tokens after templating", &raw()));
        } else {
            out.push(enc);
        }
    }
    Ok(out)
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    pub train: TrainSummary,
    pub examples: usize,
    pub rows: usize,
    pub rejected: usize,
    /// Learned (assistant) tokens over all tokens of the training rows.
    pub target_share: f64,
}

/// Fine-tunes; writes every output of the stage under `out`.
pub fn run(cfg: &SftConfig, inputs: &SftInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<SftSummary> {
    run_with_hook(cfg, inputs, out, ctx, &mut |_| std::ops::ControlFlow::Continue(()))
}

/// [`run`] with a hook after every step.
pub fn run_with_hook(cfg: &SftConfig, inputs: &SftInputs, out: &OutDir, ctx: &StageCtx, hook: StepHook) -> anyhow::Result<SftSummary> {
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let p = prepare(&inputs.model, cfg)?;
    anyhow::ensure!(
        cfg.lora.is_none() || p.added.is_empty(),
        "LoRA keeps the embeddings frozen, so it cannot learn the {} token(s) this run adds ({}); fine-tune fully once, or start from a model whose tokenizer has them",
        p.added.len(),
        cfg.add_tokens.join(", ")
    );
    let block = p.cfg.block_size as usize;
    let max_len = if cfg.max_length == 0 { block + 1 } else { cfg.max_length.min(block + 1) };

    let mut rejects = Vec::new();
    let train_ex = SftExample::read(&inputs.train)?;
    let train_enc = encode_all(&train_ex, &p, max_len, &inputs.train, &mut rejects)?;
    let val_enc = match &inputs.val {
        Some(v) => encode_all(&SftExample::read(v)?, &p, max_len, v, &mut rejects)?,
        None => Vec::new(),
    };
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    anyhow::ensure!(!train_enc.is_empty(), "{}: no usable training example ({} rejected)", inputs.train.display(), rejects.len());
    let train_rows = build_rows(&train_enc, block, cfg.packing);
    let val_rows = build_rows(&val_enc, block, cfg.packing);
    let targets: usize = train_rows.iter().map(Row::targets_count).sum();
    let tokens: usize = train_rows.iter().map(Row::len).sum();

    tch::manual_seed(seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut model = Gpt::with_lora(&vs.root(), &p.cfg, cfg.lora.as_ref())?;
    model.precision = cfg.train.precision;
    base_weights(&inputs.model, &p.added, &p.cfg)?.load_into(&mut vs, &|n| n.contains(".lora_"))?;
    let groups = match cfg.lora {
        Some(_) => ParamGroup::train_only(&vs, |n| n.contains(".lora_"), cfg.train.optim.weight_decay),
        None => ParamGroup::decay_split(&vs, cfg.train.optim.weight_decay),
    };
    // What the served model will be asked: the non-assistant tokens of training.
    let prompts: Vec<Vec<u32>> =
        train_enc.iter().map(|e| e.ids.iter().zip(&e.assistant).filter(|(_, a)| !**a).map(|(t, _)| *t).collect()).collect();
    let counts = TokenCounts::of(prompts.iter().map(Vec::as_slice), p.cfg.vocab_size as usize, "sft train prompts");
    let export = ChatExport {
        cfg: &p.cfg,
        counts: &counts,
        tokenizer: &p.tokenizer,
        template: &p.template,
        lora: cfg.lora.as_ref(),
        base: &inputs.model,
    };
    let write: forja_train::ModelWriter = Box::new(|vs, dir| write_chat_model(dir, vs, &export));
    let n_rows = train_rows.len();
    let mut obj = Instruct {
        model: &model,
        batches: EpochBatches::new(train_rows.len(), cfg.train.batch_size, cfg.train.global_accum(), seed),
        train: train_rows,
        val: val_rows,
        write,
    };
    let engine_cfg = cfg.train.engine_for_examples(n_rows, obj.batches.covering(obj.val.len()));
    let max_steps = engine_cfg.max_steps;
    println!(
        "{}: {} train examples in {n_rows} rows ({}), {} val examples, {} rejected; {max_steps} steps; {:.0}% of tokens are targets",
        ctx.name,
        train_enc.len(),
        if cfg.packing { "packed" } else { "padded" },
        val_enc.len(),
        rejects.len(),
        100.0 * targets as f64 / tokens.max(1) as f64
    );
    let spec = RunSpec { seed, run_key: run_key(cfg, seed, device_name, &inputs.named_paths(), ctx)?, ctx, out_dir: out.dir() };
    let outputs = engine_outputs(out);
    let summary = Engine::new(&engine_cfg, &mut vs, groups, spec)?.run(&mut obj, &outputs, hook)?;
    drop(obj);
    write_samples(cfg, inputs, out, ctx, &outputs, device)?;
    Ok(SftSummary {
        train: summary,
        examples: train_enc.len(),
        rows: n_rows,
        rejected: rejects.len(),
        target_share: targets as f64 / tokens.max(1) as f64,
    })
}

/// The conversation up to (not including) its first assistant turn.
fn prompt_part(messages: &[Message]) -> Vec<Message> {
    messages.iter().take_while(|m| m.role != "assistant").cloned().collect()
}

/// Answers held-out conversations with the exported model; writes them as
/// `samples.arrow` and into the report.
fn write_samples(
    cfg: &SftConfig,
    inputs: &SftInputs,
    out: &OutDir,
    ctx: &StageCtx,
    outputs: &EngineOutputs,
    device: Device,
) -> anyhow::Result<()> {
    let source = inputs.prompts.as_ref().or(inputs.val.as_ref());
    let convs: Vec<(Vec<Message>, Option<String>)> = match source {
        Some(path) => SftExample::read(path)?
            .into_iter()
            .take(cfg.samples)
            .map(|e| {
                let reference = e.messages.iter().find(|m| m.role == "assistant").map(|m| m.content.clone());
                (prompt_part(&e.messages), reference)
            })
            .filter(|(c, _)| !c.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let mut rows = Vec::new();
    let mut md = String::from("\n## Sample answers (held out)\n\n");
    if !convs.is_empty() {
        let (_vs, model, tok) = load_gpt(&outputs.model, device)?;
        let template = chat::read_template(&outputs.model)?.context("the exported model lost its chat template")?;
        // Prompts that fit the context are answered in one batch.
        let block = model.cfg.block_size as usize;
        let mut fitting = Vec::new();
        for (conv, reference) in &convs {
            let prompt = template.render(conv, true)?;
            match tok.encode(&prompt)?.len() {
                n if n >= block => md += &format!("- (a prompt of {n} tokens does not fit the context of {block})\n"),
                _ => fitting.push((conv.clone(), reference, prompt)),
            }
        }
        let batch: Vec<Vec<Message>> = fitting.iter().map(|(c, _, _)| c.clone()).collect();
        let answers = if batch.is_empty() { Vec::new() } else { respond(&model, &tok, &template, &batch, &cfg.chat)? };
        for ((conv, reference, prompt), answer) in fitting.into_iter().zip(answers) {
            let user = conv.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
            md += &format!("**User:** {}\n\n**Model:** {}\n\n", quote(user), quote(&answer));
            if let Some(r) = reference {
                md += &format!("**Reference:** {}\n\n", quote(r));
            }
            md += "---\n\n";
            rows.push(Generation { prompt, completion: answer, model: outputs.model.display().to_string(), reward: None });
        }
    } else {
        md += "No held-out conversations (give `prompts` or `val`).\n";
    }
    Generation::write(&out.path(&SAMPLES), &ctx.name, &ctx.config_hash, &rows)?;
    let mut report = std::fs::read_to_string(&outputs.report).unwrap_or_default();
    report += &md;
    forja_core::fsutil::atomic_write(&outputs.report, report.as_bytes())?;
    Ok(())
}

/// Text for a Markdown paragraph (one line, bounded).
fn quote(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 400 {
        format!("{}…", one_line.chars().take(400).collect::<String>())
    } else {
        one_line
    }
}
