//! forja-eval: evaluation of trained models.
//!
//! - the `eval` stage: loss and perplexity of a language model over a whole
//!   token split, sample generations, exact match on question/answer files,
//!   attributions of the next token;
//! - [`metrics`]: classification, calibration, regression and exact-match
//!   metrics as pure functions, checked against scikit-learn.

pub mod attribution;
pub mod classifier;
pub mod lm;
pub mod metrics;
pub mod perturb;

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::metric::{self, split};
use forja_core::stage::{outputs, port, OutDir, OutputSpec, Stage, StageCtx};
use forja_core::{Generation, MetricRow, Reject, TokenRow};
use forja_model::generate::generate_uncached;
use forja_model::{generate, load_model, parse_device, AnyModel, LanguageModel, LoadedModel, SamplingConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// Parameters of the `eval` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Windows per forward pass when scoring the split.
    pub batch_size: i64,
    /// Score at most this many tokens (0: all).
    pub max_tokens: usize,
    /// Prompts to continue; `""` starts from the first token of the split.
    pub prompts: Vec<String>,
    pub sampling: SamplingConfig,
    pub device: Option<String>,
    /// Name of the scored split in the metrics (`val`, `test`, ...).
    pub split_name: String,
    /// Question answering on the `questions` input (GSM8K-style JSONL).
    pub qa: QaConfig,
    /// Integrated-gradient points for the attributions of each prompt's next token (0: none).
    pub attribution_steps: usize,
}

/// Exact match of generated answers: each line of the `questions` file is
/// `{"question": ..., "answer": ...}`; the model is prompted with `prompt`
/// (`{question}` replaced), answers greedily, and its final number
/// ([`metrics::final_number`]: after `####` if present, else the last number)
/// is compared with the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaConfig {
    pub prompt: String,
    /// Questions asked (the file's first ones; 0: all).
    pub max_examples: usize,
    pub max_new_tokens: usize,
    /// An answer ends before the first of these (the model going on to a next question).
    pub stop: Vec<String>,
}

impl Default for QaConfig {
    fn default() -> Self {
        Self {
            prompt: "Question: {question}\nAnswer:".into(),
            max_examples: 50,
            max_new_tokens: 128,
            stop: vec!["\n\n".into(), "\nQuestion:".into()],
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_tokens: 0,
            prompts: vec!["\n".into()],
            sampling: SamplingConfig::default(),
            device: None,
            split_name: split::VAL.into(),
            qa: QaConfig::default(),
            attribution_steps: 32,
        }
    }
}

/// Loss of a language model on a split.
#[derive(Debug, Clone, Serialize)]
pub struct LmScore {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// Mean next-token loss over `ids`, cut into non-overlapping windows of the
/// model's context (each scored token counted once).
pub fn score_tokens(model: &dyn LanguageModel, ids: &[i64], batch_size: i64) -> anyhow::Result<LmScore> {
    let _guard = tch::no_grad_guard();
    let block = model.context() as usize;
    anyhow::ensure!(ids.len() > 1, "need at least 2 tokens to score, got {}", ids.len());
    let scored = ids.len() - 1; // positions with a next token
    let (full, rest) = (scored / block, scored % block);
    let (mut total, mut count) = (0.0f64, 0usize);
    // Full windows go in batches; the last, shorter window alone.
    let windows: Vec<usize> = (0..full).map(|w| w * block).collect();
    for chunk in windows.chunks(batch_size.max(1) as usize) {
        let xs: Vec<i64> = chunk.iter().flat_map(|&s| ids[s..s + block].iter().copied()).collect();
        let ys: Vec<i64> = chunk.iter().flat_map(|&s| ids[s + 1..s + 1 + block].iter().copied()).collect();
        total += window_loss(model, &xs, &ys, chunk.len() as i64)? * (chunk.len() * block) as f64;
        count += chunk.len() * block;
    }
    if rest > 0 {
        let s = full * block;
        total += window_loss(model, &ids[s..s + rest], &ids[s + 1..s + 1 + rest], 1)? * rest as f64;
        count += rest;
    }
    let loss = total / count as f64;
    Ok(LmScore { loss, perplexity: loss.exp(), tokens: count })
}

fn window_loss(model: &dyn LanguageModel, xs: &[i64], ys: &[i64], rows: i64) -> anyhow::Result<f64> {
    let device = model.device();
    let x = Tensor::from_slice(xs).to(device).view([rows, -1]);
    let y = Tensor::from_slice(ys).to(device).view([rows, -1]);
    Ok(model.loss(&x, &y, false)?.double_value(&[]))
}

/// Scores `split` and samples completions; writes `metrics.arrow`,
/// `generations.arrow` and `report.md` under `out_dir`.
pub fn run(cfg: &EvalConfig, inputs: &EvalInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<LmScore> {
    let (model_dir, split) = (inputs.model.as_path(), inputs.split.as_path());
    let device = parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
    let mut loaded = load_model(model_dir, device)?;
    on_serving_kernels(&mut loaded, model_dir, device)?;
    let model = loaded.model.as_lm().with_context(|| {
        format!("{}: eval scores causal language models; this one is `{}`", model_dir.display(), loaded.model.model_type())
    })?;
    let rows = TokenRow::read(split)?;
    TokenRow::check_vocab(&rows, split, model.vocab_size() as u64)?;
    let mut ids: Vec<i64> = rows.iter().flat_map(|r| r.ids.iter().map(|&t| t as i64)).collect();
    if cfg.max_tokens > 0 {
        ids.truncate(cfg.max_tokens);
    }
    let score = score_tokens(model, &ids, cfg.batch_size).with_context(|| format!("scoring {}", split.display()))?;
    let n_params: f64 = loaded.vs.variables().values().map(|t| t.numel() as f64).sum();
    forja_meter::add_flops(2.0 * n_params * score.tokens as f64);
    let split_name = cfg.split_name.as_str();
    let mut metrics = vec![
        MetricRow::new(&ctx.name, 0, metric::LOSS, score.loss, split_name),
        MetricRow::new(&ctx.name, 0, metric::PERPLEXITY, score.perplexity, split_name),
        MetricRow::new(&ctx.name, 0, metric::TOKENS, score.tokens as f64, split_name),
    ];
    let mut gens = Vec::new();
    for prompt in &cfg.prompts {
        let prompt_ids: Vec<u32> =
            if prompt.is_empty() { ids.first().map(|&t| vec![t as u32]).unwrap_or_default() } else { loaded.tokenizer.encode(prompt)? };
        let new_ids = match &loaded.model {
            AnyModel::Gpt(g) => generate(g, &prompt_ids, None, &cfg.sampling)?,
            _ => generate_uncached(model, &prompt_ids, None, &cfg.sampling)?,
        };
        let completion = loaded.tokenizer.decode(&new_ids)?;
        gens.push(Generation { prompt: prompt.clone(), completion, model: model_dir.display().to_string(), reward: None });
    }
    let mut report = report_md(model_dir, split, split_name, &score, &gens);
    if let (AnyModel::Gpt(g), true) = (&loaded.model, cfg.attribution_steps > 0) {
        // Gradients need the float weights: int8 kernels have none.
        let float = if g.is_quantized() && !cfg.prompts.is_empty() { Some(load_model(model_dir, device)?) } else { None };
        let g = match float.as_ref().map(|l| &l.model) {
            Some(AnyModel::Gpt(f)) => f,
            _ => g,
        };
        report += &lm::next_token_attributions(g, &loaded.tokenizer, &cfg.prompts, cfg.attribution_steps)?;
    }
    let mut rejects = Vec::new();
    if let Some(q) = &inputs.questions {
        let qa = lm::exact_match(&loaded, q, &cfg.qa)?;
        metrics.push(MetricRow::new(&ctx.name, 0, metric::EXACT_MATCH, qa.exact_match, split::TEST));
        report += &qa.markdown(q, &cfg.qa);
        gens.extend(qa.generations);
        rejects = qa.rejects;
    }
    MetricRow::write(&out.path(&outputs::METRICS), &ctx.name, &ctx.config_hash, &metrics)?;
    Generation::write(&out.path(&GENERATIONS), &ctx.name, &ctx.config_hash, &gens)?;
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), report.as_bytes())?;
    println!("eval: {split_name} loss {:.4}, perplexity {:.2} over {} tokens", score.loss, score.perplexity, score.tokens);
    Ok(score)
}

