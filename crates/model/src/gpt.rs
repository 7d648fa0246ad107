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
use crate::slots::{self, SlotCache, SlotRow, SlotStep};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Model hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size; taken from the tokenizer when 0.
    pub vocab_size: i64,
    /// Context length (GPT-2's `n_positions`).
    pub block_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    /// Dropout on embeddings, attention and residual branches.
    pub dropout: f64,
    pub layer_norm_epsilon: f64,
    /// GELU of the MLP: exact (`gelu`) or the tanh approximation GPT-2 itself
    /// uses (`gelu_new`, Hugging Face's default for `gpt2`).
    pub activation: Activation,
}

/// The MLP's activation, named as Hugging Face's `activation_function`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf).
    #[default]
    Gelu,
    /// GELU's tanh approximation (GPT-2's original).
    GeluNew,
}

impl Activation {
    /// Hugging Face's name for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluNew => "gelu_new",
        }
    }

    /// libtorch's `approximate` argument of `gelu`.
    fn approximate(self) -> &'static str {
        match self {
            Self::Gelu => "none",
            Self::GeluNew => "tanh",
        }
    }
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            dropout: 0.0,
            layer_norm_epsilon: 1e-5,
            activation: Activation::Gelu,
        }
    }
}

impl GptConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.vocab_size > 0, "vocab_size must be > 0");
        anyhow::ensure!(self.block_size > 0, "block_size must be > 0");
        anyhow::ensure!(self.n_layer > 0 && self.n_head > 0, "n_layer and n_head must be > 0");
        anyhow::ensure!(
            self.n_embd > 0 && self.n_embd % self.n_head == 0,
            "n_embd ({}) must be a positive multiple of n_head ({})",
            self.n_embd,
            self.n_head
        );
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1)");
        Ok(())
    }

    /// Parameter count (tied embeddings counted once).
    pub fn n_params(&self) -> i64 {
        let (c, l) = (self.n_embd, self.n_layer);
        let block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c + self.block_size * c + l * block + 2 * c
    }

    /// Training FLOPs per token (PaLM appendix B, as nanoGPT's `estimate_mfu`):
    /// 6 N + 12 L T C.
    pub fn flops_per_token(&self) -> f64 {
        let n = (self.n_params() - self.block_size * self.n_embd) as f64;
        6.0 * n + 12.0 * (self.n_layer * self.block_size * self.n_embd) as f64
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

#[derive(Debug)]
struct Attention {
    c_attn: Proj,
    c_proj: Proj,
    n_head: i64,
    dropout: f64,
}

fn conv1d(vs: nn::Path, n_in: i64, n_out: i64, std: f64, lora: Option<&LoraConfig>) -> Proj {
    Proj::new(vs, n_in, n_out, Layout::InOut, nn::Init::Randn { mean: 0.0, stdev: std }, lora)
}

impl Attention {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let c = cfg.n_embd;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_attn: conv1d(&vs / "c_attn", c, 3 * c, 0.02, lora),
            c_proj: conv1d(&vs / "c_proj", c, c, proj_std, lora),
            n_head: cfg.n_head,
            dropout: cfg.dropout,
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, n_embd]` → `[batch, seq, n_embd]`
    fn forward(&self, x: &Tensor, f: Fwd, cache: Option<&mut LayerCache>, mask: Option<&KeyMask>) -> Tensor {
        let (b, t, c) = (x.size()[0], x.size()[1], x.size()[2]);
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x, f); // [b, t, 3c]
        let heads = |z: &Tensor| z.view([b, t, self.n_head, hd]).transpose(1, 2); // [b, h, t, hd]
        let parts = qkv.split(c, 2);
        let (q, mut k, mut v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
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
        let p = if f.train { self.dropout } else { 0.0 };
        let y = match mask {
            Some(KeyMask::Full(allowed)) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed.shallow_clone()), p, false, None, false)
            }
            Some(KeyMask::Keys(keys)) => {
                // Causal and key-padding mask; each position also sees itself, so a
                // padding query never has an empty row (its output is unused).
                let causal = Tensor::ones([t, past + t], (Kind::Bool, x.device())).tril(past); // [t, past+t]
                let own = Tensor::eye_m(t, past + t, (Kind::Bool, x.device())).roll([past], [1]);
                let keys = keys.view([b, 1, 1, past + t]);
                let allowed = causal.logical_and(&keys).logical_or(&own); // [b, 1, t, past+t]
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed), p, false, None, false)
            }
            // No past: plain causal. One new token: it may see every cached position.
            None if past == 0 || t == 1 => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, p, past == 0, None, false),
            None => {
                // Several new tokens after a past: query i sees keys up to past + i.
                let causal = Tensor::ones([t, past + t], (Kind::Bool, x.device())).tril(past);
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(causal), p, false, None, false)
            }
        }; // [b, h, t, hd]
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        self.c_proj.forward(&y, f).dropout(p, f.train)
    }
}

impl Attention {
    /// Attention over a slot cache (continuous batching).
    fn forward_slots(&self, x: &Tensor, f: Fwd, layer: usize, cache: &mut SlotCache, step: &SlotStep) -> Tensor {
        let (b, t, c) = (x.size()[0], x.size()[1], x.size()[2]);
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x, f); // [b, t, 3c]
        let heads = |z: &Tensor| z.view([b, t, self.n_head, hd]).transpose(1, 2); // [b, h, t, hd]
        let parts = qkv.split(c, 2);
        let y = slots::attend(&heads(&parts[0]), &heads(&parts[1]), &heads(&parts[2]), layer, cache, step);
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        self.c_proj.forward(&y, f)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Proj,
    c_proj: Proj,
    dropout: f64,
    activation: Activation,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let c = cfg.n_embd;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_fc: conv1d(&vs / "c_fc", c, 4 * c, 0.02, lora),
            c_proj: conv1d(&vs / "c_proj", 4 * c, c, proj_std, lora),
            dropout: cfg.dropout,
            activation: cfg.activation,
        }
    }

    fn forward(&self, x: &Tensor, f: Fwd) -> Tensor {
        let h = self.c_fc.forward(x, f).gelu(self.activation.approximate()); // [b, t, 4c]
        self.c_proj.forward(&h, f).dropout(self.dropout, f.train)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: nn::LayerNorm,
    attn: Attention,
    ln_2: nn::LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> Self {
        let ln = |name: &str| {
            let ln_cfg = nn::LayerNormConfig { eps: cfg.layer_norm_epsilon, ..Default::default() };
            nn::layer_norm(&vs / name, vec![cfg.n_embd], ln_cfg)
        };
        Self { ln_1: ln("ln_1"), attn: Attention::new(&vs / "attn", cfg, lora), ln_2: ln("ln_2"), mlp: Mlp::new(&vs / "mlp", cfg, lora) }
    }

    /// The residual stream stays float32; branches may compute in bfloat16.
    fn forward(&self, x: &Tensor, f: Fwd, cache: Option<&mut LayerCache>, mask: Option<&KeyMask>) -> Tensor {
        let x = x + self.attn.forward(&layer_norm(&self.ln_1, x), f, cache, mask).to_kind(Kind::Float);
        &x + self.mlp.forward(&layer_norm(&self.ln_2, &x), f).to_kind(Kind::Float)
    }

    fn forward_slots(&self, x: &Tensor, f: Fwd, layer: usize, cache: &mut SlotCache, step: &SlotStep) -> Tensor {
        let x = x + self.attn.forward_slots(&layer_norm(&self.ln_1, x), f, layer, cache, step).to_kind(Kind::Float);
        &x + self.mlp.forward(&layer_norm(&self.ln_2, &x), f).to_kind(Kind::Float)
    }
}

/// The GPT language model.
#[derive(Debug)]
pub struct Gpt {
    pub cfg: GptConfig,
    wte: nn::Embedding,
    wpe: nn::Embedding,
    h: Vec<Block>,
    ln_f: nn::LayerNorm,
    /// Precision of matrix products.
    pub precision: Precision,
    /// Whether LoRA adapters take part in forward passes ([`Gpt::set_adapters`]).
    adapters: std::sync::atomic::AtomicBool,
}

impl Gpt {
    /// Creates the model's variables under `vs` (randomly initialised: N(0, 0.02),
    /// residual projections scaled by 1/sqrt(2 n_layer)).
    pub fn new(vs: &nn::Path, cfg: &GptConfig) -> anyhow::Result<Self> {
        Self::with_lora(vs, cfg, None)
    }

    /// As [`Gpt::new`], with LoRA adapters on the projections `lora` targets
    /// (`c_attn`, `c_proj`, `c_fc`), named `….c_attn.lora_A.weight` / `lora_B`.
    pub fn with_lora(vs: &nn::Path, cfg: &GptConfig, lora: Option<&LoraConfig>) -> anyhow::Result<Self> {
        cfg.validate()?;
        if let Some(l) = lora {
            l.validate()?;
        }
        let t = vs / "transformer";
        let emb_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let ln_cfg = nn::LayerNormConfig { eps: cfg.layer_norm_epsilon, ..Default::default() };
        Ok(Self {
            cfg: cfg.clone(),
            wte: nn::embedding(&t / "wte", cfg.vocab_size, cfg.n_embd, emb_cfg),
            wpe: nn::embedding(&t / "wpe", cfg.block_size, cfg.n_embd, emb_cfg),
            h: (0..cfg.n_layer).map(|i| Block::new(&t / "h" / i, cfg, lora)).collect(),
            ln_f: nn::layer_norm(&t / "ln_f", vec![cfg.n_embd], ln_cfg),
            precision: Precision::F32,
            adapters: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The LoRA adapter tensors, `(name, tensor)` (empty without LoRA).
    pub fn lora_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, b) in self.h.iter().enumerate() {
            let projs = [
                ("attn.c_attn", &b.attn.c_attn),
                ("attn.c_proj", &b.attn.c_proj),
                ("mlp.c_fc", &b.mlp.c_fc),
                ("mlp.c_proj", &b.mlp.c_proj),
            ];
            for (name, p) in projs {
                if let Some((a, bt)) = p.lora() {
                    out.push((format!("transformer.h.{i}.{name}.lora_A.weight"), a.shallow_clone()));
                    out.push((format!("transformer.h.{i}.{name}.lora_B.weight"), bt.shallow_clone()));
                }
            }
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

    /// Final hidden states (after `ln_f`), float32.
    ///
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, past + seq ≤ block_size) → `[batch, seq, n_embd]`
    pub fn hidden(&self, idx: &Tensor, train: bool, mut cache: Option<&mut KvCache>) -> anyhow::Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (_, t) = check_ids(idx, past, self.cfg.block_size)?;
        let pos = Tensor::arange_start(past, past + t, (Kind::Int64, idx.device()));
        let f = self.fwd(train);
        let mut x = (self.wte.forward(idx) + self.wpe.forward(&pos)).dropout(self.cfg.dropout, train); // [b, t, c]
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, f, layer_cache, None);
        }
        Ok(layer_norm(&self.ln_f, &x))
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
        let f = self.fwd(false);
        let mut x = embeds + self.wpe.forward(&pos);
        for block in &self.h {
            x = block.forward(&x, f, None, None);
        }
        Ok(self.lm_head(&layer_norm(&self.ln_f, &x)))
    }

    /// Hidden states of a left-padded batch: `positions` `[batch, seq]` are each
    /// row's own positions, `key_mask` `[batch, past + seq]` marks real tokens.
    pub fn hidden_padded(&self, idx: &Tensor, positions: &Tensor, key_mask: &Tensor, cache: &mut KvCache) -> anyhow::Result<Tensor> {
        let past = cache.len();
        let (b, t) = check_ids(idx, past, self.cfg.block_size)?;
        anyhow::ensure!(positions.size() == [b, t], "positions must be [{b}, {t}], got {:?}", positions.size());
        anyhow::ensure!(key_mask.size() == [b, past + t], "key mask must be [{b}, {}], got {:?}", past + t, key_mask.size());
        let f = self.fwd(false);
        let mask = KeyMask::Keys(key_mask);
        let mut x = self.wte.forward(idx) + self.wpe.forward(positions); // [b, t, c]
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, f, Some(&mut cache.layers[i]), Some(&mask));
        }
        Ok(layer_norm(&self.ln_f, &x))
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
        let f = self.fwd(train);
        let mut x = (self.wte.forward(idx) + self.wpe.forward(positions)).dropout(self.cfg.dropout, train); // [b, t, c]
        for block in &self.h {
            x = block.forward(&x, f, None, Some(&KeyMask::Full(&allowed)));
        }
        Ok(layer_norm(&self.ln_f, &x))
    }

    /// Final hidden state of the last token of each row of a continuous-batching
    /// step over `cache` (see [`crate::slots`]): rows are prompts to prefill or
    /// one new token per running sequence, each in its own slot.
    ///
    /// # Shapes
    /// `rows`: b rows → `[b, n_embd]`
    pub fn hidden_slots(&self, rows: &[SlotRow], cache: &mut SlotCache) -> anyhow::Result<Tensor> {
        let (step, idx, positions, last) = slots::plan(rows, cache, self.device())?;
        let f = self.fwd(false);
        let mut x = self.wte.forward(&idx) + self.wpe.forward(&positions); // [b, t, c]
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward_slots(&x, f, i, cache, &step);
        }
        let c = self.cfg.n_embd;
        let last = x.gather(1, &last.view([-1, 1, 1]).expand([-1, 1, c], false), false).squeeze_dim(1); // [b, c]
        Ok(layer_norm(&self.ln_f, &last))
    }

    /// Next-token logits from hidden states (the tied embedding), float32.
    ///
    /// # Shapes
    /// `[batch, seq, n_embd]` → `[batch, seq, vocab]`
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let f = self.fwd(false);
        f.cast(hidden).matmul(&f.cast(&self.wte.ws).tr()).to_kind(Kind::Float)
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, past + seq ≤ block_size) → `[batch, seq, vocab]`
    pub fn forward(&self, idx: &Tensor, train: bool, cache: Option<&mut KvCache>) -> anyhow::Result<Tensor> {
        Ok(self.lm_head(&self.hidden(idx, train, cache)?))
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
