//! The causal-LM pre-training loop, top to bottom: data, model, AdamW, schedule,
//! gradient accumulation and clipping, periodic validation, early stopping,
//! checkpoints and exact resume.
//!
//! Determinism: step `s` draws its batch from `(seed, s)` and seeds libtorch's RNG
//! (dropout) with `(seed, s)`, and a checkpoint holds weights, AdamW moments and the
//! metrics so far; so a run resumed from its last checkpoint ends with the same
//! weights as one never interrupted (on CPU, same thread count).

use crate::batches::TokenStream;
use crate::optim::{lr_at, AdamW, OptimConfig};
use anyhow::{bail, Context};
use forja_core::artifacts::Artifact;
use forja_core::stage::StageCtx;
use forja_core::MetricRow;
use forja_data::tokenizer::Tokenizer;
use forja_model::checkpoint::{self, write_model_files};
use forja_model::{parse_device, Gpt, GptConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Tensor};

/// Parameters of the `pretrain` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub model: GptConfig,
    pub optim: OptimConfig,
    /// Sequences per micro-batch.
    pub batch_size: i64,
    /// Micro-batches per optimiser step.
    pub grad_accum: u64,
    pub max_steps: u64,
    /// Validate every this many steps (and at the end).
    pub eval_interval: u64,
    /// Batches per validation estimate.
    pub eval_iters: u64,
    /// Write a resumable checkpoint every this many steps (0: only at the end).
    pub checkpoint_interval: u64,
    /// Stop after this many validations without a new best (0: never).
    pub early_stopping_patience: u64,
    /// Log a line every this many steps.
    pub log_interval: u64,
    /// Overrides the run's seed.
    pub seed: Option<u64>,
    /// Overrides the run's device (`cpu`, `cuda`, `cuda:N`).
    pub device: Option<String>,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: i32,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            model: GptConfig::default(),
            optim: OptimConfig::default(),
            batch_size: 12,
            grad_accum: 1,
            max_steps: 200,
            eval_interval: 50,
            eval_iters: 20,
            checkpoint_interval: 100,
            early_stopping_patience: 0,
            log_interval: 10,
            seed: None,
            device: None,
            threads: 0,
        }
    }
}

/// Inputs of the `pretrain` stage.
#[derive(Debug, Clone)]
pub struct PretrainInputs {
    pub tokenizer: PathBuf,
    pub train: PathBuf,
    pub val: PathBuf,
    /// A model folder to continue pre-training from.
    pub init: Option<PathBuf>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_val_loss: f64,
    pub best_val_loss: f64,
    pub early_stopped: bool,
    pub tokens_per_s: f64,
    pub params: i64,
}

/// Resume state kept beside the weights in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    adam_t: u64,
    /// Best validation loss so far (none before the first validation).
    best_val: Option<f64>,
    evals_since_best: u64,
    /// Hash of everything the trajectory depends on; a checkpoint of another
    /// configuration is never resumed.
    run_key: String,
}

const CKPT_DIR: &str = "checkpoint";
const OPTIM_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
const METRICS_FILE: &str = "metrics.arrow";

/// Whether to go on after a step; tests use it to stop a run as a crash would.
pub type StepHook<'a> = &'a mut dyn FnMut(u64) -> ControlFlow<()>;

/// Trains; writes `model/` (final weights), `metrics.arrow` and `checkpoint/`
/// under `out_dir`. Resumes from `out_dir/checkpoint` when it matches this run.
pub fn run(cfg: &PretrainConfig, inputs: &PretrainInputs, out_dir: &Path, ctx: &StageCtx) -> anyhow::Result<PretrainSummary> {
    run_with_hook(cfg, inputs, out_dir, ctx, &mut |_| ControlFlow::Continue(()))
}

