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

use crate::pipeline::{load, parse, InputSource, Override, Plan};
use anyhow::{anyhow, bail, Context, Result};
use forja_core::artifacts::Artifact;
use forja_core::stage::DynStage;
use forja_core::MetricRow;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    fn metric_parts(&self) -> Result<(&str, &str)> {
        self.metric.split_once('.').ok_or_else(|| anyhow!("[search] metric `{}`: expected STAGE.METRIC", self.metric))
    }

    /// Whether `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        match self.goal {
            Goal::Minimize => a < b,
            Goal::Maximize => a > b,
        }
    }

    fn best_of(&self, values: impl Iterator<Item = f64>) -> Option<f64> {
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

/// The configurations of a search, in trial order.
pub fn trials(spec: &SearchSpec) -> Result<Vec<Trial>> {
    anyhow::ensure!(!spec.params.is_empty(), "[search] has no params");
    let configs: Vec<BTreeMap<String, toml::Value>> = match spec.method {
        Method::Grid => {
            let mut configs = vec![BTreeMap::new()];
            for (name, domain) in &spec.params {
                let Domain::Values(values) = domain else {
                    bail!("[search] grid needs `values = [...]` for every parameter; `{name}` has a distribution");
                };
                anyhow::ensure!(!values.is_empty(), "[search] `{name}` has no values");
                configs = configs
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.insert(name.clone(), v.clone());
                            c
                        })
                    })
                    .collect();
            }
            configs
        }
        Method::Random | Method::Asha => {
            anyhow::ensure!(spec.trials > 0, "[search] {:?} needs `trials` > 0", spec.method);
            let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
            (0..spec.trials)
                .map(|_| spec.params.iter().map(|(n, d)| Ok((n.clone(), draw(n, d, &mut rng)?))).collect::<Result<_>>())
                .collect::<Result<_>>()?
        }
    };
    Ok(configs.into_iter().enumerate().map(|(id, params)| Trial { id, params }).collect())
}

