//! AdamW whose state is tensors we own (so a checkpoint can hold it), Muon for
//! the hidden matrices (`optim.kind = "muon"`), the warm-up + cosine or
//! warm-up–stable–decay learning-rate schedules, and gradient clipping.

use forja_model::layers::{block_matrix, Layout};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Which optimizer updates the hidden matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// AdamW for every parameter.
    #[default]
    AdamW,
    /// Muon (Jordan et al. 2024) for the 2-D matrices inside the blocks:
    /// momentum orthogonalised by a Newton–Schulz iteration
    /// (KellerJordan/Muon's `zeropower_via_newtonschulz5`); AdamW for
    /// embeddings, the head, norms, biases and LoRA adapters (nanochat's split).
    Muon,
}

/// The learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to `min_lr` at the decay step (nanoGPT).
    #[default]
    Cosine,
    /// Warm-up–stable–decay: flat at `lr`, then linear to `min_lr` over the
    /// last `decay_frac` of the decay steps (modded-nanogpt, nanochat).
    Wsd,
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `adamw`, or `muon` for the hidden matrices (AdamW for the rest).
    pub kind: OptimKind,
    /// Peak learning rate (of AdamW's parameters).
    pub lr: f64,
    /// Peak learning rate of Muon's matrices (scheduled as `lr` is).
    pub muon_lr: f64,
    /// Muon's momentum (Nesterov).
    pub muon_momentum: f64,
    /// Newton–Schulz iterations per Muon update.
    pub muon_ns_steps: u32,
    /// Decoupled weight decay of Muon's matrices.
    pub muon_weight_decay: f64,
    pub schedule: Schedule,
    /// `wsd`: the share of the decay steps spent decaying.
    pub decay_frac: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Step at which the decay reaches `min_lr` (0: the run's `max_steps`).
    pub lr_decay_steps: u64,
    /// Decoupled weight decay of matrices and embeddings (biases and norms: none).
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
            kind: OptimKind::AdamW,
            lr: 6e-4,
            muon_lr: 0.02,
            muon_momentum: 0.95,
            muon_ns_steps: 5,
            muon_weight_decay: 0.0,
            schedule: Schedule::Cosine,
            decay_frac: 0.3,
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

/// Learning rate at `step`: linear warm-up, then cosine decay to `min_lr` at
/// `decay_steps` (nanoGPT's `get_lr`) or flat and a linear decay over the last
/// `decay_frac` (`wsd`); `min_lr` after.
pub fn lr_at(cfg: &OptimConfig, step: u64, decay_steps: u64) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / (cfg.warmup_steps + 1) as f64;
    }
    if step > decay_steps || decay_steps <= cfg.warmup_steps {
        return cfg.min_lr;
    }
    if cfg.schedule == Schedule::Wsd {
        let span = (decay_steps - cfg.warmup_steps) as f64;
        let decay_start = decay_steps as f64 - cfg.decay_frac.clamp(0.0, 1.0) * span;
        if (step as f64) < decay_start {
            return cfg.lr;
        }
        let ratio = (step as f64 - decay_start) / (decay_steps as f64 - decay_start).max(1.0);
        return cfg.lr + ratio.min(1.0) * (cfg.min_lr - cfg.lr);
    }
    let ratio = (step - cfg.warmup_steps) as f64 / (decay_steps - cfg.warmup_steps) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
}

/// Parameters optimised together with their own learning-rate multiplier and
/// weight decay (e.g. LoRA adapters only; a new head at a higher rate; biases and
/// norms without decay).
pub struct ParamGroup {
    pub name: String,
    /// `(name, variable)`; names key the optimizer state in checkpoints.
    pub params: Vec<(String, Tensor)>,
    /// Multiplies the scheduled learning rate.
    pub lr_scale: f64,
    /// Decoupled weight decay of this group.
    pub weight_decay: f64,
    /// Updated by Muon (2-D matrices only), not AdamW.
    pub muon: bool,
}