/// [`run`] with a hook called after every step; `Break` stops the run at once,
/// without final outputs, as if the process were killed there.
pub fn run_with_hook(
    cfg: &PretrainConfig,
    inputs: &PretrainInputs,
    out_dir: &Path,
    ctx: &StageCtx,
    hook: StepHook,
) -> anyhow::Result<PretrainSummary> {
    let seed = cfg.seed.unwrap_or(ctx.seed);
    let device = parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads);
    }
    anyhow::ensure!(cfg.max_steps > 0 && cfg.batch_size > 0 && cfg.grad_accum > 0, "max_steps, batch_size and grad_accum must be > 0");
    let tokenizer = Tokenizer::load(&inputs.tokenizer)?;
    let model_cfg = model_config(cfg, inputs, &tokenizer)?;
    let block = model_cfg.block_size;
    let train = TokenStream::load(&inputs.train, model_cfg.vocab_size, device)?;
    let val = TokenStream::load(&inputs.val, model_cfg.vocab_size, device)?;
    for (name, s) in [("train", &train), ("val", &val)] {
        if !s.fits(block) {
            bail!("{name} split has {} tokens, fewer than block_size + 1 = {}", s.len(), block + 1);
        }
    }

    tch::manual_seed(seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &model_cfg)?;
    if let Some(init) = &inputs.init {
        vs.load(init.join(checkpoint::WEIGHTS)).with_context(|| format!("loading {}", init.display()))?;
    }
    let mut opt = AdamW::new(&vs);
    let run_key = run_key(cfg, &model_cfg, inputs, seed)?;
    let ckpt = out_dir.join(CKPT_DIR);
    let progress = try_resume(&ckpt, &run_key, &mut vs, &mut opt)?;
    let resumed_from = progress.as_ref().map(|p| p.step);
    let Progress { mut step, mut best_val, mut evals_since_best, mut metrics } =
        progress.unwrap_or(Progress { step: 0, best_val: f64::INFINITY, evals_since_best: 0, metrics: Vec::new() });
    let saver = CheckpointWriter { dir: &ckpt, vs: &vs, model_cfg: &model_cfg, tokenizer: &tokenizer, ctx };

    let decay_steps = if cfg.optim.lr_decay_steps == 0 { cfg.max_steps } else { cfg.optim.lr_decay_steps };
    let tokens_per_step = (cfg.batch_size * block) as f64 * cfg.grad_accum as f64;
    let bar = progress_bar(cfg.max_steps, step);
    let patience_spent = |evals: u64| cfg.early_stopping_patience > 0 && evals >= cfg.early_stopping_patience;
    // A resumed run that had already stopped early stays stopped.
    let mut early_stopped = patience_spent(evals_since_best);
    let mut last_val = f64::NAN;
    let started = Instant::now();
    let start_step = step;
    let mut window = (Instant::now(), step);
    while step < cfg.max_steps && !early_stopped {
        let lr = lr_at(&cfg.optim, step, decay_steps);
        let (batch_loss, grad_norm) = train_step(&model, &mut opt, &train, cfg, seed, step, lr)?;
        step += 1;
        metrics.push(MetricRow::new(&ctx.name, step, "batch_loss", batch_loss, "train"));
        metrics.push(MetricRow::new(&ctx.name, step, "lr", lr, "-"));
        metrics.push(MetricRow::new(&ctx.name, step, "grad_norm", grad_norm, "-"));
        if step % cfg.log_interval.max(1) == 0 || step == cfg.max_steps {
            let tps = tokens_per_step * (step - window.1) as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), step);
            metrics.push(MetricRow::new(&ctx.name, step, "tokens_per_s", tps, "-"));
            bar.set_message(format!("loss {batch_loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        }
        bar.set_position(step);
        let is_eval = step % cfg.eval_interval.max(1) == 0 || step == cfg.max_steps;
        if is_eval {
            let (tl, vl) = (estimate_loss(&model, &train, cfg, block, seed, 1), estimate_loss(&model, &val, cfg, block, seed, 2));
            metrics.push(MetricRow::new(&ctx.name, step, "loss", tl, "train"));
            metrics.push(MetricRow::new(&ctx.name, step, "loss", vl, "val"));
            say(&bar, format!("step {step}: train loss {tl:.4}, val loss {vl:.4}"));
            last_val = vl;
            if vl < best_val {
                (best_val, evals_since_best) = (vl, 0);
            } else {
                evals_since_best += 1;
                if patience_spent(evals_since_best) {
                    say(&bar, format!("early stopping at step {step}: no val improvement in {evals_since_best} evaluations"));
                    early_stopped = true;
                }
            }
        }
        let due = cfg.checkpoint_interval > 0 && step % cfg.checkpoint_interval == 0;
        if due || step == cfg.max_steps || early_stopped {
            let best = best_val.is_finite().then_some(best_val);
            let state = TrainerState { step, adam_t: opt.t, best_val: best, evals_since_best, run_key: run_key.clone() };
            saver.save(&opt, &state, &metrics)?;
        }
        if !early_stopped && hook(step).is_break() {
            bar.abandon();
            bail!("stopped by hook after step {step}");
        }
    }
    bar.finish();
    let trained = (step - start_step) as f64;
    let tokens_per_s = tokens_per_step * trained / started.elapsed().as_secs_f64().max(1e-9);
    if last_val.is_nan() {
        // Resumed a finished run: nothing trained, report the last validation.
        last_val = metrics.iter().rev().find(|m| m.name == "loss" && m.split == "val").map_or(f64::NAN, |m| m.value);
    }
    checkpoint::save_model(&out_dir.join("model"), &vs, &model_cfg, &tokenizer)?;
    MetricRow::write(&out_dir.join(METRICS_FILE), &ctx.name, &ctx.config_hash, &metrics)?;
    write_loss_plot(&out_dir.join("loss.svg"), &metrics)?;
    println!("pretrain: {step} steps, final val loss {last_val:.4} (best {best_val:.4}), {tokens_per_s:.0} tokens/s");
    Ok(PretrainSummary {
        steps: step,
        resumed_from,
        final_val_loss: last_val,
        best_val_loss: best_val,
        early_stopped,
        tokens_per_s,
        params: model_cfg.n_params(),
    })
}

