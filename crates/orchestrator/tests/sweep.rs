#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The search strategies on a synthetic objective with a known best, and
//! `forja sweep` end to end on a tiny pipeline (trials as processes, resume).

use forja::sweep::{best_trial, search, trials, Domain, Method, Progress, Runner, SearchSpec, Status, Trial, TrialResult};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Final value of a configuration: best at lr = 10^-2.5, weight decay 0.1.
fn objective(t: &Trial) -> f64 {
    let lr = t.params["lm.lr"].as_float().unwrap();
    let wd = t.params["lm.wd"].as_float().unwrap();
    (lr.log10() + 2.5).powi(2) + (wd - 0.1).powi(2)
}

/// A validation curve that falls towards the objective: every poll is 100
/// more steps, up to 1000.
struct Simulated {
    steps: BTreeMap<usize, u64>,
    trials: BTreeMap<usize, Trial>,
    started: Vec<usize>,
    cached: BTreeMap<usize, TrialResult>,
}

impl Simulated {
    fn new(trials: &[Trial]) -> Self {
        Self {
            steps: BTreeMap::new(),
            trials: trials.iter().map(|t| (t.id, t.clone())).collect(),
            started: Vec::new(),
            cached: BTreeMap::new(),
        }
    }
}

impl Runner for Simulated {
    fn cached(&mut self, t: &Trial) -> anyhow::Result<Option<TrialResult>> {
        Ok(self.cached.get(&t.id).cloned())
    }
    fn start(&mut self, t: &Trial) -> anyhow::Result<()> {
        self.started.push(t.id);
        self.steps.insert(t.id, 0);
        Ok(())
    }
    fn poll(&mut self, id: usize) -> anyhow::Result<Progress> {
        let s = self.steps.get_mut(&id).unwrap();
        *s += 100;
        let f = objective(&self.trials[&id]);
        let curve = (1..=*s / 100).map(|k| (k * 100, f + 1.0 / (1.0 + k as f64))).collect();
        Ok(Progress { curve, done: (*s >= 1000).then_some(Ok(())) })
    }
    fn stop(&mut self, id: usize) -> anyhow::Result<()> {
        self.steps.remove(&id);
        Ok(())
    }
}

fn spec(method: Method) -> SearchSpec {
    let mut params = BTreeMap::new();
    let (lr, wd) = match method {
        Method::Grid => (
            Domain::Values(vec![1e-4, 1e-3, 10f64.powf(-2.5), 1e-2].into_iter().map(toml::Value::Float).collect()),
            Domain::Values(vec![0.0, 0.1, 0.3].into_iter().map(toml::Value::Float).collect()),
        ),
        _ => (Domain::LogUniform([1e-4, 1e-1]), Domain::Uniform([0.0, 0.3])),
    };
    params.insert("lm.lr".to_string(), lr);
    params.insert("lm.wd".to_string(), wd);
    SearchSpec {
        method,
        trials: 27,
        metric: "lm.loss".into(),
        split: "val".into(),
        goal: forja::sweep::Goal::Minimize,
        parallel: 1,
        seed: 7,
        params,
        asha: forja::sweep::AshaConfig { min_steps: 100, reduction: 3 },
    }
}

fn run(spec: &SearchSpec) -> (Vec<TrialResult>, Vec<Trial>) {
    let ts = trials(spec).unwrap();
    let mut runner = Simulated::new(&ts);
    (search(spec, &ts, &mut runner).unwrap(), ts)
}

#[test]
fn grid_search_finds_the_known_best() {
    let s = spec(Method::Grid);
    let (results, ts) = run(&s);
    assert_eq!(ts.len(), 12, "4 × 3 combinations");
    let best = &results[best_trial(&s, &results).unwrap()];
    assert!((best.trial.params["lm.lr"].as_float().unwrap() - 10f64.powf(-2.5)).abs() < 1e-12);
    assert!((best.trial.params["lm.wd"].as_float().unwrap() - 0.1).abs() < 1e-12);
    assert!(results.iter().all(|r| r.status == Status::Completed && r.steps == 1000));
}

#[test]
fn random_search_and_asha_find_the_same_best_asha_with_fewer_steps() {
    let random = spec(Method::Random);
    let (r_results, r_trials) = run(&random);
    let asha = spec(Method::Asha);
    let (a_results, a_trials) = run(&asha);
    assert_eq!(r_trials, a_trials, "same seed, same configurations");
    let truth = r_trials.iter().map(objective).fold(f64::INFINITY, f64::min);
    let rb = &r_results[best_trial(&random, &r_results).unwrap()];
    let ab = &a_results[best_trial(&asha, &a_results).unwrap()];
    assert!((objective(&rb.trial) - truth).abs() < 1e-12, "random search returns the best configuration it drew");
    assert_eq!(ab.trial.id, rb.trial.id, "ASHA keeps the best configuration running to the end");
    assert_eq!(ab.status, Status::Completed);
    assert!(objective(&rb.trial) < 0.05, "27 draws come near the optimum: {}", objective(&rb.trial));
    let (r_steps, a_steps): (u64, u64) = (r_results.iter().map(|r| r.steps).sum(), a_results.iter().map(|r| r.steps).sum());
    let stopped = a_results.iter().filter(|r| matches!(r.status, Status::Stopped { .. })).count();
    assert!(stopped >= 10, "ASHA stops poor trials early: {stopped}");
    assert!(a_steps * 2 < r_steps, "ASHA trains {a_steps} steps in all, random search {r_steps}");
}

