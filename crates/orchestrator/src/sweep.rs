//! Hyperparameter search: `forja sweep FILE` over the `[search]` section of a
//! pipeline file.
//!
//! ```toml
//! [search]
//! method = "asha"              # grid | random | asha
//! trials = 8                   # configurations drawn (random, asha)
//! metric = "pretrain.loss"     # STAGE.METRIC
//! split = "val"
//! goal = "minimize"            # or maximize
//! parallel = 2                 # trials at once
//! [search.params]
//! "pretrain.optim.lr" = { log_uniform = [1e-4, 1e-2] }
//! "pretrain.model.dropout" = { values = [0.0, 0.1] }
//! [search.asha]
//! min_steps = 250              # first rung
//! reduction = 3                # η: a trial goes on past a rung only in the top 1/η there
//! ```
//!
//! Every trial is a self-contained pipeline file (`OUT/sweep/trial-NNNN/pipeline.toml`,
//! the base pipeline with the trial's parameters set, only the stages the
//! metric needs, its own output folder) run by `forja run` in a process of its
//! own, so libtorch's global state never leaks between trials and a cluster
//! scheduler can run the same files. A trial's value is the best value of the
//! metric along its validation curve (what the stage exports with `keep_best`).
//! ASHA (Li et al. 2020, asynchronous successive halving, in its stopping form)
//! reads each running trial's curve from its stage's checkpoint
//! (`checkpoint/metrics.arrow`, so rungs should fall on checkpoints) and stops
//! a trial that reaches a rung outside the top 1/η of the trials recorded
//! there. A finished or stopped trial leaves `result.json` keyed by the hash of
//! its pipeline file; a resumed sweep reuses it without running it again.

mod process;
mod report;
mod schedule;
mod spec;

pub use report::report_md;
pub use schedule::{best_trial, search, trials, Progress, Runner};
pub use spec::{AshaConfig, Domain, Goal, Method, SearchSpec, Status, Trial, TrialResult};

use crate::pipeline::{load, Override};
use anyhow::{anyhow, Context, Result};
use forja_core::stage::DynStage;
use process::{apply_overrides, needed_stages, relative_root, ProcessRunner};
use report::write_outputs;
use std::path::{Path, PathBuf};

/// Options of `forja sweep`.
#[derive(Debug, Clone, Default)]
pub struct SweepOptions {
    /// Overrides `[search] parallel`.
    pub parallel: Option<usize>,
    pub overrides: Vec<Override>,
    /// The `forja` binary that runs trials (default: this program).
    pub exe: Option<PathBuf>,
    /// Write the trial pipelines and stop (for a cluster scheduler to run them).
    pub prepare_only: bool,
}

/// What a sweep wrote.
pub struct SweepOutcome {
    pub results: Vec<TrialResult>,
    pub dir: PathBuf,
    pub best: Option<usize>,
}

/// `forja sweep FILE`: runs every trial, writes the table, the ranked report,
/// the plots and the best configuration as a pipeline file.
pub fn sweep(file: &Path, registry: &[&'static dyn DynStage], opts: &SweepOptions) -> Result<SweepOutcome> {
    let plan = load(file, registry, &opts.overrides)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| file.display().to_string())?;
    apply_overrides(&mut table, &opts.overrides)?;
    let raw_search = table.remove("search").ok_or_else(|| anyhow!("{}: no [search] section", file.display()))?;
    let mut spec: SearchSpec = raw_search.try_into().map_err(|e| anyhow!("{}: [search]: {e}", file.display()))?;
    if let Some(p) = opts.parallel {
        spec.parallel = p;
    }
    let (stage, _) = spec.metric_parts()?;
    anyhow::ensure!(plan.stages.iter().any(|s| s.name == stage), "[search] metric `{}`: no stage `{stage}`", spec.metric);
    for name in spec.params.keys() {
        let (st, rest) = name.split_once('.').ok_or_else(|| anyhow!("[search] param `{name}`: expected STAGE.PARAM"))?;
        anyhow::ensure!(plan.stages.iter().any(|s| s.name == st), "[search] param `{name}`: no stage `{st}`");
        anyhow::ensure!(!rest.is_empty(), "[search] param `{name}`: expected STAGE.PARAM");
    }
    let trials = trials(&spec)?;
    let dir = plan.out_dir.join("sweep");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let keep = needed_stages(&plan, stage);
    let parent = plan.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = crate::pipeline::lexical_clean(&std::fs::canonicalize(parent)?.join(relative_root(&table)));
    let exe = match &opts.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("locating the forja binary")?,
    };
    let mut runner = ProcessRunner::new(&spec, &dir, registry, &table, &base, &keep, exe)?;
    for t in &trials {
        runner.write_trial(t)?;
    }
    if opts.prepare_only {
        println!("[sweep] {} trial pipelines written under {}; run each with `forja run`", trials.len(), dir.display());
        return Ok(SweepOutcome { results: Vec::new(), dir, best: None });
    }
    println!(
        "[sweep] {}: {} trials ({:?}), metric {} ({}, {:?}), {} at once; trial pipelines under {}",
        plan.name,
        trials.len(),
        spec.method,
        spec.metric,
        spec.split,
        spec.goal,
        spec.parallel.max(1),
        dir.display()
    );
    let results = search(&spec, &trials, &mut runner)?;
    let best = best_trial(&spec, &results);
    write_outputs(&spec, &results, best, &dir, &runner)?;
    Ok(SweepOutcome { results, dir, best })
}
