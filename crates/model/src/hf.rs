//! A decoder's `config.json` as Hugging Face's classes read and write it:
//! `GPT2Config` for the GPT-2 block, `LlamaConfig` / `Qwen2Config` for the
//! Llama family. Fields Hugging Face leaves out take its defaults; other fields
//! are ignored, and the ones that would change the computation are checked (a
//! setting forja does not implement is refused by name, never ignored).
//!
//! A model using a setting no Hugging Face class of its block has (QK-norm,
//! logit soft-capping, ReLU²) is written with `model_type` `forja-gpt2` /
//! `forja-llama` / `forja-qwen2` and the extra keys `forja_*`, so
//! `transformers` refuses it instead of computing other logits.

use crate::gpt::{Activation, Arch, GptConfig};
use anyhow::bail;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `model_type`s that load as a [`crate::Gpt`].
pub const DECODER_TYPES: [&str; 6] = ["gpt2", "llama", "qwen2", "forja-gpt2", "forja-llama", "forja-qwen2"];

/// `config.json` as Hugging Face's `GPT2Config` reads and writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfGpt2Config {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub n_positions: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<i64>,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "hf_gpt2_activation")]
    pub activation_function: String,
    #[serde(default = "hf_gpt2_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "hf_gpt2_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "hf_gpt2_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "hf_gpt2_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "hf_init")]
    pub initializer_range: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "hf_float32", alias = "dtype")]
    pub torch_dtype: String,
    /// `<|endoftext|>` when the tokenizer has it, else null.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Logit soft-capping (`forja-gpt2` only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forja_logit_softcap: f64,
}

/// `config.json` as Hugging Face's `LlamaConfig` (and `Qwen2Config`) read and
/// write it. The rotary base is read from `rope_theta` or transformers 5's
/// `rope_parameters`; only the default (unscaled) rotary embedding is supported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    pub max_position_embeddings: i64,
    #[serde(default = "hf_llama_eps")]
    pub rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default = "hf_llama_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretraining_tp: Option<i64>,
    #[serde(default = "hf_init")]
    pub initializer_range: f64,
    #[serde(default = "hf_float32", alias = "dtype")]
    pub torch_dtype: String,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    /// Per-head RMSNorm of queries and keys (`forja-*` only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forja_qk_norm: bool,
    /// Logit soft-capping (`forja-*` only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forja_logit_softcap: f64,
}

fn hf_gpt2_activation() -> String {
    "gelu_new".into()
}
fn hf_gpt2_dropout() -> f64 {
    0.1
}
fn hf_gpt2_eps() -> f64 {
    1e-5
}
fn hf_llama_eps() -> f64 {
    1e-6
}
fn hf_llama_act() -> String {
    "silu".into()
}
fn hf_init() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}
fn hf_float32() -> String {
    "float32".into()
}
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn is_false(x: &bool) -> bool {
    !*x
}

/// The `model_type` a decoder's folder is written with.
pub fn model_type(c: &GptConfig) -> &'static str {
    match (c.arch, c.beyond_hf().is_some()) {
        (Arch::Gpt2, false) => "gpt2",
        (Arch::Llama, false) => "llama",
        (Arch::Qwen2, false) => "qwen2",
        (Arch::Gpt2, true) => "forja-gpt2",
        (Arch::Llama, true) => "forja-llama",
        (Arch::Qwen2, true) => "forja-qwen2",
    }
}

/// The Hugging Face class of a decoder (its `architectures` entry).
pub fn architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "GPT2LMHeadModel",
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
    }
}

/// The sequence-classification class of a decoder (reward models).
pub fn classifier_architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "GPT2ForSequenceClassification",
        Arch::Llama => "LlamaForSequenceClassification",
        Arch::Qwen2 => "Qwen2ForSequenceClassification",
    }
}

impl From<&GptConfig> for HfGpt2Config {
    fn from(c: &GptConfig) -> Self {
        Self {
            model_type: model_type(c).into(),
            architectures: vec![architecture(Arch::Gpt2).into()],
            vocab_size: c.vocab_size,
            n_positions: c.block_size,
            n_ctx: Some(c.block_size),
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_inner: Some(c.mlp_width()),
            activation_function: c.act().hf_name().into(),
            resid_pdrop: c.dropout,
            embd_pdrop: c.dropout,
            attn_pdrop: c.dropout,
            layer_norm_epsilon: c.layer_norm_epsilon,
            initializer_range: 0.02,
            tie_word_embeddings: c.tie_word_embeddings,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            torch_dtype: "float32".into(),
            bos_token_id: None,
            eos_token_id: None,
            forja_logit_softcap: c.logit_softcap,
        }
    }
}