fn draw(name: &str, d: &Domain, rng: &mut ChaCha8Rng) -> Result<toml::Value> {
    Ok(match d {
        Domain::Values(v) | Domain::Choice(v) => {
            anyhow::ensure!(!v.is_empty(), "[search] `{name}` has no values");
            v[rng.random_range(0..v.len())].clone()
        }
        Domain::Uniform([lo, hi]) => {
            anyhow::ensure!(lo <= hi, "[search] `{name}`: uniform needs lo ≤ hi");
            toml::Value::Float(lo + rng.random::<f64>() * (hi - lo))
        }
        Domain::LogUniform([lo, hi]) => {
            anyhow::ensure!(*lo > 0.0 && lo <= hi, "[search] `{name}`: log_uniform needs 0 < lo ≤ hi");
            toml::Value::Float((lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp())
        }
        Domain::IntUniform([lo, hi]) => {
            anyhow::ensure!(lo <= hi, "[search] `{name}`: int_uniform needs lo ≤ hi");
            toml::Value::Integer(rng.random_range(*lo..=*hi))
        }
    })
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
    fn label(&self) -> String {
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

/// What the scheduler sees of a running trial.
pub struct Progress {
    /// `(step, value)` of the validation curve so far, in step order.
    pub curve: Vec<(u64, f64)>,
    /// `Some` once the trial has ended on its own: `Ok` or the error.
    pub done: Option<Result<(), String>>,
}

/// Runs trials: in processes (the product) or a simulation (tests).
pub trait Runner {
    /// A result of an earlier sweep for this trial, if still valid.
    fn cached(&mut self, _t: &Trial) -> Result<Option<TrialResult>> {
        Ok(None)
    }
    fn start(&mut self, t: &Trial) -> Result<()>;
    fn poll(&mut self, id: usize) -> Result<Progress>;
    /// Stops a running trial (its partial results stay on disk).
    fn stop(&mut self, id: usize) -> Result<()>;
    /// Called with each final result (the process runner writes `result.json`).
    fn record(&mut self, _r: &TrialResult) -> Result<()> {
        Ok(())
    }
    /// Waits a little between polls.
    fn tick(&mut self) {}
    /// The key of a trial (a hash of what it runs).
    fn key(&self, _t: &Trial) -> String {
        String::new()
    }
}

/// ASHA's record of the values seen at each rung.
struct Rungs {
    steps: Vec<u64>,
    seen: Vec<Vec<f64>>,
}

impl Rungs {
    fn new(cfg: &AshaConfig, max_rungs: usize) -> Self {
        let eta = cfg.reduction.max(2);
        let steps: Vec<u64> = (0..max_rungs as u32).map(|k| cfg.min_steps.max(1).saturating_mul(eta.saturating_pow(k))).collect();
        Self { seen: vec![Vec::new(); steps.len()], steps }
    }

    /// Records `value` at rung `k`; whether the trial may go on (in the top
    /// 1/η of the values recorded there, or fewer than η recorded yet).
    fn promote(&mut self, k: usize, value: f64, spec: &SearchSpec) -> bool {
        self.seen[k].push(value);
        let eta = spec.asha.reduction.max(2) as usize;
        let seen = &self.seen[k];
        if seen.len() < eta {
            return true;
        }
        let better = seen.iter().filter(|&&v| spec.better(v, value)).count();
        better < seen.len() / eta
    }
}

/// Runs the search with `runner`; results in trial order.
pub fn search(spec: &SearchSpec, trials: &[Trial], runner: &mut dyn Runner) -> Result<Vec<TrialResult>> {
    let mut results: BTreeMap<usize, TrialResult> = BTreeMap::new();
    let mut rungs = Rungs::new(&spec.asha, 16);
    // Per running trial: start time and the values recorded at the rungs it reached.
    let mut running: BTreeMap<usize, (Instant, Vec<f64>)> = BTreeMap::new();
    let mut queue: std::collections::VecDeque<&Trial> = trials.iter().collect();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < spec.parallel.max(1) {
            let Some(t) = queue.pop_front() else { break };
            if let Some(mut r) = runner.cached(t)? {
                println!("[sweep] trial {} reused: {} ({})", t.id, fmt_value(r.value), r.status.label());
                r.reused = true;
                replay_rungs(spec, &mut rungs, &r);
                results.insert(t.id, r);
                continue;
            }
            println!("[sweep] trial {} started: {}", t.id, fmt_params(&t.params));
            runner.start(t)?;
            running.insert(t.id, (Instant::now(), Vec::new()));
        }
        let ids: Vec<usize> = running.keys().copied().collect();
        for id in ids {
            let progress = runner.poll(id)?;
            let (started, mut rung_values) = running.remove(&id).context("running trial")?;
            let trial = &trials.iter().find(|t| t.id == id).context("running trial")?.clone();
            let key = runner.key(trial);
            let mut rung = rung_values.len();
            let mut stopped_at = None;
            if spec.method == Method::Asha {
                while rung < rungs.steps.len() {
                    let at = rungs.steps[rung];
                    // The rung is reached when the curve has a point at or past it
                    // (and the trial has not simply finished before it); its value is
                    // the best up to the rung, or the first point past it when the
                    // curve has none before (evaluations sparser than the rungs).
                    let Some(first_past) = progress.curve.iter().find(|p| p.0 >= at) else { break };
                    let best = spec.best_of(progress.curve.iter().filter(|p| p.0 <= at).map(|p| p.1)).unwrap_or(first_past.1);
                    let go_on = rungs.promote(rung, best, spec);
                    rung_values.push(best);
                    rung += 1;
                    if !go_on {
                        stopped_at = Some(at);
                        break;
                    }
                }
            }
            let finish = |status: Status, curve: &[(u64, f64)]| TrialResult {
                trial: trial.clone(),
                status,
                value: spec.best_of(curve.iter().map(|p| p.1)).unwrap_or(f64::NAN),
                steps: curve.last().map_or(0, |p| p.0),
                wall_s: started.elapsed().as_secs_f64(),
                key: key.clone(),
                rung_values: rung_values.clone(),
                reused: false,
            };
            // A failure is reported as such even when a rung would have stopped the trial.
            let result = match (progress.done, stopped_at) {
                (Some(Err(error)), _) => Some(finish(Status::Failed { error }, &progress.curve)),
                (_, Some(at)) => {
                    runner.stop(id)?;
                    Some(finish(Status::Stopped { rung_steps: at }, &progress.curve))
                }
                (Some(Ok(())), None) => Some(finish(Status::Completed, &progress.curve)),
                (None, None) => None,
            };
            match result {
                Some(r) => {
                    println!("[sweep] trial {id} {}: {} after {} steps", r.status.label(), fmt_value(r.value), r.steps);
                    runner.record(&r)?;
                    results.insert(id, r);
                }
                None => {
                    running.insert(id, (started, rung_values));
                }
            }
        }
        if !running.is_empty() {
            runner.tick();
        }
    }
    Ok(results.into_values().collect())
}

/// A reused trial's values go into the rungs it passed, so later decisions
/// are those of the uninterrupted sweep.
fn replay_rungs(spec: &SearchSpec, rungs: &mut Rungs, r: &TrialResult) {
    if spec.method != Method::Asha {
        return;
    }
    for (k, &v) in r.rung_values.iter().enumerate().take(rungs.seen.len()) {
        rungs.seen[k].push(v);
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "no value".into()
    }
}

fn fmt_params(p: &BTreeMap<String, toml::Value>) -> String {
    p.iter().map(|(k, v)| format!("{k}={}", fmt_toml(v))).collect::<Vec<_>>().join(", ")
}

fn fmt_toml(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) => format!("{f:.4e}").replace("e0", ""),
        other => other.to_string(),
    }
}

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

