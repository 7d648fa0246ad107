//! forja-meter: what a stage cost: wall-clock and CPU time of this process, the FLOPs the
//! stage counted, energy and CO2e — its **footprint**, measured around every
//! stage by the stage adapter (`forja_core::stage::DynStage::run_json`) and
//! written as `footprint.json`, metric rows and a report line.
//!
//! Energy comes from the CPU package's RAPL counters
//! (`/sys/class/powercap/intel-rapl:N/energy_uj`) when they are readable —
//! they measure the whole package, other processes included —, else from a
//! stated power model: CPU-seconds × a power per busy core. The model's
//! default, 10 W, is the order of magnitude the Green Algorithms calculator
//! (Lannelongue et al. 2021) uses per core of server CPUs; it leaves out
//! memory, disk, network and the GPU. Either figure is multiplied by the data
//! centre's PUE, then by the grid's carbon intensity for CO2e. The default
//! intensity, 475 gCO2e/kWh, is the world average the IEA gave for 2019 (also
//! codecarbon's fallback). Read the numbers as estimates for comparing runs,
//! not as measurements of a meter at the wall.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Watts per busy core assumed by the power model.
pub const WATTS_PER_CORE: f64 = 10.0;

/// Footprint file written into every stage's folder.
pub const FOOTPRINT_FILE: &str = "footprint.json";

/// How energy becomes CO2e; settable per pipeline (`[pipeline] footprint = {...}`)
/// and, for a stage binary run by hand, through `FORJA_GRID_G_PER_KWH`, `FORJA_PUE`,
/// `FORJA_WATTS_PER_CORE` (the orchestrator passes them to `run_json` explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FootprintConfig {
    /// Grams of CO2e per kWh of the grid that powers the machine.
    pub grid_g_per_kwh: f64,
    /// Power usage effectiveness of the data centre (1.0: none counted).
    pub pue: f64,
    /// Watts per busy core of the power model (used when RAPL is unreadable).
    pub watts_per_core: f64,
}

impl Default for FootprintConfig {
    fn default() -> Self {
        Self { grid_g_per_kwh: 475.0, pue: 1.0, watts_per_core: WATTS_PER_CORE }
    }
}

impl FootprintConfig {
    /// The defaults, overridden by the `FORJA_*` variables that are set and parse.
    pub fn from_env() -> Self {
        let var = |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let d = Self::default();
        Self {
            grid_g_per_kwh: var("FORJA_GRID_G_PER_KWH", d.grid_g_per_kwh),
            pue: var("FORJA_PUE", d.pue),
            watts_per_core: var("FORJA_WATTS_PER_CORE", d.watts_per_core),
        }
    }
}

/// What one stage cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    pub stage: String,
    pub kind: String,
    pub wall_s: f64,
    pub cpu_s: f64,
    /// Floating-point operations the stage counted ([`add_flops`]); 0 for
    /// stages without model arithmetic.
    pub flops: f64,
    pub energy_wh: f64,
    /// `rapl` or the power model, stated.
    pub energy_source: String,
    pub pue: f64,
    pub grid_g_per_kwh: f64,
    pub co2e_g: f64,
}

impl Footprint {
    pub fn read(dir: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(FOOTPRINT_FILE)).ok()?).ok()
    }
}

