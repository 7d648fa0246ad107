//! Runs a checked [`Plan`]: stages in order, each skipped when its cache key
//! (kind, parameters, input content hashes, seed, device, and the hash of the
//! code the stage runs) matches its last successful run and its outputs are intact.

use crate::launch::{run_ranks, RankedStage};
use crate::pipeline::{InputSource, Plan, PlannedStage};
use anyhow::{bail, Context, Result};
use forja_core::artifacts::Artifact;
use forja_core::hash::{hash_json, hash_path, program_version};
use forja_core::manifest::{HashedPath, RunManifest, StageRecord, StageStatus};
use forja_core::metric::{self, split};
use forja_core::stage::outputs;
use forja_core::stage::{StageCtx, StageInputs};
use forja_core::MetricRow;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a stage folder remembers of its last successful run.
#[derive(Debug, Serialize, Deserialize)]
struct StageState {
    key: String,
    outputs: BTreeMap<String, HashedPath>,
}

const STATE_FILE: &str = ".forja-stage.json";

/// Options of `forja run`.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Stages to rerun even if their key is unchanged.
    pub force: BTreeSet<String>,
    /// Local ranks per training stage (overrides the file's `[pipeline] nproc`).
    pub nproc: Option<usize>,
}

/// Runs the plan; returns the manifest (also written to `OUT/manifest.json`).
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<RunManifest> {
    for f in &opts.force {
        if !plan.stages.iter().any(|s| &s.name == f) {
            bail!("--force: no stage named `{f}`");
        }
    }
    std::fs::create_dir_all(&plan.out_dir).with_context(|| format!("creating {}", plan.out_dir.display()))?;
    let version = program_version();
    let mut manifest = RunManifest {
        pipeline: plan.name.clone(),
        pipeline_file: plan.file.display().to_string(),
        program_version: version.clone(),
        seed: plan.seed,
        device: plan.device.clone(),
        started_unix_s: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        stages: Vec::new(),
    };
    let manifest_path = plan.out_dir.join("manifest.json");
    for stage in &plan.stages {
        match run_one(plan, stage, opts) {
            Ok(r) => manifest.stages.push(r),
            Err(e) => {
                manifest.stages.push(StageRecord {
                    name: stage.name.clone(),
                    kind: stage.stage.kind().into(),
                    status: StageStatus::Failed,
                    key: String::new(),
                    params: stage.params.clone(),
                    params_hash: hash_json(&stage.params),
                    inputs: BTreeMap::new(),
                    outputs: BTreeMap::new(),
                    wall_s: 0.0,
                    error: Some(format!("{e:#}")),
                });
                manifest.save(&manifest_path)?;
                return Err(e.context(format!("stage `{}` ({}) failed", stage.name, stage.stage.kind())));
            }
        }
    }
    manifest.save(&manifest_path)?;
    collect_metrics(plan, &manifest)?;
    write_report(plan, &manifest)?;
    Ok(manifest)
}

fn stage_dir(plan: &Plan, name: &str) -> PathBuf {
    plan.out_dir.join(name)
}

fn resolve_inputs(plan: &Plan, stage: &PlannedStage) -> Result<StageInputs> {
    let mut inputs = StageInputs::default();
    for (name, sources) in &stage.inputs {
        let mut paths = Vec::new();
        for src in sources {
            match src {
                InputSource::Files(p) => paths.extend(p.iter().cloned()),
                InputSource::Output { stage: from, output } => {
                    let upstream = plan.stages.iter().find(|s| &s.name == from).context("upstream stage")?;
                    let path = upstream
                        .stage
                        .output_path(&stage_dir(plan, from), output)
                        .with_context(|| format!("stage `{from}` has no output `{output}`"))?;
                    paths.push(path);
                }
            }
        }
        inputs.0.insert(name.clone(), paths);
    }
    Ok(inputs)
}

