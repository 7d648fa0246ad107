//! What the throughput benchmarks of every trainer share: untimed and timed
//! steps through [`Engine::train_step`] (the step the stages run), the engine
//! settings they use, a throwaway stage context and the peak resident memory.

use crate::diagnose::DiagnosisConfig;
use crate::engine::{Engine, EngineConfig, Objective, StepOutcome};
use crate::optim::OptimConfig;
use forja_core::stage::StageCtx;
use std::time::Instant;

/// Untimed and timed steps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub steps: u64,
    pub warmup: u64,
}

/// The engine's settings for a benchmark: `warmup + steps` steps, no spike or
/// explosion checks (non-finite values still count).
pub fn engine_cfg(optim: OptimConfig, t: Timing) -> EngineConfig {
    EngineConfig {
        optim,
        max_steps: t.warmup + t.steps,
        diagnosis: DiagnosisConfig { spike_factor: 0.0, explode_factor: 0.0, ..Default::default() },
        ..Default::default()
    }
}

/// A stage context for benchmark runs.
pub fn ctx() -> StageCtx {
    StageCtx { name: "bench".into(), seed: 0, device: "cpu".into(), config_hash: String::new(), code_hash: "" }
}

/// Peak resident memory of this process, MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs `warmup + steps` engine steps; returns the steady steps/s (mean over
/// the timed steps) and prints the mean phase times to stderr.
pub fn time_steps(engine: &mut Engine, obj: &mut dyn Objective, t: Timing, lr: f64) -> anyhow::Result<f64> {
    let (mut times, mut phases) = (Vec::new(), [0.0f64; 3]);
    for step in 0..t.warmup + t.steps {
        let t0 = Instant::now();
        let outcome = engine.train_step(obj, step, lr, false)?;
        let StepOutcome::Applied { stats, .. } = outcome else { anyhow::bail!("step {step} diverged") };
        if step >= t.warmup {
            times.push(t0.elapsed().as_secs_f64());
            for (p, v) in phases.iter_mut().zip([stats.forward_s, stats.backward_s, stats.optimizer_s]) {
                *p += v * 1000.0 / t.steps as f64;
            }
        }
    }
    anyhow::ensure!(!times.is_empty(), "--steps must be > 0");
    eprintln!("phases ms: forward {:.1}, backward {:.1}, clip+optimizer {:.1}", phases[0], phases[1], phases[2]);
    // Mean over the timed steps, as the peers report (their batches vary in length too).
    Ok(times.len() as f64 / times.iter().sum::<f64>())
}
