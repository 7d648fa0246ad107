//! Diagnosis of training failures: non-finite loss or gradients, loss spikes
//! against a moving average, exploding and vanishing gradients, each named with
//! the step, the layer and the measure; and the recovery policy for each.

use serde::{Deserialize, Serialize};

/// What to do when a step goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Drop the step's batch: no update, go on with the next step.
    #[default]
    Skip,
    /// Restore the last good checkpoint, multiply the learning rate by
    /// `lr_factor`, and skip the offending batch when it comes round again.
    Rollback,
    /// Stop the stage with an error naming the step, the layer and the measure.
    Stop,
}

/// Detection thresholds and the recovery policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnosisConfig {
    /// Policy for divergent steps (non-finite loss or gradient, spike, explosion).
    pub policy: Policy,
    /// A batch loss above `spike_factor` × its moving average, and at least
    /// `spike_min_increase` above it, is a spike (0: off). The second condition
    /// keeps noise on a near-zero loss (0.02 → 0.06) from counting.
    pub spike_factor: f64,
    pub spike_min_increase: f64,
    /// A gradient norm above `explode_factor` × its moving average is an explosion (0: off).
    pub explode_factor: f64,
    /// A layer whose gradient norm falls below this is reported as vanishing (0: off).
    pub vanish_threshold: f64,
    /// Steps before spike and explosion detection start (the averages settle first).
    pub warmup_steps: u64,
    /// Weight of the newest value in the moving averages.
    pub ema_alpha: f64,
    /// Learning-rate multiplier after each rollback.
    pub lr_factor: f64,
    /// Recoveries (skips and rollbacks) allowed before the stage stops.
    pub max_recoveries: u64,
    /// Log each layer's gradient norm every `log_interval` steps.
    pub layer_grad_norms: bool,
    /// Warn of overfitting when the gap between validation and training loss
    /// has grown at this many evaluations in a row (0: off).
    pub overfit_evals: u64,
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Skip,
            spike_factor: 3.0,
            spike_min_increase: 0.5,
            explode_factor: 20.0,
            vanish_threshold: 1e-9,
            warmup_steps: 20,
            ema_alpha: 0.1,
            lr_factor: 0.5,
            max_recoveries: 10,
            layer_grad_norms: true,
            overfit_evals: 3,
        }
    }
}

/// The kind of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    NonFiniteLoss,
    NonFiniteGradient,
    LossSpike,
    ExplodingGradient,
    VanishingGradient,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonFiniteLoss => "non_finite_loss",
            Self::NonFiniteGradient => "non_finite_gradient",
            Self::LossSpike => "loss_spike",
            Self::ExplodingGradient => "exploding_gradient",
            Self::VanishingGradient => "vanishing_gradient",
        }
    }

    /// Whether the step must not be applied.
    pub fn is_divergent(self) -> bool {
        !matches!(self, Self::VanishingGradient)
    }
}

/// One detected problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The step (1-based, as in the metrics) whose update went wrong.
    pub step: u64,
    pub kind: IncidentKind,
    /// The layer most implicated (largest or non-finite gradient), if known.
    pub layer: Option<String>,
    /// The measure: the loss, or the gradient norm.
    pub value: f64,
    /// The moving average it was compared with (spikes, explosions).
    pub reference: Option<f64>,
    /// What was done: `skipped`, `rolled back to step N, lr × F`, `stopped`, `logged`.
    pub action: String,
    /// The offending batch, saved for inspection.
    pub batch_file: Option<String>,
}

impl std::fmt::Display for Incident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}", self.step, self.kind.as_str().replace('_', " "))?;
        if let Some(layer) = &self.layer {
            write!(f, " in layer `{layer}`")?;
        }
        write!(f, " (value {:.4e}", self.value)?;
        if let Some(r) = self.reference {
            write!(f, ", moving average {r:.4e}")?;
        }
        write!(f, "): {}", self.action)
    }
}

/// Moving averages the detectors compare against; part of the resume state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub loss_ema: Option<f64>,
    pub grad_ema: Option<f64>,
    /// Healthy steps seen.
    pub seen: u64,
}

