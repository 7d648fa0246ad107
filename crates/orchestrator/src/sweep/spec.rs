//! The `[search]` section (method, metric, goal, parameter domains, ASHA's rungs),
//! a trial's configuration and its outcome.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the configurations are chosen and scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every combination of the `values` lists.
    Grid,
    /// `trials` draws from the distributions.
    Random,
    /// `trials` draws, poor ones stopped early at rungs.
    Asha,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Minimize,
    Maximize,
}

/// Where a parameter's values come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Domain {
    /// These values (any TOML values).
    Values(Vec<toml::Value>),
    /// Uniform on `[lo, hi]`.
    Uniform([f64; 2]),
    /// Uniform in log space on `[lo, hi]` (both > 0).
    LogUniform([f64; 2]),
    /// One of these, uniformly.
    Choice(Vec<toml::Value>),
    /// Uniform integers on `[lo, hi]`.
    IntUniform([i64; 2]),
}

/// ASHA's rungs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AshaConfig {
    /// Steps of the first rung; rung k is `min_steps · reduction^k`.
    pub min_steps: u64,
    pub reduction: u64,
}

impl Default for AshaConfig {
    fn default() -> Self {
        Self { min_steps: 100, reduction: 3 }
    }
}

/// The `[search]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    pub method: Method,
    #[serde(default)]
    pub trials: usize,
    /// `STAGE.METRIC`.
    pub metric: String,
    #[serde(default = "default_split")]
    pub split: String,
    #[serde(default = "default_goal")]
    pub goal: Goal,
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default)]
    pub seed: u64,
    /// `STAGE.PARAM.PATH` → domain.
    pub params: BTreeMap<String, Domain>,
    #[serde(default)]
    pub asha: AshaConfig,
}

fn default_split() -> String {
    "val".into()
}
fn default_goal() -> Goal {
    Goal::Minimize
}
fn default_parallel() -> usize {
    1
}

impl SearchSpec {
    pub(super) fn metric_parts(&self) -> Result<(&str, &str)> {
        self.metric.split_once('.').ok_or_else(|| anyhow!("[search] metric `{}`: expected STAGE.METRIC", self.metric))
    }

    /// Whether `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        match self.goal {
            Goal::Minimize => a < b,
            Goal::Maximize => a > b,
        }
    }

    pub(super) fn best_of(&self, values: impl Iterator<Item = f64>) -> Option<f64> {
        values.filter(|v| v.is_finite()).fold(None, |best, v| match best {
            Some(b) if !self.better(v, b) => Some(b),
            _ => Some(v),
        })
    }
}

/// One configuration: parameter path → value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: usize,
    pub params: BTreeMap<String, toml::Value>,
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    /// Stopped by ASHA at this rung's step count.
    Stopped {
        rung_steps: u64,
    },
    Failed {
        error: String,
    },
}

impl Status {
    pub(super) fn label(&self) -> String {
        match self {
            Status::Completed => "completed".into(),
            Status::Stopped { rung_steps } => format!("stopped at rung {rung_steps}"),
            Status::Failed { .. } => "failed".into(),
        }
    }
}

/// A trial's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub trial: Trial,
    pub status: Status,
    /// Best value of the metric along the validation curve (NaN when none).
    pub value: f64,
    /// Training steps the trial ran (the last point of its curve).
    pub steps: u64,
    pub wall_s: f64,
    /// Hash of the trial's pipeline file (what a resume compares).
    pub key: String,
    /// ASHA: the value recorded at each rung the trial reached.
    #[serde(default)]
    pub rung_values: Vec<f64>,
    /// Whether this sweep reused it from an earlier one.
    #[serde(default, skip_serializing)]
    pub reused: bool,
}
