//! Data parallelism in the engine: what `train.distributed` sets, and the
//! collectives a step needs (on libtorch's c10d through `forja-dist`).
//!
//! Rank `r` of `W`, at accumulation micro-step `m`, takes micro-batch
//! `m·W + r` of a one-process run with `W·A` accumulation steps; every rank
//! scales its loss by `1/(W·A)`, so after the gradients are summed across
//! ranks each holds exactly the one-process accumulation's gradient (for two
//! ranks bit for bit: the sum of two is one float addition). Clipping, the
//! health check and the update then run identically on every rank.

use crate::optim::AdamW;
use forja_dist::Dist;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `train.distributed`: how ranks started by a launcher train together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedConfig {
    /// ZeRO-1: each rank keeps the AdamW state of 1/W of the parameters and
    /// updates only those; each part is then broadcast from its owner.
    pub shard_optimizer: bool,
    /// Gradients are summed across ranks in buckets of this many MiB.
    pub bucket_mb: f64,
    /// Start each bucket's sum during the backward pass, as soon as its
    /// gradients are ready (hooks on the gradient accumulators, as PyTorch's
    /// DDP); off: one sum over the whole flat buffer after the backward pass.
    /// The sums are the same either way.
    pub overlap: bool,
    /// A rendezvous or collective waiting longer than this fails, naming the
    /// ranks that stopped (a rank that dies is noticed at once).
    pub timeout_s: u64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { shard_optimizer: false, bucket_mb: 25.0, overlap: true, timeout_s: 300 }
    }
}

/// The micro-batch index (of a one-process run with `W·A` accumulation) that
/// rank `rank` of `world` takes at its accumulation step `m`.
pub fn global_micro(m: u64, rank: usize, world: usize) -> u64 {
    m * world as u64 + rank as u64
}

/// Scalars per bucket of `cfg.bucket_mb` MiB of float32.
pub fn bucket_numel(cfg: &DistributedConfig) -> i64 {
    ((cfg.bucket_mb.max(0.001) * 1024.0 * 1024.0 / 4.0) as i64).max(1)
}

/// Sums the gradients across the ranks, in buckets of the flat buffer.
pub fn sum_gradients(dist: &Dist, opt: &mut AdamW, cfg: &DistributedConfig) -> anyhow::Result<()> {
    let flat = opt.flat_grads().shallow_clone();
    let total = flat.numel() as i64;
    let bucket = bucket_numel(cfg);
    let mut at = 0;
    while at < total {
        let len = bucket.min(total - at);
        dist.allreduce_sum(&flat.narrow(0, at, len))?;
        at += len;
    }
    Ok(())
}

/// Sums a scalar across the ranks.
pub fn sum_scalar(dist: &Dist, x: f64) -> anyhow::Result<f64> {
    let t = Tensor::from_slice(&[x]);
    dist.allreduce_sum(&t)?;
    Ok(t.double_value(&[0]))
}

/// After a sharded update: every part of the parameters from its owner.
pub fn gather_parameters(dist: &Dist, opt: &AdamW) -> anyhow::Result<()> {
    let flat = opt.flat_params();
    for (owner, (lo, len)) in opt.parts().into_iter().enumerate() {
        if len > 0 {
            dist.broadcast(&flat.narrow(0, lo, len), owner)?;
        }
    }
    Ok(())
}