impl ParamGroup {
    /// The usual split of every trainable variable of `vs`: matrices and
    /// embeddings (dim ≥ 2) with `weight_decay`, biases and norms without.
    pub fn decay_split(vs: &nn::VarStore, weight_decay: f64) -> Vec<ParamGroup> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, p)| p.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (decay, no_decay): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(_, p)| p.dim() >= 2);
        vec![
            ParamGroup { name: "decay".into(), params: decay, lr_scale: 1.0, weight_decay, muon: false },
            ParamGroup { name: "no_decay".into(), params: no_decay, lr_scale: 1.0, weight_decay: 0.0, muon: false },
        ]
    }

    /// Trains only the variables of `vs` whose names `train` accepts (LoRA
    /// adapters, a new head) and freezes the rest (`requires_grad` off, so no
    /// gradient is even computed for them). Returns the decay split of the
    /// trained ones.
    pub fn train_only(vs: &nn::VarStore, train: impl Fn(&str) -> bool, weight_decay: f64) -> Vec<ParamGroup> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut decay, mut no_decay) = (Vec::new(), Vec::new());
        for (name, t) in vars {
            if !train(&name) {
                let _ = t.set_requires_grad(false);
            } else if t.dim() >= 2 {
                decay.push((name, t));
            } else {
                no_decay.push((name, t));
            }
        }
        vec![
            ParamGroup { name: "decay".into(), params: decay, lr_scale: 1.0, weight_decay, muon: false },
            ParamGroup { name: "no_decay".into(), params: no_decay, lr_scale: 1.0, weight_decay: 0.0, muon: false },
        ]
    }

    /// The groups as `cfg.kind` updates them: with Muon, each group's hidden
    /// matrices ([`block_matrix`]) move to a Muon group of their own at
    /// `muon_lr` (relative to `lr`, times the group's own scale) and
    /// `muon_weight_decay`; the rest stay with AdamW.
    pub fn for_optimizer(groups: Vec<ParamGroup>, cfg: &OptimConfig) -> Vec<ParamGroup> {
        if cfg.kind != OptimKind::Muon {
            return groups;
        }
        let muon_scale = if cfg.lr > 0.0 { cfg.muon_lr / cfg.lr } else { 0.0 };
        let mut out = Vec::new();
        for g in groups {
            let (muon, adam): (Vec<_>, Vec<_>) = g.params.into_iter().partition(|(n, p)| block_matrix(n, &p.size()).is_some());
            if !muon.is_empty() {
                out.push(ParamGroup {
                    name: format!("{}.muon", g.name),
                    params: muon,
                    lr_scale: g.lr_scale * muon_scale,
                    weight_decay: cfg.muon_weight_decay,
                    muon: true,
                });
            }
            out.push(ParamGroup { name: g.name, params: adam, lr_scale: g.lr_scale, weight_decay: g.weight_decay, muon: false });
        }
        out
    }

    /// Every parameter in one group.
    pub fn all(name: &str, params: Vec<(String, Tensor)>, weight_decay: f64) -> ParamGroup {
        ParamGroup { name: name.into(), params, lr_scale: 1.0, weight_decay, muon: false }
    }
}

/// One parameter: its place in the flat buffers.
struct Slot {
    name: String,
    param: Tensor,
    /// Its gradient's place: a view of the flat gradient buffer.
    grad_home: Tensor,
    offset: i64,
    numel: i64,
    shape: Vec<i64>,
    /// Updated by Muon, a matrix of this layout.
    muon: Option<Layout>,
}

/// A group's contiguous range of the flat buffers.
struct GroupRange {
    offset: i64,
    numel: i64,
    lr_scale: f64,
    weight_decay: f64,
    muon: bool,
}

