//! A decoder model folder written as one GGUF file (version 3), the format
//! llama.cpp — and ollama and LM Studio on top of it — load: llama.cpp's tensor
//! names and layouts for its `gpt2`, `llama` and `qwen2` architectures, the
//! hyper-parameters under `{arch}.*`, and the byte-level BPE tokenizer as
//! `tokenizer.ggml.*` (model `gpt2`: tokens, token types, merges, special ids;
//! the chat template when the folder has one).
//!
//! Weights are `f32`, `f16` or `q8_0` (llama.cpp's blocks of 32 int8 values and
//! one f16 scale: `d = max|x| / 127`, `q = round(x / d)`); norms, biases and
//! matrices whose rows are not a multiple of 32 stay `f32`, as llama.cpp's own
//! converter does. GPT-2's Conv1D weights are written transposed (GGUF stores
//! `nn.Linear`'s `[out, in]`); a Llama's query and key rows are permuted to
//! llama.cpp's interleaved rotary layout (its `convert_hf_to_gguf.py` permute).
//!
//! Reference: the GGUF specification (ggml's `docs/gguf.md`).

use crate::checkpoint::{load_gpt, CONFIG};
use crate::gpt::{Arch, GptConfig};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: u64 = 32;
/// llama.cpp's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

/// The weights' type in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufDtype {
    #[default]
    F32,
    F16,
    Q8_0,
}

impl GgufDtype {
    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// ggml's tensor types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32,
    F16,
    Q8_0,
}

impl GgmlType {
    fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct GgufSummary {
    pub arch: String,
    pub tensors: usize,
    pub bytes: u64,
    pub vocab: usize,
}

/// A metadata value.
enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

/// The file being assembled: metadata, then tensor infos, then data.
#[derive(Default)]
struct Gguf {
    meta: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Gguf {
    fn meta(&mut self, key: &str, v: Value) {
        self.meta.push((key.to_string(), v));
    }

    /// Adds `t` (any float kind, row-major `[.., cols]`) as `name` in `ty`.
    fn tensor(&mut self, name: &str, t: &Tensor, ty: GgmlType) -> anyhow::Result<()> {
        let t = t.to_kind(Kind::Float).contiguous();
        let dims: Vec<u64> = t.size().iter().rev().map(|&d| d as u64).collect(); // ggml: innermost first
        let data = match ty {
            GgmlType::F32 => f32_bytes(&t),
            GgmlType::F16 => f16_bytes(&t),
            GgmlType::Q8_0 => q8_0(&t)?,
        };
        self.tensors.push((name.to_string(), dims, ty, data));
        Ok(())
    }

    fn encode_meta(out: &mut Vec<u8>, key: &str, v: &Value) {
        put_str(out, key);
        match v {
            Value::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*x));
            }
            Value::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(out, s);
            }
            Value::StrArray(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| put_str(out, s));
            }
            Value::I32Array(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|x| out.extend(x.to_le_bytes()));
            }
        }
    }

    fn write(&self, file: &Path) -> anyhow::Result<u64> {
        let mut head = Vec::new();
        head.extend(MAGIC);
        head.extend(VERSION.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            Self::encode_meta(&mut head, k, v);
        }
        let pad = |n: u64| n.div_ceil(ALIGNMENT) * ALIGNMENT;
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut head, name);
            head.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| head.extend(d.to_le_bytes()));
            head.extend(ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = pad(offset + data.len() as u64);
        }
        head.resize(pad(head.len() as u64) as usize, 0);
        let mut f = std::io::BufWriter::new(std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?);
        f.write_all(&head)?;
        for (_, _, _, data) in &self.tensors {
            f.write_all(data)?;
            let padded = pad(data.len() as u64) as usize;
            f.write_all(&vec![0u8; padded - data.len()])?;
        }
        f.flush()?;
        Ok(head.len() as u64 + offset)
    }
}