/// CPU seconds (user + system, all threads) this process has used so far,
/// to the nanosecond (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// A quantity for a table: four decimals, or three significant digits when
/// smaller than 0.01 (a short stage's Wh), `0` for zero.
pub fn fmt_amount(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// Energy of the power model, watt-hours, for `cpu_s` CPU-seconds.
pub fn modelled_energy_wh(cpu_s: f64, watts_per_core: f64) -> f64 {
    cpu_s * watts_per_core / 3600.0
}

/// One RAPL package domain: its counter and the value where it wraps.
#[derive(Clone)]
struct RaplDomain {
    path: std::path::PathBuf,
    range_uj: u64,
}

/// The CPU package domains (`intel-rapl:N` named `package-*`; not their
/// sub-domains, and not `psys`, which already contains the packages) whose
/// counters this process can read.
fn rapl_domains() -> Vec<RaplDomain> {
    let Ok(entries) = std::fs::read_dir("/sys/class/powercap") else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = e.file_name().to_string_lossy().to_string();
        let top = dir.strip_prefix("intel-rapl:").is_some_and(|rest| !rest.contains(':'));
        let package = std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim().starts_with("package"));
        let path = e.path().join("energy_uj");
        if top && package && read_u64(&path).is_some() {
            let range_uj = read_u64(&e.path().join("max_energy_range_uj")).unwrap_or(u64::MAX);
            out.push(RaplDomain { path, range_uj });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Energy of the package domains, accumulated by a thread that reads the
/// counters every few seconds, so a counter that wraps (every ~70 Wh on many
/// CPUs: under half an hour of a busy server package) is counted once per wrap.
struct RaplSampler {
    total_uj: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RaplSampler {
    fn start(domains: Vec<RaplDomain>) -> Option<Self> {
        let mut last: Vec<u64> = domains.iter().map(|d| read_u64(&d.path)).collect::<Option<_>>()?;
        if domains.is_empty() {
            return None;
        }
        let total_uj = std::sync::Arc::new(std::sync::Mutex::new(Some(0u64)));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (total, flag) = (total_uj.clone(), stop.clone());
        let thread = std::thread::spawn(move || loop {
            let stopping = flag.load(Ordering::Relaxed);
            let mut add = 0u64;
            let mut ok = true;
            for (d, prev) in domains.iter().zip(last.iter_mut()) {
                match read_u64(&d.path) {
                    Some(now) => {
                        add += if now >= *prev { now - *prev } else { d.range_uj.saturating_sub(*prev) + now };
                        *prev = now;
                    }
                    None => ok = false,
                }
            }
            if let Ok(mut t) = total.lock() {
                *t = if ok { t.map(|v| v + add) } else { None };
            }
            if stopping {
                return;
            }
            // Sleep in short slices so that `finish` does not wait long.
            for _ in 0..50 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Some(Self { total_uj, stop, thread: Some(thread) })
    }

    /// Stops sampling (after a last read); the energy in Wh, if every read succeeded.
    fn finish(&mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ignored = t.join();
        }
        let uj = (*self.total_uj.lock().ok()?)?;
        Some(uj as f64 / 3.6e9)
    }
}

impl Drop for RaplSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

static FLOPS_BITS: AtomicU64 = AtomicU64::new(0);

/// Counts `flops` floating-point operations towards the running stage's
/// footprint (trainers: 6 · parameters · tokens per step; evaluation: 2 · parameters · tokens).
pub fn add_flops(flops: f64) {
    let mut cur = FLOPS_BITS.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + flops).to_bits();
        match FLOPS_BITS.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// FLOPs counted so far in this process.
pub fn flops_counted() -> f64 {
    f64::from_bits(FLOPS_BITS.load(Ordering::Relaxed))
}

/// Started before a stage runs; [`Meter::finish`] gives its footprint.
pub struct Meter {
    started: Instant,
    cpu_start: f64,
    flops_start: f64,
    rapl: std::sync::Mutex<Option<RaplSampler>>,
}

impl Meter {
    pub fn start() -> Self {
        let rapl = std::sync::Mutex::new(RaplSampler::start(rapl_domains()));
        Self { started: Instant::now(), cpu_start: cpu_seconds(), flops_start: flops_counted(), rapl }
    }

    /// Energy in Wh from the RAPL counters since the start, if they were readable throughout.
    fn rapl_wh(&self) -> Option<f64> {
        self.rapl.lock().ok()?.as_mut()?.finish()
    }

    pub fn finish(&self, stage: &str, kind: &str, cfg: &FootprintConfig) -> Footprint {
        let cpu_s = cpu_seconds() - self.cpu_start;
        let (raw_wh, energy_source) = match self.rapl_wh() {
            Some(wh) => (wh, "rapl (CPU package counters)".to_string()),
            None => (
                modelled_energy_wh(cpu_s, cfg.watts_per_core),
                format!("model: {} W per busy core × CPU time (RAPL unreadable)", cfg.watts_per_core),
            ),
        };
        let energy_wh = raw_wh * cfg.pue;
        Footprint {
            stage: stage.into(),
            kind: kind.into(),
            wall_s: self.started.elapsed().as_secs_f64(),
            cpu_s,
            flops: flops_counted() - self.flops_start,
            energy_wh,
            energy_source,
            pue: cfg.pue,
            grid_g_per_kwh: cfg.grid_g_per_kwh,
            co2e_g: energy_wh / 1000.0 * cfg.grid_g_per_kwh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_has_a_positive_footprint() {
        let meter = Meter::start();
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
        add_flops(1e6);
        let cfg = FootprintConfig { grid_g_per_kwh: 1000.0, pue: 1.5, watts_per_core: 10.0 };
        let f = meter.finish("s", "k", &cfg);
        assert!(f.cpu_s > 0.1, "300 ms of busy work counted {} CPU seconds", f.cpu_s);
        assert!(f.wall_s >= 0.3 && f.flops >= 1e6 && f.energy_wh > 0.0);
        assert!((f.co2e_g - f.energy_wh * 1.0).abs() < 1e-9, "1000 g/kWh is 1 g/Wh");
        if f.energy_source.starts_with("model") {
            assert!((f.energy_wh - f.cpu_s * 10.0 / 3600.0 * 1.5).abs() < 1e-9);
        }
    }
}
