//! BERT: a bidirectional Transformer encoder (Devlin et al. 2019) with Hugging
//! Face's `BertModel` parameter names and `config.json`, so HF BERT-family
//! checkpoints (e.g. sentence-transformers' all-MiniLM-L6-v2) load as they are and
//! forja's load in `transformers`.
//!
//! Post-LayerNorm blocks, learned absolute and token-type embeddings, exact (erf)
//! GELU, attention through `scaled_dot_product_attention` with a key-padding mask.
//! [`BertMlmHead`] is `BertForMaskedLM`'s head (`cls.predictions.*`, decoder tied
//! to the word embeddings); [`mean_pool`] gives sentence-transformers' embeddings.

use crate::layers::{check_ids, layer_norm, Fwd, Layout, LoraConfig, Precision, Proj};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const BERT_MODEL_TYPE: &str = "bert";

/// `config.json` as Hugging Face's `BertConfig` reads and writes it (unknown
/// fields of other writers are accepted and dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}
fn default_pos_type() -> String {
    "absolute".into()
}
fn default_dtype() -> String {
    "float32".into()
}

impl BertConfig {
    /// A BERT of the given size (BERT's defaults elsewhere: 4× MLP, eps 1e-12).
    pub fn sized(vocab_size: i64, hidden: i64, layers: i64, heads: i64, max_positions: i64, dropout: f64) -> Self {
        Self {
            model_type: BERT_MODEL_TYPE.into(),
            architectures: vec!["BertForMaskedLM".into()],
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: default_act(),
            hidden_dropout_prob: dropout,
            attention_probs_dropout_prob: dropout,
            max_position_embeddings: max_positions,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            initializer_range: 0.02,
            pad_token_id: 0,
            position_embedding_type: default_pos_type(),
            torch_dtype: default_dtype(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.model_type == BERT_MODEL_TYPE, "model_type `{}` is not `bert`", self.model_type);
        anyhow::ensure!(
            matches!(self.hidden_act.as_str(), "gelu" | "gelu_new"),
            "hidden_act `{}` is not supported (gelu, gelu_new)",
            self.hidden_act
        );
        anyhow::ensure!(
            self.position_embedding_type == "absolute",
            "position_embedding_type `{}` is not supported",
            self.position_embedding_type
        );
        anyhow::ensure!(
            self.hidden_size > 0 && self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "hidden_size ({}) must be a positive multiple of num_attention_heads ({})",
            self.hidden_size,
            self.num_attention_heads
        );
        anyhow::ensure!(self.vocab_size > 0 && self.num_hidden_layers > 0 && self.max_position_embeddings > 0, "BERT sizes must be > 0");
        Ok(())
    }
}

fn linear(vs: nn::Path, n_in: i64, n_out: i64, std: f64, lora: Option<&LoraConfig>) -> Proj {
    Proj::new(vs, n_in, n_out, Layout::OutIn, nn::Init::Randn { mean: 0.0, stdev: std }, true, lora)
}

fn ln(vs: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    nn::layer_norm(vs, vec![cfg.hidden_size], nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() })
}

fn act(x: &Tensor, name: &str) -> Tensor {
    x.gelu(if name == "gelu_new" { "tanh" } else { "none" })
}

#[derive(Debug)]
struct Layer {
    query: Proj,
    key: Proj,
    value: Proj,
    attn_out: Proj,
    attn_ln: nn::LayerNorm,
    inter: Proj,
    out: Proj,
    out_ln: nn::LayerNorm,
}

impl Layer {
    fn new(vs: nn::Path, cfg: &BertConfig, lora: Option<&LoraConfig>) -> Self {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let att = &vs / "attention";
        let sa = &att / "self";
        Self {
            query: linear(&sa / "query", h, h, std, lora),
            key: linear(&sa / "key", h, h, std, lora),
            value: linear(&sa / "value", h, h, std, lora),
            attn_out: linear(&att / "output" / "dense", h, h, std, lora),
            attn_ln: ln(&att / "output" / "LayerNorm", cfg),
            inter: linear(&vs / "intermediate" / "dense", h, cfg.intermediate_size, std, lora),
            out: linear(&vs / "output" / "dense", cfg.intermediate_size, h, std, lora),
            out_ln: ln(&vs / "output" / "LayerNorm", cfg),
        }
    }