/// Index (into `results`) of the best finished trial.
pub fn best_trial(spec: &SearchSpec, results: &[TrialResult]) -> Option<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.value.is_finite() && !matches!(r.status, Status::Failed { .. }))
        .fold(None, |best: Option<(usize, f64)>, (i, r)| match best {
            Some((_, b)) if !spec.better(r.value, b) => best,
            _ => Some((i, r.value)),
        })
        .map(|(i, _)| i)
}

fn relative_root(table: &toml::Table) -> PathBuf {
    PathBuf::from(table.get("pipeline").and_then(|p| p.get("root")).and_then(|r| r.as_str()).unwrap_or("."))
}

fn apply_overrides(table: &mut toml::Table, overrides: &[Override]) -> Result<()> {
    for o in overrides {
        let stage = stage_table(table, &o.stage)?;
        let params = stage.entry("params").or_insert_with(|| toml::Value::Table(Default::default()));
        let params = params.as_table_mut().ok_or_else(|| anyhow!("stage `{}`: params is not a table", o.stage))?;
        crate::pipeline::set_path(params, &o.path, o.value.clone());
    }
    Ok(())
}

/// Sets a trial's `STAGE.PARAM.PATH = value` parameters in a pipeline table.
fn set_params(table: &mut toml::Table, params: &BTreeMap<String, toml::Value>) -> Result<()> {
    let overrides: Vec<Override> = params
        .iter()
        .map(|(path, value)| {
            let (stage, rest) = path.split_once('.').context("param path")?;
            Ok(Override { stage: stage.into(), path: rest.split('.').map(str::to_string).collect(), value: value.clone() })
        })
        .collect::<Result<_>>()?;
    apply_overrides(table, &overrides)
}

fn stage_table<'a>(table: &'a mut toml::Table, name: &str) -> Result<&'a mut toml::Table> {
    table
        .get_mut("stage")
        .and_then(|s| s.as_array_mut())
        .and_then(|stages| {
            stages.iter_mut().filter_map(|s| s.as_table_mut()).find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .ok_or_else(|| anyhow!("no stage named `{name}`"))
}

/// `target` and every stage it reads from, directly or not.
fn needed_stages(plan: &Plan, target: &str) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    let mut todo = vec![target.to_string()];
    while let Some(name) = todo.pop() {
        if !keep.insert(name.clone()) {
            continue;
        }
        if let Some(s) = plan.stages.iter().find(|s| s.name == name) {
            for src in s.inputs.values().flatten() {
                if let InputSource::Output { stage, .. } = src {
                    todo.push(stage.clone());
                }
            }
        }
    }
    keep
}

/// `path` relative to `from` (both absolute).
fn relative(path: &Path, from: &Path) -> PathBuf {
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Trials as `forja run` processes.
struct ProcessRunner<'a> {
    spec: &'a SearchSpec,
    dir: PathBuf,
    registry: &'a [&'static dyn DynStage],
    table: &'a toml::Table,
    base: PathBuf,
    keep: &'a BTreeSet<String>,
    exe: PathBuf,
    children: BTreeMap<usize, std::process::Child>,
    keys: BTreeMap<usize, String>,
}