/// Little-endian bytes of a float32 tensor's values.
fn f32_bytes(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.reshape([-1]).copy_data(&mut v, n);
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of a tensor's values as IEEE half floats.
fn f16_bytes(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut bits = vec![0i16; n];
    t.to_kind(Kind::Half).reshape([-1]).view_dtype(Kind::Int16).copy_data(&mut bits, n);
    bits.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// ggml's Q8_0 blocks of a `[.., cols]` tensor (cols a multiple of 32): per 32
/// values an f16 scale `d = max|x| / 127` and `round(x / d)` as int8 (rounding
/// half away from zero, as C's `roundf`).
fn q8_0(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let n = t.numel() as i64;
    anyhow::ensure!(n % 32 == 0, "q8_0 needs a multiple of 32 values, got {n}");
    let blocks = t.reshape([n / 32, 32]);
    let amax = blocks.abs().amax([1i64].as_slice(), true); // [b, 1]
    let d = &amax / 127.0;
    let id = d.reciprocal().where_self(&d.ne(0.0), &d.zeros_like());
    let x = &blocks * &id;
    let q = (x.sign() * (x.abs() + 0.5).floor()).clamp(-127.0, 127.0).to_kind(Kind::Int8);
    let nb = (n / 32) as usize;
    let scales = f16_bytes(&d); // 2 bytes a block
    let mut qs = vec![0i8; n as usize];
    q.view([-1]).copy_data(&mut qs, n as usize);
    let mut out = Vec::with_capacity(nb * 34);
    for i in 0..nb {
        out.extend(&scales[2 * i..2 * i + 2]);
        out.extend(qs[i * 32..(i + 1) * 32].iter().map(|&b| b as u8));
    }
    Ok(out)
}

/// llama.cpp's permutation of a Llama query or key projection (`[heads · hd, in]`)
/// from Hugging Face's rotate-half layout to its interleaved pairs.
fn permute_qk(w: &Tensor, heads: i64) -> Tensor {
    let size = w.size();
    let rest: Vec<i64> = size[1..].to_vec();
    let mut shape = vec![heads, 2, size[0] / heads / 2];
    shape.extend(&rest);
    w.reshape(shape.as_slice()).swapaxes(1, 2).reshape(size.as_slice())
}

/// The byte-level BPE of `tokenizer.json`: tokens by id, their types, merges.
struct BpeVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn read_bpe(dir: &Path) -> anyhow::Result<BpeVocab> {
    let path = dir.join(crate::checkpoint::TOKENIZER);
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)?;
    let model = &raw["model"];
    if model["type"].as_str() != Some("BPE") || raw["pre_tokenizer"]["type"].as_str() != Some("ByteLevel") {
        bail!(
            "{}: GGUF export needs a byte-level BPE tokenizer (llama.cpp's `gpt2` tokenizer); this one is `{}` with pre-tokenizer `{}`",
            path.display(),
            model["type"].as_str().unwrap_or("?"),
            raw["pre_tokenizer"]["type"].as_str().unwrap_or("none")
        );
    }
    let vocab = model["vocab"].as_object().context("tokenizer.json: no model.vocab")?;
    let mut by_id: Vec<(u64, String, bool)> = vocab.iter().filter_map(|(t, id)| id.as_u64().map(|i| (i, t.clone(), false))).collect();
    for added in raw["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            match by_id.iter_mut().find(|(i, _, _)| *i == id) {
                Some(entry) => entry.2 = added["special"].as_bool().unwrap_or(true),
                None => by_id.push((id, content.to_string(), added["special"].as_bool().unwrap_or(true))),
            }
        }
    }
    by_id.sort_by_key(|(i, _, _)| *i);
    for (pos, (id, t, _)) in by_id.iter().enumerate() {
        anyhow::ensure!(*id == pos as u64, "{}: token ids are not contiguous (`{t}` has id {id}, expected {pos})", path.display());
    }
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json: no model.merges")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                Ok(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or("")))
            }
            other => bail!("tokenizer.json: a merge is neither \"a b\" nor [a, b]: {other}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(BpeVocab {
        types: by_id.iter().map(|(_, _, special)| if *special { TOKEN_CONTROL } else { TOKEN_NORMAL }).collect(),
        tokens: by_id.into_iter().map(|(_, t, _)| t).collect(),
        merges,
    })
}

/// llama.cpp's architecture name of a decoder (refusing what it cannot run).
fn gguf_arch(cfg: &GptConfig) -> anyhow::Result<&'static str> {
    if let Some(what) = cfg.beyond_hf() {
        bail!("{what} has no llama.cpp counterpart: this model cannot be written as GGUF");
    }
    Ok(match cfg.arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    })
}