    /// Token-wise work (projections, MLP, norms) runs on the real tokens only;
    /// attention runs on the padded `[b, t]` layout with the key mask.
    ///
    /// # Shapes
    /// `x`: `[n, h]` (the real tokens of `rows`), `mask`: `[b, 1, 1, t]` bool → `[n, h]`
    fn forward(&self, x: &Tensor, rows: &Rows, mask: Option<&Tensor>, cfg: &BertConfig, f: Fwd) -> Tensor {
        let (b, t, h) = (rows.b, rows.t, x.size()[1]);
        let nh = cfg.num_attention_heads;
        let heads = |z: Tensor| rows.to_padded(&z).view([b, t, nh, h / nh]).transpose(1, 2); // [b, nh, t, hd]
        let (q, k, v) = (heads(self.query.forward(x, f)), heads(self.key.forward(x, f)), heads(self.value.forward(x, f)));
        let p_attn = if f.train { cfg.attention_probs_dropout_prob } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, mask.map(Tensor::shallow_clone), p_attn, false, None, false);
        let ctx = rows.to_rows(&ctx.transpose(1, 2).contiguous().view([b, t, h])); // [n, h]
        let p = if f.train { cfg.hidden_dropout_prob } else { 0.0 };
        let a = self.attn_out.forward(&ctx, f).dropout(p, f.train).to_kind(Kind::Float);
        let x = layer_norm(&self.attn_ln, &(a + x));
        let inner = act(&self.inter.forward(&x, f), &cfg.hidden_act);
        let o = self.out.forward(&inner, f).dropout(p, f.train).to_kind(Kind::Float);
        layer_norm(&self.out_ln, &(o + x))
    }
}

/// Which positions of a `[b, t]` batch hold real tokens: padding is dropped
/// before token-wise work (MosaicBERT's and FlashAttention's "unpadding"), so a
/// batch padded to its longest sequence costs what its real tokens cost, except
/// in attention.
struct Rows {
    b: i64,
    t: i64,
    /// Flat indices of the real tokens in `[b·t]`; `None` when all are real.
    keep: Option<Tensor>,
}

impl Rows {
    fn new(b: i64, t: i64, mask: Option<&Tensor>) -> Self {
        let keep = mask.map(|m| m.reshape([-1]).nonzero().squeeze_dim(1)).filter(|k| k.size()[0] < b * t);
        Self { b, t, keep }
    }

    /// `[b, t, h]` → `[n, h]`
    fn to_rows(&self, x: &Tensor) -> Tensor {
        let flat = x.reshape([self.b * self.t, -1]);
        match &self.keep {
            Some(k) => flat.index_select(0, k),
            None => flat,
        }
    }

    /// `[n, h]` → `[b, t, h]`, padding positions zero.
    fn to_padded(&self, x: &Tensor) -> Tensor {
        let h = x.size()[1];
        let full = match &self.keep {
            Some(k) => Tensor::zeros([self.b * self.t, h], (x.kind(), x.device())).index_copy(0, k, x),
            None => x.shallow_clone(),
        };
        full.view([self.b, self.t, h])
    }
}

/// The encoder (`BertModel` without its pooler).
#[derive(Debug)]
pub struct Bert {
    pub cfg: BertConfig,
    pub word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    emb_ln: nn::LayerNorm,
    layers: Vec<Layer>,
    pub precision: Precision,
}

impl Bert {
    /// Creates the encoder's variables under `vs` (`embeddings.*`, `encoder.layer.N.*`).
    pub fn new(vs: &nn::Path, cfg: &BertConfig, lora: Option<&LoraConfig>) -> anyhow::Result<Self> {
        cfg.validate()?;
        let e = vs / "embeddings";
        let init = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: cfg.initializer_range }, ..Default::default() };
        Ok(Self {
            cfg: cfg.clone(),
            word_embeddings: nn::embedding(&e / "word_embeddings", cfg.vocab_size, cfg.hidden_size, init),
            position_embeddings: nn::embedding(&e / "position_embeddings", cfg.max_position_embeddings, cfg.hidden_size, init),
            token_type_embeddings: nn::embedding(&e / "token_type_embeddings", cfg.type_vocab_size, cfg.hidden_size, init),
            emb_ln: ln(&e / "LayerNorm", cfg),
            layers: (0..cfg.num_hidden_layers).map(|i| Layer::new(vs / "encoder" / "layer" / i, cfg, lora)).collect(),
            precision: Precision::F32,
        })
    }

    /// Last hidden states; padding positions (`attention_mask` 0) come out as
    /// zeros (no real token ever reads them).
    ///
    /// # Shapes
    /// `ids`: `[b, t]` i64 (t ≤ max_position_embeddings); `attention_mask`: `[b, t]`
    /// (1 for tokens, 0 for padding) → `[b, t, hidden]` float32
    pub fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> anyhow::Result<Tensor> {
        check_ids(ids, 0, self.cfg.max_position_embeddings)?;
        self.forward_from_words(&self.word_embeddings.forward(ids), token_types, attention_mask, train)
    }

    /// [`Bert::forward`] from the word embeddings of the tokens (rows of
    /// `word_embeddings`) instead of their ids: position and type embeddings
    /// are added as usual. Attributions and gradient-guided attacks
    /// differentiate with respect to `words`.
    ///
    /// # Shapes
    /// `words`: `[b, t, hidden]` → `[b, t, hidden]`
    pub fn forward_from_words(
        &self,
        words: &Tensor,
        token_types: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> anyhow::Result<Tensor> {
        let size = words.size();
        anyhow::ensure!(
            size.len() == 3 && size[2] == self.cfg.hidden_size && size[1] <= self.cfg.max_position_embeddings,
            "word embeddings must be [b, t ≤ {}, {}], got {size:?}",
            self.cfg.max_position_embeddings,
            self.cfg.hidden_size
        );
        let (b, t) = (size[0], size[1]);
        let device = words.device();
        let pos = Tensor::arange(t, (Kind::Int64, device));
        let types = match token_types {
            Some(tt) => tt.shallow_clone(),
            None => Tensor::zeros([b, t], (Kind::Int64, device)),
        };
        let p = if train { self.cfg.hidden_dropout_prob } else { 0.0 };
        let x = words + self.position_embeddings.forward(&pos) + self.token_type_embeddings.forward(&types);
        let x = layer_norm(&self.emb_ln, &x).dropout(p, train); // [b, t, h]
        let mask = match attention_mask {
            Some(m) => {
                anyhow::ensure!(m.size() == [b, t], "attention_mask must be [{b}, {t}], got {:?}", m.size());
                Some(m.to_kind(Kind::Bool))
            }
            None => None,
        };
        let rows = Rows::new(b, t, mask.as_ref());
        let key_mask = mask.map(|m| m.view([b, 1, 1, t]));
        let f = Fwd::new(train, self.precision);
        let mut x = rows.to_rows(&x); // [n, h]
        for layer in &self.layers {
            x = layer.forward(&x, &rows, key_mask.as_ref(), &self.cfg, f);
        }
        Ok(rows.to_padded(&x))
    }
}

