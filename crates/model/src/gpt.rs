//! GPT: a decoder-only Transformer (GPT-2 layout).
//!
//! Learned positions, pre-LayerNorm blocks, causal self-attention through libtorch's
//! `scaled_dot_product_attention`, GELU MLP (4x), input and output embeddings tied.
//! Parameter names and shapes follow Hugging Face's `GPT2LMHeadModel`
//! (`transformer.h.0.attn.c_attn.weight` is `[n_embd, 3 n_embd]`, a "Conv1D"), so a
//! `model.safetensors` + `config.json` written here loads there.
//!
//! References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT `model.py`.

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
}

impl Default for GptConfig {
    fn default() -> Self {
        Self { vocab_size: 0, block_size: 64, n_layer: 4, n_head: 4, n_embd: 128, dropout: 0.0, layer_norm_epsilon: 1e-5 }
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

/// GPT-2's "Conv1D": a linear layer whose weight is `[in, out]`.
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(vs: nn::Path, n_in: i64, n_out: i64, std: f64) -> Self {
        let weight = vs.var("weight", &[n_in, n_out], nn::Init::Randn { mean: 0.0, stdev: std });
        let bias = vs.var("bias", &[n_out], nn::Init::Const(0.0));
        Self { weight, bias }
    }
}

impl Module for Conv1D {
    /// # Shapes
    /// `[.., in]` → `[.., out]`
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let n_in = shape.pop().unwrap_or(0);
        let y = self.bias.addmm(&x.reshape([-1, n_in]), &self.weight); // [rows, out]
        shape.push(self.weight.size()[1]);
        y.view(shape.as_slice())
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

#[derive(Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    dropout: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_attn: Conv1D::new(&vs / "c_attn", c, 3 * c, 0.02),
            c_proj: Conv1D::new(&vs / "c_proj", c, c, proj_std),
            n_head: cfg.n_head,
            dropout: cfg.dropout,
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, n_embd]` → `[batch, seq, n_embd]`
    fn forward(&self, x: &Tensor, train: bool, cache: Option<&mut LayerCache>) -> Tensor {
        let (b, t, c) = x.size3().unwrap_or((0, 0, 0));
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x); // [b, t, 3c]
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
        let p = if train { self.dropout } else { 0.0 };
        let y = if past == 0 || t == 1 {
            // No past: plain causal. One new token: it may see every cached position.
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, p, past == 0, None, false)
        } else {
            // Several new tokens after a past: query i sees keys up to past + i.
            let mask = Tensor::ones([t, past + t], (Kind::Bool, x.device())).tril(past);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, false)
        }; // [b, h, t, hd]
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        self.c_proj.forward(&y).dropout(p, train)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    dropout: f64,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_fc: Conv1D::new(&vs / "c_fc", c, 4 * c, 0.02),
            c_proj: Conv1D::new(&vs / "c_proj", 4 * c, c, proj_std),
            dropout: cfg.dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.c_fc.forward(x).gelu("none"); // [b, t, 4c]
        self.c_proj.forward(&h).dropout(self.dropout, train)
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
    fn new(vs: nn::Path, cfg: &GptConfig) -> Self {
        let ln = |name: &str| {
            let ln_cfg = nn::LayerNormConfig { eps: cfg.layer_norm_epsilon, ..Default::default() };
            nn::layer_norm(&vs / name, vec![cfg.n_embd], ln_cfg)
        };
        Self { ln_1: ln("ln_1"), attn: Attention::new(&vs / "attn", cfg), ln_2: ln("ln_2"), mlp: Mlp::new(&vs / "mlp", cfg) }
    }

    fn forward(&self, x: &Tensor, train: bool, cache: Option<&mut LayerCache>) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), train, cache);
        &x + self.mlp.forward(&self.ln_2.forward(&x), train)
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
}

impl Gpt {
    /// Creates the model's variables under `vs` (randomly initialised: N(0, 0.02),
    /// residual projections scaled by 1/sqrt(2 n_layer)).
    pub fn new(vs: &nn::Path, cfg: &GptConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let t = vs / "transformer";
        let emb_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let ln_cfg = nn::LayerNormConfig { eps: cfg.layer_norm_epsilon, ..Default::default() };
        Ok(Self {
            cfg: cfg.clone(),
            wte: nn::embedding(&t / "wte", cfg.vocab_size, cfg.n_embd, emb_cfg),
            wpe: nn::embedding(&t / "wpe", cfg.block_size, cfg.n_embd, emb_cfg),
            h: (0..cfg.n_layer).map(|i| Block::new(&t / "h" / i, cfg)).collect(),
            ln_f: nn::layer_norm(&t / "ln_f", vec![cfg.n_embd], ln_cfg),
        })
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, seq ≤ block_size - cached) → `[batch, seq, vocab]`
    pub fn forward(&self, idx: &Tensor, train: bool, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_, t) = idx.size2().unwrap_or((0, 0));
        let past = cache.as_ref().map_or(0, |c| c.len());
        let pos = Tensor::arange_start(past, past + t, (Kind::Int64, idx.device()));
        let mut x = (self.wte.forward(idx) + self.wpe.forward(&pos)).dropout(self.cfg.dropout, train); // [b, t, c]
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, train, layer_cache);
        }
        let x = self.ln_f.forward(&x);
        x.matmul(&self.wte.ws.tr()) // [b, t, vocab]
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.wte.ws.device()
    }

    /// Mean cross-entropy of next-token prediction.
    ///
    /// # Shapes
    /// `idx`, `targets`: `[batch, seq]` → scalar
    pub fn loss(&self, idx: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        let logits = self.forward(idx, train, None);
        let v = self.cfg.vocab_size;
        logits.view([-1, v]).cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
    }
}
