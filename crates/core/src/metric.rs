//! Names of metrics and splits in `metrics` artifacts, in one place: stages
//! write them and the orchestrator, reports and tests read them.

/// Mean loss over an evaluation (with `split` = `train`, `val` or `test`).
pub const LOSS: &str = "loss";
/// exp(loss) of a language model.
pub const PERPLEXITY: &str = "perplexity";
/// Tokens scored by an evaluation.
pub const TOKENS: &str = "tokens";
/// Loss of one optimiser step's mini-batch(es).
pub const BATCH_LOSS: &str = "batch_loss";
/// Learning rate used at a step.
pub const LR: &str = "lr";
/// Global gradient L2 norm before clipping.
pub const GRAD_NORM: &str = "grad_norm";
/// Gradient L2 norm of one layer (the metric's split names the layer).
pub const LAYER_GRAD_NORM: &str = "layer_grad_norm";
/// Training throughput.
pub const TOKENS_PER_S: &str = "tokens_per_s";
/// A training incident (the split names its kind; the value is the measure).
pub const INCIDENT: &str = "incident";
/// Overfitting warning at an evaluation: the value is the gap val − train
/// loss after it grew `diagnosis.overfit_evals` times in a row.
pub const OVERFIT: &str = "overfit_warning";
/// Masked-LM accuracy on masked positions.
pub const MLM_ACCURACY: &str = "mlm_accuracy";

/// Fraction of examples classified correctly.
pub const ACCURACY: &str = "accuracy";
/// Unweighted means over classes of precision, recall and F1.
pub const MACRO_PRECISION: &str = "macro_precision";
pub const MACRO_RECALL: &str = "macro_recall";
pub const MACRO_F1: &str = "macro_f1";

/// Micro- and support-weighted F1 (single-label: micro F1 = accuracy).
pub const MICRO_F1: &str = "micro_f1";
pub const WEIGHTED_F1: &str = "weighted_f1";
/// Expected calibration error of class probabilities (15 equal-width bins).
pub const ECE: &str = "ece";
/// Mean negative log-likelihood of the true classes.
pub const LOG_LOSS: &str = "log_loss";
/// Accuracy of one slice (the split is `slice:NAME`).
pub const SLICE_ACCURACY: &str = "slice_accuracy";
/// Largest accuracy gap between two slices.
pub const MAX_DISPARITY: &str = "max_disparity";
/// Accuracy under a perturbation (the split is `perturb:KEY`).
pub const ROBUST_ACCURACY: &str = "robust_accuracy";
/// Largest completeness error of the integrated-gradient attributions.
pub const IG_COMPLETENESS_ERROR: &str = "ig_completeness_error";
/// Exact match of final answers.
pub const EXACT_MATCH: &str = "exact_match";

/// Wall-clock seconds of a stage.
pub const WALL_S: &str = "wall_s";
/// CPU seconds (user + system) of a stage.
pub const CPU_S: &str = "cpu_s";
/// Energy estimate of a stage, watt-hours (`forja_meter`).
pub const ENERGY_WH: &str = "energy_wh";
/// Floating-point operations a stage counted.
pub const FLOPS: &str = "flops";
/// CO2-equivalent grams of a stage's energy at the configured grid intensity.
pub const CO2E_G: &str = "co2e_g";

/// Records a data stage read (kept + rejected).
pub const DOCS_READ: &str = "docs_read";
/// Documents a data stage kept (split `-`: all; else per split).
pub const DOCS_KEPT: &str = "docs_kept";
/// Records a data stage rejected; per rule as `rejected:RULE`.
pub const DOCS_REJECTED: &str = "docs_rejected";

/// Split names of metric rows.
pub mod split {
    pub const TRAIN: &str = "train";
    pub const VAL: &str = "val";
    pub const TEST: &str = "test";
    /// Not tied to a split.
    pub const NONE: &str = "-";
}
