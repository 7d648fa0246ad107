//! What the engine writes besides the model: the training report (summary,
//! incidents, the overfitting section) in Markdown and the loss and per-layer
//! gradient-norm plots in SVG.

use crate::diagnose::{overfitting, OverfitWarning};
use crate::engine::{EngineOutputs, TrainSummary};
use anyhow::Context;
use forja_core::metric::{self, split};
use forja_core::MetricRow;
use std::path::Path;

/// `(step, train loss, val loss)` of every evaluation with both.
pub(crate) fn eval_points(metrics: &[MetricRow]) -> Vec<(u64, f64, f64)> {
    let mut train = std::collections::BTreeMap::new();
    let mut val = std::collections::BTreeMap::new();
    for m in metrics.iter().filter(|m| m.name == metric::LOSS) {
        match m.split.as_str() {
            split::TRAIN => train.insert(m.step, m.value),
            split::VAL => val.insert(m.step, m.value),
            _ => None,
        };
    }
    val.into_iter().filter_map(|(step, v)| train.get(&step).map(|&t| (step, t, v))).collect()
}

pub(crate) fn overfit_text(w: &OverfitWarning, keep_best: bool) -> String {
    let best = if w.best_step == w.at_step {
        format!(
            "validation is still at its best ({:.4}), so the model is memorising faster than it generalises rather than getting worse yet",
            w.best_val
        )
    } else {
        let exported = if keep_best { "; the exported weights are that step's (`keep_best`)" } else { "" };
        format!("validation was best at step {} ({:.4}){exported}", w.best_step, w.best_val)
    };
    format!(
        "overfitting: the gap val − train loss grew at every evaluation from step {} ({:.4}) to step {} ({:.4}); {best}",
        w.since_step, w.gap_from, w.at_step, w.gap_to
    )
}

/// The report's overfitting section: the train / val gap and the warning, if any.
pub(crate) fn overfit_section(metrics: &[MetricRow], evals: u64, keep_best: bool) -> String {
    let points = eval_points(metrics);
    let mut r = "\n## Overfitting\n\n".to_string();
    if points.is_empty() {
        return r + "No validation split: nothing to compare the training loss with.\n";
    }
    r += &match overfitting(&points, evals) {
        Some(w) => format!("**Warning**: {}.\n\n", overfit_text(&w, keep_best)),
        None if evals == 0 => "The check is off (`diagnosis.overfit_evals = 0`).\n\n".into(),
        None => format!("No warning: the gap val − train loss never grew at {evals} evaluations in a row.\n\n"),
    };
    r += "| step | train loss | val loss | gap |\n|---|---|---|---|\n";
    for (step, t, v) in &points {
        r += &format!("| {step} | {t:.4} | {v:.4} | {:.4} |\n", v - t);
    }
    r
}

