//! What a fine-tuning run cost: wall-clock and CPU time and the energy
//! estimate of [`forja_core::resources`], added to the stage's metrics and report.

use forja_core::artifacts::Artifact;
use forja_core::metric::{self, split};
use forja_core::resources::{cpu_seconds, energy_wh, WATTS_PER_CORE};
use forja_core::stage::StageCtx;
use forja_core::MetricRow;
use std::path::Path;
use std::time::Instant;

/// Started at the beginning of a run.
pub struct Meter {
    started: Instant,
    cpu_start: f64,
}

/// Wall-clock and CPU time of a run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Cost {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub energy_wh: f64,
}

impl Meter {
    pub fn start() -> Self {
        Self { started: Instant::now(), cpu_start: cpu_seconds() }
    }

    pub fn read(&self) -> Cost {
        let cpu_s = cpu_seconds() - self.cpu_start;
        Cost { wall_s: self.started.elapsed().as_secs_f64(), cpu_s, energy_wh: energy_wh(cpu_s) }
    }
}

impl Cost {
    /// Appends `wall_s`, `cpu_s`, `energy_wh` rows at `step` to the metrics file
    /// and a line to the report.
    pub fn record(&self, metrics: &Path, report: &Path, ctx: &StageCtx, step: u64) -> anyhow::Result<()> {
        let mut rows = MetricRow::read(metrics)?;
        for (name, v) in [(metric::WALL_S, self.wall_s), (metric::CPU_S, self.cpu_s), (metric::ENERGY_WH, self.energy_wh)] {
            rows.push(MetricRow::new(&ctx.name, step, name, v, split::NONE));
        }
        MetricRow::write(metrics, &ctx.name, &ctx.config_hash, &rows)?;
        let mut text = std::fs::read_to_string(report).unwrap_or_default();
        text += &format!(
            "\nCost: wall time {:.0} s, CPU time {:.0} s, energy estimate {:.2} Wh (at {WATTS_PER_CORE} W per busy core; see forja_core::resources).\n",
            self.wall_s, self.cpu_s, self.energy_wh
        );
        forja_core::fsutil::atomic_write(report, text.as_bytes())?;
        Ok(())
    }
}
