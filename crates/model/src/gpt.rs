//! GPT: a decoder-only Transformer (GPT-2 layout).
//!
//! Learned positions, pre-LayerNorm blocks, causal self-attention through libtorch's
//! `scaled_dot_product_attention`, GELU MLP (4x), input and output embeddings tied.
//! Parameter names and shapes follow Hugging Face's `GPT2LMHeadModel`
//! (`transformer.h.0.attn.c_attn.weight` is `[n_embd, 3 n_embd]`, a "Conv1D"), so a
//! `model.safetensors` + `config.json` written here loads there.
//!
//! Seams for trainers: [`Gpt::hidden`] (hidden states, for reward and value heads)
//! apart from [`Gpt::lm_head`]; projections plain or LoRA at build time
//! ([`Gpt::with_lora`]); bfloat16 matrix products ([`Gpt::precision`]); padded
//! batches through [`Gpt::forward_padded`]; sequence-length errors that name the
//! context limit.
//!
//! References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT `model.py`.

use crate::layers::{check_ids, layer_norm, Fwd, Layout, LoraConfig, Precision, Proj};
use crate::paged::{self, PagedCache, PagedRow, PagedStep};
use crate::quant::Quantization;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// What [`Gpt::quantize`] did: matrices moved to int8 and the weights' bytes
/// (embeddings and int8 projections; norms left out) before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeStats {
    pub projections: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// The untied output head's variable (the same name in both blocks).
pub const LM_HEAD: &str = "lm_head.weight";

/// The decoder's block and tensor names: GPT-2's, or the Llama family's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2: learned positions, LayerNorm, fused `c_attn` Conv1D, GELU MLP
    /// (`GPT2LMHeadModel` names).
    #[default]
    Gpt2,
    /// Llama: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention,
    /// `nn.Linear` projections without biases (`LlamaForCausalLM` names).
    Llama,
    /// Qwen2: Llama with biases on the query, key and value projections
    /// (`Qwen2ForCausalLM`).
    Qwen2,
}

impl Arch {
    /// Every block forja builds.
    pub const ALL: [Arch; 3] = [Arch::Gpt2, Arch::Llama, Arch::Qwen2];

    /// Hugging Face's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Whether the block is the Llama family's.
    pub fn is_llama(self) -> bool {
        self != Self::Gpt2
    }

    /// The prefix of the decoder's own tensors (`transformer.` or `model.`;
    /// an untied head is `lm_head.weight` in both).
    pub fn prefix(self) -> &'static str {
        if self.is_llama() {
            "model."
        } else {
            "transformer."
        }
    }

    /// Weight layout of the projections (GPT-2's Conv1D or `nn.Linear`).
    pub fn layout(self) -> Layout {
        if self.is_llama() {
            Layout::OutIn
        } else {
            Layout::InOut
        }
    }

    /// Whether variable `name` is one of the decoder's own (not a value or
    /// reward head's): under [`Self::prefix`], or the untied `lm_head.weight`.
    pub fn owns(self, name: &str) -> bool {
        name.starts_with(self.prefix()) || name == LM_HEAD
    }

    /// The token-embedding tensor's name.
    pub fn embedding_name(self) -> &'static str {
        if self.is_llama() {
            "model.embed_tokens.weight"
        } else {
            "transformer.wte.weight"
        }
    }

    /// `lora` with GPT-2's projection names translated to this block's: on a
    /// Llama, `c_attn` is `q_proj`, `k_proj`, `v_proj`; `c_proj` is `o_proj` and
    /// `down_proj`; `c_fc` is `gate_proj` and `up_proj` (so one setting means the
    /// same on both blocks).
    pub fn resolve_lora(self, lora: &LoraConfig) -> LoraConfig {
        if !self.is_llama() {
            return lora.clone();
        }
        let mut targets: Vec<String> = Vec::new();
        for t in &lora.targets {
            let names: &[&str] = match t.as_str() {
                "c_attn" => &["q_proj", "k_proj", "v_proj"],
                "c_proj" => &["o_proj", "down_proj"],
                "c_fc" => &["gate_proj", "up_proj"],
                other => &[other][..],
            };
            targets.extend(names.iter().map(|n| n.to_string()).filter(|n| !targets.contains(n)).collect::<Vec<_>>());
        }
        LoraConfig { targets, ..lora.clone() }
    }

    /// The projection names LoRA may target.
    pub fn lora_targets(self) -> &'static [&'static str] {
        if self.is_llama() {
            &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        } else {
            &["c_attn", "c_proj", "c_fc"]
        }
    }
}

/// Model hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    /// The block and tensor names (`gpt2`, `llama`, `qwen2`).
    pub arch: Arch,
    /// Vocabulary size; taken from the tokenizer when 0.
    pub vocab_size: i64,
    /// Context length (GPT-2's `n_positions`, Llama's `max_position_embeddings`).
    pub block_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    /// Key/value heads of grouped-query attention (0: `n_head`, plain multi-head).
    pub n_kv_head: i64,
    /// Width of one head (0: `n_embd / n_head`).
    pub head_dim: i64,
    /// Width of the MLP's hidden layer (0: 4 × `n_embd`; a gated MLP: 8/3 ×
    /// `n_embd` rounded up to a multiple of 16, about the same parameters).
    pub intermediate_size: i64,
    /// Dropout on embeddings, attention and residual branches.
    pub dropout: f64,
    /// Epsilon of the LayerNorms (GPT-2) or RMSNorms (Llama).
    pub layer_norm_epsilon: f64,
    /// The MLP's activation (unset: `gelu` for GPT-2, `silu` for Llama). A
    /// Llama MLP is gated (SwiGLU with `silu`) except with `relu2`, which is
    /// modded-nanogpt's ungated ReLU² (`up_proj`, `down_proj`).
    pub activation: Option<Activation>,
    /// Base of the rotary embeddings (Llama).
    pub rope_theta: f64,
    /// Output head tied to the token embeddings (false: its own `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Biases on all four attention projections (Llama's `attention_bias`).
    pub attention_bias: bool,
    /// RMSNorm of queries and keys per head before the rotary embedding
    /// (Qwen3's `q_norm` / `k_norm`; speedrun option, Llama block only).
    pub qk_norm: bool,
    /// Logits soft-capped as `c · tanh(logits / c)` (0: off; speedrun option).
    pub logit_softcap: f64,
    /// Output projections of attention and MLP start at zero, so every block
    /// starts as the identity (speedrun option).
    pub zero_init_proj: bool,
}

/// The MLP's activation, named as Hugging Face's `activation_function` / `hidden_act`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf).
    #[default]
    Gelu,
    /// GELU's tanh approximation (GPT-2's original).
    GeluNew,
    /// SiLU (Llama's SwiGLU gate).
    Silu,
    /// ReLU squared (Primer; modded-nanogpt's MLP), ungated.
    Relu2,
}