#[test]
fn a_resumed_search_runs_no_finished_trial_again() {
    let s = spec(Method::Asha);
    let ts = trials(&s).unwrap();
    let mut first = Simulated::new(&ts);
    let full = search(&s, &ts, &mut first).unwrap();
    // The first 10 finished before an interruption.
    let mut again = Simulated::new(&ts);
    again.cached = full.iter().take(10).map(|r| (r.trial.id, r.clone())).collect();
    let resumed = search(&s, &ts, &mut again).unwrap();
    let started: BTreeSet<usize> = again.started.iter().copied().collect();
    assert!(started.iter().all(|id| *id >= 10), "no finished trial ran again: {started:?}");
    assert_eq!(started.len(), ts.len() - 10);
    let strip = |rs: &[TrialResult]| rs.iter().map(|r| (r.trial.id, r.status.clone(), r.steps)).collect::<Vec<_>>();
    assert_eq!(strip(&resumed), strip(&full), "the resumed sweep decides as the uninterrupted one");
}

fn fixture_text() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tinyshakespeare/input.txt");
    std::fs::read_to_string(p).unwrap()[..30_000].to_string()
}

fn write_sweep(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("corpus.txt"), fixture_text()).unwrap();
    let toml = r#"
[pipeline]
name = "tinysweep"
seed = 3

[[stage]]
name = "clean"
kind = "clean"
inputs = { files = ["corpus.txt"] }
params = { split = { mode = "tail", val_fraction = 0.1 } }

[[stage]]
name = "tok"
kind = "train_tokenizer"
inputs = { corpus = ["@clean.train"] }
params = { kind = "char", special_tokens = [] }

[[stage]]
name = "ids"
kind = "tokenize"
inputs = { tokenizer = "@tok.tokenizer", train = "@clean.train", val = "@clean.val" }

[[stage]]
name = "lm"
kind = "pretrain"
inputs = { tokenizer = "@tok.tokenizer", train = "@ids.train", val = "@ids.val" }
[stage.params]
model = { block_size = 16, n_layer = 1, n_head = 2, n_embd = 16 }
[stage.params.train]
batch_size = 4
max_steps = 8
eval_interval = 4
eval_iters = 2
checkpoint_interval = 4
threads = 1

[[stage]]
name = "eval"
kind = "eval"
inputs = { model = "@lm.model", split = "@ids.val" }

[search]
method = "grid"
metric = "lm.loss"
parallel = 2
[search.params]
"lm.train.optim.lr" = { values = [1e-5, 3e-3] }
"#;
    let path = dir.join("sweep.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn forja_sweep_runs_trials_as_processes_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_sweep(dir.path());
    let reg = forja::registry();
    let opts = forja::sweep::SweepOptions { exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_forja"))), ..Default::default() };
    let out = forja::sweep::sweep(&file, &reg, &opts).unwrap();
    assert_eq!(out.results.len(), 2);
    assert!(out.results.iter().all(|r| r.status == Status::Completed && r.steps == 8 && r.value.is_finite()), "{:?}", out.results);
    let best = &out.results[out.best.unwrap()];
    assert_eq!(best.trial.params["lm.train.optim.lr"].as_float(), Some(3e-3), "8 steps at lr 1e-5 barely move");
    for name in ["trials.arrow", "report.md", "best.toml", "lm_train_optim_lr.svg", "trial-0000/pipeline.toml", "trial-0001/result.json"] {
        assert!(out.dir.join(name).exists(), "{name}");
    }
    // Only the stages the metric needs run in a trial.
    let trial = std::fs::read_to_string(out.dir.join("trial-0000/pipeline.toml")).unwrap();
    let lr = trial.lines().find(|l| l.starts_with("lr = ")).unwrap();
    assert!(!trial.contains("kind = \"eval\"") && lr.trim_start_matches("lr = ").parse::<f64>().unwrap() == 1e-5, "{trial}");
    // Each trial pipeline runs on its own, and the best pipeline checks.
    forja::pipeline::load(&out.dir.join("trial-0001/pipeline.toml"), &reg, &[]).unwrap();
    forja::pipeline::load(&out.dir.join("best.toml"), &reg, &[]).unwrap();
    let report = std::fs::read_to_string(out.dir.join("report.md")).unwrap();
    assert!(report.contains("| 1 | 1 **best**"), "{report}");

    // Again: both trials reused, none started.
    let again = forja::sweep::sweep(&file, &reg, &opts).unwrap();
    assert!(again.results.iter().all(|r| r.reused));
    assert_eq!(again.results.iter().map(|r| r.value).collect::<Vec<_>>(), out.results.iter().map(|r| r.value).collect::<Vec<_>>());
}