/// The weight type of a tensor: norms, biases and rows not of 32 stay f32.
fn weight_type(t: &Tensor, dtype: GgufDtype) -> GgmlType {
    let size = t.size();
    match dtype {
        _ if size.len() < 2 => GgmlType::F32,
        GgufDtype::F32 => GgmlType::F32,
        GgufDtype::F16 => GgmlType::F16,
        GgufDtype::Q8_0 if size[size.len() - 1] % 32 == 0 => GgmlType::Q8_0,
        GgufDtype::Q8_0 => GgmlType::F32,
    }
}

/// Writes the decoder folder `dir` as the GGUF file `file` (atomically).
pub fn write_gguf(dir: &Path, file: &Path, dtype: GgufDtype) -> anyhow::Result<GgufSummary> {
    let (vs, model, _tok) = load_gpt(dir, tch::Device::Cpu)?;
    let cfg = &model.cfg;
    let arch = gguf_arch(cfg)?;
    let bpe = read_bpe(dir)?;
    anyhow::ensure!(
        bpe.tokens.len() as i64 <= cfg.vocab_size,
        "the tokenizer has {} tokens, the model's vocabulary {}",
        bpe.tokens.len(),
        cfg.vocab_size
    );
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG))?)?;
    let mut g = Gguf::default();
    g.meta("general.architecture", Value::Str(arch.into()));
    let name = dir.file_name().map_or("forja".into(), |n| n.to_string_lossy().to_string());
    g.meta("general.name", Value::Str(name));
    g.meta("general.file_type", Value::U32(dtype.file_type()));
    let hp = |k: &str| format!("{arch}.{k}");
    g.meta(&hp("context_length"), Value::U32(cfg.block_size as u32));
    g.meta(&hp("embedding_length"), Value::U32(cfg.n_embd as u32));
    g.meta(&hp("feed_forward_length"), Value::U32(cfg.mlp_width() as u32));
    g.meta(&hp("block_count"), Value::U32(cfg.n_layer as u32));
    g.meta(&hp("attention.head_count"), Value::U32(cfg.n_head as u32));
    if cfg.arch.is_llama() {
        g.meta(&hp("attention.head_count_kv"), Value::U32(cfg.kv_heads() as u32));
        g.meta(&hp("attention.layer_norm_rms_epsilon"), Value::F32(cfg.layer_norm_epsilon as f32));
        g.meta(&hp("rope.freq_base"), Value::F32(cfg.rope_theta as f32));
        g.meta(&hp("rope.dimension_count"), Value::U32(cfg.head_dim() as u32));
        g.meta(&hp("attention.key_length"), Value::U32(cfg.head_dim() as u32));
        g.meta(&hp("attention.value_length"), Value::U32(cfg.head_dim() as u32));
    } else {
        g.meta(&hp("attention.layer_norm_epsilon"), Value::F32(cfg.layer_norm_epsilon as f32));
    }
    g.meta("tokenizer.ggml.model", Value::Str("gpt2".into()));
    // The pre-tokenizer is the tokenizer's, not the architecture's: forja's
    // byte-level BPE splits as GPT-2 does (read_bpe refuses any other).
    g.meta("tokenizer.ggml.pre", Value::Str("gpt-2".into()));
    let vocab = bpe.tokens.len();
    // A vocabulary padded beyond the tokenizer (SFT grows it to a multiple) gets placeholder tokens.
    let mut tokens = bpe.tokens;
    let mut types = bpe.types;
    for i in vocab as i64..cfg.vocab_size {
        tokens.push(format!("[PAD{i}]"));
        types.push(5); // UNUSED
    }
    g.meta("tokenizer.ggml.tokens", Value::StrArray(tokens));
    g.meta("tokenizer.ggml.token_type", Value::I32Array(types));
    g.meta("tokenizer.ggml.merges", Value::StrArray(bpe.merges));
    for (key, field) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Some(id) = raw[field].as_u64().or_else(|| raw[field][0].as_u64()) {
            g.meta(key, Value::U32(id as u32));
        }
    }
    g.meta("tokenizer.ggml.add_bos_token", Value::Bool(false));
    if let Some(t) = crate::chat::read_template(dir)? {
        g.meta("tokenizer.chat_template", Value::Str(t.source.clone()));
    }
    let vars = vs.variables();
    let get = |n: &str| vars.get(n).map(|t| t.shallow_clone()).with_context(|| format!("{}: no tensor `{n}`", dir.display()));
    let add = |g: &mut Gguf, name: &str, t: Tensor| -> anyhow::Result<()> {
        let ty = weight_type(&t, dtype);
        g.tensor(name, &t, ty)
    };
    if cfg.arch.is_llama() {
        add(&mut g, "token_embd.weight", get("model.embed_tokens.weight")?)?;
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let b = |s: &str| format!("blk.{i}.{s}");
            add(&mut g, &b("attn_norm.weight"), get(&p("input_layernorm.weight"))?)?;
            let (q, k) = (get(&p("self_attn.q_proj.weight"))?, get(&p("self_attn.k_proj.weight"))?);
            let (q, k) = if arch == "llama" { (permute_qk(&q, cfg.n_head), permute_qk(&k, cfg.kv_heads())) } else { (q, k) };
            add(&mut g, &b("attn_q.weight"), q)?;
            add(&mut g, &b("attn_k.weight"), k)?;
            add(&mut g, &b("attn_v.weight"), get(&p("self_attn.v_proj.weight"))?)?;
            for (hf, gg) in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")] {
                if let Some(bias) = vars.get(&p(&format!("self_attn.{hf}.bias"))) {
                    let heads = if hf == "q_proj" { cfg.n_head } else { cfg.kv_heads() };
                    let bias = if arch == "llama" && hf != "v_proj" { permute_qk(bias, heads) } else { bias.shallow_clone() };
                    add(&mut g, &b(&format!("{gg}.bias")), bias)?;
                }
            }
            add(&mut g, &b("attn_output.weight"), get(&p("self_attn.o_proj.weight"))?)?;
            if let Some(bias) = vars.get(&p("self_attn.o_proj.bias")) {
                add(&mut g, &b("attn_output.bias"), bias.shallow_clone())?;
            }
            add(&mut g, &b("ffn_norm.weight"), get(&p("post_attention_layernorm.weight"))?)?;
            add(&mut g, &b("ffn_gate.weight"), get(&p("mlp.gate_proj.weight"))?)?;
            add(&mut g, &b("ffn_up.weight"), get(&p("mlp.up_proj.weight"))?)?;
            add(&mut g, &b("ffn_down.weight"), get(&p("mlp.down_proj.weight"))?)?;
        }
        add(&mut g, "output_norm.weight", get("model.norm.weight")?)?;
    } else {
        add(&mut g, "token_embd.weight", get("transformer.wte.weight")?)?;
        add(&mut g, "position_embd.weight", get("transformer.wpe.weight")?)?;
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("transformer.h.{i}.{s}");
            let b = |s: &str| format!("blk.{i}.{s}");
            for (hf, gg) in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")] {
                add(&mut g, &b(&format!("{gg}.weight")), get(&p(&format!("{hf}.weight")))?)?;
                add(&mut g, &b(&format!("{gg}.bias")), get(&p(&format!("{hf}.bias")))?)?;
            }
            // Conv1D keeps [in, out]; GGUF wants nn.Linear's [out, in].
            for (hf, gg) in
                [("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")]
            {
                add(&mut g, &b(&format!("{gg}.weight")), get(&p(&format!("{hf}.weight")))?.tr())?;
                add(&mut g, &b(&format!("{gg}.bias")), get(&p(&format!("{hf}.bias")))?)?;
            }
        }
        add(&mut g, "output_norm.weight", get("transformer.ln_f.weight")?)?;
        add(&mut g, "output_norm.bias", get("transformer.ln_f.bias")?)?;
    }
    if !cfg.tie_word_embeddings {
        add(&mut g, "output.weight", get(crate::gpt::LM_HEAD)?)?;
    }
    let tmp = file.with_extension("gguf.tmp");
    let bytes = g.write(&tmp)?;
    std::fs::rename(&tmp, file).with_context(|| format!("moving {} into place", tmp.display()))?;
    Ok(GgufSummary { arch: arch.into(), tensors: g.tensors.len(), bytes, vocab })
}