/// A quantized folder scored on the CPU runs on the int8 kernels `forja
/// serve` runs it on (its 16-bit rounding of the activations included), so its
/// loss is the served model's; on a GPU it runs on the dequantized weights.
fn on_serving_kernels(loaded: &mut LoadedModel, dir: &Path, device: tch::Device) -> anyhow::Result<()> {
    if let (AnyModel::Gpt(g), tch::Device::Cpu) = (&mut loaded.model, device) {
        let q = forja_model::quant::folder_quantization(dir)?;
        if q != forja_model::Quantization::None {
            g.quantize(q).with_context(|| format!("{}: putting the model on its int8 kernels", dir.display()))?;
            tracing::info!(model = %dir.display(), "scoring on the int8 kernels forja serve runs");
        }
    }
    Ok(())
}

fn report_md(model_dir: &Path, split: &Path, split_name: &str, s: &LmScore, gens: &[Generation]) -> String {
    let mut r = format!("# Evaluation\n\nModel: `{}`\nSplit: `{}`\n\n", model_dir.display(), split.display());
    r += "| metric | value |\n|---|---|\n";
    r += &format!("| {split_name} loss | {:.4} |\n| perplexity | {:.3} |\n| tokens scored | {} |\n\n", s.loss, s.perplexity, s.tokens);
    r += "## Samples\n\n";
    for g in gens {
        r += &format!("Prompt: `{:?}`\n\n```text\n{}{}\n```\n\n", g.prompt, g.prompt, g.completion);
    }
    r
}

/// Output of `eval`: sample completions.
pub const GENERATIONS: OutputSpec = OutputSpec { name: "generations", path: "generations.arrow", kind: port::GENERATIONS };
/// Output of `eval`: lines of the `questions` file left out, with their reasons.
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };

forja_core::stage_inputs! {
    /// Inputs of `eval`.
    pub struct EvalInputs {
        /// A causal language model folder (GPT or LSTM).
        model: one[MODEL],
        /// The token split scored.
        split: one[TOKENS],
        /// Questions with reference answers (JSONL) for exact match.
        questions: optional[FILES],
    }
}

/// The `eval` stage.
pub struct Eval;

impl Stage for Eval {
    const KIND: &'static str = "eval";
    const ABOUT: &'static str = "loss and perplexity of a language model (GPT or LSTM) on a token split, and sample generations";
    const OUTPUTS: &'static [OutputSpec] = &[outputs::METRICS, GENERATIONS, outputs::REPORT, REJECTS];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = EvalConfig;
    type Inputs = EvalInputs;

    fn run(&self, cfg: &EvalConfig, inputs: &EvalInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// All stages of this crate.
pub const STAGES: &[&dyn forja_core::stage::DynStage] = &[&Eval, &classifier::EvalClassifier];
