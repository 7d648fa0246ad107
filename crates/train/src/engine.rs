//! The training loop every trainer plugs into, top to bottom.
//!
//! A trainer supplies an [`Objective`] (how micro-batch `(step, micro)` is drawn
//! and scored, how validation batches are scored, how its model folder is
//! written) and its parameter groups; the [`Engine`] owns everything around
//! that: the warm-up + cosine schedule, gradient accumulation, clipping, AdamW,
//! periodic validation, early stopping that keeps the best weights, atomic
//! checkpoints and exact resume, diagnosis and recovery, metrics, the progress
//! bar, the loss plot and the training report.
//!
//! Determinism: step `s` seeds libtorch's RNG (dropout) from `(seed, s)` and the
//! objective draws its batches from `(seed, s, micro)`; a checkpoint holds
//! weights, AdamW moments, metrics and the trainer state; so a run resumed from
//! its last checkpoint ends with the weights of one never interrupted (CPU, same
//! thread count).

use crate::diagnose::{blame, layer_norms, overfitting, DiagnosisConfig, Incident, IncidentKind, Monitor, Policy};
use crate::distributed::{self as dp, DistributedConfig};
use crate::optim::{lr_at, AdamW, OptimConfig, ParamGroup};
use crate::report::{eval_points, overfit_section, overfit_text, report_md, write_grad_plot, write_loss_plot};
use anyhow::{bail, Context};
use forja_core::artifacts::Artifact;
use forja_core::metric::{self, split};
use forja_core::stage::StageCtx;
use forja_core::{MetricRow, TokenRow};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Tensor};

/// Settings of the loop (a trainer's parameters include these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineConfig {
    pub optim: OptimConfig,
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
    /// Log a line (and per-layer gradient norms) every this many steps.
    pub log_interval: u64,
    pub diagnosis: DiagnosisConfig,
    /// Export the weights of the best validation rather than the last step's.
    pub keep_best: bool,
    /// How the ranks of a launched job train together (alone: unused).
    pub distributed: DistributedConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            optim: OptimConfig::default(),
            grad_accum: 1,
            max_steps: 200,
            eval_interval: 50,
            eval_iters: 20,
            checkpoint_interval: 100,
            early_stopping_patience: 0,
            log_interval: 10,
            diagnosis: DiagnosisConfig::default(),
            keep_best: true,
            distributed: DistributedConfig::default(),
        }
    }
}

/// A validation split an objective is scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    Train,
    Val,
}

impl EvalSplit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => split::TRAIN,
            Self::Val => split::VAL,
        }
    }
}

/// One evaluation batch's score: the loss and named extra metrics.
#[derive(Debug, Clone, Default)]
pub struct EvalScore {
    pub loss: f64,
    pub metrics: Vec<(&'static str, f64)>,
}

/// What is trained: the engine asks it for losses and for its model folder.
pub trait Objective {
    /// Loss of micro-batch `micro` of step `step` in training mode, with its
    /// graph (the engine calls `backward`). The batch must be a pure function of
    /// `(seed, step, micro)`.
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor>;
    /// Score of fixed evaluation batch `batch` of `split` (called without grad).
    fn eval_batch(&mut self, split: EvalSplit, batch: u64) -> anyhow::Result<EvalScore>;
    /// Whether the objective has a validation split.
    fn has_val(&self) -> bool {
        true
    }
    /// Writes the model folder (weights, config, tokenizer) into `dir`.
    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()>;
    /// The inputs of micro-batch `(step, micro)` as token rows, saved when the
    /// step goes wrong.
    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>>;
    /// Tokens per micro-batch (throughput).
    fn tokens_per_micro(&self) -> f64;
    /// Named training metrics of the step just taken (reward, KL, clip
    /// fraction…), recorded at that step under the `train` split.
    fn step_metrics(&mut self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// State the objective keeps across steps besides the weights (an adaptive
    /// KL coefficient), saved in checkpoints so a resumed run continues exactly.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores what [`Objective::state`] returned.
    fn load_state(&mut self, _state: &serde_json::Value) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where the engine writes the stage's outputs.
#[derive(Debug, Clone)]
pub struct EngineOutputs {
    pub model: PathBuf,
    pub metrics: PathBuf,
    /// Loss curves (SVG).
    pub plot: PathBuf,
    /// Per-layer gradient norms over the steps, log scale (SVG).
    pub grad_plot: PathBuf,
    pub report: PathBuf,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_val_loss: f64,
    pub best_val_loss: f64,
    pub best_step: Option<u64>,
    pub early_stopped: bool,
    pub tokens_per_s: f64,
    pub incidents: Vec<Incident>,
    pub trainable_params: i64,
    /// Ranks that trained together (1: alone) and libtorch threads per rank.
    pub ranks: usize,
    pub threads_per_rank: i32,
    /// AdamW state kept per rank, and what it would be unsharded (bytes).
    pub optimizer_state_bytes: i64,
    /// The optimizer, in words (`AdamW`, or `Muon (N matrices) + AdamW`).
    pub optimizer: String,
    pub optimizer_state_unsharded_bytes: i64,
    /// Several ranks: the hash of the trained parameters, checked equal on
    /// every rank at the end.
    pub params_hash_all_ranks: Option<String>,
}

/// How one step went.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    /// The update was applied. `layers`: per-layer gradient norms before
    /// clipping, when asked for.
    Applied { stats: StepStats, layers: Vec<(String, f64)> },
    /// Something was wrong; nothing was applied (the gradients are zeroed).
    Divergent { stats: StepStats, kind: IncidentKind, reference: Option<f64> },
}

/// Loss, gradient norm and the time spent in each phase of a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
}

/// Resume state kept beside the weights in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    adam_t: u64,
    best_val: Option<f64>,
    best_step: Option<u64>,
    evals_since_best: u64,
    monitor: Monitor,
    /// Multiplier of the schedule after rollbacks.
    lr_scale: f64,
    recoveries: u64,
    /// Steps whose batch is skipped (they went wrong before a rollback).
    skip_steps: BTreeSet<u64>,
    incidents: Vec<Incident>,
    /// Hash of everything the trajectory depends on; a checkpoint of another
    /// configuration is never resumed.
    run_key: String,
    /// The objective's own state ([`Objective::state`]).
    #[serde(default)]
    objective: serde_json::Value,
}