impl Activation {
    /// Hugging Face's name for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluNew => "gelu_new",
            Self::Silu => "silu",
            Self::Relu2 => "relu2",
        }
    }

    /// The same function in `forja-kernels` (on host floats).
    fn kernel(self) -> forja_kernels::Act {
        match self {
            Self::Gelu => forja_kernels::Act::GeluErf,
            Self::GeluNew => forja_kernels::Act::GeluTanh,
            Self::Silu => forja_kernels::Act::Silu,
            Self::Relu2 => forja_kernels::Act::Relu2,
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::GeluNew => x.gelu("tanh"),
            Self::Silu => x.silu(),
            Self::Relu2 => x.relu().square(),
        }
    }
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Gpt2,
            vocab_size: 0,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            n_kv_head: 0,
            head_dim: 0,
            intermediate_size: 0,
            dropout: 0.0,
            layer_norm_epsilon: 1e-5,
            activation: None,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            logit_softcap: 0.0,
            zero_init_proj: false,
        }
    }
}

impl GptConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.vocab_size > 0, "vocab_size must be > 0");
        anyhow::ensure!(self.block_size > 0, "block_size must be > 0");
        anyhow::ensure!(self.n_layer > 0 && self.n_head > 0, "n_layer and n_head must be > 0");
        anyhow::ensure!(self.n_embd > 0, "n_embd must be > 0");
        if self.head_dim == 0 {
            anyhow::ensure!(
                self.n_embd % self.n_head == 0,
                "n_embd ({}) must be a multiple of n_head ({}) (or set head_dim)",
                self.n_embd,
                self.n_head
            );
        }
        anyhow::ensure!(self.head_dim >= 0 && self.n_kv_head >= 0, "head_dim and n_kv_head must be ≥ 0");
        anyhow::ensure!(
            self.n_head % self.kv_heads() == 0,
            "n_head ({}) must be a multiple of n_kv_head ({})",
            self.n_head,
            self.kv_heads()
        );
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1)");
        anyhow::ensure!(self.logit_softcap >= 0.0, "logit_softcap must be ≥ 0 (0: off)");
        if self.arch.is_llama() {
            anyhow::ensure!(self.head_dim() % 2 == 0, "head_dim ({}) must be even for rotary embeddings", self.head_dim());
            anyhow::ensure!(self.rope_theta > 0.0, "rope_theta must be > 0");
            anyhow::ensure!(
                matches!(self.act(), Activation::Silu | Activation::Relu2),
                "activation `{}` is not supported by the Llama block (silu, relu2)",
                self.act().hf_name()
            );
        } else {
            anyhow::ensure!(self.kv_heads() == self.n_head, "n_kv_head (grouped-query attention) needs arch = \"llama\"");
            anyhow::ensure!(self.head_dim() * self.n_head == self.n_embd, "head_dim other than n_embd / n_head needs arch = \"llama\"");
            anyhow::ensure!(!self.qk_norm, "qk_norm needs arch = \"llama\"");
            anyhow::ensure!(!self.attention_bias, "attention_bias is a Llama setting (GPT-2's projections always have biases)");
            anyhow::ensure!(self.act() != Activation::Silu, "activation `silu` needs arch = \"llama\"");
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        if self.n_kv_head == 0 {
            self.n_head
        } else {
            self.n_kv_head
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        if self.head_dim == 0 {
            self.n_embd / self.n_head.max(1)
        } else {
            self.head_dim
        }
    }

    /// The MLP's activation.
    pub fn act(&self) -> Activation {
        self.activation.unwrap_or(if self.arch.is_llama() { Activation::Silu } else { Activation::Gelu })
    }

    /// Whether the MLP is gated (`down(act(gate x) · up x)`).
    pub fn gated(&self) -> bool {
        self.arch.is_llama() && self.act() != Activation::Relu2
    }

    /// Width of the MLP's hidden layer.
    pub fn mlp_width(&self) -> i64 {
        match self.intermediate_size {
            0 if self.gated() => (8 * self.n_embd / 3 + 15) / 16 * 16,
            0 => 4 * self.n_embd,
            n => n,
        }
    }

    /// Whether the model uses a setting Hugging Face's class for its
    /// `model_type` cannot express (its folder is then forja's own).
    pub fn beyond_hf(&self) -> Option<&'static str> {
        if self.qk_norm {
            Some("qk_norm")
        } else if self.logit_softcap > 0.0 {
            Some("logit_softcap")
        } else if self.act() == Activation::Relu2 {
            Some("activation relu2")
        } else {
            None
        }
    }

    /// Parameter count (a tied head counted once).
    pub fn n_params(&self) -> i64 {
        let (c, l, hd, w) = (self.n_embd, self.n_layer, self.head_dim(), self.mlp_width());
        let (q, kv) = (self.n_head * hd, self.kv_heads() * hd);
        let llama = self.arch.is_llama();
        let norm = if llama { c } else { 2 * c };
        let attn_bias = match self.arch {
            Arch::Gpt2 => q + 2 * kv + c,
            Arch::Qwen2 => q + 2 * kv,
            Arch::Llama if self.attention_bias => q + 2 * kv + c,
            Arch::Llama => 0,
        };
        let attn = c * (q + 2 * kv) + q * c + attn_bias + if self.qk_norm { 2 * hd } else { 0 };
        let mlp = if self.gated() { 3 * c * w } else { 2 * c * w } + if llama { 0 } else { w + c };
        let block = 2 * norm + attn + mlp;
        let positions = if llama { 0 } else { self.block_size * c };
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * c };
        self.vocab_size * c + positions + l * block + norm + head
    }

    /// Training FLOPs per token (PaLM appendix B, as nanoGPT's `estimate_mfu`):
    /// 6 N + 12 L T C (N without position embeddings).
    pub fn flops_per_token(&self) -> f64 {
        let positions = if self.arch.is_llama() { 0 } else { self.block_size * self.n_embd };
        let n = (self.n_params() - positions) as f64;
        6.0 * n + 12.0 * (self.n_layer * self.block_size * self.n_head * self.head_dim()) as f64
    }
}

/// Keys and values of one layer, for generation.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>, // [batch, head, past, head_dim]
    v: Option<Tensor>,
}