impl<'a> ProcessRunner<'a> {
    fn new(
        spec: &'a SearchSpec,
        dir: &Path,
        registry: &'a [&'static dyn DynStage],
        table: &'a toml::Table,
        base: &Path,
        keep: &'a BTreeSet<String>,
        exe: PathBuf,
    ) -> Result<Self> {
        Ok(Self {
            spec,
            dir: std::fs::canonicalize(dir)?,
            registry,
            table,
            base: base.to_path_buf(),
            keep,
            exe,
            children: BTreeMap::new(),
            keys: BTreeMap::new(),
        })
    }

    fn trial_dir(&self, id: usize) -> PathBuf {
        self.dir.join(format!("trial-{id:04}"))
    }

    /// The trial's pipeline: the base with its parameters set, the stages the
    /// metric needs, paths relative to the trial's folder, output in `run/`.
    fn trial_pipeline(&self, t: &Trial, name: &str) -> Result<String> {
        let mut table = self.table.clone();
        let tdir = self.trial_dir(t.id);
        if let Some(stages) = table.get_mut("stage").and_then(|s| s.as_array_mut()) {
            stages.retain(|s| s.get("name").and_then(|n| n.as_str()).is_some_and(|n| self.keep.contains(n)));
        }
        set_params(&mut table, &t.params)?;
        let header = table.entry("pipeline").or_insert_with(|| toml::Value::Table(Default::default()));
        let header = header.as_table_mut().context("[pipeline] is not a table")?;
        header.insert("name".into(), toml::Value::String(format!("{name}-trial-{:04}", t.id)));
        header.insert("root".into(), toml::Value::String(relative(&self.base, &tdir).display().to_string()));
        header.insert("out_dir".into(), toml::Value::String(relative(&tdir.join("run"), &self.base).display().to_string()));
        let comment = format!(
            "# Trial {} of a `forja sweep`: {}\n# Runs on its own: forja run {}\n\n",
            t.id,
            fmt_params(&t.params),
            tdir.join("pipeline.toml").display()
        );
        Ok(comment + &toml::to_string(&table)?)
    }

    fn write_trial(&mut self, t: &Trial) -> Result<()> {
        let name = self.table.get("pipeline").and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or("sweep").to_string();
        let text = self.trial_pipeline(t, &name)?;
        let tdir = self.trial_dir(t.id);
        std::fs::create_dir_all(&tdir)?;
        let file = tdir.join("pipeline.toml");
        forja_core::fsutil::atomic_write(&file, text.as_bytes())?;
        parse(&file, &text, self.registry, &[]).with_context(|| format!("trial {} ({})", t.id, fmt_params(&t.params)))?;
        // What decides the trial's result: its pipeline, the metric and ASHA's
        // rungs (not how many trials run at once).
        let s = self.spec;
        let decides = serde_json::json!({ "pipeline": text, "metric": s.metric, "split": s.split, "goal": s.goal, "method": s.method, "asha": s.asha });
        self.keys.insert(t.id, forja_core::hash::hash_json(&decides));
        Ok(())
    }

    /// The validation curve of the metric: the finished run's metrics, else the stage's checkpoint.
    fn curve(&self, id: usize) -> Vec<(u64, f64)> {
        let Ok((stage, metric)) = self.spec.metric_parts() else { return Vec::new() };
        let run = self.trial_dir(id).join("run");
        let done = run.join("metrics.arrow");
        let partial = run.join(stage).join(forja_train::engine::CHECKPOINT_DIR).join(forja_train::engine::METRICS_FILE);
        let rows = MetricRow::read(&done).or_else(|_| MetricRow::read(&partial)).unwrap_or_default();
        let mut curve: Vec<(u64, f64)> =
            rows.iter().filter(|r| r.stage == stage && r.name == metric && r.split == self.spec.split).map(|r| (r.step, r.value)).collect();
        curve.sort_by_key(|p| p.0);
        curve.dedup_by_key(|p| p.0);
        curve
    }
}