impl TrainerState {
    fn fresh(run_key: &str) -> Self {
        Self {
            step: 0,
            adam_t: 0,
            best_val: None,
            best_step: None,
            evals_since_best: 0,
            monitor: Monitor::default(),
            lr_scale: 1.0,
            recoveries: 0,
            skip_steps: BTreeSet::new(),
            incidents: Vec::new(),
            run_key: run_key.to_string(),
            objective: serde_json::Value::Null,
        }
    }
}

/// Folder names and files inside a stage folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const BEST_DIR: &str = "best";
pub const INCIDENTS_DIR: &str = "incidents";
const OPTIM_FILE: &str = "optimizer.safetensors";
/// Every variable of the var store as it is (LoRA adapters unmerged, heads the
/// exported folder leaves out): what a resume loads.
const VARIABLES_FILE: &str = "variables.safetensors";
const STATE_FILE: &str = "trainer_state.json";
/// The metrics of a run so far, kept in each checkpoint (`CHECKPOINT_DIR/METRICS_FILE`):
/// a sweep reads a running trial's validation curve there.
pub const METRICS_FILE: &str = "metrics.arrow";
/// The model weights file of a model folder (safetensors).
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What a recovery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    Skipped,
    RolledBack,
}

/// Whether to go on after a step; tests use it to stop a run as a crash would.
pub type StepHook<'a> = &'a mut dyn FnMut(u64) -> ControlFlow<()>;

/// Multiplier that spreads `(seed, step)` over libtorch's seed space (a large
/// prime, so neighbouring seeds and steps never collide).
const SEED_STRIDE: i64 = 1_000_003;

/// The loop and the state it owns.
pub struct Engine<'a> {
    cfg: &'a EngineConfig,
    vs: &'a mut nn::VarStore,
    opt: AdamW,
    seed: u64,
    ctx: &'a StageCtx,
    out_dir: &'a Path,
    state: TrainerState,
    metrics: Vec<MetricRow>,
    /// Scalars of the var store: evaluation counts 2 FLOPs per scalar and token.
    n_scalars: f64,
    /// Training FLOPs per token: 6 per trained scalar (forward, backward
    /// through activations and weights), 4 per frozen one (no weight gradient).
    train_flops_per_token: f64,
    /// The ranks this one trains with (`None`: alone).
    dist: Option<&'static forja_dist::Dist>,
    /// Gradient sums started during the backward pass (several ranks,
    /// `train.distributed.overlap`); used once a first step has shown in
    /// which order the gradients become ready.
    overlap: Option<forja_dist::Overlap>,
    overlap_ready: bool,
}

