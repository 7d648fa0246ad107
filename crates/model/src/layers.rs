//! Building blocks shared by the models: projections that are plain or LoRA at
//! load time (candle's `enum Proj { Plain, Lora }`), the compute precision, and
//! shape checks that fail as errors naming the limit.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The precision matrix products run in. Weights, layer norms, softmax inside
/// the loss, and the optimizer stay float32 (what autocast does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 matrix products (CUDA; CPU too where libtorch supports it).
    Bf16,
}

impl Precision {
    /// The kind inputs and weights are cast to before a matrix product.
    pub fn compute_kind(self) -> Option<Kind> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(Kind::BFloat16),
        }
    }
}

/// Per-call forward settings.
#[derive(Debug, Clone, Copy)]
pub struct Fwd {
    /// Training mode (dropout on).
    pub train: bool,
    /// Kind of matrix products (`None`: the weights' own).
    pub compute: Option<Kind>,
    /// LoRA adapters take part (off: the frozen base alone, e.g. PPO's
    /// reference model without a second copy of the weights).
    pub adapters: bool,
}

impl Fwd {
    pub fn new(train: bool, precision: Precision) -> Self {
        Self { train, compute: precision.compute_kind(), adapters: true }
    }

    /// `t` in the compute kind.
    pub fn cast(&self, t: &Tensor) -> Tensor {
        match self.compute {
            Some(k) if t.kind() != k => t.to_kind(k),
            _ => t.shallow_clone(),
        }
    }
}

/// LoRA settings (Hu et al. 2021): `W x + (alpha / rank) B A dropout(x)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names whose projections get adapters (e.g. `c_attn`, `query`).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["c_attn".into()] }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.rank > 0, "lora.rank must be > 0, got {}", self.rank);
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "lora.dropout must be in [0, 1), got {}", self.dropout);
        anyhow::ensure!(!self.targets.is_empty(), "lora.targets must name at least one module");
        Ok(())
    }

    /// Whether the module at `path` (e.g. `transformer.h.0.attn.c_attn`) is a target.
    pub fn targets_path(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        self.targets.iter().any(|t| t == last || t == path)
    }
}

/// Weight layout of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GPT-2's Conv1D: weight `[in, out]`.
    InOut,
    /// `nn.Linear`: weight `[out, in]`.
    OutIn,
}

/// A plain affine projection in either layout.
#[derive(Debug)]
pub struct Dense {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    layout: Layout,
}

impl Dense {
    /// A projection at `vs` (`weight`, and `bias` when `bias`).
    pub fn new(vs: nn::Path, n_in: i64, n_out: i64, layout: Layout, init: nn::Init, bias: bool) -> Self {
        let shape = match layout {
            Layout::InOut => [n_in, n_out],
            Layout::OutIn => [n_out, n_in],
        };
        let weight = vs.var("weight", &shape, init);
        let bias = bias.then(|| vs.var("bias", &[n_out], nn::Init::Const(0.0)));
        Self { weight, bias, layout }
    }

    pub fn n_out(&self) -> i64 {
        match self.layout {
            Layout::InOut => self.weight.size()[1],
            Layout::OutIn => self.weight.size()[0],
        }
    }

    /// # Shapes
    /// `[.., in]` → `[.., out]`
    pub fn forward(&self, x: &Tensor, f: Fwd) -> Tensor {
        let w = f.cast(&self.weight);
        let w = match self.layout {
            Layout::InOut => w,
            Layout::OutIn => w.tr(),
        };
        let x = f.cast(x);
        let mut shape = x.size();
        let n_in = shape.pop().unwrap_or(1);
        let x2 = x.reshape([-1, n_in]); // [rows, in]
        let y = match &self.bias {
            Some(b) => f.cast(b).addmm(&x2, &w),
            None => x2.matmul(&w),
        }; // [rows, out]
        shape.push(self.n_out());
        y.view(shape.as_slice())
    }
}

/// A plain projection with a low-rank adapter beside it.
#[derive(Debug)]
pub struct LoraDense {
    pub base: Dense,
    /// `[rank, in]`
    pub lora_a: Tensor,
    /// `[out, rank]`, zero at start so the adapter starts as the identity.
    pub lora_b: Tensor,
    scale: f64,
    dropout: f64,
    /// The projection's variable path (`model.layers.0.self_attn.q_proj`).
    path: String,
}

