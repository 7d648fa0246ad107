//! Training across processes on libtorch's own collectives (c10d): which rank
//! this process is (from the launcher's environment: `torchrun`, Slurm's
//! `srun`, or `forja run --nproc`), a `TCPStore` rendezvous, and the Gloo
//! process group, reached through a small C++ shim (`cpp/c10d_shim.cpp`).
//!
//! One process trains one stage, so the group is process-wide: [`init`] forms
//! it once from the environment, [`current`] returns it after. A process the
//! launcher did not start (no `RANK`/`WORLD_SIZE`, no Slurm task of several)
//! has no group and trains alone.

mod ffi;
mod group;

pub use forja_core::launch::{first_slurm_host, Launch, LaunchError, Launcher};
pub use group::{Dist, Group, Overlap, Store};

use std::sync::OnceLock;
use std::time::Duration;

/// What went wrong across processes.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable is missing or malformed.
    #[error(transparent)]
    Env(#[from] LaunchError),
    /// libtorch's c10d refused or failed (its message, and what forja knows of the ranks).
    #[error("{0}")]
    C10d(String),
    /// The ranks do not run the same thing.
    #[error("{0}")]
    Mismatch(String),
}

static DIST: OnceLock<Result<Option<Dist>, String>> = OnceLock::new();

/// The process group of this process, formed on the first call from the
/// launcher's environment (`None`: not launched as one of several ranks).
/// Collectives and store waits give up after `timeout`. Later calls return
/// the same group (or the same error).
pub fn init(timeout: Duration) -> Result<Option<&'static Dist>, DistError> {
    let formed = DIST.get_or_init(|| {
        let launch = Launch::from_env().map_err(|e| e.to_string())?;
        match launch {
            None => Ok(None),
            Some(l) => Dist::connect(l, timeout).map(Some).map_err(|e| e.to_string()),
        }
    });
    match formed {
        Ok(d) => Ok(d.as_ref()),
        Err(e) => Err(DistError::C10d(e.clone())),
    }
}

/// The group [`init`] formed, if any.
pub fn current() -> Option<&'static Dist> {
    DIST.get().and_then(|r| r.as_ref().ok()).and_then(Option::as_ref)
}