impl Runner for ProcessRunner<'_> {
    fn cached(&mut self, t: &Trial) -> Result<Option<TrialResult>> {
        let path = self.trial_dir(t.id).join("result.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        let r: TrialResult = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        Ok((Some(&r.key) == self.keys.get(&t.id) && !matches!(r.status, Status::Failed { .. })).then_some(r))
    }

    fn start(&mut self, t: &Trial) -> Result<()> {
        let tdir = self.trial_dir(t.id);
        // Nothing of an earlier run may pass for this one's curve: the run-level
        // metrics go, and the whole run folder when it belonged to another
        // configuration (the same configuration's checkpoint is kept: the stage resumes).
        let run = tdir.join("run");
        let key_file = run.join(".trial-key");
        let key = self.key(t);
        if run.exists() && std::fs::read_to_string(&key_file).ok().as_deref() != Some(key.as_str()) {
            std::fs::remove_dir_all(&run).with_context(|| format!("clearing {}", run.display()))?;
        }
        for stale in [run.join("metrics.arrow"), tdir.join("result.json")] {
            if stale.exists() {
                std::fs::remove_file(&stale)?;
            }
        }
        std::fs::create_dir_all(&run)?;
        forja_core::fsutil::atomic_write(&key_file, key.as_bytes())?;
        let log = std::fs::File::create(tdir.join("log.txt"))?;
        let exe = &self.exe;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / self.spec.parallel.max(1)).max(1);
        let child = std::process::Command::new(exe)
            .arg("run")
            .arg(tdir.join("pipeline.toml"))
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting trial {}", t.id))?;
        self.children.insert(t.id, child);
        Ok(())
    }

    fn poll(&mut self, id: usize) -> Result<Progress> {
        let child = self.children.get_mut(&id).context("polling a trial that is not running")?;
        let done = child.try_wait()?.map(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(format!("forja run exited with {status}; see {}", self.trial_dir(id).join("log.txt").display()))
            }
        });
        Ok(Progress { curve: self.curve(id), done })
    }

    fn stop(&mut self, id: usize) -> Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            let _ignored = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    fn record(&mut self, r: &TrialResult) -> Result<()> {
        self.children.remove(&r.trial.id);
        let path = self.trial_dir(r.trial.id).join("result.json");
        forja_core::fsutil::atomic_write(&path, serde_json::to_string_pretty(r)?.as_bytes())?;
        Ok(())
    }

    fn tick(&mut self) {
        std::thread::sleep(Duration::from_millis(250));
    }

    fn key(&self, t: &Trial) -> String {
        self.keys.get(&t.id).cloned().unwrap_or_default()
    }
}

impl Drop for ProcessRunner<'_> {
    /// A sweep that ends early (an error) takes its running trials with it.
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
    }
}

/// `trials.arrow`, `report.md`, one plot per parameter, `best.toml`.
fn write_outputs(spec: &SearchSpec, results: &[TrialResult], best: Option<usize>, dir: &Path, runner: &ProcessRunner) -> Result<()> {
    write_table(&dir.join("trials.arrow"), spec, results)?;
    let mut plots = Vec::new();
    for name in spec.params.keys() {
        let log = matches!(spec.params[name], Domain::LogUniform(_));
        let points: Vec<(f64, f64)> = results
            .iter()
            .map(|r| (numeric(r.trial.params.get(name)).map_or(f64::NAN, |x| if log { x.log10() } else { x }), r.value))
            .collect();
        let x_label = if log { format!("log10({name})") } else { name.clone() };
        if let Some(svg) =
            forja_core::plot::scatter_chart(&format!("{} against {name}", spec.metric), &x_label, &spec.metric, &points, best)
        {
            let file = format!("{}.svg", name.replace(['.', '/'], "_"));
            forja_core::fsutil::atomic_write(&dir.join(&file), svg.as_bytes())?;
            plots.push(file);
        }
    }
    let best_file = match best {
        Some(i) => {
            let t = &results[i].trial;
            let name = runner.table.get("pipeline").and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or("sweep");
            let mut table = runner.table.clone();
            set_params(&mut table, &t.params)?;
            if let Some(h) = table.get_mut("pipeline").and_then(|p| p.as_table_mut()) {
                h.insert("name".into(), toml::Value::String(format!("{name}-best")));
                h.insert("root".into(), toml::Value::String(relative(&runner.base, dir).display().to_string()));
                h.remove("out_dir");
            }
            let text = format!(
                "# The best configuration of `forja sweep` (trial {}, {} = {:.6}): {}\n\n{}",
                t.id,
                spec.metric,
                results[i].value,
                fmt_params(&t.params),
                toml::to_string(&table)?
            );
            let file = dir.join("best.toml");
            parse(&file, &text, runner.registry, &[])?;
            forja_core::fsutil::atomic_write(&file, text.as_bytes())?;
            Some(file)
        }
        None => None,
    };
    let report = report_md(spec, results, best, &plots, best_file.as_deref());
    forja_core::fsutil::atomic_write(&dir.join("report.md"), report.as_bytes())?;
    Ok(())
}