/// Keys and values of every layer.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layer: i64) -> Self {
        Self { layers: (0..n_layer).map(|_| LayerCache::default()).collect() }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.k.as_ref()).map_or(0, |k| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which keys each query may see, beyond plain causality.
enum KeyMask<'a> {
    /// Padded batches: `[batch, past + seq]` bool, true where the key is a real token.
    Keys(&'a Tensor),
    /// Packed rows: `[batch, 1, seq, seq]` bool, the whole (causal, block-diagonal) mask.
    Full(&'a Tensor),
}

/// A normalisation over the last dimension, computed in float32 (autocast
/// keeps norms in float32): GPT-2's LayerNorm or Llama's RMSNorm.
#[derive(Debug)]
enum Norm {
    Layer(nn::LayerNorm),
    Rms { weight: Tensor, eps: f64 },
}

impl Norm {
    fn new(vs: nn::Path, dim: i64, cfg: &GptConfig) -> Self {
        if cfg.arch.is_llama() {
            Norm::Rms { weight: vs.var("weight", &[dim], nn::Init::Const(1.0)), eps: cfg.layer_norm_epsilon }
        } else {
            let ln_cfg = nn::LayerNormConfig { eps: cfg.layer_norm_epsilon, ..Default::default() };
            Norm::Layer(nn::layer_norm(vs, vec![dim], ln_cfg))
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Layer(ln) => layer_norm(ln, x),
            Norm::Rms { weight, eps } => {
                // Hugging Face's LlamaRMSNorm: x / sqrt(mean(x²) + eps), then the weight.
                let x = x.to_kind(Kind::Float);
                let inv = (x.square().mean_dim(-1, true, Kind::Float) + *eps).rsqrt();
                weight * (x * inv)
            }
        }
    }
}

/// Rotary position embeddings (Su et al. 2021) in Hugging Face's rotate-half
/// layout: the first and second halves of a head are the pairs rotated.
#[derive(Debug)]
struct Rope {
    /// `[block_size, head_dim]` each.
    cos: Tensor,
    sin: Tensor,
}

/// The rotation of one forward pass's positions: `[b or 1, 1, t, head_dim]`.
struct RopeAt {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &GptConfig, device: tch::Device) -> Self {
        let hd = cfg.head_dim();
        let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Float, device)) / hd as f64;
        let inv_freq = Tensor::from(cfg.rope_theta).to_device(device).pow(&exps).reciprocal(); // [hd/2]
        let pos = Tensor::arange(cfg.block_size, (Kind::Float, device));
        let freqs = pos.outer(&inv_freq); // [block, hd/2]
        let emb = Tensor::cat(&[&freqs, &freqs], 1); // [block, hd]
        Self { cos: emb.cos(), sin: emb.sin() }
    }

    /// # Shapes
    /// `positions`: `[t]` or `[b, t]` → `[1 or b, 1, t, head_dim]`
    fn at(&self, positions: &Tensor) -> RopeAt {
        let size = positions.size();
        let (b, t) = if size.len() == 2 { (size[0], size[1]) } else { (1, size[0]) };
        let flat = positions.reshape([-1]);
        let pick = |table: &Tensor| table.index_select(0, &flat).view([b, 1, t, -1]);
        RopeAt { cos: pick(&self.cos), sin: pick(&self.sin) }
    }
}

impl RopeAt {
    /// `x · cos + rotate_half(x) · sin` over `[b, heads, t, head_dim]`.
    fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let rotated = Tensor::cat(&[&x.narrow(3, half, half).neg(), &x.narrow(3, 0, half)], 3);
        let (cos, sin) = (self.cos.to_kind(x.kind()), self.sin.to_kind(x.kind()));
        x * cos + rotated * sin
    }
}

/// Keys and values of `kv` heads repeated for the `h` query heads (grouped-query
/// attention, as Hugging Face's `repeat_kv`).
///
/// # Shapes
/// `[b, kv, t, hd]` → `[b, h, t, hd]`
pub(crate) fn repeat_kv(x: &Tensor, h: i64) -> Tensor {
    let (b, kv, t, hd) = (x.size()[0], x.size()[1], x.size()[2], x.size()[3]);
    if kv == h {
        return x.shallow_clone();
    }
    x.unsqueeze(2).expand([b, kv, h / kv, t, hd], false).reshape([b, h, t, hd])
}

/// The query, key and value projections: GPT-2's one fused Conv1D, or three.
#[derive(Debug)]
enum Qkv {
    Fused(Proj),
    Split { q: Proj, k: Proj, v: Proj },
}

/// The settings of a projection of the decoder.
struct ProjInit<'a> {
    layout: Layout,
    std: f64,
    bias: bool,
    lora: Option<&'a LoraConfig>,
}

fn proj(vs: nn::Path, n_in: i64, n_out: i64, p: &ProjInit) -> Proj {
    let init = if p.std == 0.0 { nn::Init::Const(0.0) } else { nn::Init::Randn { mean: 0.0, stdev: p.std } };
    Proj::new(vs, n_in, n_out, p.layout, init, p.bias, p.lora)
}

/// Initialisation of a decoder's projections: N(0, 0.02); GPT-2 scales the
/// residual outputs by 1/sqrt(2 n_layer); `zero_init_proj` zeroes them.
fn proj_inits<'a>(cfg: &GptConfig, lora: Option<&'a LoraConfig>) -> (ProjInit<'a>, ProjInit<'a>) {
    let layout = cfg.arch.layout();
    let gpt2 = !cfg.arch.is_llama();
    let out_std = if cfg.zero_init_proj {
        0.0
    } else if gpt2 {
        0.02 / (2.0 * cfg.n_layer as f64).sqrt()
    } else {
        0.02
    };
    (ProjInit { layout, std: 0.02, bias: gpt2, lora }, ProjInit { layout, std: out_std, bias: gpt2, lora })
}

#[derive(Debug)]
struct Attention {
    qkv: Qkv,
    out: Proj,
    n_head: i64,
    n_kv: i64,
    head_dim: i64,
    dropout: f64,
    /// Per-head RMSNorms of queries and keys (`qk_norm`).
    qk_norm: Option<(Norm, Norm)>,
}