impl Monitor {
    /// Checks a step's loss and gradient norm; `None` when it is healthy.
    pub fn check(&self, cfg: &DiagnosisConfig, loss: f64, grad_norm: f64) -> Option<(IncidentKind, f64, Option<f64>)> {
        if !loss.is_finite() {
            return Some((IncidentKind::NonFiniteLoss, loss, None));
        }
        if !grad_norm.is_finite() {
            return Some((IncidentKind::NonFiniteGradient, grad_norm, None));
        }
        if self.seen < cfg.warmup_steps {
            return None;
        }
        if let Some(avg) = self.loss_ema {
            if cfg.spike_factor > 0.0 && loss > cfg.spike_factor * avg && loss - avg > cfg.spike_min_increase {
                return Some((IncidentKind::LossSpike, loss, Some(avg)));
            }
        }
        if let Some(avg) = self.grad_ema {
            if cfg.explode_factor > 0.0 && grad_norm > cfg.explode_factor * avg {
                return Some((IncidentKind::ExplodingGradient, grad_norm, Some(avg)));
            }
        }
        None
    }

    /// Folds a healthy step into the averages.
    pub fn update(&mut self, cfg: &DiagnosisConfig, loss: f64, grad_norm: f64) {
        let a = cfg.ema_alpha.clamp(0.0, 1.0);
        let ema = |old: Option<f64>, x: f64| Some(old.map_or(x, |o| (1.0 - a) * o + a * x));
        self.loss_ema = ema(self.loss_ema, loss);
        self.grad_ema = ema(self.grad_ema, grad_norm);
        self.seen += 1;
    }
}

/// The layer a parameter belongs to: its name up to the first numeric part
/// (`transformer.h.3.attn.c_attn.weight` → `transformer.h.3`), else without its
/// last part (`transformer.wte.weight` → `transformer.wte`).
pub fn layer_of(param: &str) -> String {
    let parts: Vec<&str> = param.split('.').collect();
    if let Some(i) = parts.iter().position(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
        return parts[..=i].join(".");
    }
    if parts.len() > 1 {
        parts[..parts.len() - 1].join(".")
    } else {
        param.to_string()
    }
}

/// Per-layer gradient norms from per-parameter norms, in first-seen layer order.
pub fn layer_norms(names: &[&str], param_norms: &[f64]) -> Vec<(String, f64)> {
    let mut layers: Vec<(String, f64)> = Vec::new();
    for (name, norm) in names.iter().zip(param_norms) {
        let layer = layer_of(name);
        match layers.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, sq)) => *sq += norm * norm,
            None => layers.push((layer, norm * norm)),
        }
    }
    layers.into_iter().map(|(l, sq)| (l, sq.sqrt())).collect()
}

/// The layer to blame: the first with a non-finite norm, else the largest.
pub fn blame(layers: &[(String, f64)]) -> Option<String> {
    layers.iter().find(|(_, n)| !n.is_finite()).or_else(|| layers.iter().max_by(|a, b| a.1.total_cmp(&b.1))).map(|(l, _)| l.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_named_by_their_index_or_module() {
        assert_eq!(layer_of("transformer.h.3.attn.c_attn.weight"), "transformer.h.3");
        assert_eq!(layer_of("transformer.wte.weight"), "transformer.wte");
        assert_eq!(layer_of("encoder.layer.11.output.dense.bias"), "encoder.layer.11");
        let norms = layer_norms(&["a.0.w", "a.0.b", "head.w"], &[3.0, 4.0, 1.0]);
        assert_eq!(norms, vec![("a.0".to_string(), 5.0), ("head".to_string(), 1.0)]);
        assert_eq!(blame(&norms).as_deref(), Some("a.0"));
        assert_eq!(blame(&[("x".into(), 1.0), ("y".into(), f64::NAN)]).as_deref(), Some("y"));
    }

    #[test]
    fn spikes_and_explosions_are_relative_to_the_moving_average() {
        let cfg = DiagnosisConfig { warmup_steps: 2, ..Default::default() };
        let mut m = Monitor::default();
        assert_eq!(m.check(&cfg, 100.0, 100.0), None, "warm-up: nothing but non-finite values");
        m.update(&cfg, 2.0, 1.0);
        m.update(&cfg, 2.0, 1.0);
        assert_eq!(m.check(&cfg, 2.5, 1.5), None);
        assert_eq!(m.check(&cfg, 7.0, 1.0).map(|c| c.0), Some(IncidentKind::LossSpike));
        let mut small = Monitor::default();
        small.update(&cfg, 0.02, 1.0);
        small.update(&cfg, 0.02, 1.0);
        assert_eq!(small.check(&cfg, 0.07, 1.0), None, "noise on a near-zero loss is no spike");
        assert_eq!(m.check(&cfg, 2.0, 50.0).map(|c| c.0), Some(IncidentKind::ExplodingGradient));
        assert_eq!(m.check(&cfg, f64::NAN, 1.0).map(|c| c.0), Some(IncidentKind::NonFiniteLoss));
        assert_eq!(m.check(&cfg, 2.0, f64::INFINITY).map(|c| c.0), Some(IncidentKind::NonFiniteGradient));
    }
}

/// Validation pulling away from training: the gap `val − train` grew at
/// `evals` evaluations in a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OverfitWarning {
    /// Evaluation step where the growth began (the last gap before it).
    pub since_step: u64,
    /// Step of the latest evaluation of the streak.
    pub at_step: u64,
    pub gap_from: f64,
    pub gap_to: f64,
    /// Step and loss of the best validation of all evaluations.
    pub best_step: u64,
    pub best_val: f64,
}