fn numeric(v: Option<&toml::Value>) -> Option<f64> {
    match v? {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Boolean(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The ranked Markdown table.
pub fn report_md(spec: &SearchSpec, results: &[TrialResult], best: Option<usize>, plots: &[String], best_file: Option<&Path>) -> String {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (results[a].value, results[b].value);
        match (x.is_finite(), y.is_finite()) {
            (true, true) if spec.better(x, y) => std::cmp::Ordering::Less,
            (true, true) if spec.better(y, x) => std::cmp::Ordering::Greater,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => a.cmp(&b),
        }
    });
    let names: Vec<&String> = spec.params.keys().collect();
    let total_steps: u64 = results.iter().map(|r| r.steps).sum();
    let mut md = format!(
        "# Sweep\n\nMethod {:?}; metric `{}` ({} split, {:?}; a trial's value is the best along its validation curve); {} trials, {} training steps in all.\n\n",
        spec.method,
        spec.metric,
        spec.split,
        spec.goal,
        results.len(),
        total_steps
    );
    md += &format!(
        "| rank | trial | {} | {} | steps | status | wall s |\n",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" | "),
        spec.metric
    );
    md += &format!("|---|---|{}---|---|---|---|\n", "---|".repeat(names.len()));
    for (rank, &i) in order.iter().enumerate() {
        let r = &results[i];
        let vals: Vec<String> = names.iter().map(|n| r.trial.params.get(*n).map_or("-".into(), fmt_toml)).collect();
        let mark = if Some(i) == best { " **best**" } else { "" };
        let reused = if r.reused { " (reused)" } else { "" };
        md += &format!(
            "| {} | {}{mark} | {} | {} | {} | {}{reused} | {:.1} |\n",
            rank + 1,
            r.trial.id,
            vals.join(" | "),
            fmt_value(r.value),
            r.steps,
            r.status.label(),
            r.wall_s
        );
    }
    for r in results {
        if let Status::Failed { error } = &r.status {
            md += &format!("\nTrial {} failed: {error}\n", r.trial.id);
        }
    }
    if let Some(f) = best_file {
        md += &format!("\nBest configuration, runnable: `forja run {}`\n", f.display());
    }
    md += "\n";
    for p in plots {
        md += &format!("![{p}]({p})\n\n");
    }
    md
}

/// `trials.arrow`: one row per trial; a column per parameter (float when
/// every value is a number, else text), the value, steps, status, time, and
/// the parameters as JSON.
fn write_table(path: &Path, spec: &SearchSpec, results: &[TrialResult]) -> Result<()> {
    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut fields = vec![Field::new("trial", DataType::UInt64, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(results.iter().map(|r| r.trial.id as u64)))];
    for name in spec.params.keys() {
        let values: Vec<Option<&toml::Value>> = results.iter().map(|r| r.trial.params.get(name)).collect();
        if values.iter().all(|v| numeric(*v).is_some()) {
            fields.push(Field::new(format!("param.{name}"), DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from(values.iter().map(|v| numeric(*v)).collect::<Vec<_>>())));
        } else {
            fields.push(Field::new(format!("param.{name}"), DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(values.iter().map(|v| v.map(fmt_toml)).collect::<Vec<_>>())));
        }
    }
    fields.push(Field::new("value", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from_iter_values(results.iter().map(|r| r.value))));
    fields.push(Field::new("steps", DataType::UInt64, false));
    cols.push(Arc::new(UInt64Array::from_iter_values(results.iter().map(|r| r.steps))));
    fields.push(Field::new("status", DataType::Utf8, false));
    cols.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| r.status.label()))));
    fields.push(Field::new("wall_s", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from_iter_values(results.iter().map(|r| r.wall_s))));
    fields.push(Field::new("params", DataType::Utf8, false));
    cols.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| serde_json::to_string(&r.trial.params).unwrap_or_default()))));
    let mut meta = std::collections::HashMap::new();
    meta.insert("forja.kind".to_string(), "trials".to_string());
    meta.insert("forja.metric".to_string(), spec.metric.clone());
    let schema = Arc::new(Schema::new(fields).with_metadata(meta));
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    forja_core::fsutil::atomic_write_with(path, |w| {
        let to_io = |e: arrow_schema::ArrowError| std::io::Error::other(e.to_string());
        let mut writer = arrow_ipc::writer::FileWriter::try_new(w, &schema).map_err(to_io)?;
        writer.write(&batch).map_err(to_io)?;
        writer.finish().map_err(to_io)
    })
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
