//! Tokenizers, saved as Hugging Face `tokenizer.json`:
//! - byte-level BPE trained on the cleaned corpus (GPT-2 style);
//! - character level (nanoGPT's shakespeare_char), as a BPE without merges whose
//!   vocabulary is the corpus's characters in sorted order, plus `<unk>`.
//!
//! Any other `tokenizer.json` loads too (e.g. the WordPiece of an imported BERT).
//! A crate of its own so that models, trainers and the server read tokenizers
//! without compiling the data stack.

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// Which tokenizer to train.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    #[default]
    Bpe,
    Char,
}

/// Tokenizer training settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    pub kind: TokenizerKind,
    /// Target vocabulary size (BPE only), special tokens included.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge (BPE only).
    pub min_frequency: u64,
    /// Special tokens, e.g. `<|endoftext|>`.
    pub special_tokens: Vec<String>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { kind: TokenizerKind::Bpe, vocab_size: 1024, min_frequency: 2, special_tokens: vec![EOT.into()] }
    }
}

/// GPT-2's end-of-text token.
pub const EOT: &str = "<|endoftext|>";
/// The unknown-character token of character-level tokenizers.
pub const UNK: &str = "<unk>";

/// A loaded tokenizer (thread-safe; encode from many threads).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    /// Padding and truncation stored in the file (MiniLM's pads to 128) are
    /// turned off: forja pads its batches itself and never truncates silently.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("{}: not a readable tokenizer.json: {e}", path.display()))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("{}: turning truncation off: {e}", path.display()))?;
        Ok(Self { inner })
    }

    /// Parses a `tokenizer.json` text.
    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))?;
        Ok(Self { inner })
    }

    /// Saves as `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = self.inner.to_string(true).map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
        forja_core::fsutil::atomic_write(path, json.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| anyhow!("encoding: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes with the tokenizer's post-processor (e.g. BERT's `[CLS] … [SEP]`).
    pub fn encode_with_special(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, true).map_err(|e| anyhow!("encoding: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Adds the special tokens that the vocabulary lacks (never split, never
    /// merged, ids after the current ones); returns the ids of those added.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> Vec<u32> {
        let new: Vec<AddedToken> =
            tokens.iter().filter(|t| self.token_to_id(t).is_none()).map(|t| AddedToken::from(t.clone(), true)).collect();
        self.inner.add_special_tokens(&new);
        new.iter().filter_map(|t| self.token_to_id(&t.content)).collect()
    }

    /// Decodes without the special tokens.
    pub fn decode_text(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Trains a tokenizer on `texts`.
pub fn train<'a, I>(texts: I, cfg: &TokenizerConfig) -> anyhow::Result<Tokenizer>
where
    I: Iterator<Item = &'a str> + Send,
{
    match cfg.kind {
        TokenizerKind::Bpe => train_bpe(texts, cfg),
        TokenizerKind::Char => char_tokenizer(texts, &cfg.special_tokens),
    }
}

fn train_bpe<'a, I>(texts: I, cfg: &TokenizerConfig) -> anyhow::Result<Tokenizer>
where
    I: Iterator<Item = &'a str> + Send,
{
    anyhow::ensure!(cfg.vocab_size >= 257, "vocab_size must be at least 257 for byte-level BPE, got {}", cfg.vocab_size);
    let specials: Vec<AddedToken> = cfg.special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .build()
        .map_err(|e| anyhow!("building BPE tokenizer: {e}"))?;
    tok.train(&mut trainer, texts).map_err(|e| anyhow!("training BPE: {e}"))?;
    let json = tok.to_string(false).map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
    Tokenizer::from_json(&json)
}

/// Character-level tokenizer: sorted characters of the corpus, then `<unk>` and
/// the special tokens.
pub fn char_tokenizer<'a>(texts: impl Iterator<Item = &'a str>, specials: &[String]) -> anyhow::Result<Tokenizer> {
    let chars: BTreeSet<char> = texts.flat_map(str::chars).collect();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut added = Vec::new();
    for tok in std::iter::once(UNK).chain(specials.iter().map(String::as_str)) {
        let id = vocab.len();
        vocab.insert(tok.to_string(), id.into());
        added.push(serde_json::json!({
            "id": id, "content": tok, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": UNK,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    Tokenizer::from_json(&json.to_string())
}