/// The training report: summary, exported weights, incidents.
pub(crate) fn report_md(stage: &str, s: &TrainSummary, used_best: bool, outputs: &EngineOutputs) -> String {
    let mut r = format!("# Training `{stage}`\n\n| | |\n|---|---|\n");
    r += &format!("| steps | {} |\n", s.steps);
    if let Some(from) = s.resumed_from {
        r += &format!("| resumed from step | {from} |\n");
    }
    r += &format!("| trainable parameters | {} |\n", s.trainable_params);
    r += &format!("| final val loss | {:.4} |\n| best val loss | {:.4} |\n", s.final_val_loss, s.best_val_loss);
    let exported = match (used_best, s.best_step) {
        (true, Some(step)) => format!("best validation (step {step})"),
        _ => "last step".to_string(),
    };
    r += &format!("| exported weights | {exported} |\n| early stopped | {} |\n", s.early_stopped);
    r += &format!("| tokens/s | {:.0} |\n", s.tokens_per_s);
    r += &format!("| ranks × threads | {} × {} |\n", s.ranks, s.threads_per_rank);
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    let state = if s.optimizer_state_bytes < s.optimizer_state_unsharded_bytes {
        format!("{:.2} MiB (sharded; {:.2} MiB unsharded)", mib(s.optimizer_state_bytes), mib(s.optimizer_state_unsharded_bytes))
    } else {
        format!("{:.2} MiB", mib(s.optimizer_state_bytes))
    };
    r += &format!("| optimizer | {} |\n| optimizer state per rank | {state} |\n", s.optimizer);
    if let Some(h) = &s.params_hash_all_ranks {
        r += &format!("| parameters identical on every rank | `{}` |\n", &h[..h.len().min(16)]);
    }
    r += "\n";
    r += &format!(
        "Loss curves: `{}`  \nPer-layer gradient norms: `{}`\n\n## Incidents\n\n",
        outputs.plot.display(),
        outputs.grad_plot.display()
    );
    if s.incidents.is_empty() {
        r += "None: every step had a finite loss and gradient, without spikes or explosions.\n";
    } else {
        r += "| step | kind | layer | value | moving average | action | batch |\n|---|---|---|---|---|---|---|\n";
        for i in &s.incidents {
            r += &format!(
                "| {} | {} | {} | {:.4e} | {} | {} | {} |\n",
                i.step,
                i.kind.as_str(),
                i.layer.as_deref().unwrap_or("-"),
                i.value,
                i.reference.map_or("-".into(), |v| format!("{v:.4e}")),
                i.action,
                i.batch_file.as_deref().unwrap_or("-")
            );
        }
    }
    r
}

/// Draws each layer's gradient norm (log10) over the steps as SVG: vanishing
/// and exploding layers stand out at a glance.
pub(crate) fn write_grad_plot(path: &Path, stage: &str, metrics: &[MetricRow]) -> anyhow::Result<()> {
    use forja_render::Series;
    const PALETTE: [&str; 10] =
        ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
    let mut layers: Vec<&str> = Vec::new();
    for m in metrics.iter().filter(|m| m.name == metric::LAYER_GRAD_NORM) {
        if !layers.contains(&m.split.as_str()) {
            layers.push(&m.split);
        }
    }
    let series: Vec<Series> = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| Series {
            label: layer,
            color: PALETTE[i % PALETTE.len()],
            points: metrics
                .iter()
                .filter(|m| m.name == metric::LAYER_GRAD_NORM && m.split == *layer && m.value > 0.0)
                .map(|m| (m.step as f64, m.value.log10()))
                .collect(),
        })
        .collect();
    write_chart(path, &format!("{stage}: gradient norm per layer"), "log10 gradient L2 norm", &series)
}

/// Writes a line chart, or a one-line SVG saying there is nothing to draw.
fn write_chart(path: &Path, title: &str, y_label: &str, series: &[forja_render::Series]) -> anyhow::Result<()> {
    let svg = forja_render::line_chart(title, "step", y_label, series).unwrap_or_else(|| {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"10\" y=\"25\">{title}: no points</text></svg>"
        )
    });
    forja_core::fsutil::atomic_write(path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Draws the loss curves (mini-batch loss, and the train/val estimates) as SVG.
pub(crate) fn write_loss_plot(path: &Path, stage: &str, metrics: &[MetricRow]) -> anyhow::Result<()> {
    use forja_render::Series;
    let pick = |name: &str, split: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter(|m| m.name == name && m.split == split).map(|m| (m.step as f64, m.value)).collect()
    };
    let series = [
        Series { label: "batch loss", color: "#bbb", points: pick(metric::BATCH_LOSS, split::TRAIN) },
        Series { label: "train (eval)", color: "#1f77b4", points: pick(metric::LOSS, split::TRAIN) },
        Series { label: "val (eval)", color: "#d62728", points: pick(metric::LOSS, split::VAL) },
    ];
    write_chart(path, &format!("{stage}: loss"), "loss", &series)
}
