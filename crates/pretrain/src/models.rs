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
use forja_model::checkpoint::{write_folder, write_model_files, AnyModel, LoadedModel};
use forja_model::{load_model, mean_pool, parse_device};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

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
    let device = loaded.vs.device();
    let pad = b.bert.cfg.pad_token_id;
    let mut out = vec![Vec::new(); texts.len()];
    let _guard = tch::no_grad_guard();
    for chunk in order.chunks(cfg.batch_size.max(1)) {
        let width = chunk.iter().map(|&i| encoded[i].len()).max().unwrap_or(1);
        let (mut ids, mut mask) = (Vec::with_capacity(chunk.len() * width), Vec::with_capacity(chunk.len() * width));
        for &i in chunk {
            let row = &encoded[i];
            ids.extend(row.iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(pad, width - row.len())));
            mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
        }
        let rows = chunk.len() as i64;
        let ids = Tensor::from_slice(&ids).to(device).view([rows, -1]);
        let mask = Tensor::from_slice(&mask).to(device).view([rows, -1]);
        let hidden = b.bert.forward(&ids, None, Some(&mask), false)?;
        let vecs = mean_pool(&hidden, &mask).to_kind(Kind::Float).to(tch::Device::Cpu);
        let vecs: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&vecs)?;
        for (&i, v) in chunk.iter().zip(vecs) {
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