/// A projection that is plain or LoRA, chosen when the model is built, or
/// int8 once quantized for serving ([`crate::Gpt::quantize`]).
#[derive(Debug)]
pub enum Proj {
    Plain(Dense),
    Lora(LoraDense),
    Int8(crate::quant::Int8Dense),
    /// float32 packed once for the CPU kernels ([`crate::Gpt::pack_f32`]).
    Packed(crate::quant::F32Dense),
}

impl Proj {
    /// A projection at `vs` (with a bias when `bias`); with a LoRA adapter
    /// when `lora` targets this path.
    pub fn new(vs: nn::Path, n_in: i64, n_out: i64, layout: Layout, init: nn::Init, bias: bool, lora: Option<&LoraConfig>) -> Self {
        let path = vs.components().collect::<Vec<_>>().join(".");
        let base = Dense::new(vs.clone(), n_in, n_out, layout, init, bias);
        match lora {
            Some(cfg) if cfg.targets_path(&path) => {
                // PEFT's initialisation: A Kaiming-uniform (a = sqrt 5), B zero.
                let bound = 1.0 / (n_in as f64).sqrt();
                let lora_a = (&vs / "lora_A").var("weight", &[cfg.rank, n_in], nn::Init::Uniform { lo: -bound, up: bound });
                let lora_b = (&vs / "lora_B").var("weight", &[n_out, cfg.rank], nn::Init::Const(0.0));
                Proj::Lora(LoraDense { base, lora_a, lora_b, scale: cfg.alpha / cfg.rank as f64, dropout: cfg.dropout, path })
            }
            _ => Proj::Plain(base),
        }
    }

    /// Weights packed for the CPU kernels (int8 or float32).
    pub fn is_packed(&self) -> bool {
        matches!(self, Proj::Int8(_) | Proj::Packed(_))
    }

    /// The product on host floats (whole rows of `in`) when the weights are
    /// packed for the CPU kernels; `None` for libtorch's weights.
    pub fn apply_host(&self, x: &[f32]) -> Option<Vec<f32>> {
        match self {
            Proj::Int8(q) => Some(q.apply(x)),
            Proj::Packed(p) => Some(p.apply(x)),
            Proj::Plain(_) | Proj::Lora(_) => None,
        }
    }

    /// # Shapes
    /// `[.., in]` → `[.., out]`
    pub fn forward(&self, x: &Tensor, f: Fwd) -> Tensor {
        match self {
            Proj::Plain(d) => d.forward(x, f),
            Proj::Int8(q) => q.forward(x),
            Proj::Packed(p) => p.forward(x),
            Proj::Lora(l) if !f.adapters => l.base.forward(x, f),
            Proj::Lora(l) => {
                let base = l.base.forward(x, f);
                let xd = f.cast(x).dropout(l.dropout, f.train);
                let delta = xd.matmul(&f.cast(&l.lora_a).tr()).matmul(&f.cast(&l.lora_b).tr()); // [.., out]
                base + delta * l.scale
            }
        }
    }

    /// This projection on int8 weights (per output channel; the bias kept
    /// float32). The float32 weight's storage is released, in the variable
    /// store too: a quantized model serves, it does not train or save.
    pub fn quantize(&mut self) -> anyhow::Result<()> {
        self.convert("quantizing", |d| Ok(Proj::Int8(crate::quant::Int8Dense::new(&d.weight, d.bias.as_ref(), d.layout)?)))
    }

    /// This projection on float32 weights packed once for the CPU kernels
    /// (the weight's storage released as by [`Proj::quantize`]).
    pub fn pack_f32(&mut self) -> anyhow::Result<()> {
        self.convert("packing", |d| Ok(Proj::Packed(crate::quant::F32Dense::new(&d.weight, d.bias.as_ref(), d.layout)?)))
    }

    /// A plain projection replaced by `make`'s, its float32 weight released;
    /// converted ones stay as they are, LoRA ones are refused.
    fn convert(&mut self, doing: &str, make: impl FnOnce(&Dense) -> anyhow::Result<Proj>) -> anyhow::Result<()> {
        let dense = match self {
            Proj::Plain(d) => d,
            Proj::Lora(l) => anyhow::bail!("`{}` has a LoRA adapter: merge it (export the model) before {doing}", l.path),
            Proj::Int8(_) | Proj::Packed(_) => return Ok(()),
        };
        let converted = make(dense)?;
        dense.weight.set_data(&Tensor::zeros([0], (Kind::Float, dense.weight.device())));
        *self = converted;
        Ok(())
    }

