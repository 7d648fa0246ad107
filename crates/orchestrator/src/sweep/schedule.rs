//! The schedulers: grid and random configurations, and the search loop that runs
//! them through a [`Runner`], with ASHA's rungs stopping poor trials early.

use super::report::{fmt_params, fmt_value};
use super::spec::{AshaConfig, Domain, Method, SearchSpec, Status, Trial, TrialResult};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Instant;

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
