//! What every trainer (an [`Objective`](crate::Objective) and the stage that
//! runs it) shares beyond the loop itself.

use crate::{DiagnosisConfig, DistributedConfig, EngineConfig, EngineOutputs, OptimConfig, ThreadsGuard};
use forja_core::stage::{outputs, port, OutDir, OutputSpec, StageCtx};
use forja_model::Precision;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn;

/// Writes a model folder from the variables (the trainer knows config and
/// tokenizer); an objective's `write_model` calls it.
pub type ModelWriter<'a> = Box<dyn Fn(&nn::VarStore, &Path) -> anyhow::Result<()> + 'a>;

/// The settings every trainer shares — the engine's (steps, accumulation,
/// optimizer, validation, checkpoints, diagnosis, best weights) plus epochs,
/// batch size, precision, seed, device and threads — nested as `train` in the
/// parameters of `pretrain`, `sft`, `finetune_classifier`, `reward_model`,
/// `dpo`, `ppo` and `grpo`, so `--set train.max_steps=200` means the same for
/// all. Each trainer has its own defaults; a partial `train` table keeps the
/// trainer's defaults for the keys it leaves out (the stage adapter reads
/// parameters over the stage's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Optimizer steps (0: from `epochs`, where the trainer has a finite set
    /// of examples; `ppo` / `grpo`: rollouts × updates per rollout).
    pub max_steps: u64,
    /// Passes over the training examples (sets `max_steps` when that is 0;
    /// not used by `pretrain`, which samples windows from a stream).
    pub epochs: f64,
    /// Examples (sequences, conversations, pairs) per micro-batch (`ppo` /
    /// `grpo` split each rollout into `minibatches` instead).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size × grad_accum).
    pub grad_accum: u64,
    pub optim: OptimConfig,
    /// Validate every this many steps (and at the end).
    pub eval_interval: u64,
    /// Validation batches per estimate (0: all of them, where the set is finite).
    pub eval_iters: u64,
    /// Write a resumable checkpoint every this many steps (0: only at the end).
    pub checkpoint_interval: u64,
    /// Stop after this many validations without a new best (0: never).
    pub early_stopping_patience: u64,
    /// Log a line (and per-layer gradient norms) every this many steps.
    pub log_interval: u64,
    /// Detection of divergent steps and the recovery policy.
    pub diagnosis: DiagnosisConfig,
    /// Export the best-validation weights (true) or the last step's.
    pub keep_best: bool,
    /// `f32`, or `bf16` matrix products (float32 weights, loss and optimizer).
    pub precision: Precision,
    /// Overrides the run's seed.
    pub seed: Option<u64>,
    /// Overrides the run's device (`cpu`, `cuda`, `cuda:N`).
    pub device: Option<String>,
    /// libtorch intra-op threads for this stage, per rank (0: libtorch's default).
    pub threads: i32,
    /// Training on the ranks a launcher started (`torchrun`, `srun`, `forja
    /// run --nproc`): `batch_size` is then each rank's micro-batch, and the
    /// global batch ranks × batch_size × grad_accum.
    pub distributed: DistributedConfig,
}

impl Default for TrainerConfig {
    /// The engine's defaults, 200 steps, batches of 12.
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            max_steps: e.max_steps,
            epochs: 1.0,
            batch_size: 12,
            grad_accum: e.grad_accum,
            optim: e.optim,
            eval_interval: e.eval_interval,
            eval_iters: e.eval_iters,
            checkpoint_interval: e.checkpoint_interval,
            early_stopping_patience: e.early_stopping_patience,
            log_interval: e.log_interval,
            diagnosis: e.diagnosis,
            keep_best: e.keep_best,
            precision: Precision::F32,
            seed: None,
            device: None,
            threads: 0,
            distributed: DistributedConfig::default(),
        }
    }
}

impl TrainerConfig {
    /// The engine's settings for `max_steps` steps and `eval_iters`
    /// validation batches per estimate.
    pub fn engine(&self, max_steps: u64, eval_iters: u64) -> EngineConfig {
        EngineConfig {
            optim: self.optim.clone(),
            grad_accum: self.grad_accum,
            max_steps,
            eval_interval: self.eval_interval,
            eval_iters,
            checkpoint_interval: self.checkpoint_interval,
            early_stopping_patience: self.early_stopping_patience,
            log_interval: self.log_interval,
            diagnosis: self.diagnosis.clone(),
            keep_best: self.keep_best,
            distributed: self.distributed.clone(),
        }
    }