/// The key of a run's trajectory: the whole typed configuration, the seed,
/// device and thread count in force, the content of every input (`None` for an
/// optional input not given) and the stage's code. A checkpoint is resumed only
/// under the same key ([`RunSpec::run_key`]).
pub fn run_key(cfg: &impl Serialize, seed: u64, device: &str, inputs: &[(&str, Option<&Path>)], ctx: &StageCtx) -> anyhow::Result<String> {
    let mut hashed = serde_json::Map::new();
    for (name, path) in inputs {
        let h = match path {
            Some(p) => Some(forja_core::hash::hash_path(p).with_context(|| format!("hashing {}", p.display()))?),
            None => None,
        };
        hashed.insert(name.to_string(), serde_json::json!(h));
    }
    let mut key = serde_json::json!({
        "cfg": cfg,
        "seed": seed,
        "device": device,
        "threads": tch::get_num_threads(),
        "inputs": hashed,
        "code": ctx.code_hash,
    });
    if let Some(dist) = forja_dist::current() {
        // Every rank resumes rank 0's checkpoint: one key for all of them (the
        // device's type, not each rank's GPU), and the same run on every rank,
        // or none starts.
        key["device"] = serde_json::json!(device.split(':').next().unwrap_or(device));
        key["world"] = serde_json::json!(dist.world());
        dist.agree("configuration, inputs and code", &key)?;
    }
    Ok(forja_core::hash::hash_json(&key))
}

/// Which run an engine trains: its seed, the key of its trajectory, the stage
/// it belongs to and the folder it writes into.
pub struct RunSpec<'a> {
    pub seed: u64,
    /// Hash of everything the trajectory depends on (configuration, inputs'
    /// content, the stage's code); a checkpoint with another key is not resumed.
    pub run_key: String,
    pub ctx: &'a StageCtx,
    pub out_dir: &'a Path,
}

impl<'a> Engine<'a> {
    /// An engine over `groups` (parameters of `vs`) for the run `spec`.
    pub fn new(cfg: &'a EngineConfig, vs: &'a mut nn::VarStore, groups: Vec<ParamGroup>, spec: RunSpec<'a>) -> anyhow::Result<Self> {
        anyhow::ensure!(cfg.max_steps > 0 && cfg.grad_accum > 0, "max_steps and grad_accum must be > 0");
        let mut opt = AdamW::new(ParamGroup::for_optimizer(groups, &cfg.optim))?;
        let dist = forja_dist::current();
        if let Some(d) = dist.filter(|_| cfg.distributed.shard_optimizer) {
            opt.shard(d.rank(), d.world());
        }
        let overlap = match dist.filter(|_| cfg.distributed.overlap) {
            Some(d) => Some(d.overlap(&opt.params(), dp::bucket_numel(&cfg.distributed))?),
            None => None,
        };
        let RunSpec { seed, run_key, ctx, out_dir } = spec;
        let n_scalars: f64 = vs.variables().values().map(|t| t.numel() as f64).sum();
        let trained = opt.numel() as f64;
        let train_flops_per_token = 6.0 * trained + 4.0 * (n_scalars - trained).max(0.0);
        Ok(Self {
            cfg,
            vs,
            opt,
            seed,
            ctx,
            out_dir,
            state: TrainerState::fresh(&run_key),
            metrics: Vec::new(),
            n_scalars,
            train_flops_per_token,
            dist,
            overlap,
            overlap_ready: false,
        })
    }

    /// Whether this process writes checkpoints and outputs (rank 0, or alone).
    fn writes(&self) -> bool {
        self.dist.is_none_or(|d| d.rank() == 0)
    }

    fn rank_and_world(&self) -> (usize, usize) {
        self.dist.map_or((0, 1), |d| (d.rank(), d.world()))
    }

    /// Where the checkpoint is read: rank 0's stage folder on every rank.
    fn ckpt_read_dir(&self) -> PathBuf {
        forja_core::stage::shared_out_dir().unwrap_or(self.out_dir).join(CHECKPOINT_DIR)
    }

    /// Seeds libtorch's RNG (dropout) for micro-batch `micro` of `step`:
    /// micro-batch 0 from `(seed, step)`, the others from `(seed, step,
    /// micro)`, so a micro-batch draws the same masks on whichever rank takes it.
    fn seed_micro(&self, step: u64, micro: u64) {
        let base = (self.seed as i64).wrapping_mul(SEED_STRIDE).wrapping_add(step as i64);
        let seed = if micro == 0 { base } else { base.wrapping_mul(SEED_STRIDE).wrapping_add(micro as i64) };
        tch::manual_seed(seed);
    }