    /// The adapter tensors `(path, A, B)` (`path` the projection's variable path), if any.
    pub fn lora(&self) -> Option<(&str, &Tensor, &Tensor)> {
        match self {
            Proj::Lora(l) => Some((&l.path, &l.lora_a, &l.lora_b)),
            Proj::Plain(_) | Proj::Int8(_) | Proj::Packed(_) => None,
        }
    }
}

/// The layout of `name` (of `shape`) when it is a projection matrix inside a
/// block — 2-D, under `….h.N.…` (GPT-2), `….layers.N.…` (Llama) or
/// `….layer.N.…` (BERT), not a LoRA adapter — else `None`: embeddings, heads,
/// norms and biases are not. GPT-2's Conv1D weights are `[in, out]`, the
/// others `nn.Linear`'s `[out, in]` (what Muon's scaling needs to know).
pub fn block_matrix(name: &str, shape: &[i64]) -> Option<Layout> {
    let in_block = [".h.", ".layers.", ".layer."].iter().any(|b| name.contains(b));
    (shape.len() == 2 && in_block && !name.contains(".lora_")).then(|| {
        if name.starts_with(crate::gpt::Arch::Gpt2.prefix()) {
            Layout::InOut
        } else {
            Layout::OutIn
        }
    })
}

/// Batch and length of a `[batch, seq]` id tensor, checked against a context
/// limit: a sequence longer than the model's context is an error naming it.
pub fn check_ids(idx: &Tensor, past: i64, limit: i64) -> anyhow::Result<(i64, i64)> {
    let (b, t) = idx.size2().map_err(|_| anyhow::anyhow!("token ids must be [batch, seq], got shape {:?}", idx.size()))?;
    anyhow::ensure!(t > 0, "empty sequence (shape {:?})", idx.size());
    anyhow::ensure!(
        past + t <= limit,
        "sequence of {} tokens{} exceeds the model's context of {limit} positions",
        t,
        if past > 0 { format!(" after {past} cached") } else { String::new() }
    );
    Ok((b, t))
}

/// A layer norm whose input is float32 (autocast keeps norms in float32).
pub fn layer_norm(ln: &nn::LayerNorm, x: &Tensor) -> Tensor {
    let x = if x.kind() == Kind::Float { x.shallow_clone() } else { x.to_kind(Kind::Float) };
    ln.forward(&x)
}

/// Folds LoRA adapters into their base weights, PEFT's `merge_and_unload`: for
/// every `P.lora_A.weight` / `P.lora_B.weight` pair, `P.weight += scale · B A`
/// (transposed for Conv1D's `[in, out]` layout); the adapter tensors are
/// dropped. Other tensors pass through unchanged.
pub fn merge_lora(named: Vec<(String, Tensor)>, scale: f64, layout: Layout) -> anyhow::Result<Vec<(String, Tensor)>> {
    let _guard = tch::no_grad_guard();
    let mut adapters = std::collections::HashMap::new();
    let mut base = Vec::new();
    for (name, t) in named {
        if name.contains(".lora_A.") || name.contains(".lora_B.") {
            adapters.insert(name, t);
        } else {
            base.push((name, t));
        }
    }
    let mut used = 0;
    for (name, w) in base.iter_mut() {
        let Some(prefix) = name.strip_suffix(".weight") else { continue };
        let (a, b) = (adapters.get(&format!("{prefix}.lora_A.weight")), adapters.get(&format!("{prefix}.lora_B.weight")));
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => anyhow::bail!("LoRA adapter of `{prefix}` has only one of lora_A / lora_B"),
        };
        let delta = b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * scale; // [out, in]
        let delta = if layout == Layout::InOut { delta.tr() } else { delta };
        anyhow::ensure!(delta.size() == w.size(), "LoRA adapter of `{prefix}` is {:?}, its weight {:?}", delta.size(), w.size());
        *w = (w.to_kind(Kind::Float) + delta).to_kind(w.kind());
        used += 2;
    }
    anyhow::ensure!(used == adapters.len(), "{} LoRA tensor(s) have no base weight", adapters.len() - used);
    Ok(base)
}