    /// Micro-batches per optimizer step across all ranks: `grad_accum` ×
    /// the launcher's world size (what a trainer's batches are laid out for).
    pub fn global_accum(&self) -> u64 {
        self.grad_accum.max(1) * forja_core::launch::Launch::rank_and_world().1 as u64
    }

    /// Steps for `n` training examples drawn `batch_size × grad_accum` at a
    /// time: `max_steps` when set, else `epochs` passes (at least one step).
    pub fn steps_for(&self, n: usize) -> u64 {
        if self.max_steps > 0 {
            return self.max_steps;
        }
        let per_epoch = n.div_ceil(self.batch_size.max(1) * self.global_accum() as usize).max(1) as u64;
        ((self.epochs * per_epoch as f64).ceil() as u64).max(1)
    }

    /// The engine's settings for a finite set of `n` training examples whose
    /// validation set fills `val_batches` batches (`eval_iters` 0: all of them).
    pub fn engine_for_examples(&self, n: usize, val_batches: u64) -> EngineConfig {
        let eval_iters = if self.eval_iters == 0 { val_batches } else { self.eval_iters.min(val_batches) };
        self.engine(self.steps_for(n), eval_iters)
    }

    /// Resolves seed and device (the trainer's own or the run's), sets the
    /// thread count for the stage, checks the precision on that device and
    /// seeds libtorch's RNG.
    pub fn setup(&self, ctx: &StageCtx) -> anyhow::Result<TrainerSetup> {
        anyhow::ensure!(self.batch_size > 0, "train.batch_size must be > 0");
        let seed = self.seed.unwrap_or(ctx.seed);
        let dist = forja_dist::init(std::time::Duration::from_secs(self.distributed.timeout_s.max(1)))?;
        let mut device_name = self.device.clone().unwrap_or_else(|| ctx.device.clone());
        if let Some(d) = dist.filter(|_| device_name == "cuda") {
            // One GPU per rank on a machine.
            device_name = format!("cuda:{}", d.launch.local_rank);
        }
        let device = forja_model::parse_device(&device_name)?;
        let threads = ThreadsGuard::set(self.threads);
        check_precision(self.precision, device)?;
        tch::manual_seed(seed as i64);
        Ok(TrainerSetup { seed, device_name, device, _threads: threads })
    }
}

/// What a trainer starts with: its seed and device, the thread count in force
/// for the stage (restored when this is dropped), libtorch's RNG seeded.
pub struct TrainerSetup {
    pub seed: u64,
    pub device_name: String,
    pub device: tch::Device,
    _threads: ThreadsGuard,
}

/// bfloat16 needs a device whose libtorch can multiply in it.
pub fn check_precision(precision: Precision, device: tch::Device) -> anyhow::Result<()> {
    if precision == Precision::Bf16 {
        let ok = tch::Tensor::f_ones([2, 2], (tch::Kind::BFloat16, device)).and_then(|probe| probe.f_matmul(&probe)).is_ok();
        anyhow::ensure!(ok, "train.precision = \"bf16\": libtorch cannot multiply bfloat16 matrices on {device:?}");
    }
    Ok(())
}

/// The model folder every trainer writes.
pub const MODEL: OutputSpec = OutputSpec { name: "model", path: "model", kind: port::MODEL };
/// Per-layer gradient norms over the steps.
pub const GRAD_PLOT: OutputSpec = OutputSpec { name: "grad_plot", path: "grad_norms.svg", kind: port::SVG };
/// What every trainer writes: the model, metrics, the loss curves, gradient
/// norms and the report.
pub const STANDARD_OUTPUTS: [OutputSpec; 5] = [MODEL, outputs::METRICS, outputs::PLOT, GRAD_PLOT, outputs::REPORT];

/// Where the engine writes a trainer's model, metrics, plots and report.
pub fn engine_outputs(out: &OutDir) -> EngineOutputs {
    EngineOutputs {
        model: out.path(&MODEL),
        metrics: out.path(&outputs::METRICS),
        plot: out.path(&outputs::PLOT),
        grad_plot: out.path(&GRAD_PLOT),
        report: out.path(&outputs::REPORT),
    }
}