    /// Forward and backward of this rank's micro-batches of `step`, then the
    /// gradients (and the mean loss) summed across ranks: afterwards every
    /// rank holds the gradient of the whole step.
    fn accumulate(&mut self, obj: &mut dyn Objective, step: u64, stats: &mut StepStats) -> anyhow::Result<()> {
        let (rank, world) = self.rank_and_world();
        let global = self.cfg.grad_accum * world as u64;
        let overlap = self.overlap.as_ref().filter(|_| self.overlap_ready);
        for m in 0..self.cfg.grad_accum {
            let micro = dp::global_micro(m, rank, world);
            if m + 1 == self.cfg.grad_accum {
                if let Some(o) = overlap {
                    o.arm()?; // the last micro-batch's backward pass sums as it goes
                }
            }
            self.seed_micro(step, micro);
            let t0 = Instant::now();
            let loss = obj.train_loss(step, micro)?;
            let t1 = Instant::now();
            let scaled = if global > 1 { &loss / global as f64 } else { loss.shallow_clone() };
            scaled.backward();
            stats.loss += loss.double_value(&[]) / global as f64;
            stats.forward_s += (t1 - t0).as_secs_f64();
            stats.backward_s += t1.elapsed().as_secs_f64();
        }
        if let Some(d) = self.dist {
            let t = Instant::now();
            match overlap {
                Some(o) => o.finish()?,
                None => dp::sum_gradients(d, &mut self.opt, &self.cfg.distributed)?,
            }
            self.overlap_ready = self.overlap.is_some();
            stats.loss = dp::sum_scalar(d, stats.loss)?;
            stats.backward_s += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Bytes of AdamW state this rank keeps, and what it would keep unsharded.
    pub fn optimizer_state_bytes(&self) -> (i64, i64) {
        self.opt.state_bytes()
    }

    /// Number of trained scalars.
    pub fn trainable_params(&self) -> i64 {
        self.opt.numel()
    }

    fn ckpt_dir(&self) -> PathBuf {
        self.out_dir.join(CHECKPOINT_DIR)
    }

    /// Learning rate at `step` (schedule × rollback multiplier).
    pub fn lr_at(&self, step: u64) -> f64 {
        let decay = if self.cfg.optim.lr_decay_steps == 0 { self.cfg.max_steps } else { self.cfg.optim.lr_decay_steps };
        lr_at(&self.cfg.optim, step, decay) * self.state.lr_scale
    }

    /// One training step (the only one there is: the stages, the benchmarks and
    /// the tests all call this): `grad_accum` micro-batches forward and backward,
    /// clipping, the health check, and the AdamW update when healthy.
    pub fn train_step(&mut self, obj: &mut dyn Objective, step: u64, lr: f64, want_layers: bool) -> anyhow::Result<StepOutcome> {
        let mut stats = StepStats::default();
        self.accumulate(obj, step, &mut stats)?;
        let t_opt = Instant::now();
        let layers = if want_layers { self.layer_grad_norms()? } else { Vec::new() };
        stats.grad_norm = self.opt.clip_grad_norm(self.cfg.optim.grad_clip);
        if let Some((kind, _, reference)) = self.state.monitor.check(&self.cfg.diagnosis, stats.loss, stats.grad_norm) {
            self.opt.zero_grad();
            return Ok(StepOutcome::Divergent { stats, kind, reference });
        }
        self.opt.step(&self.cfg.optim, lr);
        if let Some(d) = self.dist.filter(|_| self.opt.is_sharded()) {
            dp::gather_parameters(d, &self.opt)?;
        }
        self.opt.zero_grad();
        self.state.monitor.update(&self.cfg.diagnosis, stats.loss, stats.grad_norm);
        stats.optimizer_s = t_opt.elapsed().as_secs_f64();
        Ok(StepOutcome::Applied { stats, layers })
    }

    /// Trains to `max_steps` (or an early stop); writes the outputs. Resumes from
    /// `OUT/checkpoint` when it belongs to this run.
    pub fn run(&mut self, obj: &mut dyn Objective, outputs: &EngineOutputs, hook: StepHook) -> anyhow::Result<TrainSummary> {
        let resumed_from = self.try_resume()?;
        if resumed_from.is_some() {
            obj.load_state(&self.state.objective)?;
        }
        if let Some(d) = self.dist {
            // Every rank has read the checkpoint before rank 0 writes one.
            d.barrier()?;
        }
        if resumed_from.is_none() && self.cfg.diagnosis.policy == Policy::Rollback {
            self.save_checkpoint(obj)?; // something good to roll back to
        }
        let cfg = self.cfg;
        let bar = progress_bar(cfg.max_steps, self.state.step);
        let patience_spent = |evals: u64| cfg.early_stopping_patience > 0 && evals >= cfg.early_stopping_patience;
        // A resumed run that had already stopped early stays stopped.
        let mut early_stopped = patience_spent(self.state.evals_since_best);
        let tokens_per_step = obj.tokens_per_micro() * (cfg.grad_accum * self.rank_and_world().1 as u64) as f64;
        let (started, start_step) = (Instant::now(), self.state.step);
        // Throughput is measured over the steps since the last log line.
        let (mut window_start, mut window_step) = (Instant::now(), self.state.step);
        while self.state.step < cfg.max_steps && !early_stopped {
            let step = self.state.step;
            let lr = self.lr_at(step);
            let done = step + 1;
            if self.state.skip_steps.contains(&step) {
                say(&bar, format!("step {done}: skipping the batch that went wrong before the rollback"));
                self.state.step = done;
            } else {
                let log_step = done % cfg.log_interval.max(1) == 0 || done == cfg.max_steps;
                let outcome = self.train_step(obj, step, lr, log_step && cfg.diagnosis.layer_grad_norms)?;
                // Spent whether or not the step was applied.
                forja_meter::add_flops(self.train_flops_per_token * tokens_per_step);
                match outcome {
                    StepOutcome::Applied { stats, layers } => {
                        self.state.step = done;
                        self.push(done, metric::BATCH_LOSS, stats.loss, split::TRAIN);
                        self.push(done, metric::LR, lr, split::NONE);
                        self.push(done, metric::GRAD_NORM, stats.grad_norm, split::NONE);
                        for (name, v) in obj.step_metrics() {
                            self.push(done, name, v, split::TRAIN);
                        }
                        self.record_layers(&bar, done, &layers);
                        if log_step {
                            let tps = tokens_per_step * (done - window_step) as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                            (window_start, window_step) = (Instant::now(), done);
                            self.push(done, metric::TOKENS_PER_S, tps, split::NONE);
                            bar.set_message(format!("loss {:.4} lr {lr:.2e} {tps:.0} tok/s", stats.loss));
                        }
                    }
                    StepOutcome::Divergent { stats, kind, reference } => {
                        if self.handle_incident(obj, &bar, step, stats, kind, reference)? == Recovery::RolledBack {
                            continue;
                        }
                    }
                }
            }
            bar.set_position(done);
            if done % cfg.eval_interval.max(1) == 0 || done == cfg.max_steps {
                early_stopped = self.evaluate(obj, &bar, done, &patience_spent)?;
            }
            let due = cfg.checkpoint_interval > 0 && done % cfg.checkpoint_interval == 0;
            if due || done == cfg.max_steps || early_stopped {
                self.save_checkpoint(obj)?;
            }
            if !early_stopped && hook(done).is_break() {
                bar.abandon();
                bail!("stopped by hook after step {done}");
            }
        }
        bar.finish();
        let trained = (self.state.step - start_step) as f64;
        let tokens_per_s = tokens_per_step * trained / started.elapsed().as_secs_f64().max(1e-9);
        self.finish(obj, outputs, resumed_from, early_stopped, tokens_per_s)
    }

    /// Validates at `step`; tracks the best weights; returns whether patience ran out.
    fn evaluate(
        &mut self,
        obj: &mut dyn Objective,
        bar: &ProgressBar,
        step: u64,
        patience_spent: &dyn Fn(u64) -> bool,
    ) -> anyhow::Result<bool> {
        let train = self.estimate(obj, EvalSplit::Train)?;
        self.record_eval(step, EvalSplit::Train, &train);
        if !obj.has_val() {
            say(bar, format!("step {step}: train loss {:.4}", train.loss));
            return Ok(false);
        }
        let val = self.estimate(obj, EvalSplit::Val)?;
        self.record_eval(step, EvalSplit::Val, &val);
        say(bar, format!("step {step}: train loss {:.4}, val loss {:.4}", train.loss, val.loss));
        if let Some(w) = overfitting(&eval_points(&self.metrics), self.cfg.diagnosis.overfit_evals).filter(|w| w.at_step == step) {
            self.push(step, metric::OVERFIT, w.gap_to, split::NONE);
            say(bar, format!("step {step}: {}", overfit_text(&w, self.cfg.keep_best)));
        }
        if self.state.best_val.is_none_or(|b| val.loss < b) {
            self.state.best_val = Some(val.loss);
            self.state.best_step = Some(step);
            self.state.evals_since_best = 0;
            if self.cfg.keep_best && self.writes() {
                let dir = self.out_dir.join(BEST_DIR);
                forja_core::fsutil::atomic_dir(&dir, |d| obj.write_model(self.vs, d))?;
            }
            return Ok(false);
        }
        self.state.evals_since_best += 1;
        let stop = patience_spent(self.state.evals_since_best);
        if stop {
            say(bar, format!("early stopping at step {step}: no val improvement in {} evaluations", self.state.evals_since_best));
        }
        Ok(stop)
    }

    /// Mean score over `eval_iters` fixed batches (the same at every evaluation).
    fn estimate(&self, obj: &mut dyn Objective, split: EvalSplit) -> anyhow::Result<EvalScore> {
        let _guard = tch::no_grad_guard();
        let n = self.cfg.eval_iters.max(1);
        forja_meter::add_flops(2.0 * self.n_scalars * obj.tokens_per_micro() * n as f64);
        let mut mean = EvalScore::default();
        for i in 0..n {
            let s = obj.eval_batch(split, i)?;
            mean.loss += s.loss / n as f64;
            for (name, v) in s.metrics {
                match mean.metrics.iter_mut().find(|(m, _)| *m == name) {
                    Some((_, acc)) => *acc += v / n as f64,
                    None => mean.metrics.push((name, v / n as f64)),
                }
            }
        }
        Ok(mean)
    }

    fn record_eval(&mut self, step: u64, split: EvalSplit, score: &EvalScore) {
        self.push(step, metric::LOSS, score.loss, split.name());
        for &(name, v) in &score.metrics {
            self.push(step, name, v, split.name());
        }
    }

    fn push(&mut self, step: u64, name: &str, value: f64, split: &str) {
        self.metrics.push(MetricRow::new(&self.ctx.name, step, name, value, split));
    }

    /// Logs per-layer gradient norms and reports each layer whose gradient
    /// vanishes (once per layer).
    fn record_layers(&mut self, bar: &ProgressBar, step: u64, layers: &[(String, f64)]) {
        let threshold = self.cfg.diagnosis.vanish_threshold;
        for (layer, norm) in layers {
            self.push(step, metric::LAYER_GRAD_NORM, *norm, layer);
            let reported =
                self.state.incidents.iter().any(|i| i.kind == IncidentKind::VanishingGradient && i.layer.as_ref() == Some(layer));
            if threshold > 0.0 && *norm < threshold && !reported {
                let kind = IncidentKind::VanishingGradient;
                let action = format!("logged (below {threshold:e}); training goes on");
                let incident = Incident { step, kind, layer: Some(layer.clone()), value: *norm, reference: None, action, batch_file: None };
                tracing::warn!("{incident}");
                say(bar, format!("incident: {incident}"));
                self.push(step, metric::INCIDENT, *norm, kind.as_str());
                self.state.incidents.push(incident);
            }
        }
    }

    /// Per-layer gradient norms of the current gradients.
    fn layer_grad_norms(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        let norms = self.opt.param_grad_norms()?;
        Ok(layer_norms(&self.opt.param_names(), &norms))
    }

    /// Records a divergent step, saves its batch, and applies the policy.
    /// After a skip the loop goes on as after any step (validation and
    /// checkpoints due at it still happen); after a rollback it resumes from the
    /// restored step.
    fn handle_incident(
        &mut self,
        obj: &mut dyn Objective,
        bar: &ProgressBar,
        step: u64,
        stats: StepStats,
        kind: IncidentKind,
        reference: Option<f64>,
    ) -> anyhow::Result<Recovery> {
        // The gradients were zeroed; recompute them to name the layer.
        let layer = self.blame_layer(obj, step)?;
        let done = step + 1;
        let batch_file = self.save_batch(obj, step)?;
        let value = if kind == IncidentKind::LossSpike || kind == IncidentKind::NonFiniteLoss { stats.loss } else { stats.grad_norm };
        let dcfg = &self.cfg.diagnosis;
        let over_budget = self.state.recoveries >= dcfg.max_recoveries;
        let policy = if over_budget { Policy::Stop } else { dcfg.policy };
        let action = match policy {
            Policy::Skip => "skipped the batch".to_string(),
            Policy::Rollback => format!("rolled back to the last checkpoint, learning rate × {}", dcfg.lr_factor),
            Policy::Stop if over_budget => format!("stopped after {} recoveries", self.state.recoveries),
            Policy::Stop => "stopped".to_string(),
        };
        let incident = Incident { step: done, kind, layer, value, reference, action, batch_file };
        tracing::warn!("{incident}");
        say(bar, format!("incident: {incident}"));
        self.push(done, metric::INCIDENT, value, kind.as_str());
        self.state.incidents.push(incident.clone());
        match policy {
            Policy::Skip => {
                self.state.recoveries += 1;
                self.state.step = done;
                Ok(Recovery::Skipped)
            }
            Policy::Rollback => {
                // What the rollback must not undo: incidents, recoveries, the
                // lowered rate and the batches to skip (a superset of the
                // checkpoint's, since they only grow).
                let mut carried = self.state.clone();
                carried.skip_steps.insert(step);
                let incident_rows: Vec<MetricRow> = self.metrics.iter().filter(|m| m.name == metric::INCIDENT).cloned().collect();
                let restored = self.try_resume()?.context("rollback: no checkpoint to roll back to")?;
                obj.load_state(&self.state.objective)?;
                self.state.incidents = carried.incidents;
                self.state.recoveries = carried.recoveries + 1;
                self.state.lr_scale = carried.lr_scale * dcfg.lr_factor;
                self.state.skip_steps = carried.skip_steps;
                self.metrics.retain(|m| m.name != metric::INCIDENT);
                self.metrics.extend(incident_rows);
                say(bar, format!("rolled back to step {restored}; learning rate × {}", self.state.lr_scale));
                bar.set_position(restored);
                Ok(Recovery::RolledBack)
            }
            Policy::Stop => {
                let path = self.out_dir.join(INCIDENTS_DIR).join("incidents.json");
                if self.writes() {
                    forja_core::fsutil::atomic_write(&path, serde_json::to_string_pretty(&self.state.incidents)?.as_bytes())?;
                }
                bail!("training stopped: {incident}");
            }
        }
    }

    /// Recomputes step `step`'s gradients (same batch, same dropout seed) and
    /// names the layer with a non-finite or the largest gradient norm.
    fn blame_layer(&mut self, obj: &mut dyn Objective, step: u64) -> anyhow::Result<Option<String>> {
        let mut stats = StepStats::default();
        self.accumulate(obj, step, &mut stats)?;
        let layers = self.layer_grad_norms()?;
        self.opt.zero_grad();
        Ok(blame(&layers))
    }

    /// Saves the inputs of a step's micro-batches as a tokens artifact.
    fn save_batch(&self, obj: &dyn Objective, step: u64) -> anyhow::Result<Option<String>> {
        if !self.writes() {
            return Ok(None);
        }
        // Rank 0 saves the whole step's batch, every rank's micro-batches.
        let mut rows = Vec::new();
        for micro in 0..self.cfg.grad_accum * self.rank_and_world().1 as u64 {
            rows.extend(obj.batch_rows(step, micro)?);
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let path = self.out_dir.join(INCIDENTS_DIR).join(format!("step-{:06}.tokens.arrow", step + 1));
        TokenRow::write(&path, &self.ctx.name, &self.ctx.config_hash, &rows)?;
        Ok(Some(path.display().to_string()))
    }

    /// Writes every variable as it is (adapters unmerged, extra heads kept),
    /// AdamW moments, metrics so far and trainer state, atomically.
    fn save_checkpoint(&mut self, obj: &dyn Objective) -> anyhow::Result<()> {
        self.state.adam_t = self.opt.t;
        self.state.objective = obj.state();
        // Sharded, the moments are gathered from every rank (all take part).
        let dist = self.dist;
        let moments = self.opt.state_tensors(&mut |t, owner| match dist {
            Some(d) => Ok(d.broadcast(t, owner)?),
            None => Ok(()),
        })?;
        if !self.writes() {
            return Ok(());
        }
        let (vs, state, metrics, ctx) = (&*self.vs, &self.state, &self.metrics, self.ctx);
        forja_core::fsutil::atomic_dir(&self.ckpt_dir(), |dir| {
            vs.save(dir.join(VARIABLES_FILE))?;
            Tensor::write_safetensors(&moments, dir.join(OPTIM_FILE))?;
            MetricRow::write(&dir.join(METRICS_FILE), &ctx.name, &ctx.config_hash, metrics)?;
            std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
            Ok(())
        })
    }

    /// Restores weights, AdamW moments, metrics and state from the checkpoint if
    /// it belongs to this run (same `run_key`); returns its step.
    fn try_resume(&mut self) -> anyhow::Result<Option<u64>> {
        let ckpt = self.ckpt_read_dir();
        let path = ckpt.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let state: TrainerState = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{}: unreadable trainer state ({e}); starting afresh", path.display());
                return Ok(None);
            }
        };
        if state.run_key != self.state.run_key {
            tracing::warn!("checkpoint {} belongs to another configuration; starting afresh", ckpt.display());
            return Ok(None);
        }
        let weights = ckpt.join(VARIABLES_FILE);
        self.vs.load(&weights).with_context(|| format!("loading {}", weights.display()))?;
        let moments = Tensor::read_safetensors(ckpt.join(OPTIM_FILE))?;
        self.opt.load_state(&moments, state.adam_t)?;
        self.metrics = MetricRow::read(&ckpt.join(METRICS_FILE))?;
        tracing::info!(step = state.step, "resuming from checkpoint {}", ckpt.display());
        let step = state.step;
        self.state = state;
        Ok(Some(step))
    }

    /// Exports the model (best or last weights), metrics, plot and report.
    fn finish(
        &mut self,
        obj: &mut dyn Objective,
        outputs: &EngineOutputs,
        resumed_from: Option<u64>,
        early_stopped: bool,
        tokens_per_s: f64,
    ) -> anyhow::Result<TrainSummary> {
        // Every rank must end with the same weights; a difference is an error.
        let params_hash_all_ranks = match self.dist {
            Some(d) => {
                let flat = self.opt.flat_params().to_device(tch::Device::Cpu);
                let values = Vec::<f32>::try_from(&flat)?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let hash = forja_core::hash::hash_bytes(&bytes);
                d.agree("trained parameters (hash)", &serde_json::json!(hash))?;
                Some(hash)
            }
            None => None,
        };
        let (optimizer_state_bytes, optimizer_state_unsharded_bytes) = self.opt.state_bytes();
        let last_val = last_value(&self.metrics, metric::LOSS, split::VAL);
        let best_dir = self.out_dir.join(BEST_DIR);
        let use_best = self.cfg.keep_best && self.state.best_step.is_some() && best_dir.join(WEIGHTS_FILE).exists();
        if use_best {
            forja_core::fsutil::atomic_dir(&outputs.model, |d| copy_files(&best_dir, d))?;
        } else {
            let vs = &*self.vs;
            forja_core::fsutil::atomic_dir(&outputs.model, |d| obj.write_model(vs, d))?;
        }
        MetricRow::write(&outputs.metrics, &self.ctx.name, &self.ctx.config_hash, &self.metrics)?;
        write_loss_plot(&outputs.plot, &self.ctx.name, &self.metrics)?;
        write_grad_plot(&outputs.grad_plot, &self.ctx.name, &self.metrics)?;
        let summary = TrainSummary {
            steps: self.state.step,
            resumed_from,
            final_val_loss: last_val,
            best_val_loss: self.state.best_val.unwrap_or(f64::NAN),
            best_step: self.state.best_step,
            early_stopped,
            tokens_per_s,
            incidents: self.state.incidents.clone(),
            trainable_params: self.trainable_params(),
            ranks: self.rank_and_world().1,
            threads_per_rank: tch::get_num_threads(),
            optimizer_state_bytes,
            optimizer: self.opt.describe(),
            optimizer_state_unsharded_bytes,
            params_hash_all_ranks,
        };
        let mut report = report_md(&self.ctx.name, &summary, use_best, outputs);
        report += &overfit_section(&self.metrics, self.cfg.diagnosis.overfit_evals, self.cfg.keep_best);
        forja_core::fsutil::atomic_write(&outputs.report, report.as_bytes())?;
        Ok(summary)
    }
}

fn last_value(metrics: &[MetricRow], name: &str, split: &str) -> f64 {
    metrics.iter().rev().find(|m| m.name == name && m.split == split).map_or(f64::NAN, |m| m.value)
}

fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Prints a line above the progress bar (also when the bar is hidden, e.g. in
/// CI logs); ranks other than 0 keep quiet (rank 0 says the same).
fn say(bar: &ProgressBar, line: String) {
    if forja_core::launch::Launch::rank_and_world().0 == 0 {
        bar.suspend(|| println!("{line}"));
    }
}

fn progress_bar(total: u64, at: u64) -> ProgressBar {
    if forja_core::launch::Launch::rank_and_world().0 > 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
}

/// Sets libtorch's intra-op thread count for a stage and restores it after, so
/// a stage's setting never leaks into the next one in the same process.
pub struct ThreadsGuard {
    previous: i32,
}

impl ThreadsGuard {
    /// `threads` 0 keeps the current setting.
    pub fn set(threads: i32) -> Self {
        let previous = tch::get_num_threads();
        if threads > 0 {
            tch::set_num_threads(threads);
        }
        Self { previous }
    }
}

impl Drop for ThreadsGuard {
    fn drop(&mut self) {
        if tch::get_num_threads() != self.previous {
            tch::set_num_threads(self.previous);
        }
    }
}