/// Looks for an overfitting streak in `(step, train loss, val loss)` evaluations
/// (in step order): the latest point where the gap has grown `evals` times in
/// a row and validation is worse than training (gap > 0), with the start of
/// that streak. `None` when there is none or `evals` is 0. (A gap that grows
/// while still negative — validation better than training, as with dropout
/// or an easier validation split — is not flagged.)
pub fn overfitting(points: &[(u64, f64, f64)], evals: u64) -> Option<OverfitWarning> {
    if evals == 0 {
        return None;
    }
    let gap = |i: usize| points[i].2 - points[i].1;
    let mut run = 0u64;
    let mut found: Option<(usize, usize)> = None;
    for i in 1..points.len() {
        if gap(i) > gap(i - 1) {
            run += 1;
            if run >= evals && gap(i) > 0.0 {
                // The latest streak wins: a divergence late in training is
                // the one to report, not an early wobble.
                found = Some((i - run as usize, i));
            }
        } else {
            run = 0;
        }
    }
    let (start, end) = found?;
    let best = points.iter().min_by(|a, b| a.2.total_cmp(&b.2))?;
    Some(OverfitWarning {
        since_step: points[start].0,
        at_step: points[end].0,
        gap_from: gap(start),
        gap_to: gap(end),
        best_step: best.0,
        best_val: best.2,
    })
}

#[cfg(test)]
mod overfit_tests {
    use super::overfitting;

    #[test]
    fn a_growing_gap_is_found_with_the_best_validation_step() {
        // val falls until step 30, then rises while train keeps falling.
        let pts = [(10, 2.0, 2.1), (20, 1.8, 1.9), (30, 1.5, 1.7), (40, 1.3, 1.8), (50, 1.1, 1.9), (60, 0.9, 2.0), (70, 0.8, 2.0)];
        let w = overfitting(&pts, 3).expect("warning");
        assert_eq!((w.since_step, w.at_step, w.best_step), (20, 70, 30), "{w:?}");
        assert!((w.best_val - 1.7).abs() < 1e-12 && w.gap_to > w.gap_from);
        assert!(overfitting(&pts, 7).is_none(), "a streak of 5 is not one of 7");
        assert!(overfitting(&pts, 0).is_none(), "0 turns it off");
        // An early wobble, then the real divergence: the latter is reported.
        let late = [
            (10, 2.0, 2.1),
            (20, 1.9, 2.05),
            (30, 1.8, 2.0),
            (40, 1.7, 1.95),
            (50, 1.6, 1.8),
            (60, 1.5, 1.5),
            (70, 1.4, 1.6),
            (80, 1.3, 1.7),
            (90, 1.2, 1.8),
        ];
        let w = overfitting(&late, 2).expect("warning");
        assert_eq!((w.since_step, w.at_step, w.best_step), (60, 90, 60), "{w:?}");
        let healthy = [(10, 2.0, 2.1), (20, 1.8, 1.95), (30, 1.6, 1.7), (40, 1.5, 1.62)];
        assert!(overfitting(&healthy, 2).is_none());
        let val_below_train = [(10, 2.0, 1.90), (20, 1.8, 1.71), (30, 1.6, 1.52), (40, 1.5, 1.43)];
        assert!(overfitting(&val_below_train, 3).is_none(), "a negative gap that grows is not overfitting");
    }
}