/// The model's configuration: the stage's, with the vocabulary taken from the
/// tokenizer (or the init model) when not given; an init model must match it.
fn model_config(cfg: &PretrainConfig, inputs: &PretrainInputs, tokenizer: &Tokenizer) -> anyhow::Result<GptConfig> {
    let mut model_cfg = cfg.model.clone();
    if let Some(init) = &inputs.init {
        let init_cfg = checkpoint::read_config(init)?;
        if model_cfg.vocab_size == 0 {
            model_cfg.vocab_size = init_cfg.vocab_size;
        }
        anyhow::ensure!(
            GptConfig { dropout: model_cfg.dropout, ..init_cfg.clone() } == model_cfg,
            "init model {} has config {init_cfg:?}, but this stage asks for {model_cfg:?}",
            init.display()
        );
    }
    if model_cfg.vocab_size == 0 {
        model_cfg.vocab_size = tokenizer.vocab_size() as i64;
    }
    model_cfg.validate()?;
    Ok(model_cfg)
}

/// Where a run stands: restored from a checkpoint, or fresh.
struct Progress {
    step: u64,
    best_val: f64,
    evals_since_best: u64,
    metrics: Vec<MetricRow>,
}

/// Restores weights, AdamW moments and progress from `ckpt` if it belongs to
/// this run (same `run_key`); otherwise leaves everything as it is.
fn try_resume(ckpt: &Path, run_key: &str, vs: &mut nn::VarStore, opt: &mut AdamW) -> anyhow::Result<Option<Progress>> {
    let Some(state) = read_state(ckpt)? else { return Ok(None) };
    if state.run_key != run_key {
        tracing::warn!("checkpoint {} belongs to another configuration; starting afresh", ckpt.display());
        return Ok(None);
    }
    vs.load(ckpt.join(checkpoint::WEIGHTS)).with_context(|| format!("loading {}", ckpt.display()))?;
    let moments = Tensor::read_safetensors(ckpt.join(OPTIM_FILE))?;
    opt.load_state(&moments, state.adam_t)?;
    tracing::info!(step = state.step, "resuming from checkpoint {}", ckpt.display());
    Ok(Some(Progress {
        step: state.step,
        best_val: state.best_val.unwrap_or(f64::INFINITY),
        evals_since_best: state.evals_since_best,
        metrics: MetricRow::read(&ckpt.join(METRICS_FILE))?,
    }))
}

/// One optimiser step over `grad_accum` micro-batches; returns the mean
/// micro-batch loss and the gradient norm before clipping.
fn train_step(model: &Gpt, opt: &mut AdamW, data: &TokenStream, cfg: &PretrainConfig, seed: u64, step: u64, lr: f64) -> anyhow::Result<(f64, f64)> {
    let block = model.cfg.block_size;
    // Dropout draws from libtorch's global RNG: seed it from (seed, step).
    tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
    let mut batch_loss = 0.0;
    for micro in 0..cfg.grad_accum {
        let (x, y) = data.random_batch(cfg.batch_size, block, seed, 0, step * cfg.grad_accum + micro);
        let loss = model.loss(&x, &y, true);
        let scaled = if cfg.grad_accum > 1 { &loss / cfg.grad_accum as f64 } else { loss.shallow_clone() };
        scaled.backward();
        batch_loss += loss.double_value(&[]) / cfg.grad_accum as f64;
    }
    if !batch_loss.is_finite() {
        bail!("step {}: loss is {batch_loss}; training diverged (lower optim.lr or raise optim.warmup_steps)", step + 1);
    }
    let grad_norm = opt.clip_grad_norm(cfg.optim.grad_clip);
    opt.step(&cfg.optim, lr);
    opt.zero_grad();
    Ok((batch_loss, grad_norm))
}