impl From<&GptConfig> for HfLlamaConfig {
    fn from(c: &GptConfig) -> Self {
        Self {
            model_type: model_type(c).into(),
            architectures: vec![architecture(c.arch).into()],
            vocab_size: c.vocab_size,
            hidden_size: c.n_embd,
            intermediate_size: c.mlp_width(),
            num_hidden_layers: c.n_layer,
            num_attention_heads: c.n_head,
            num_key_value_heads: Some(c.kv_heads()),
            head_dim: Some(c.head_dim()),
            max_position_embeddings: c.block_size,
            rms_norm_eps: c.layer_norm_epsilon,
            rope_theta: Some(c.rope_theta),
            rope_parameters: None,
            rope_scaling: None,
            hidden_act: c.act().hf_name().into(),
            tie_word_embeddings: c.tie_word_embeddings,
            attention_bias: c.attention_bias,
            mlp_bias: false,
            attention_dropout: c.dropout,
            use_sliding_window: (c.arch == Arch::Qwen2).then_some(false),
            pretraining_tp: None,
            initializer_range: 0.02,
            torch_dtype: "float32".into(),
            bos_token_id: None,
            eos_token_id: None,
            forja_qk_norm: c.qk_norm,
            forja_logit_softcap: c.logit_softcap,
        }
    }
}

/// `config.json` of a decoder with these special tokens.
pub fn hf_config_json(c: &GptConfig, bos: Option<u32>, eos: Option<u32>) -> Value {
    let value = if c.arch.is_llama() {
        let id = |t: Option<u32>| t.map(Value::from);
        serde_json::to_value(HfLlamaConfig { bos_token_id: id(bos), eos_token_id: id(eos), ..HfLlamaConfig::from(c) })
    } else {
        serde_json::to_value(HfGpt2Config { bos_token_id: bos, eos_token_id: eos, ..HfGpt2Config::from(c) })
    };
    value.unwrap_or(Value::Null)
}

/// The activation named `name` when the model type allows it; `None` when it
/// is the block's default.
fn activation(name: &str, arch: Arch, forja: bool) -> anyhow::Result<Option<Activation>> {
    let act = match (name, arch.is_llama()) {
        ("gelu", false) => Activation::Gelu,
        ("gelu_new" | "gelu_pytorch_tanh", false) => Activation::GeluNew,
        ("silu", true) => Activation::Silu,
        ("relu2", _) if forja => Activation::Relu2,
        (other, false) => bail!("activation_function `{other}` is not supported (gelu, gelu_new)"),
        (other, true) => bail!("hidden_act `{other}` is not supported (silu)"),
    };
    let default = if arch.is_llama() { Activation::Silu } else { Activation::Gelu };
    Ok((act != default).then_some(act))
}

impl HfGpt2Config {
    pub fn to_gpt(&self) -> anyhow::Result<GptConfig> {
        let forja = match self.model_type.as_str() {
            "gpt2" => false,
            "forja-gpt2" => true,
            other => bail!("model_type `{other}` is not supported (expected `gpt2`)"),
        };
        if !self.scale_attn_weights || self.scale_attn_by_inverse_layer_idx {
            bail!("attention scaling other than 1/sqrt(head_dim) is not supported");
        }
        Ok(GptConfig {
            arch: Arch::Gpt2,
            vocab_size: self.vocab_size,
            block_size: self.n_positions,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            intermediate_size: self.n_inner.filter(|&n| n != 4 * self.n_embd).unwrap_or(0),
            dropout: self.resid_pdrop,
            layer_norm_epsilon: self.layer_norm_epsilon,
            activation: activation(&self.activation_function, Arch::Gpt2, forja)?,
            tie_word_embeddings: self.tie_word_embeddings,
            logit_softcap: if forja { self.forja_logit_softcap } else { 0.0 },
            ..GptConfig::default()
        })
    }
}