/// What a forward pass shares across layers.
struct Pass<'a> {
    f: Fwd,
    rope: Option<&'a RopeAt>,
    mask: Option<&'a KeyMask<'a>>,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let c = cfg.n_embd;
        let (hd, h, kv) = (cfg.head_dim(), cfg.n_head, cfg.kv_heads());
        let (inner, out) = proj_inits(cfg, lora);
        let (qkv, out) = if cfg.arch.is_llama() {
            let qkv_bias = cfg.attention_bias || cfg.arch == Arch::Qwen2;
            let qkv_init = ProjInit { bias: qkv_bias, ..inner };
            let split = Qkv::Split {
                q: proj(&vs / "q_proj", c, h * hd, &qkv_init),
                k: proj(&vs / "k_proj", c, kv * hd, &qkv_init),
                v: proj(&vs / "v_proj", c, kv * hd, &qkv_init),
            };
            (split, proj(&vs / "o_proj", h * hd, c, &ProjInit { bias: cfg.attention_bias, ..out }))
        } else {
            (Qkv::Fused(proj(&vs / "c_attn", c, 3 * c, &inner)), proj(&vs / "c_proj", c, c, &out))
        };
        let qk_norm = cfg.qk_norm.then(|| (Norm::new(&vs / "q_norm", hd, cfg), Norm::new(&vs / "k_norm", hd, cfg)));
        Self { qkv, out, n_head: h, n_kv: kv, head_dim: hd, dropout: cfg.dropout, qk_norm }
    }

    /// Queries `[b, h, t, hd]`, keys and values `[b, kv, t, hd]` of `x`, the
    /// queries and keys normed and rotated where the model does so.
    fn project(&self, x: &Tensor, p: &Pass) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let heads = |z: &Tensor, n: i64| z.view([b, t, n, self.head_dim]).transpose(1, 2);
        let (mut q, mut k, v) = match &self.qkv {
            Qkv::Fused(c_attn) => {
                let parts = c_attn.forward(x, p.f).split(self.n_head * self.head_dim, 2);
                (heads(&parts[0], self.n_head), heads(&parts[1], self.n_head), heads(&parts[2], self.n_head))
            }
            Qkv::Split { q, k, v } => {
                (heads(&q.forward(x, p.f), self.n_head), heads(&k.forward(x, p.f), self.n_kv), heads(&v.forward(x, p.f), self.n_kv))
            }
        };
        if let Some((qn, kn)) = &self.qk_norm {
            let kind = q.kind();
            (q, k) = (qn.forward(&q).to_kind(kind), kn.forward(&k).to_kind(kind));
        }
        if let Some(r) = p.rope {
            (q, k) = (r.apply(&q), r.apply(&k));
        }
        (q, k, v)
    }

    /// Heads `[b, h, t, hd]` back to `[b, t, c]` through the output projection.
    fn merge(&self, y: &Tensor, f: Fwd) -> Tensor {
        let (b, t) = (y.size()[0], y.size()[2]);
        self.out.forward(&y.transpose(1, 2).contiguous().view([b, t, self.n_head * self.head_dim]), f)
    }

    /// # Shapes
    /// `x`: `[batch, seq, n_embd]` → `[batch, seq, n_embd]`
    fn forward(&self, x: &Tensor, p: &Pass, cache: Option<&mut LayerCache>) -> Tensor {
        let t = x.size()[1];
        let (q, mut k, mut v) = self.project(x, p);
        let mut past = 0;
        if let Some(cache) = cache {
            if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
                past = pk.size()[2];
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            cache.k = Some(k.shallow_clone());
            cache.v = Some(v.shallow_clone());
        }
        let (k, v) = (repeat_kv(&k, self.n_head), repeat_kv(&v, self.n_head));
        let dev = x.device();
        let drop = if p.f.train { self.dropout } else { 0.0 };
        let y = match p.mask {
            Some(KeyMask::Full(allowed)) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed.shallow_clone()), drop, false, None, false)
            }
            Some(KeyMask::Keys(keys)) => {
                // Causal and key-padding mask; each position also sees itself, so a
                // padding query never has an empty row (its output is unused).
                let b = x.size()[0];
                let causal = Tensor::ones([t, past + t], (Kind::Bool, dev)).tril(past); // [t, past+t]
                let own = Tensor::eye_m(t, past + t, (Kind::Bool, dev)).roll([past], [1]);
                let keys = keys.view([b, 1, 1, past + t]);
                let allowed = causal.logical_and(&keys).logical_or(&own); // [b, 1, t, past+t]
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed), drop, false, None, false)
            }
            // No past: plain causal. One new token: it may see every cached position.
            None if past == 0 || t == 1 => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, drop, past == 0, None, false),
            None => {
                // Several new tokens after a past: query i sees keys up to past + i.
                let causal = Tensor::ones([t, past + t], (Kind::Bool, dev)).tril(past);
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(causal), drop, false, None, false)
            }
        }; // [b, h, t, hd]
        self.merge(&y, p.f).dropout(drop, p.f.train)
    }

    /// Attention over a paged cache (continuous batching).
    fn forward_paged(&self, x: &Tensor, p: &Pass, layer: usize, cache: &mut PagedCache, step: &PagedStep) -> Tensor {
        let (q, k, v) = self.project(x, p);
        let y = paged::attend(&q, &k, &v, layer, cache, step);
        self.merge(&y, p.f)
    }
}

/// The MLP: `proj(act(fc x))`, or gated `down(act(gate x) · up x)` (SwiGLU).
#[derive(Debug)]
enum MlpKind {
    Plain { fc: Proj, proj: Proj },
    Gated { gate: Proj, up: Proj, down: Proj },
}

#[derive(Debug)]
struct Mlp {
    kind: MlpKind,
    dropout: f64,
    activation: Activation,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let (c, w) = (cfg.n_embd, cfg.mlp_width());
        let (inner, out) = proj_inits(cfg, lora);
        let kind = if cfg.gated() {
            MlpKind::Gated {
                gate: proj(&vs / "gate_proj", c, w, &inner),
                up: proj(&vs / "up_proj", c, w, &inner),
                down: proj(&vs / "down_proj", w, c, &out),
            }
        } else if cfg.arch.is_llama() {
            MlpKind::Plain { fc: proj(&vs / "up_proj", c, w, &inner), proj: proj(&vs / "down_proj", w, c, &out) }
        } else {
            MlpKind::Plain { fc: proj(&vs / "c_fc", c, w, &inner), proj: proj(&vs / "c_proj", w, c, &out) }
        };
        Self { kind, dropout: cfg.dropout, activation: cfg.act() }
    }

    fn forward(&self, x: &Tensor, f: Fwd) -> Tensor {
        if !f.train {
            if let Some(y) = self.forward_host(x) {
                return y;
            }
        }
        let y = match &self.kind {
            MlpKind::Plain { fc, proj } => proj.forward(&self.activation.apply(&fc.forward(x, f)), f),
            MlpKind::Gated { gate, up, down } => down.forward(&(self.activation.apply(&gate.forward(x, f)) * up.forward(x, f)), f),
        };
        y.dropout(self.dropout, f.train)
    }

    /// The MLP on host floats when every projection is packed for the CPU
    /// kernels (serving on one CPU thread): from one product to the next
    /// without a libtorch call between them. `None` otherwise.
    fn forward_host(&self, x: &Tensor) -> Option<Tensor> {
        if !self.projs().iter().all(|p| p.is_packed()) {
            return None;
        }
        let (input, mut shape) = crate::quant::host_floats(x);
        let rows = input.len() / (*shape.last()?).max(1) as usize;
        let y = self.apply_host(&input)?;
        shape.pop();
        shape.push((y.len() / rows.max(1)) as i64);
        Some(Tensor::from_slice(&y).view(shape.as_slice()))
    }

    /// The MLP on rows of host floats (`None` unless every projection is packed).
    fn apply_host(&self, input: &[f32]) -> Option<Vec<f32>> {
        let act = self.activation.kernel();
        let (hidden, out) = match &self.kind {
            MlpKind::Plain { fc, proj } => {
                let mut h = fc.apply_host(input)?;
                forja_kernels::activate(act, &mut h);
                (h, proj)
            }
            MlpKind::Gated { gate, up, down } => {
                let mut g = gate.apply_host(input)?;
                let u = up.apply_host(input)?;
                forja_kernels::activate(act, &mut g);
                g.iter_mut().zip(&u).for_each(|(g, u)| *g *= u);
                (g, down)
            }
        };
        out.apply_host(&hidden)
    }

    fn projs(&self) -> Vec<&Proj> {
        match &self.kind {
            MlpKind::Plain { fc, proj } => vec![fc, proj],
            MlpKind::Gated { gate, up, down } => vec![gate, up, down],
        }
    }

    fn projs_mut(&mut self) -> Vec<&mut Proj> {
        match &mut self.kind {
            MlpKind::Plain { fc, proj } => vec![fc, proj],
            MlpKind::Gated { gate, up, down } => vec![gate, up, down],
        }
    }
}