fn run_one(plan: &Plan, stage: &PlannedStage, opts: &RunOptions) -> Result<StageRecord> {
    let inputs = resolve_inputs(plan, stage)?;
    let mut hashed_inputs = BTreeMap::new();
    for (name, paths) in &inputs.0 {
        for (i, p) in paths.iter().enumerate() {
            let h = HashedPath::of(p).with_context(|| format!("stage `{}`: input {}", stage.name, p.display()))?;
            let key = if paths.len() == 1 { name.clone() } else { format!("{name}[{i}]") };
            hashed_inputs.insert(key, h);
        }
    }
    let input_hashes: BTreeMap<&String, &String> = hashed_inputs.iter().map(|(k, v)| (k, &v.blake3)).collect();
    let nproc = if stage.stage.distributed() { opts.nproc.unwrap_or(plan.nproc).max(1) } else { 1 };
    let mut key_json = serde_json::json!({
        "kind": stage.stage.kind(),
        "params": stage.params,
        "inputs": input_hashes,
        "seed": plan.seed,
        "device": plan.device,
        // The code this stage runs (its crate and the workspace crates it uses):
        // rebuilding after an edit elsewhere keeps its results.
        "code": stage.stage.code_hash(),
    });
    if nproc > 1 {
        // Another global batch: another run.
        key_json["nproc"] = serde_json::json!(nproc);
    }
    let key = hash_json(&key_json);
    let dir = stage_dir(plan, &stage.name);
    let state_path = dir.join(STATE_FILE);
    let mut record = StageRecord {
        name: stage.name.clone(),
        kind: stage.stage.kind().into(),
        status: StageStatus::Skipped,
        key: key.clone(),
        params: stage.params.clone(),
        params_hash: hash_json(&stage.params),
        inputs: hashed_inputs,
        outputs: BTreeMap::new(),
        wall_s: 0.0,
        error: None,
    };
    if !opts.force.contains(&stage.name) {
        if let Some(outputs) = cached_outputs(&state_path, &key) {
            println!("[{}] skipped: inputs, parameters and code unchanged", stage.name);
            record.outputs = outputs;
            return Ok(record);
        }
    }
    if nproc > 1 {
        println!("[{}] running {} on {nproc} local ranks", stage.name, stage.stage.kind());
    } else {
        println!("[{}] running {}", stage.name, stage.stage.kind());
    }
    std::fs::create_dir_all(&dir)?;
    if state_path.exists() {
        std::fs::remove_file(&state_path)?;
    }
    let ctx = StageCtx {
        name: stage.name.clone(),
        seed: plan.seed,
        device: plan.device.clone(),
        config_hash: hash_json(&stage.params),
        code_hash: stage.stage.code_hash(),
    };
    let started = Instant::now();
    // Every stage's footprint (measured by the stage adapter) uses the pipeline's settings.
    let written = if nproc > 1 {
        let job = RankedStage {
            stage: stage.stage,
            params: &stage.params,
            inputs: &inputs,
            out_dir: &dir,
            ctx: &ctx,
            footprint: &plan.footprint,
        };
        run_ranks(&job, nproc)?;
        stage.stage.outputs().to_vec()
    } else {
        stage.stage.run_json(&stage.params, &inputs, &dir, &ctx, &plan.footprint)?
    };
    record.wall_s = started.elapsed().as_secs_f64();
    for out in written {
        record.outputs.insert(out.name.to_string(), HashedPath::of(&dir.join(out.path))?);
    }
    let state = StageState { key, outputs: record.outputs.clone() };
    forja_core::fsutil::atomic_write(&state_path, serde_json::to_string_pretty(&state)?.as_bytes())?;
    record.status = StageStatus::Ran;
    println!("[{}] done in {:.1}s", stage.name, record.wall_s);
    Ok(record)
}

/// The outputs of the last successful run, if its key matches and every output
/// still hashes as recorded.
fn cached_outputs(state_path: &Path, key: &str) -> Option<BTreeMap<String, HashedPath>> {
    let state: StageState = serde_json::from_str(&std::fs::read_to_string(state_path).ok()?).ok()?;
    if state.key != key {
        return None;
    }
    let intact = state.outputs.values().all(|o| hash_path(Path::new(&o.path)).map(|h| h == o.blake3).unwrap_or(false));
    intact.then_some(state.outputs)
}

/// Concatenates every stage's `metrics` output into `OUT/metrics.arrow`.
fn collect_metrics(plan: &Plan, manifest: &RunManifest) -> Result<()> {
    let mut rows = Vec::new();
    for rec in &manifest.stages {
        if let Some(m) = rec.outputs.get(outputs::METRICS.name) {
            rows.extend(MetricRow::read(Path::new(&m.path))?);
        }
    }
    MetricRow::write(&plan.out_dir.join("metrics.arrow"), "run", &plan.name, &rows)?;
    Ok(())
}

