//! A recurrent baseline: an LSTM language model (Hochreiter & Schmidhuber 1997;
//! Zaremba et al. 2014's layout: embedding, stacked LSTM with dropout between
//! layers, a linear head), trained by the same engine as the GPT so the report
//! can set the two side by side on the same data.

use crate::layers::{check_ids, Fwd, Precision};
use crate::lm::LanguageModel;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Tensor};

/// `config.json` of an LSTM model folder (`model_type` `forja-lstm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmConfig {
    pub model_type: String,
    pub vocab_size: i64,
    /// Embedding and hidden width.
    pub n_embd: i64,
    pub n_layer: i64,
    pub dropout: f64,
    /// Training sequence length (the model itself takes any length).
    pub block_size: i64,
}

pub const LSTM_MODEL_TYPE: &str = "forja-lstm";

impl LstmConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.vocab_size > 0 && self.n_embd > 0 && self.n_layer > 0 && self.block_size > 0,
            "LSTM sizes must be > 0: {self:?}"
        );
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1)");
        Ok(())
    }
}

/// The LSTM language model.
#[derive(Debug)]
pub struct LstmLm {
    pub cfg: LstmConfig,
    wte: nn::Embedding,
    lstm: nn::LSTM,
    head: nn::Linear,
    pub precision: Precision,
}

impl LstmLm {
    pub fn new(vs: &nn::Path, cfg: &LstmConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let emb_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let rnn_cfg = nn::RNNConfig { num_layers: cfg.n_layer, dropout: cfg.dropout, batch_first: true, ..Default::default() };
        Ok(Self {
            cfg: cfg.clone(),
            wte: nn::embedding(vs / "wte", cfg.vocab_size, cfg.n_embd, emb_cfg),
            lstm: nn::lstm(vs / "lstm", cfg.n_embd, cfg.n_embd, rnn_cfg),
            head: nn::linear(vs / "head", cfg.n_embd, cfg.vocab_size, Default::default()),
            precision: Precision::F32,
        })
    }
}

impl LanguageModel for LstmLm {
    fn logits(&self, idx: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        check_ids(idx, 0, i64::MAX)?;
        let f = Fwd::new(train, self.precision);
        let x = self.wte.forward(idx).dropout(self.cfg.dropout, train); // [b, t, c]
        let (h, _) = self.lstm.seq(&x);
        let h = h.dropout(self.cfg.dropout, train); // [b, t, c]
        let mut logits = f.cast(&h).matmul(&f.cast(&self.head.ws).tr()); // [b, t, vocab]
        if let Some(bias) = &self.head.bs {
            logits += f.cast(bias);
        }
        Ok(logits.to_kind(Kind::Float))
    }
    fn context(&self) -> i64 {
        self.cfg.block_size
    }
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }
    fn device(&self) -> Device {
        self.wte.ws.device()
    }
}