#[derive(Debug)]
struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let (ln_1, attn, ln_2) =
            if cfg.arch.is_llama() { ("input_layernorm", "self_attn", "post_attention_layernorm") } else { ("ln_1", "attn", "ln_2") };
        Self {
            ln_1: Norm::new(&vs / ln_1, cfg.n_embd, cfg),
            attn: Attention::new(&vs / attn, cfg, lora),
            ln_2: Norm::new(&vs / ln_2, cfg.n_embd, cfg),
            mlp: Mlp::new(&vs / "mlp", cfg, lora),
        }
    }

    /// The residual stream stays float32; branches may compute in bfloat16.
    fn forward(&self, x: &Tensor, p: &Pass, cache: Option<&mut LayerCache>) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), p, cache).to_kind(Kind::Float);
        &x + self.mlp.forward(&self.ln_2.forward(&x), p.f).to_kind(Kind::Float)
    }

    fn forward_paged(&self, x: &Tensor, p: &Pass, layer: usize, cache: &mut PagedCache, step: &PagedStep) -> Tensor {
        let x = x + self.attn.forward_paged(&self.ln_1.forward(x), p, layer, cache, step).to_kind(Kind::Float);
        &x + self.mlp.forward(&self.ln_2.forward(&x), p.f).to_kind(Kind::Float)
    }

    /// The block's projections.
    fn projs(&self) -> Vec<&Proj> {
        let mut out: Vec<&Proj> = match &self.attn.qkv {
            Qkv::Fused(p) => vec![p],
            Qkv::Split { q, k, v } => vec![q, k, v],
        };
        out.push(&self.attn.out);
        out.extend(self.mlp.projs());
        out
    }

    fn projs_mut(&mut self) -> Vec<&mut Proj> {
        let mut out: Vec<&mut Proj> = match &mut self.attn.qkv {
            Qkv::Fused(p) => vec![p],
            Qkv::Split { q, k, v } => vec![q, k, v],
        };
        out.push(&mut self.attn.out);
        out.extend(self.mlp.projs_mut());
        out
    }
}

/// How positions enter: GPT-2's learned embeddings added to the tokens' (`wpe`),
/// or Llama's rotary embeddings applied to queries and keys.
#[derive(Debug)]
enum Positions {
    Learned(nn::Embedding),
    Rotary(Rope),
}

/// Host copies of what a decoding step on packed weights reads besides
/// them: GPT-2's position table or the rotary tables, and every norm (the
/// token embeddings, as large as the head, are looked up in their tensor).
#[derive(Debug)]
struct HostDecode {
    positions: HostPositions,
    /// The first norm and the second of each block, then the final one.
    norms: Vec<HostNorm>,
}

/// How positions enter: GPT-2's learned table added to the embedding, or the
/// rotary tables (`[block_size, head_dim]` each) applied to queries and keys.
#[derive(Debug)]
enum HostPositions {
    Learned(Vec<f32>),
    Rotary { cos: Vec<f32>, sin: Vec<f32> },
}

impl HostDecode {
    /// For a decoder on the CPU whose block projections and head are all
    /// packed (GPT-2's block, or the Llama family's without QK-norm); `None`
    /// for any other model.
    fn of(m: &Gpt) -> anyhow::Result<Option<Self>> {
        let packed = m.h.iter().all(|b| b.projs().iter().all(|p| p.is_packed()));
        let head = m.head_int8.is_some() || m.head_packed.is_some();
        if !packed || !head || m.cfg.qk_norm || m.device() != tch::Device::Cpu {
            return Ok(None);
        }
        let floats = |t: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(Vec::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1))?) };
        // tch keeps a LayerNorm's epsilon private: it was built from the config's.
        let ln_eps = m.cfg.layer_norm_epsilon as f32;
        let mut norms = Vec::new();
        for n in m.h.iter().flat_map(|b| [&b.ln_1, &b.ln_2]).chain([&m.ln_f]) {
            norms.push(match n {
                Norm::Layer(ln) => {
                    let (Some(w), Some(b)) = (&ln.ws, &ln.bs) else { return Ok(None) };
                    HostNorm { w: floats(w)?, b: Some(floats(b)?), eps: ln_eps }
                }
                Norm::Rms { weight, eps } => HostNorm { w: floats(weight)?, b: None, eps: *eps as f32 },
            });
        }
        let positions = match &m.positions {
            Positions::Learned(wpe) => HostPositions::Learned(floats(&wpe.ws)?),
            Positions::Rotary(r) => HostPositions::Rotary { cos: floats(&r.cos)?, sin: floats(&r.sin)? },
        };
        Ok(Some(Self { positions, norms }))
    }

    /// Rotates the `heads` heads of `hd` floats at the start of `x` to
    /// position `p` (Hugging Face's rotate-half: `x · cos + rotate_half(x) · sin`).
    fn rotate(&self, x: &mut [f32], heads: usize, hd: usize, p: usize) {
        let HostPositions::Rotary { cos, sin } = &self.positions else { return };
        let (cos, sin, half) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd], hd / 2);
        for head in x.chunks_exact_mut(hd).take(heads) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * cos[j] - b * sin[j];
                head[j + half] = b * cos[j + half] + a * sin[j + half];
            }
        }
    }
}

/// A LayerNorm (with its bias) or an RMSNorm (without) on host floats.
#[derive(Debug)]
struct HostNorm {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    eps: f32,
}