/// AdamW (Loshchilov & Hutter 2019) as PyTorch computes it, over parameter
/// groups, and Muon for the groups marked so (`m` is then Muon's momentum
/// buffer), on flat buffers: every parameter, gradient and moment is a view into
/// one contiguous float32 tensor (groups are contiguous ranges of it), so an
/// update is a handful of vectorised kernels instead of a few per parameter.
/// Parameters outside the groups are neither updated nor given state (frozen).
pub struct AdamW {
    slots: Vec<Slot>,
    groups: Vec<GroupRange>,
    flat_p: Tensor,
    flat_g: Tensor,
    /// Moments of the part of `flat_p` this rank updates (all of it unless sharded).
    m: Tensor,
    v: Tensor,
    /// Number of updates taken.
    pub t: u64,
    /// ZeRO-1: this rank's index into the parts, and every rank's `(offset, len)`
    /// of the flat parameters; `None`: this rank updates everything.
    shard: Option<(usize, Vec<(i64, i64)>)>,
}

/// Flat parameters split into `world` parts at the `boundaries` (sorted
/// offsets where a part may start): each part ends at the boundary nearest to
/// an equal split (Muon orthogonalises whole matrices, so none is cut).
pub fn shard_parts_at(total: i64, world: usize, boundaries: &[i64]) -> Vec<(i64, i64)> {
    let world = world.max(1) as i64;
    let mut cuts = vec![0i64];
    for r in 1..world {
        let ideal = total * r / world;
        let prev = *cuts.last().unwrap_or(&0);
        let best = boundaries.iter().copied().filter(|&b| b >= prev).min_by_key(|&b| (b - ideal).abs()).unwrap_or(total);
        cuts.push(best.min(total));
    }
    cuts.push(total);
    cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// Flat parameters split into `world` parts for the sharded optimizer:
/// near-equal, each boundary a multiple of 64 scalars.
pub fn shard_parts(total: i64, world: usize) -> Vec<(i64, i64)> {
    let world = world.max(1) as i64;
    let per = (total + world - 1) / world;
    let per = (per + 63) / 64 * 64;
    (0..world)
        .map(|r| {
            let lo = (r * per).min(total);
            (lo, ((r + 1) * per).min(total) - lo)
        })
        .collect()
}

impl AdamW {
    /// Tracks the parameters of `groups`, moving each into a view of one flat
    /// buffer (the variables keep their identity). Errors if a parameter appears
    /// twice or is not float32.
    pub fn new(groups: Vec<ParamGroup>) -> anyhow::Result<Self> {
        let _guard = tch::no_grad_guard();
        let mut seen = std::collections::BTreeSet::new();
        let mut total = 0i64;
        let mut device = tch::Device::Cpu;
        for g in &groups {
            for (name, p) in &g.params {
                anyhow::ensure!(seen.insert(name.clone()), "parameter `{name}` is in two optimizer groups");
                anyhow::ensure!(p.kind() == tch::Kind::Float, "parameter `{name}` is {:?}; the optimizer keeps float32 masters", p.kind());
                total += p.numel() as i64;
                device = p.device();
            }
        }
        let opts = (tch::Kind::Float, device);
        let flat_p = Tensor::zeros([total], opts);
        let flat_g = Tensor::zeros([total], opts);
        let (mut slots, mut ranges) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for g in groups {
            let start = offset;
            for (name, mut param) in g.params {
                let numel = param.numel() as i64;
                let shape = param.size();
                let mut view = flat_p.narrow(0, offset, numel).view(shape.as_slice());
                view.copy_(&param);
                param.set_data(&view);
                let grad_home = flat_g.narrow(0, offset, numel).view(shape.as_slice());
                anyhow::ensure!(!g.muon || shape.len() == 2, "Muon updates matrices; `{name}` has shape {shape:?}");
                let muon = g.muon.then(|| block_matrix(&name, &shape).unwrap_or(Layout::OutIn));
                slots.push(Slot { name, param, grad_home, offset, numel, shape, muon });
                offset += numel;
            }
            ranges.push(GroupRange {
                offset: start,
                numel: offset - start,
                lr_scale: g.lr_scale,
                weight_decay: g.weight_decay,
                muon: g.muon,
            });
        }
        Ok(Self { slots, groups: ranges, flat_g, m: flat_p.zeros_like(), v: flat_p.zeros_like(), flat_p, t: 0, shard: None })
    }

    /// Keeps only rank `rank`'s part of the state (of `world` parts): the
    /// update touches only that part of the parameters, which the caller then
    /// broadcasts from each part's owner ([`Self::parts`]).
    pub fn shard(&mut self, rank: usize, world: usize) {
        let parts = if self.slots.iter().any(|s| s.muon.is_some()) {
            let starts: Vec<i64> = self.slots.iter().map(|s| s.offset).collect();
            shard_parts_at(self.numel(), world, &starts)
        } else {
            shard_parts(self.numel(), world)
        };
        let len = parts[rank].1;
        let opts = (tch::Kind::Float, self.flat_p.device());
        (self.m, self.v) = (Tensor::zeros([len], opts), Tensor::zeros([len], opts));
        self.shard = Some((rank, parts));
    }

    /// Every rank's part of the flat parameters (one part when not sharded).
    pub fn parts(&self) -> Vec<(i64, i64)> {
        self.shard.as_ref().map_or_else(|| vec![(0, self.numel())], |(_, p)| p.clone())
    }

    /// Whether the state is sharded across ranks.
    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }

    /// The part this rank updates: `(offset, len)`.
    fn own(&self) -> (i64, i64) {
        self.shard.as_ref().map_or((0, self.numel()), |(r, p)| p[*r])
    }

    /// The trained parameters, in the flat buffer's order.
    pub fn params(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// The flat parameters (every trained parameter is a view of it).
    pub fn flat_params(&self) -> &Tensor {
        &self.flat_p
    }

    /// The flat gradients, gathered from the parameters' `.grad`.
    pub fn flat_grads(&mut self) -> &Tensor {
        self.gather_grads();
        &self.flat_g
    }

    /// The optimizer in words: `AdamW`, or `Muon (N matrices) + AdamW`.
    pub fn describe(&self) -> String {
        match self.slots.iter().filter(|s| s.muon.is_some()).count() {
            0 => "AdamW".to_string(),
            n => format!("Muon ({n} matrices) + AdamW"),
        }
    }

    /// Bytes of optimizer state this rank keeps, and what it would keep unsharded.
    pub fn state_bytes(&self) -> (i64, i64) {
        let bytes = |n: i64| 2 * 4 * n;
        (bytes(self.m.numel() as i64), bytes(self.numel()))
    }

    /// Number of optimised scalars.
    pub fn numel(&self) -> i64 {
        self.flat_p.numel() as i64
    }

    fn flat_view(&self, flat: &Tensor, s: &Slot) -> Tensor {
        flat.narrow(0, s.offset, s.numel).view(s.shape.as_slice())
    }

    /// Makes every gradient a view of the flat gradient buffer. After the first
    /// backward pass the views stay (autograd then accumulates in place); a
    /// gradient found elsewhere is copied in and re-homed.
    fn gather_grads(&mut self) {
        let _guard = tch::no_grad_guard();
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if !g.defined() {
                let _ = s.grad_home.zero_();
            } else if g.data_ptr() != s.grad_home.data_ptr() {
                s.grad_home.copy_(&g);
                g.set_data(&s.grad_home);
            }
        }
    }

    /// Global L2 norm of the gradients; if `max_norm > 0`, scales them so the norm
    /// is at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`). Returns the norm
    /// before clipping (NaN or infinite when a gradient is).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        self.gather_grads();
        let _guard = tch::no_grad_guard();
        let total = self.flat_g.norm().double_value(&[]);
        if max_norm > 0.0 && total.is_finite() {
            let coef = (max_norm / (total + 1e-6)).min(1.0);
            if coef < 1.0 {
                let _ = self.flat_g.g_mul_scalar_(coef);
            }
        }
        total
    }

    /// Gradient L2 norm of each parameter, in the order of [`Self::param_names`].
    pub fn param_grad_norms(&mut self) -> anyhow::Result<Vec<f64>> {
        self.gather_grads();
        let _guard = tch::no_grad_guard();
        let squares = self.flat_g.square();
        let sums: Vec<Tensor> = self.slots.iter().map(|s| squares.narrow(0, s.offset, s.numel).sum(tch::Kind::Float)).collect();
        if sums.is_empty() {
            return Ok(Vec::new());
        }
        let norms = Tensor::stack(&sums, 0).sqrt().to_kind(tch::Kind::Double).to(tch::Device::Cpu);
        Ok(Vec::<f64>::try_from(&norms)?)
    }

    /// Names of the optimised parameters.
    pub fn param_names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// One update with (scheduled) learning rate `lr`: AdamW, or Muon for the
    /// Muon groups; each group scales `lr` by its `lr_scale` and applies its own
    /// weight decay.
    pub fn step(&mut self, cfg: &OptimConfig, lr: f64) {
        self.gather_grads();
        let _guard = tch::no_grad_guard();
        self.t += 1;
        // Only this rank's part when sharded (the whole buffer otherwise);
        // every AdamW operation is elementwise and Muon's parts hold whole
        // matrices, so a part updates exactly as it would inside the whole.
        let (lo, len) = self.own();
        for grp in &self.groups {
            let start = grp.offset.max(lo);
            let end = (grp.offset + grp.numel).min(lo + len);
            if end <= start {
                continue;
            }
            let (lr, wd) = (lr * grp.lr_scale, grp.weight_decay);
            if grp.muon {
                self.muon_range(cfg, start, end, lr, wd);
            } else {
                self.adam_range(cfg, start, end, lr, wd);
            }
        }
    }

    /// AdamW over the flat range `start..end` (inside this rank's part).
    fn adam_range(&self, cfg: &OptimConfig, start: i64, end: i64, lr: f64, wd: f64) {
        let lo = self.own().0;
        let n = end - start;
        let g = self.flat_g.narrow(0, start, n);
        let mut m = self.m.narrow(0, start - lo, n);
        let mut v = self.v.narrow(0, start - lo, n);
        let _ = m.lerp_(&g, 1.0 - cfg.beta1);
        let _ = v.lerp_(&g.square(), 1.0 - cfg.beta2);
        if lr == 0.0 {
            // No update (the folded division below would be by zero: NaN weights).
            return;
        }
        let bc1 = 1.0 - cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let mut p = self.flat_p.narrow(0, start, n);
        if wd != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * wd);
        }
        // denom = -(sqrt(v) / sqrt(bc2) + eps) / step_size, so that p += m / denom.
        let mut denom = v.sqrt();
        let _ = denom.g_mul_scalar_(-1.0 / (bc2.sqrt() * step_size));
        let _ = denom.g_add_scalar_(-cfg.eps / step_size);
        let _ = p.addcdiv_(&m, &denom);
    }

    /// Muon over the matrices in the flat range `start..end`: Nesterov momentum,
    /// orthogonalised, scaled by sqrt(max(1, out / in)) as KellerJordan/Muon.
    fn muon_range(&self, cfg: &OptimConfig, start: i64, end: i64, lr: f64, wd: f64) {
        let lo = self.own().0;
        for s in self.slots.iter().filter(|s| s.offset >= start && s.offset + s.numel <= end) {
            let g = self.flat_view(&self.flat_g, s);
            let mut buf = self.m.narrow(0, s.offset - lo, s.numel).view(s.shape.as_slice());
            let _ = buf.lerp_(&g, 1.0 - cfg.muon_momentum);
            if lr == 0.0 {
                continue;
            }
            let update = g.lerp(&buf, cfg.muon_momentum); // Nesterov
            let ortho = newton_schulz5(&update, cfg.muon_ns_steps);
            let (rows, cols) = (s.shape[0] as f64, s.shape[1] as f64);
            let (fan_out, fan_in) = if s.muon == Some(Layout::InOut) { (cols, rows) } else { (rows, cols) };
            let scale = (fan_out / fan_in).max(1.0).sqrt();
            let mut p = self.flat_view(&self.flat_p, s);
            if wd != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
            }
            let _ = p.g_add_(&(ortho * (-lr * scale)));
        }
    }

    /// Zeroes the gradients in place (they stay views of the flat buffer).
    pub fn zero_grad(&mut self) {
        let _ = self.flat_g.zero_();
    }

    /// The state as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`).
    /// Sharded, every part is first copied to every rank with `broadcast(part,
    /// owner)` (a collective: every rank calls this at once).
    pub fn state_tensors(&self, broadcast: &mut dyn FnMut(&Tensor, usize) -> anyhow::Result<()>) -> anyhow::Result<Vec<(String, Tensor)>> {
        let (m, v) = self.full_moments(broadcast)?;
        Ok(self
            .slots
            .iter()
            .flat_map(|s| match s.muon.is_some() {
                true => vec![(format!("{}.momentum_buffer", s.name), self.flat_view(&m, s))],
                false => {
                    vec![(format!("{}.exp_avg", s.name), self.flat_view(&m, s)), (format!("{}.exp_avg_sq", s.name), self.flat_view(&v, s))]
                }
            })
            .collect())
    }

    fn full_moments(&self, broadcast: &mut dyn FnMut(&Tensor, usize) -> anyhow::Result<()>) -> anyhow::Result<(Tensor, Tensor)> {
        let Some((rank, parts)) = &self.shard else {
            return Ok((self.m.shallow_clone(), self.v.shallow_clone()));
        };
        let _guard = tch::no_grad_guard();
        let (m, v) = (self.flat_p.zeros_like(), self.flat_p.zeros_like());
        let (lo, len) = parts[*rank];
        m.narrow(0, lo, len).copy_(&self.m);
        v.narrow(0, lo, len).copy_(&self.v);
        for (owner, &(lo, len)) in parts.iter().enumerate() {
            if len > 0 {
                broadcast(&m.narrow(0, lo, len), owner)?;
                broadcast(&v.narrow(0, lo, len), owner)?;
            }
        }
        Ok((m, v))
    }

    /// Restores state saved by [`Self::state_tensors`].
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], t: u64) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let find =
            |n: String| tensors.iter().find(|(k, _)| *k == n).map(|(_, v)| v).ok_or_else(|| anyhow::anyhow!("optimizer state lacks `{n}`"));
        let (m, v) = (self.flat_p.zeros_like(), self.flat_p.zeros_like());
        for s in &self.slots {
            if s.muon.is_some() {
                self.flat_view(&m, s).copy_(find(format!("{}.momentum_buffer", s.name))?);
            } else {
                self.flat_view(&m, s).copy_(find(format!("{}.exp_avg", s.name))?);
                self.flat_view(&v, s).copy_(find(format!("{}.exp_avg_sq", s.name))?);
            }
        }
        let (lo, len) = self.own();
        self.m.copy_(&m.narrow(0, lo, len));
        self.v.copy_(&v.narrow(0, lo, len));
        self.t = t;
        Ok(())
    }
}

/// The orthogonal factor of `g` (U Vᵀ of its SVD, approximately) by the quintic
/// Newton–Schulz iteration of KellerJordan/Muon's `zeropower_via_newtonschulz5`
/// (coefficients 3.4445, -4.7750, 2.0315), in bfloat16 on CUDA as there and in
/// float32 on the CPU (where bfloat16 products are slower, not faster).
///
/// # Shapes
/// `[rows, cols]` → `[rows, cols]`
pub fn newton_schulz5(g: &Tensor, steps: u32) -> Tensor {
    let (a, b, c) = (3.4445, -4.7750, 2.0315);
    let kind = if g.device().is_cuda() { tch::Kind::BFloat16 } else { tch::Kind::Float };
    let tall = g.size()[0] > g.size()[1];
    let mut x = g.to_kind(kind);
    if tall {
        x = x.tr();
    }
    x = &x / (x.norm().to_kind(kind) + 1e-7);
    for _ in 0..steps {
        let xxt = x.matmul(&x.tr());
        let poly = &xxt * b + xxt.matmul(&xxt) * c;
        x = &x * a + poly.matmul(&x);
    }
    if tall {
        x = x.tr();
    }
    x.to_kind(tch::Kind::Float)
}
