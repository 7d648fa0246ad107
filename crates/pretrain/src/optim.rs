//! AdamW whose state is tensors we own (so a checkpoint can hold it), the
//! warm-up + cosine learning-rate schedule, and gradient clipping.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Step at which the decay reaches `min_lr` (0: the run's `max_steps`).
    pub lr_decay_steps: u64,
    /// Decoupled weight decay, applied to matrices and embeddings only.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 6e-4,
            min_lr: 6e-5,
            warmup_steps: 100,
            lr_decay_steps: 0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }
}

/// Learning rate at `step`: linear warm-up, cosine decay to `min_lr`, then flat
/// (nanoGPT's `get_lr`).
pub fn lr_at(cfg: &OptimConfig, step: u64, decay_steps: u64) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / (cfg.warmup_steps + 1) as f64;
    }
    if step > decay_steps || decay_steps <= cfg.warmup_steps {
        return cfg.min_lr;
    }
    let ratio = (step - cfg.warmup_steps) as f64 / (decay_steps - cfg.warmup_steps) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
}

struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW (Loshchilov & Hutter 2019) as PyTorch computes it.
pub struct AdamW {
    slots: Vec<Slot>,
    /// Number of updates taken.
    pub t: u64,
}

impl AdamW {
    /// Tracks every trainable variable of `vs`, in name order.
    pub fn new(vs: &nn::VarStore) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .filter(|(_, p)| p.requires_grad())
            .map(|(name, param)| Slot {
                m: param.zeros_like(),
                v: param.zeros_like(),
                decay: param.dim() >= 2,
                name,
                param,
            })
            .collect();
        Self { slots, t: 0 }
    }

    /// Global L2 norm of the gradients; if `max_norm > 0`, scales them so the norm
    /// is at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`). Returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).filter(|g| g.defined()).map(|g| g.norm()).collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).norm();
        let total_f = total.double_value(&[]);
        if max_norm > 0.0 {
            let coef = (max_norm / (total_f + 1e-6)).min(1.0);
            if coef < 1.0 {
                for s in &self.slots {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
        }
        total_f
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, cfg: &OptimConfig, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let bc1 = 1.0 - cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for s in &mut self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            if s.decay && cfg.weight_decay != 0.0 {
                let _ = s.param.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
            }
            let _ = s.m.lerp_(&g, 1.0 - cfg.beta1);
            let _ = s.v.lerp_(&g.square(), 1.0 - cfg.beta2);
            // denom = -(sqrt(v) / sqrt(bc2) + eps) / step_size, so that p += m / denom.
            let mut denom = s.v.sqrt();
            let _ = denom.g_div_scalar_(bc2_sqrt);
            let _ = denom.g_add_scalar_(cfg.eps);
            let _ = denom.g_mul_scalar_(-1.0 / step_size);
            let _ = s.param.addcdiv_(&s.m, &denom);
        }
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The state as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [(format!("{}.exp_avg", s.name), s.m.shallow_clone()), (format!("{}.exp_avg_sq", s.name), s.v.shallow_clone())]
            })
            .collect()
    }

    /// Restores state saved by [`Self::state_tensors`].
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], t: u64) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let find = |n: String| {
            tensors.iter().find(|(k, _)| *k == n).map(|(_, v)| v).ok_or_else(|| anyhow::anyhow!("optimizer state lacks `{n}`"))
        };
        for s in &mut self.slots {
            s.m.copy_(find(format!("{}.exp_avg", s.name))?);
            s.v.copy_(find(format!("{}.exp_avg_sq", s.name))?);
        }
        self.t = t;
        Ok(())
    }
}
