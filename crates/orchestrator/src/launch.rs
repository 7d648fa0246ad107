//! `forja run --nproc N`: a training stage as N local ranks, started the way
//! `torchrun` starts them (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`; one libtorch thread each unless the stage sets
//! `train.threads`), each running `forja stage` on the same inputs and
//! parameters. Rank 0 writes the stage's outputs.

use anyhow::{bail, Context, Result};
use forja_core::stage::{DynStage, StageCtx, StageInputs};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What runs as ranks: the stage, its parameters and inputs, its folder.
pub struct RankedStage<'a> {
    pub stage: &'a dyn DynStage,
    pub params: &'a serde_json::Value,
    pub inputs: &'a StageInputs,
    pub out_dir: &'a Path,
    pub ctx: &'a StageCtx,
    pub footprint: &'a forja_meter::FootprintConfig,
}

/// How long the other ranks get to stop on their own after one failed
/// (they notice at their next collective) before they are killed.
const GRACE: Duration = Duration::from_secs(60);

/// Runs `job` as `nproc` ranks of this program on this machine; waits for all.
pub fn run_ranks(job: &RankedStage, nproc: usize) -> Result<()> {
    // /proc/self/exe still runs this program when its file was replaced (a
    // rebuild during a run); elsewhere, the path it was started from.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() { proc_exe.to_path_buf() } else { std::env::current_exe().context("finding the forja executable")? };
    let params_file = job.out_dir.join(".forja-rank-params.json");
    forja_core::fsutil::atomic_write(&params_file, serde_json::to_string(job.params)?.as_bytes())?;
    let port = free_port()?;
    let mut children = Vec::new();
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        // Named as the program it is in `ps`, not /proc/self/exe.
        std::os::unix::process::CommandExt::arg0(&mut cmd, std::env::args_os().next().unwrap_or_else(|| "forja".into()));
        cmd.arg("stage").arg(job.stage.kind()).arg("--params").arg(&params_file);
        for (name, paths) in &job.inputs.0 {
            for p in paths {
                cmd.arg("--input").arg(format!("{name}={}", p.display()));
            }
        }
        cmd.arg("--out").arg(job.out_dir).arg("--name").arg(&job.ctx.name);
        cmd.arg("--seed").arg(job.ctx.seed.to_string()).arg("--device").arg(&job.ctx.device);
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("FORJA_GRID_G_PER_KWH", job.footprint.grid_g_per_kwh.to_string())
            .env("FORJA_PUE", job.footprint.pue.to_string())
            .env("FORJA_WATTS_PER_CORE", job.footprint.watts_per_core.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .env_remove("TORCHELASTIC_RESTART_COUNT");
        if rank > 0 {
            // Rank 0 says what every rank would (errors still reach stderr).
            cmd.stdout(std::process::Stdio::null());
        }
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            // As torchrun does: ranks share the cores.
            cmd.env("OMP_NUM_THREADS", "1");
        }
        let child = cmd.spawn().with_context(|| format!("starting rank {rank} of {nproc} ({})", exe.display()))?;
        children.push(Some(child));
    }
    let result = wait_all(&mut children);
    let _ = std::fs::remove_file(&params_file);
    result
}

/// A port free on loopback now (the rendezvous binds it a moment later).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Waits for every rank; after the first failure the others get [`GRACE`] to
/// stop by themselves, then are killed. The error names the ranks that failed.
fn wait_all(children: &mut [Option<Child>]) -> Result<()> {
    let n = children.len();
    let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    loop {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(child) = slot {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        failures.push((rank, status));
                        first_failure.get_or_insert_with(Instant::now);
                    }
                    *slot = None;
                }
            }
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if first_failure.is_some_and(|t| t.elapsed() > GRACE) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(mut child) = slot.take() {
                    let _ = child.kill();
                    if let Ok(status) = child.wait() {
                        failures.push((rank, status));
                    }
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort_by_key(|f| f.0);
    let what: Vec<String> = failures.iter().map(|(r, s)| format!("rank {r} of {n} {}", describe(s))).collect();
    bail!("{}", what.join("; "))
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended abnormally".to_string(),
    }
}