/// `BertForMaskedLM`'s head: dense + GELU + LayerNorm, then the tied decoder.
#[derive(Debug)]
pub struct BertMlmHead {
    dense: Proj,
    ln: nn::LayerNorm,
    bias: Tensor,
}

impl BertMlmHead {
    /// Variables under `vs` (`cls.predictions` in HF's layout).
    pub fn new(vs: &nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        Self {
            dense: linear(vs / "transform" / "dense", h, h, cfg.initializer_range, None),
            ln: ln(vs / "transform" / "LayerNorm", cfg),
            bias: vs.var("bias", &[cfg.vocab_size], nn::Init::Const(0.0)),
        }
    }

    /// # Shapes
    /// `hidden`: `[.., h]` → `[.., vocab]` float32
    pub fn forward(&self, hidden: &Tensor, bert: &Bert) -> Tensor {
        let f = Fwd::new(false, bert.precision);
        let h = act(&self.dense.forward(hidden, f), &bert.cfg.hidden_act).to_kind(Kind::Float);
        let h = layer_norm(&self.ln, &h);
        (f.cast(&h).matmul(&f.cast(&bert.word_embeddings.ws).tr())).to_kind(Kind::Float) + &self.bias
    }
}

/// Mean of the hidden states over real tokens, L2-normalised (sentence-transformers'
/// `Pooling(mean)` + `Normalize`).
///
/// # Shapes
/// `hidden`: `[b, t, h]`, `mask`: `[b, t]` → `[b, h]`
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1); // [b, t, 1]
    let summed = (hidden * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // [b, h]
    let counts = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1e-9); // [b, 1]
    let mean = summed / counts;
    let norm = mean.norm_scalaropt_dim(2.0, [1i64].as_slice(), true).clamp_min(1e-12);
    mean / norm
}

/// Token ids of `text` with the tokenizer's special tokens, cut to `max_len`
/// keeping the final special token (`[CLS] … [SEP]`).
pub fn encode_for_bert(tok: &forja_tokenizer::Tokenizer, text: &str, max_len: usize) -> anyhow::Result<Vec<u32>> {
    let mut ids = tok.encode_with_special(text)?;
    if ids.len() > max_len && max_len >= 2 {
        let last = ids[ids.len() - 1];
        ids.truncate(max_len - 1);
        ids.push(last);
    }
    Ok(ids)
}

/// Sentence embeddings of token-id rows in one batch (padded to the longest
/// with the model's pad id): mean-pooled over real tokens, unit length.
pub fn embed_rows(bert: &Bert, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let pad = bert.cfg.pad_token_id;
    let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
    for row in rows {
        ids.extend(row.iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(pad, width - row.len())));
        mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
    }
    let (n, device) = (rows.len() as i64, bert.word_embeddings.ws.device());
    let ids = Tensor::from_slice(&ids).to(device).view([n, -1]);
    let mask = Tensor::from_slice(&mask).to(device).view([n, -1]);
    let _guard = tch::no_grad_guard();
    let hidden = bert.forward(&ids, None, Some(&mask), false)?;
    Ok(Vec::<Vec<f32>>::try_from(&mean_pool(&hidden, &mask).to_kind(Kind::Float).to(tch::Device::Cpu))?)
}