impl HfLlamaConfig {
    /// The rotary base; a scaled rotary embedding (Llama 3's, YaRN …) is refused by name.
    fn rope_theta(&self) -> anyhow::Result<f64> {
        if let Some(s) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            bail!("rope_scaling {s} is not supported (only the default rotary embedding)");
        }
        if let Some(p) = &self.rope_parameters {
            let kind = p["rope_type"].as_str().unwrap_or("default");
            if kind != "default" {
                bail!("rope_parameters.rope_type `{kind}` is not supported (only `default`)");
            }
            if let Some(t) = p["rope_theta"].as_f64() {
                return Ok(t);
            }
        }
        Ok(self.rope_theta.unwrap_or(10_000.0))
    }

    pub fn to_gpt(&self) -> anyhow::Result<GptConfig> {
        let (arch, forja) = match self.model_type.as_str() {
            "llama" => (Arch::Llama, false),
            "qwen2" => (Arch::Qwen2, false),
            "forja-llama" => (Arch::Llama, true),
            "forja-qwen2" => (Arch::Qwen2, true),
            other => bail!("model_type `{other}` is not supported (gpt2, llama, qwen2)"),
        };
        if self.mlp_bias {
            bail!("mlp_bias = true is not supported");
        }
        if self.use_sliding_window == Some(true) {
            bail!("use_sliding_window = true is not supported (full attention only)");
        }
        if let Some(tp) = self.pretraining_tp.filter(|&tp| tp > 1) {
            bail!("pretraining_tp = {tp} is not supported");
        }
        if arch == Arch::Qwen2 && self.attention_bias {
            bail!("attention_bias is not a Qwen2 setting (its query, key and value projections always have biases)");
        }
        let heads = self.num_attention_heads;
        let head_dim = self.head_dim.unwrap_or(0);
        let mut cfg = GptConfig {
            arch,
            vocab_size: self.vocab_size,
            block_size: self.max_position_embeddings,
            n_layer: self.num_hidden_layers,
            n_head: heads,
            n_embd: self.hidden_size,
            n_kv_head: self.num_key_value_heads.filter(|&kv| kv != heads).unwrap_or(0),
            head_dim: if heads > 0 && head_dim * heads == self.hidden_size { 0 } else { head_dim },
            intermediate_size: self.intermediate_size,
            dropout: self.attention_dropout,
            layer_norm_epsilon: self.rms_norm_eps,
            activation: activation(&self.hidden_act, arch, forja)?,
            rope_theta: self.rope_theta()?,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            qk_norm: forja && self.forja_qk_norm,
            logit_softcap: if forja { self.forja_logit_softcap } else { 0.0 },
            zero_init_proj: false,
        };
        // The default width reads back as the default (0), as GPT-2's n_inner does.
        cfg.intermediate_size = 0;
        if cfg.mlp_width() != self.intermediate_size {
            cfg.intermediate_size = self.intermediate_size;
        }
        Ok(cfg)
    }
}

/// The decoder configuration a `config.json` describes.
pub fn gpt_config(raw: &Value) -> anyhow::Result<GptConfig> {
    let kind = raw["model_type"].as_str().unwrap_or("");
    let cfg = match kind {
        "gpt2" | "forja-gpt2" => serde_json::from_value::<HfGpt2Config>(raw.clone())?.to_gpt()?,
        "llama" | "qwen2" | "forja-llama" | "forja-qwen2" => serde_json::from_value::<HfLlamaConfig>(raw.clone())?.to_gpt()?,
        other => bail!("model_type `{other}` is not a decoder forja builds ({})", DECODER_TYPES.join(", ")),
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    fn llama(extra: Value) -> Value {
        let mut v = serde_json::json!({
            "model_type": "llama", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        v
    }

    #[test]
    fn the_rotary_base_is_read_from_either_key_and_variants_are_refused_by_name() {
        assert_eq!(gpt_config(&llama(serde_json::json!({"rope_theta": 5e5}))).unwrap().rope_theta, 5e5);
        let v5 = serde_json::json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}});
        assert_eq!(gpt_config(&llama(v5)).unwrap().rope_theta, 1e6);
        let cfg = gpt_config(&llama(serde_json::json!({}))).unwrap();
        assert_eq!((cfg.rope_theta, cfg.kv_heads(), cfg.tie_word_embeddings), (10_000.0, 2, false), "LlamaConfig's defaults");
        let refused = [
            (serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}), "rope_scaling"),
            (serde_json::json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}), "`yarn`"),
            (serde_json::json!({"mlp_bias": true}), "mlp_bias"),
            (serde_json::json!({"hidden_act": "gelu"}), "hidden_act `gelu`"),
            (serde_json::json!({"model_type": "mistral"}), "`mistral`"),
            (serde_json::json!({"model_type": "qwen2", "use_sliding_window": true}), "use_sliding_window"),
        ];
        for (extra, what) in refused {
            let err = format!("{:#}", gpt_config(&llama(extra.clone())).unwrap_err());
            assert!(err.contains(what), "{extra}: {err}");
        }
    }

    #[test]
    fn a_setting_hugging_face_lacks_makes_a_forja_model_type_that_reads_back() {
        let base = GptConfig { arch: Arch::Llama, vocab_size: 40, n_head: 4, n_embd: 32, ..GptConfig::default() };
        assert_eq!(hf_config_json(&base, None, None)["model_type"], "llama");
        let speedrun = GptConfig { qk_norm: true, logit_softcap: 15.0, activation: Some(Activation::Relu2), ..base };
        let json = hf_config_json(&speedrun, Some(1), Some(2));
        assert_eq!(json["model_type"], "forja-llama");
        assert_eq!(gpt_config(&json).unwrap(), speedrun, "round trip");
        // transformers' own model type never carries the forja-only keys.
        let mut plain = json.clone();
        plain["model_type"] = "llama".into();
        let err = format!("{:#}", gpt_config(&plain).unwrap_err());
        assert!(err.contains("relu2"), "{err}");
    }
}
