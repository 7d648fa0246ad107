//! A BERT sequence classifier in Hugging Face's `BertForSequenceClassification`
//! layout: the encoder, the pooler (`[CLS]` → dense → tanh), dropout and a
//! linear head `classifier` over the labels; `config.json` carries `id2label` /
//! `label2id`, so the folder loads in `transformers` as a sequence classifier.

use crate::bert::{Bert, BertConfig};
use crate::layers::{Dense, Fwd, Layout, LoraConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn;
use tch::{Kind, Tensor};

/// HF's architecture name for this head.
pub const SEQUENCE_CLASSIFIER: &str = "BertForSequenceClassification";

/// `config.json` of a sequence classifier: the encoder's config plus the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    #[serde(flatten)]
    pub bert: BertConfig,
    /// Label of each class index (keys are the indices as strings, as HF writes them).
    pub id2label: BTreeMap<String, String>,
    pub label2id: BTreeMap<String, i64>,
    #[serde(default)]
    pub problem_type: Option<String>,
}

impl ClassifierConfig {
    /// The encoder's config with `labels` (class `i` is `labels[i]`).
    pub fn new(bert: &BertConfig, labels: &[String]) -> Self {
        Self {
            bert: BertConfig { architectures: vec![SEQUENCE_CLASSIFIER.into()], ..bert.clone() },
            id2label: labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect(),
            label2id: labels.iter().enumerate().map(|(i, l)| (l.clone(), i as i64)).collect(),
            problem_type: Some("single_label_classification".into()),
        }
    }

    /// The labels in class order; an error when the indices are not 0..n.
    pub fn labels(&self) -> anyhow::Result<Vec<String>> {
        let mut out = vec![None; self.id2label.len()];
        for (k, v) in &self.id2label {
            let i: usize = k.parse().map_err(|_| anyhow::anyhow!("id2label key `{k}` is not a class index"))?;
            anyhow::ensure!(i < out.len(), "id2label has {} entries but names class {i}", out.len());
            out[i] = Some(v.clone());
        }
        Ok(out.into_iter().map(|l| l.unwrap_or_default()).collect())
    }
}

/// Encoder + pooler + classification head.
#[derive(Debug)]
pub struct BertClassifier {
    pub bert: Bert,
    pooler: Dense,
    classifier: Dense,
    dropout: f64,
}

impl BertClassifier {
    /// Variables under `vs`: `bert.*` (LoRA adapters where `lora` targets),
    /// `bert.pooler.dense.*`, `classifier.*`.
    pub fn new(vs: &nn::Path, cfg: &ClassifierConfig, lora: Option<&LoraConfig>) -> anyhow::Result<Self> {
        let b = &cfg.bert;
        let n = cfg.id2label.len() as i64;
        anyhow::ensure!(n >= 1, "a classifier needs at least 1 label (1: a scalar score, as a reward model), got {n}");
        let init = nn::Init::Randn { mean: 0.0, stdev: b.initializer_range };
        let bert = Bert::new(&(vs / "bert"), b, lora)?;
        Ok(Self {
            pooler: Dense::new(vs / "bert" / "pooler" / "dense", b.hidden_size, b.hidden_size, Layout::OutIn, init, true),
            classifier: Dense::new(vs / "classifier", b.hidden_size, n, Layout::OutIn, init, true),
            dropout: b.hidden_dropout_prob,
            bert,
        })
    }

    /// Class logits, float32.
    ///
    /// # Shapes
    /// `ids`, `mask`: `[b, t]` → `[b, n_labels]`
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let hidden = self.bert.forward(ids, None, Some(mask), train)?; // [b, t, h]
        self.head(&hidden, train)
    }

    /// Class logits from the word embeddings of the tokens (see
    /// [`Bert::forward_from_words`]), for attributions and gradient-guided attacks.
    ///
    /// # Shapes
    /// `words`: `[b, t, hidden]`, `mask`: `[b, t]` → `[b, n_labels]`
    pub fn forward_from_words(&self, words: &Tensor, mask: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let hidden = self.bert.forward_from_words(words, None, Some(mask), train)?;
        self.head(&hidden, train)
    }

    fn head(&self, hidden: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let f = Fwd::new(train, self.bert.precision);
        let cls = hidden.select(1, 0); // [b, h]
        let pooled = self.pooler.forward(&cls, f).to_kind(Kind::Float).tanh().dropout(self.dropout, train);
        Ok(self.classifier.forward(&pooled, f).to_kind(Kind::Float))
    }
}

/// A classifier loaded from its model folder.
pub struct LoadedClassifier {
    pub vs: nn::VarStore,
    pub model: BertClassifier,
    pub tokenizer: forja_tokenizer::Tokenizer,
    pub labels: Vec<String>,
}

/// Loads a sequence-classifier folder (`config.json` with `id2label`).
pub fn load_classifier(dir: &std::path::Path, device: tch::Device) -> anyhow::Result<LoadedClassifier> {
    use crate::checkpoint::{Weights, CONFIG, TOKENIZER, WEIGHTS};
    use anyhow::Context;
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: ClassifierConfig =
        serde_json::from_str(&text).with_context(|| format!("{}: not a sequence-classifier config (needs id2label)", path.display()))?;
    cfg.bert.validate().with_context(|| path.display().to_string())?;
    let labels = cfg.labels().with_context(|| path.display().to_string())?;
    let tokenizer = forja_tokenizer::Tokenizer::load(&dir.join(TOKENIZER))?;
    let mut vs = nn::VarStore::new(device);
    let model = BertClassifier::new(&vs.root(), &cfg, None)?;
    Weights::read(&dir.join(WEIGHTS))?.load_into(&mut vs, &|_| false)?;
    Ok(LoadedClassifier { vs, model, tokenizer, labels })
}