/// Every stage that validated as it trained (val `loss` rows at steps > 0),
/// side by side: architecture, steps, final and best validation loss, incidents.
fn trained_side_by_side(manifest: &RunManifest, rows: &[MetricRow]) -> String {
    let mut table = String::new();
    for s in &manifest.stages {
        let vals: Vec<&MetricRow> =
            rows.iter().filter(|m| m.stage == s.name && m.name == metric::LOSS && m.split == split::VAL && m.step > 0).collect();
        let (Some(last), Some(best)) = (vals.last(), vals.iter().min_by(|a, b| a.value.total_cmp(&b.value))) else { continue };
        let arch = match (s.kind.as_str(), s.params.get("architecture").and_then(|a| a.as_str())) {
            (_, Some(a)) => a.to_string(),
            ("finetune_classifier", None) => "bert classifier".into(),
            ("sft", None) if s.params.get("lora").is_some_and(|l| !l.is_null()) => "gpt (sft, lora)".into(),
            ("sft", None) => "gpt (sft)".into(),
            _ => "gpt".into(),
        };
        let size = s.params.get("model").map_or("-".to_string(), |m| m.to_string().replace('|', "\\|"));
        let incidents = rows.iter().filter(|m| m.stage == s.name && m.name == metric::INCIDENT).count();
        table += &format!(
            "| {} | {arch} | `{size}` | {} | {:.4} | {:.4} (step {}) | {incidents} |\n",
            s.name, last.step, last.value, best.value, best.step
        );
    }
    if table.is_empty() {
        return table;
    }
    "\n## Trained models side by side\n\n| stage | architecture | model | steps | final val loss | best val loss | incidents |\n|---|---|---|---|---|---|---|\n".to_string() + &table
}

/// Writes `OUT/report.md`: each stage's status and time, the last value of
/// each loss, perplexity, accuracy, macro F1, calibration, disparity, exact
/// match and cost metric, the trained models side by side and the footprint;
/// then the report card `OUT/report.html`.
fn write_report(plan: &Plan, manifest: &RunManifest) -> Result<()> {
    let mut r = format!("# Run `{}`\n\nPipeline: `{}`  \nProgram: `{}`\n\n", plan.name, plan.file.display(), manifest.program_version);
    r += "| stage | kind | status | wall s |\n|---|---|---|---|\n";
    for s in &manifest.stages {
        r += &format!("| {} | {} | {:?} | {:.1} |\n", s.name, s.kind, s.status, s.wall_s);
    }
    let rows = MetricRow::read(&plan.out_dir.join("metrics.arrow"))?;
    let mut last: BTreeMap<(String, String, String), (u64, f64)> = BTreeMap::new();
    let reported = [
        metric::LOSS,
        metric::PERPLEXITY,
        metric::ACCURACY,
        metric::MACRO_F1,
        metric::ECE,
        metric::MAX_DISPARITY,
        metric::EXACT_MATCH,
        metric::WALL_S,
        metric::ENERGY_WH,
        metric::CO2E_G,
    ];
    for m in rows.iter().filter(|m| reported.contains(&m.name.as_str())) {
        last.insert((m.stage.clone(), m.name.clone(), m.split.clone()), (m.step, m.value));
    }
    let mut final_metrics = "\n## Final metrics\n\n| stage | metric | split | step | value |\n|---|---|---|---|---|\n".to_string();
    for ((stage, name, split), (step, value)) in &last {
        final_metrics += &format!("| {stage} | {name} | {split} | {step} | {value:.4} |\n");
    }
    r += &final_metrics;
    r += &trained_side_by_side(manifest, &rows);
    r += &crate::card::footprint_markdown(plan, manifest);
    for s in &manifest.stages {
        if let Some(rep) = s.outputs.get(outputs::REPORT.name) {
            r += &format!("\nStage report ({}): `{}`\n", s.name, rep.path);
        }
        if let Some(plot) = s.outputs.get(outputs::PLOT.name) {
            r += &format!("\nLoss curves ({}): `{}`\n", s.name, plot.path);
        }
    }
    forja_core::fsutil::atomic_write(&plan.out_dir.join("report.md"), r.as_bytes())?;
    crate::card::write(plan, manifest, &final_metrics)?;
    Ok(())
}