impl HostNorm {
    /// Each row of `c` floats of `x`: a LayerNorm normalises it (biased
    /// variance, as `torch.nn.LayerNorm`), scales and shifts it; an RMSNorm
    /// divides it by `sqrt(mean(x²) + eps)` and scales it (Hugging Face's
    /// `LlamaRMSNorm`).
    fn apply(&self, x: &[f32], c: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c.max(1)) {
            match &self.b {
                Some(b) => {
                    let mean = row.iter().sum::<f32>() / c as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    out.extend(row.iter().zip(self.w.iter().zip(b)).map(|(v, (w, b))| (v - mean) * inv * w + b));
                }
                None => {
                    let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / c as f32 + self.eps).sqrt();
                    out.extend(row.iter().zip(&self.w).map(|(v, w)| w * (v * inv)));
                }
            }
        }
        out
    }
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// The decoder language model: GPT-2's block or the Llama family's.
#[derive(Debug)]
pub struct Gpt {
    pub cfg: GptConfig,
    wte: nn::Embedding,
    positions: Positions,
    h: Vec<Block>,
    ln_f: Norm,
    /// The output head when not tied to `wte`: `[vocab, n_embd]`.
    lm_head: Option<Tensor>,
    /// The output head on int8 weights, once quantized ([`Gpt::quantize`]).
    head_int8: Option<Box<crate::quant::Int8Dense>>,
    /// The output head packed for the CPU kernels ([`Gpt::pack_f32`]).
    head_packed: Option<Box<crate::quant::F32Dense>>,
    /// What a decoding step on packed weights reads on the host besides
    /// them (set by [`Gpt::pack_f32`] and [`Gpt::quantize`]).
    host: Option<Box<HostDecode>>,
    /// Precision of matrix products.
    pub precision: Precision,
    /// Whether LoRA adapters take part in forward passes ([`Gpt::set_adapters`]).
    adapters: std::sync::atomic::AtomicBool,
}

impl Gpt {
    /// Creates the model's variables under `vs` (randomly initialised: N(0, 0.02),
    /// GPT-2's residual projections scaled by 1/sqrt(2 n_layer), norms at one).
    pub fn new(vs: &nn::Path, cfg: &GptConfig) -> anyhow::Result<Self> {
        Self::with_lora(vs, cfg, None)
    }

