//! Trials as `forja run` processes: each trial's pipeline file (the base with its
//! parameters set and only the stages the metric needs), the processes, their
//! validation curves read from the stage's checkpoint, and `result.json` for resume.

use super::report::fmt_params;
use super::schedule::{Progress, Runner};
use super::spec::{SearchSpec, Status, Trial, TrialResult};
use crate::pipeline::{parse, InputSource, Override, Plan};
use anyhow::{anyhow, Context, Result};
use forja_core::artifacts::Artifact;
use forja_core::stage::DynStage;
use forja_core::MetricRow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn relative_root(table: &toml::Table) -> PathBuf {
    PathBuf::from(table.get("pipeline").and_then(|p| p.get("root")).and_then(|r| r.as_str()).unwrap_or("."))
}

pub(super) fn apply_overrides(table: &mut toml::Table, overrides: &[Override]) -> Result<()> {
    for o in overrides {
        let stage = stage_table(table, &o.stage)?;
        let params = stage.entry("params").or_insert_with(|| toml::Value::Table(Default::default()));
        let params = params.as_table_mut().ok_or_else(|| anyhow!("stage `{}`: params is not a table", o.stage))?;
        crate::pipeline::set_path(params, &o.path, o.value.clone());
    }
    Ok(())
}

/// Sets a trial's `STAGE.PARAM.PATH = value` parameters in a pipeline table.
pub(super) fn set_params(table: &mut toml::Table, params: &BTreeMap<String, toml::Value>) -> Result<()> {
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
pub(super) fn needed_stages(plan: &Plan, target: &str) -> BTreeSet<String> {
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
pub(super) fn relative(path: &Path, from: &Path) -> PathBuf {
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
pub(super) struct ProcessRunner<'a> {
    spec: &'a SearchSpec,
    dir: PathBuf,
    pub(super) registry: &'a [&'static dyn DynStage],
    pub(super) table: &'a toml::Table,
    pub(super) base: PathBuf,
    keep: &'a BTreeSet<String>,
    exe: PathBuf,
    children: BTreeMap<usize, std::process::Child>,
    keys: BTreeMap<usize, String>,
}

impl<'a> ProcessRunner<'a> {
    pub(super) fn new(
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

    pub(super) fn write_trial(&mut self, t: &Trial) -> Result<()> {
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
