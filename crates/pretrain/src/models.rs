//! Pretrained models in and out: `import_model` turns any HF BERT- or
//! GPT-2-layout folder (safetensors + config.json + tokenizer.json) into a forja
//! model folder, checking that every tensor the architecture needs is there with
//! its shape; `embed` writes mean-pooled, L2-normalised sentence embeddings of
//! documents with a BERT encoder (sentence-transformers' recipe).

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::StageCtx;
use forja_core::{Document, EmbeddingRow};
use forja_model::bert::BertConfig;
use forja_model::bert::{embed_rows, encode_for_bert};
use forja_model::checkpoint::{write_folder, write_model_files, AnyModel, LoadedModel};
use forja_model::{load_model, parse_device};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Parameters of `import_model`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {}

/// Loads the folder `from` (checking every tensor) and writes it as a forja
/// model folder at `to`; returns its `model_type`.
pub fn import_model(from: &Path, to: &Path) -> anyhow::Result<&'static str> {
    let LoadedModel { vs, model, tokenizer } =
        load_model(from, tch::Device::Cpu).with_context(|| format!("importing {}", from.display()))?;
    forja_core::fsutil::atomic_dir(to, |dir| match &model {
        AnyModel::Gpt(g) => write_model_files(dir, &vs, &g.cfg, &tokenizer),
        AnyModel::Bert(b) => {
            let arch = if b.mlm.is_some() { "BertForMaskedLM" } else { "BertModel" };
            let cfg = BertConfig { architectures: vec![arch.into()], ..b.bert.cfg.clone() };
            write_folder(dir, &vs, &cfg, &tokenizer)
        }
        AnyModel::Lstm(l) => write_folder(dir, &vs, &l.cfg, &tokenizer),
    })?;
    let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    println!("import_model: {} ({}, {params} parameters) → {}", from.display(), model.model_type(), to.display());
    Ok(model.model_type())
}

/// Parameters of `export_gguf`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GgufConfig {
    /// Weights as `f32`, `f16` or `q8_0` (norms and biases stay f32).
    pub dtype: forja_model::gguf::GgufDtype,
}

/// Parameters of `quantize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizeConfig {
    /// `int8`: int8 weights, symmetric, one scale per output channel.
    pub method: forja_model::Quantization,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self { method: forja_model::Quantization::Int8 }
    }
}

/// Parameters of `embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Tokens per document, special tokens included (longer ones are cut, as
    /// sentence-transformers' `max_seq_length`); capped by the model's positions.
    pub max_length: usize,
    pub device: Option<String>,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { batch_size: 32, max_length: 256, device: None }
    }
}

/// Embeds texts with a loaded BERT: `[n, hidden]` float32 rows, unit length.
pub fn embed_texts(loaded: &LoadedModel, texts: &[&str], cfg: &EmbedConfig) -> anyhow::Result<Vec<Vec<f32>>> {
    let AnyModel::Bert(b) = &loaded.model else {
        anyhow::bail!("embed needs a BERT encoder, the model is `{}`", loaded.model.model_type());
    };
    let max_len = cfg.max_length.min(b.bert.cfg.max_position_embeddings as usize).max(2);
    let encoded: Vec<Vec<u32>> = texts.iter().map(|t| encode_for_bert(&loaded.tokenizer, t, max_len)).collect::<anyhow::Result<_>>()?;
    // Sorted by length, so batches carry little padding.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(cfg.batch_size.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
        for (&i, v) in chunk.iter().zip(embed_rows(&b.bert, &rows)?) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// Embeds every document of `documents`; writes an `embeddings` artifact.
pub fn run_embed(cfg: &EmbedConfig, model_dir: &Path, documents: &Path, out: &Path, ctx: &StageCtx) -> anyhow::Result<usize> {
    let device = parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
    let loaded = load_model(model_dir, device)?;
    let docs = Document::read(documents)?;
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let vectors = embed_texts(&loaded, &texts, cfg).with_context(|| format!("embedding {}", documents.display()))?;
    let rows: Vec<EmbeddingRow> = docs.iter().zip(vectors).map(|(d, vector)| EmbeddingRow { doc_id: d.id.clone(), vector }).collect();
    EmbeddingRow::write(out, &ctx.name, &ctx.config_hash, &rows)?;
    let dim = rows.first().map_or(0, |r| r.vector.len());
    println!("embed: {} documents → {dim}-dimensional unit vectors", rows.len());
    Ok(rows.len())
}