    /// As [`Gpt::new`], with LoRA adapters on the projections `lora` targets
    /// (GPT-2: `c_attn`, `c_proj`, `c_fc`; Llama: `q_proj` … `down_proj`),
    /// named `….q_proj.lora_A.weight` / `lora_B`.
    pub fn with_lora(vs: &nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> anyhow::Result<Self> {
        cfg.validate()?;
        let resolved = lora.map(|l| cfg.arch.resolve_lora(l));
        let lora = resolved.as_ref();
        if let Some(l) = lora {
            l.validate()?;
            let known = cfg.arch.lora_targets();
            if let Some(t) = l.targets.iter().find(|t| !known.contains(&t.rsplit('.').next().unwrap_or(t))) {
                anyhow::bail!("lora.targets: `{t}` is not a projection of the {} block ({})", cfg.arch.model_type(), known.join(", "));
            }
        }
        let llama = cfg.arch.is_llama();
        let t = vs / if llama { "model" } else { "transformer" };
        let emb_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let (wte, layers, norm) = if llama { ("embed_tokens", "layers", "norm") } else { ("wte", "h", "ln_f") };
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| (vs / "lm_head").var("weight", &[cfg.vocab_size, cfg.n_embd], nn::Init::Randn { mean: 0.0, stdev: 0.02 }));
        Ok(Self {
            cfg: cfg.clone(),
            wte: nn::embedding(&t / wte, cfg.vocab_size, cfg.n_embd, emb_cfg),
            positions: if llama {
                Positions::Rotary(Rope::new(cfg, vs.device()))
            } else {
                Positions::Learned(nn::embedding(&t / "wpe", cfg.block_size, cfg.n_embd, emb_cfg))
            },
            h: (0..cfg.n_layer).map(|i| Block::new(&t / layers / i, cfg, lora)).collect(),
            ln_f: Norm::new(&t / norm, cfg.n_embd, cfg),
            lm_head,
            head_int8: None,
            head_packed: None,
            host: None,
            precision: Precision::F32,
            adapters: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The LoRA adapter tensors, `(name, tensor)` (empty without LoRA).
    pub fn lora_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, a, b) in self.h.iter().flat_map(Block::projs).filter_map(Proj::lora) {
            out.push((format!("{path}.lora_A.weight"), a.shallow_clone()));
            out.push((format!("{path}.lora_B.weight"), b.shallow_clone()));
        }
        out
    }

    /// Turns the LoRA adapters on or off for the following forward passes:
    /// off, the model is its frozen base (PPO's and DPO's reference with no
    /// second copy of the weights in memory). No effect without LoRA.
    pub fn set_adapters(&self, on: bool) {
        self.adapters.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn fwd(&self, train: bool) -> Fwd {
        Fwd { adapters: self.adapters.load(std::sync::atomic::Ordering::Relaxed), ..Fwd::new(train, self.precision) }
    }

    /// The embedded input and the rotation of its positions: learned position
    /// embeddings added (GPT-2), or rotary ones for the attention (Llama).
    ///
    /// # Shapes
    /// `tokens`: `[b, t, c]`, `positions`: `[t]` or `[b, t]`
    fn embed(&self, tokens: Tensor, positions: &Tensor) -> (Tensor, Option<RopeAt>) {
        match &self.positions {
            Positions::Learned(wpe) => (tokens + wpe.forward(positions), None),
            Positions::Rotary(rope) => (tokens, Some(rope.at(positions))),
        }
    }

    /// Final hidden states (after the final norm), float32.
    ///
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, past + seq ≤ block_size) → `[batch, seq, n_embd]`
    pub fn hidden(&self, idx: &Tensor, train: bool, mut cache: Option<&mut KvCache>) -> anyhow::Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (_, t) = check_ids(idx, past, self.cfg.block_size)?;
        let pos = Tensor::arange_start(past, past + t, (Kind::Int64, idx.device()));
        let (x, rope) = self.embed(self.wte.forward(idx), &pos);
        let mut x = x.dropout(self.cfg.dropout, train); // [b, t, c]
        let pass = Pass { f: self.fwd(train), rope: rope.as_ref(), mask: None };
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, &pass, layer_cache);
        }
        Ok(self.ln_f.forward(&x))
    }

    /// Token embeddings (the rows of `wte`) of `idx`: what [`Gpt::logits_from_embeds`]
    /// takes, for attributions and gradient-guided attacks.
    ///
    /// # Shapes
    /// `[batch, seq]` → `[batch, seq, n_embd]`
    pub fn token_embeds(&self, idx: &Tensor) -> Tensor {
        self.wte.forward(idx)
    }

    /// The token-embedding matrix `[vocab, n_embd]`.
    pub fn embedding_matrix(&self) -> &Tensor {
        &self.wte.ws
    }

    /// Logits of every position of a sequence given as token embeddings
    /// (positions from 0, no dropout, no cache): a forward pass that can be
    /// differentiated with respect to the input embeddings.
    ///
    /// # Shapes
    /// `embeds`: `[batch, seq, n_embd]` (seq ≤ block_size) → `[batch, seq, vocab]`
    pub fn logits_from_embeds(&self, embeds: &Tensor) -> anyhow::Result<Tensor> {
        let size = embeds.size();
        anyhow::ensure!(size.len() == 3 && size[2] == self.cfg.n_embd, "embeddings must be [b, t, {}], got {size:?}", self.cfg.n_embd);
        anyhow::ensure!(
            size[1] >= 1 && size[1] <= self.cfg.block_size,
            "sequence of {} does not fit block_size {}",
            size[1],
            self.cfg.block_size
        );
        let pos = Tensor::arange(size[1], (Kind::Int64, embeds.device()));
        let (mut x, rope) = self.embed(embeds.shallow_clone(), &pos);
        let pass = Pass { f: self.fwd(false), rope: rope.as_ref(), mask: None };
        for block in &self.h {
            x = block.forward(&x, &pass, None);
        }
        Ok(self.lm_head(&self.ln_f.forward(&x)))
    }

    /// Hidden states of a left-padded batch: `positions` `[batch, seq]` are each
    /// row's own positions, `key_mask` `[batch, past + seq]` marks real tokens.
    pub fn hidden_padded(&self, idx: &Tensor, positions: &Tensor, key_mask: &Tensor, cache: &mut KvCache) -> anyhow::Result<Tensor> {
        let past = cache.len();
        let (b, t) = check_ids(idx, past, self.cfg.block_size)?;
        anyhow::ensure!(positions.size() == [b, t], "positions must be [{b}, {t}], got {:?}", positions.size());
        anyhow::ensure!(key_mask.size() == [b, past + t], "key mask must be [{b}, {}], got {:?}", past + t, key_mask.size());
        let mask = KeyMask::Keys(key_mask);
        let (mut x, rope) = self.embed(self.wte.forward(idx), positions); // [b, t, c]
        let pass = Pass { f: self.fwd(false), rope: rope.as_ref(), mask: Some(&mask) };
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, &pass, Some(&mut cache.layers[i]));
        }
        Ok(self.ln_f.forward(&x))
    }

    /// Hidden states of packed rows: several examples per row, `positions`
    /// `[batch, seq]` restarting at 0 for each, `segments` `[batch, seq]` naming
    /// the example of each token. A token attends to earlier tokens of its own
    /// segment only (a causal, block-diagonal mask through SDPA), so examples
    /// sharing a row never see each other.
    pub fn hidden_packed(&self, idx: &Tensor, positions: &Tensor, segments: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (b, t) = check_ids(idx, 0, self.cfg.block_size)?;
        anyhow::ensure!(positions.size() == [b, t], "positions must be [{b}, {t}], got {:?}", positions.size());
        anyhow::ensure!(segments.size() == [b, t], "segments must be [{b}, {t}], got {:?}", segments.size());
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1)); // [b, t, t]
        let causal = Tensor::ones([t, t], (Kind::Bool, idx.device())).tril(0);
        let allowed = same.logical_and(&causal).unsqueeze(1); // [b, 1, t, t]
        let mask = KeyMask::Full(&allowed);
        let (x, rope) = self.embed(self.wte.forward(idx), positions);
        let mut x = x.dropout(self.cfg.dropout, train); // [b, t, c]
        let pass = Pass { f: self.fwd(train), rope: rope.as_ref(), mask: Some(&mask) };
        for block in &self.h {
            x = block.forward(&x, &pass, None);
        }
        Ok(self.ln_f.forward(&x))
    }

    /// Final hidden state of the last token of each row of a continuous-batching
    /// step over `cache` (see [`crate::paged`]): rows are prompts (or their
    /// uncached ends) to prefill or one new token per running sequence, each
    /// through its own block table.
    ///
    /// # Shapes
    /// `rows`: b rows → `[b, n_embd]`
    pub fn hidden_paged(&self, rows: &[PagedRow], cache: &mut PagedCache) -> anyhow::Result<Tensor> {
        if let Some(host) = &self.host {
            if cache.on_host() && rows.iter().all(|r| r.tokens.len() == 1) {
                return self.decode_host(host, rows, cache);
            }
        }
        let (step, idx, positions, last) = paged::plan(rows, cache, self.device())?;
        let (mut x, rope) = self.embed(self.wte.forward(&idx), &positions); // [b, t, c]
        let pass = Pass { f: self.fwd(false), rope: rope.as_ref(), mask: None };
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward_paged(&x, &pass, i, cache, &step);
        }
        let c = self.cfg.n_embd;
        let last = x.gather(1, &last.view([-1, 1, 1]).expand([-1, 1, c], false), false).squeeze_dim(1); // [b, c]
        Ok(self.ln_f.forward(&last))
    }

    /// Whether the projections and head run on int8 weights ([`Gpt::quantize`]).
    pub fn is_quantized(&self) -> bool {
        self.head_int8.is_some()
    }

    /// Whether decoding steps over a host cache run on host floats (a
    /// decoder whose projections and head are packed or int8, without QK-norm).
    pub fn decodes_on_host(&self) -> bool {
        self.host.is_some()
    }

    /// [`Gpt::hidden_paged`] for a decoding step (one token per row) of a
    /// decoder on packed weights with its cache in host memory: after one
    /// libtorch lookup of the token embeddings (the table stays in its
    /// tensor), every layer on host floats up to the final norm (rotary
    /// embeddings and grouped-query attention for the Llama family), with no
    /// libtorch call in between (at decoding sizes each costs microseconds,
    /// most of a step's time once the products are packed).
    fn decode_host(&self, host: &HostDecode, rows: &[PagedRow], cache: &mut PagedCache) -> anyhow::Result<Tensor> {
        let paged::Plan { step, ids, positions, .. } = paged::plan_rows(rows, cache, self.device())?;
        let c = self.cfg.n_embd as usize;
        let (h, kv, hd) = (self.cfg.n_head as usize, self.cfg.kv_heads() as usize, self.cfg.head_dim() as usize);
        let vocab = self.cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| !(0..vocab).contains(&id)) {
            anyhow::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let (mut x, _) = crate::quant::host_floats(&self.wte.ws.f_index_select(0, &Tensor::from_slice(&ids))?);
        if let HostPositions::Learned(wpe) = &host.positions {
            for (row, &p) in x.chunks_exact_mut(c).zip(&positions) {
                add(row, &wpe[p as usize * c..(p as usize + 1) * c]);
            }
        }
        let broken = || anyhow::anyhow!("a block lost its packed weights");
        let row_w = (h + 2 * kv) * hd;
        for (i, block) in self.h.iter().enumerate() {
            let normed = host.norms[2 * i].apply(&x, c);
            // Each row's query, key and value side by side, as a fused projection gives them.
            let mut qkv = match &block.attn.qkv {
                Qkv::Fused(c_attn) => c_attn.apply_host(&normed).ok_or_else(broken)?,
                Qkv::Split { q, k, v } => {
                    let (q, k, v) = (q.apply_host(&normed), k.apply_host(&normed), v.apply_host(&normed));
                    let (q, k, v) = (q.ok_or_else(broken)?, k.ok_or_else(broken)?, v.ok_or_else(broken)?);
                    let mut out = Vec::with_capacity(rows.len() * row_w);
                    for r in 0..rows.len() {
                        out.extend_from_slice(&q[r * h * hd..(r + 1) * h * hd]);
                        out.extend_from_slice(&k[r * kv * hd..(r + 1) * kv * hd]);
                        out.extend_from_slice(&v[r * kv * hd..(r + 1) * kv * hd]);
                    }
                    out
                }
            };
            for (row, &p) in qkv.chunks_exact_mut(row_w).zip(&positions) {
                host.rotate(row, h + kv, hd, p as usize);
            }
            let y = paged::decode_host(&qkv, i, cache, &step, h, hd).ok_or_else(broken)?;
            let a = block.attn.out.apply_host(&y).ok_or_else(broken)?;
            add(&mut x, &a);
            let m = block.mlp.apply_host(&host.norms[2 * i + 1].apply(&x, c)).ok_or_else(broken)?;
            add(&mut x, &m);
        }
        let x = host.norms[2 * self.h.len()].apply(&x, c);
        Ok(Tensor::from_slice(&x).view([rows.len() as i64, c as i64]))
    }

    /// Next-token logits from hidden states (the tied embedding or the
    /// untied head; soft-capped when `logit_softcap` is set), float32.
    ///
    /// # Shapes
    /// `[batch, seq, n_embd]` → `[batch, seq, vocab]`
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let logits = match (&self.head_int8, &self.head_packed) {
            (Some(q), _) => q.forward(hidden),
            (None, Some(p)) => p.forward(hidden),
            (None, None) => {
                let f = self.fwd(false);
                let head = self.lm_head.as_ref().unwrap_or(&self.wte.ws);
                f.cast(hidden).matmul(&f.cast(head).tr()).to_kind(Kind::Float)
            }
        };
        match self.cfg.logit_softcap {
            cap if cap > 0.0 => (logits / cap).tanh() * cap,
            _ => logits,
        }
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, past + seq ≤ block_size) → `[batch, seq, vocab]`
    pub fn forward(&self, idx: &Tensor, train: bool, cache: Option<&mut KvCache>) -> anyhow::Result<Tensor> {
        Ok(self.lm_head(&self.hidden(idx, train, cache)?))
    }

    /// Puts the blocks' projections and the output head on int8 weights, per
    /// output channel, for serving on the CPU (`Quantization::None`: nothing).
    /// A tied embedding takes the quantized values too, so the model is the
    /// one a quantized folder ([`crate::quant::write_quantized_folder`]) holds.
    /// The float32 projection weights are released: the model no longer trains.
    pub fn quantize(&mut self, q: Quantization) -> anyhow::Result<QuantizeStats> {
        let before = self.weight_bytes();
        if q == Quantization::None || self.head_int8.is_some() {
            return Ok(QuantizeStats { projections: 0, bytes_before: before, bytes_after: before });
        }
        anyhow::ensure!(self.device() == tch::Device::Cpu, "int8 weights run on the CPU, the model is on {:?}", self.device());
        // Packed float32 projections have released their weights: nothing left to quantize.
        anyhow::ensure!(self.head_packed.is_none(), "the model's float32 weights are packed already: quantize before packing");
        let _guard = tch::no_grad_guard();
        let mut projections = 0;
        for block in &mut self.h {
            for p in block.projs_mut() {
                p.quantize()?;
                projections += 1;
            }
        }
        let head = match &mut self.lm_head {
            Some(w) => {
                let q = crate::quant::Int8Dense::new(w, None, Layout::OutIn)?;
                w.set_data(&Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)));
                q
            }
            None => {
                let (qw, scale) = crate::quant::quantize(&self.wte.ws, Layout::OutIn)?;
                self.wte.ws.copy_(&crate::quant::dequantize(&qw, &scale));
                crate::quant::Int8Dense::from_quantized(&qw, &scale, None, Layout::OutIn)?
            }
        };
        self.head_int8 = Some(Box::new(head));
        self.host = HostDecode::of(self)?.map(Box::new);
        Ok(QuantizeStats { projections: projections + 1, bytes_before: before, bytes_after: self.weight_bytes() })
    }

    /// Puts the blocks' projections on float32 weights packed once for
    /// forja's CPU kernels (single-threaded; no per-step packing as a BLAS
    /// GEMM does at a few rows; a row's result independent of its batch).
    /// The output head gets a packed copy (a tied embedding stays for the
    /// lookups). For serving with one engine thread.
    pub fn pack_f32(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.device() == tch::Device::Cpu, "packed weights run on the CPU, the model is on {:?}", self.device());
        if self.head_int8.is_some() || self.head_packed.is_some() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for block in &mut self.h {
            for p in block.projs_mut() {
                p.pack_f32()?;
            }
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.wte.ws);
        self.head_packed = Some(Box::new(crate::quant::F32Dense::new(head, None, Layout::OutIn)?));
        self.host = HostDecode::of(self)?.map(Box::new);
        Ok(())
    }

    /// Bytes of the weights: float32 tensors and int8 projections.
    fn weight_bytes(&self) -> usize {
        let dense = |p: &Proj| match p {
            Proj::Plain(d) => d.weight.numel() * 4 + d.bias.as_ref().map_or(0, |b| b.numel() * 4),
            Proj::Lora(l) => (l.base.weight.numel() + l.lora_a.numel() + l.lora_b.numel()) * 4,
            Proj::Int8(q) => q.bytes(),
            Proj::Packed(p) => p.bytes(),
        };
        let projs: usize = self.h.iter().flat_map(Block::projs).map(dense).sum();
        let head = self.head_int8.as_ref().map_or(self.lm_head.as_ref().map_or(0, |w| w.numel() * 4), |q| q.bytes());
        let rest = self.cfg.vocab_size as usize * self.cfg.n_embd as usize * 4
            + if self.cfg.arch.is_llama() { 0 } else { self.cfg.block_size as usize * self.cfg.n_embd as usize * 4 };
        projs + head + rest
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.wte.ws.device()
    }

    /// Mean cross-entropy of next-token prediction (targets of -100 are ignored).
    ///
    /// # Shapes
    /// `idx`, `targets`: `[batch, seq]` → scalar
    pub fn loss(&self, idx: &Tensor, targets: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let logits = self.forward(idx, train, None)?;
        Ok(crate::lm::cross_entropy(&logits, targets))
    }
}
