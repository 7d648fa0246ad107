//! forja-train: the one training engine every trainer plugs into.
//!
//! - [`engine`]: the loop ([`Engine`]) and the [`Objective`] a trainer supplies;
//! - [`optim`]: AdamW over parameter groups with owned state, the LR schedule,
//!   gradient clipping;
//! - [`diagnose`]: detection of divergent steps and the recovery policies;
//! - [`batches`]: token streams and deterministic batches;
//! - [`distributed`]: data parallelism across the ranks a launcher started
//!   (gradients summed on libtorch's c10d, the sharded optimizer);
//! - [`trainer`]: what every trainer shares: its settings ([`TrainerConfig`],
//!   nested as `train` in every trainer's parameters), set-up, standard outputs
//!   and the [`ModelWriter`].
//!
//! A new objective (SFT, a reward model, DPO) implements [`Objective`] —
//! `train_loss(step, micro)`, `eval_batch(split, i)`, `write_model(vs, dir)`,
//! `batch_rows(step, micro)` — chooses its [`ParamGroup`]s, and calls
//! [`Engine::run`]; it never writes its own loop, optimizer or checkpointing.

pub mod batches;
pub mod bench;
pub mod diagnose;
pub mod distributed;
pub mod engine;
pub mod optim;
mod report;
pub mod trainer;

pub use diagnose::{DiagnosisConfig, Incident, IncidentKind, Policy};
pub use distributed::DistributedConfig;
pub use engine::{
    run_key, Engine, EngineConfig, EngineOutputs, EvalScore, EvalSplit, Objective, RunSpec, StepOutcome, StepStats, ThreadsGuard,
    TrainSummary,
};
pub use optim::{AdamW, OptimConfig, OptimKind, ParamGroup, Schedule};
pub use trainer::{ModelWriter, TrainerConfig, TrainerSetup};