/// Mean loss over `eval_iters` fixed batches (the same batches at every evaluation).
fn estimate_loss(model: &Gpt, data: &TokenStream, cfg: &PretrainConfig, block: i64, seed: u64, stream: u64) -> f64 {
    let _guard = tch::no_grad_guard();
    let n = cfg.eval_iters.max(1);
    let total: f64 = (0..n)
        .map(|i| {
            let (x, y) = data.random_batch(cfg.batch_size, block, seed, stream, i);
            model.loss(&x, &y, false).double_value(&[])
        })
        .sum();
    total / n as f64
}

fn run_key(cfg: &PretrainConfig, model_cfg: &GptConfig, inputs: &PretrainInputs, seed: u64) -> anyhow::Result<String> {
    let hash = |p: &Path| forja_core::hash::hash_path(p).with_context(|| format!("hashing {}", p.display()));
    let init = inputs.init.as_deref().map(hash).transpose()?;
    let key = serde_json::json!({
        "cfg": {"optim": cfg.optim, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                "max_steps": cfg.max_steps, "eval_interval": cfg.eval_interval, "eval_iters": cfg.eval_iters,
                "early_stopping_patience": cfg.early_stopping_patience},
        "model": model_cfg,
        "seed": seed,
        "train": hash(&inputs.train)?,
        "val": hash(&inputs.val)?,
        "tokenizer": hash(&inputs.tokenizer)?,
        "init": init,
        // A rebuilt program may train differently: never resume another build's run.
        "program": forja_core::hash::program_version(),
    });
    Ok(forja_core::hash::hash_json(&key))
}

fn read_state(ckpt: &Path) -> anyhow::Result<Option<TrainerState>> {
    let path = ckpt.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: bad trainer state", path.display()))?))
}

/// What a checkpoint is written from.
struct CheckpointWriter<'a> {
    dir: &'a Path,
    vs: &'a nn::VarStore,
    model_cfg: &'a GptConfig,
    tokenizer: &'a Tokenizer,
    ctx: &'a StageCtx,
}

impl CheckpointWriter<'_> {
    /// Writes weights, AdamW moments, metrics so far and trainer state, atomically.
    fn save(&self, opt: &AdamW, state: &TrainerState, metrics: &[MetricRow]) -> anyhow::Result<()> {
        forja_core::fsutil::atomic_dir(self.dir, |dir| {
            write_model_files(dir, self.vs, self.model_cfg, self.tokenizer)?;
            Tensor::write_safetensors(&opt.state_tensors(), dir.join(OPTIM_FILE))?;
            MetricRow::write(&dir.join(METRICS_FILE), &self.ctx.name, &self.ctx.config_hash, metrics)?;
            std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
            Ok(())
        })
    }
}

/// Draws the loss curves (mini-batch loss, and the train/val estimates) as SVG.
fn write_loss_plot(path: &Path, metrics: &[MetricRow]) -> anyhow::Result<()> {
    use forja_core::plot::{line_chart, Series};
    let pick = |name: &str, split: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter(|m| m.name == name && m.split == split).map(|m| (m.step as f64, m.value)).collect()
    };
    let series = [
        Series { label: "batch loss", color: "#bbb", points: pick("batch_loss", "train") },
        Series { label: "train (eval)", color: "#1f77b4", points: pick("loss", "train") },
        Series { label: "val (eval)", color: "#d62728", points: pick("loss", "val") },
    ];
    if let Some(svg) = line_chart("pre-training loss", "step", "cross-entropy", &series) {
        forja_core::fsutil::atomic_write(path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Prints a line above the progress bar (also when the bar is hidden, e.g. in CI logs).
fn say(bar: &ProgressBar, line: String) {
    bar.suspend(|| println!("{line}"));
}

fn progress_bar(total: u64, at: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
}
