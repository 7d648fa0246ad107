//! The pre-training objectives, as [`Objective`]s of the training engine:
//! next-token prediction for any causal [`LanguageModel`] (GPT, LSTM) and masked
//! language modelling for BERT (Devlin et al. 2019: 15% of tokens chosen; of
//! those 80% replaced by the mask token, 10% by a random token, 10% kept).

use forja_core::TokenRow;
use forja_model::bert::{Bert, BertMlmHead};
use forja_model::lm::{cross_entropy, LanguageModel};
use forja_train::batches::TokenStream;
use forja_train::{EvalScore, EvalSplit, ModelWriter, Objective};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Data streams of an objective and how batches are cut from them.
pub struct Streams {
    pub train: TokenStream,
    pub val: TokenStream,
    pub batch_size: i64,
    pub block: i64,
    /// Micro-batches per step (the engine's `grad_accum`): micro-batch
    /// `(step, micro)` is batch `step × grad_accum + micro` of the stream.
    pub grad_accum: u64,
    pub seed: u64,
}

/// RNG streams: training batches, and the fixed evaluation batches of each split.
const TRAIN_STREAM: u64 = 0;
fn eval_stream(split: EvalSplit) -> u64 {
    match split {
        EvalSplit::Train => 1,
        EvalSplit::Val => 2,
    }
}

impl Streams {
    /// Micro-batch `micro` of step `step`: a pure function of `(seed, step, micro)`.
    fn train_batch(&self, step: u64, micro: u64) -> (Tensor, Tensor) {
        self.train.random_batch(self.batch_size, self.block, self.seed, TRAIN_STREAM, self.index(step, micro))
    }

    fn index(&self, step: u64, micro: u64) -> u64 {
        step * self.grad_accum + micro
    }

    /// The inputs of micro-batch `(step, micro)` as token rows.
    fn micro_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        let (x, _) = self.train_batch(step, micro);
        self.rows(&x, step)
    }

    fn tokens_per_micro(&self) -> f64 {
        (self.batch_size * self.block) as f64
    }

    fn eval_batch(&self, split: EvalSplit, i: u64) -> (Tensor, Tensor) {
        let data = if split == EvalSplit::Train { &self.train } else { &self.val };
        data.random_batch(self.batch_size, self.block, self.seed, eval_stream(split), i)
    }

    fn rows(&self, x: &Tensor, step: u64) -> anyhow::Result<Vec<TokenRow>> {
        let ids: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&x.to(tch::Device::Cpu))?;
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(i, row)| TokenRow { doc_id: format!("step{step}/row{i}"), ids: row.into_iter().map(|t| t as u32).collect() })
            .collect())
    }
}

/// Next-token prediction.
pub struct CausalLm<'a> {
    pub model: &'a dyn LanguageModel,
    pub data: Streams,
    pub write: ModelWriter<'a>,
}

impl Objective for CausalLm<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let (x, y) = self.data.train_batch(step, micro);
        self.model.loss(&x, &y, true)
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let (x, y) = self.data.eval_batch(split, i);
        Ok(EvalScore { loss: self.model.loss(&x, &y, false)?.double_value(&[]), metrics: Vec::new() })
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        (self.write)(vs, dir)
    }

    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        self.data.micro_rows(step, micro)
    }

    fn tokens_per_micro(&self) -> f64 {
        self.data.tokens_per_micro()
    }
}

/// Token ids the masked-LM objective needs from the tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct MlmTokens {
    pub mask: i64,
    /// Prepended and appended to each sequence when the tokenizer has them.
    pub cls: Option<i64>,
    pub sep: Option<i64>,
    pub vocab_size: i64,
}

/// Masked-LM settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlmConfig {
    /// Fraction of tokens chosen for prediction.
    pub mask_prob: f64,
    /// Of the chosen: fraction replaced by the mask token…
    pub replace_mask: f64,
    /// …and by a random token (the rest are kept as they are).
    pub replace_random: f64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self { mask_prob: 0.15, replace_mask: 0.8, replace_random: 0.1 }
    }
}

impl MlmConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.mask_prob > 0.0 && self.mask_prob < 1.0, "mlm.mask_prob must be in (0, 1), got {}", self.mask_prob);
        anyhow::ensure!(
            self.replace_mask >= 0.0 && self.replace_random >= 0.0 && self.replace_mask + self.replace_random <= 1.0,
            "mlm.replace_mask + mlm.replace_random must be within [0, 1]"
        );
        Ok(())
    }
}

/// One masked batch: inputs, the flat positions predicted, and their labels.
pub struct MaskedBatch {
    pub input: Tensor,
    pub positions: Tensor,
    pub labels: Tensor,
}

/// Masks `ids` (`[batch][len]`) with the RNG of `(seed, stream, index)`. At
/// least one position per batch is chosen, so the loss is always defined.
pub fn mask_batch(
    ids: &[Vec<i64>],
    cfg: &MlmConfig,
    tok: MlmTokens,
    seed: u64,
    stream: u64,
    index: u64,
) -> (Vec<Vec<i64>>, Vec<i64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.set_word_pos(u128::from(index) << 24);
    let special = |t: i64| Some(t) == tok.cls || Some(t) == tok.sep;
    let (mut input, mut positions, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let width = ids.first().map_or(0, Vec::len);
    for (r, row) in ids.iter().enumerate() {
        let mut out = row.clone();
        for (c, &t) in row.iter().enumerate() {
            if special(t) || rng.random::<f64>() >= cfg.mask_prob {
                continue;
            }
            positions.push((r * width + c) as i64);
            labels.push(t);
            let u: f64 = rng.random();
            if u < cfg.replace_mask {
                out[c] = tok.mask;
            } else if u < cfg.replace_mask + cfg.replace_random {
                out[c] = rng.random_range(0..tok.vocab_size);
            }
        }
        input.push(out);
    }
    if positions.is_empty() {
        // Choose one non-special token so that the batch has a target.
        if let Some((r, c)) = ids
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, &t)| (r, c, t)))
            .find(|&(_, _, t)| !special(t))
            .map(|(r, c, _)| (r, c))
        {
            positions.push((r * width + c) as i64);
            labels.push(ids[r][c]);
            input[r][c] = tok.mask;
        }
    }
    (input, positions, labels)
}

/// Masked language modelling of a BERT encoder.
pub struct MaskedLm<'a> {
    pub bert: &'a Bert,
    pub head: &'a BertMlmHead,
    pub data: Streams,
    pub cfg: MlmConfig,
    pub tokens: MlmTokens,
    pub write: ModelWriter<'a>,
}

impl MaskedLm<'_> {
    /// Sequences for BERT: `[CLS] window [SEP]` when the tokenizer has them.
    fn sequences(&self, x: &Tensor) -> anyhow::Result<Vec<Vec<i64>>> {
        let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&x.to(tch::Device::Cpu))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let inner = row.len() - usize::from(self.tokens.cls.is_some()) - usize::from(self.tokens.sep.is_some());
                self.tokens.cls.into_iter().chain(row.into_iter().take(inner)).chain(self.tokens.sep).collect()
            })
            .collect())
    }

    fn masked(&self, x: &Tensor, stream: u64, index: u64) -> anyhow::Result<MaskedBatch> {
        let seqs = self.sequences(x)?;
        let (input, positions, labels) = mask_batch(&seqs, &self.cfg, self.tokens, self.data.seed, stream, index);
        let device = x.device();
        let flat: Vec<i64> = input.concat();
        Ok(MaskedBatch {
            input: Tensor::from_slice(&flat).to(device).view([seqs.len() as i64, -1]),
            positions: Tensor::from_slice(&positions).to(device),
            labels: Tensor::from_slice(&labels).to(device),
        })
    }

    /// Logits at the masked positions only (the head runs on them alone).
    fn logits(&self, b: &MaskedBatch, train: bool) -> anyhow::Result<Tensor> {
        let hidden = self.bert.forward(&b.input, None, None, train)?; // [b, t, h]
        let h = hidden.size()[2];
        let picked = hidden.view([-1, h]).index_select(0, &b.positions); // [n, h]
        Ok(self.head.forward(&picked, self.bert)) // [n, vocab]
    }
}

/// Stream of the masks of training batches (apart from the batch streams).
const MASK_STREAM: u64 = 10;

impl Objective for MaskedLm<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let (x, _) = self.data.train_batch(step, micro);
        let batch = self.masked(&x, MASK_STREAM, self.data.index(step, micro))?;
        Ok(cross_entropy(&self.logits(&batch, true)?, &batch.labels))
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let (x, _) = self.data.eval_batch(split, i);
        let batch = self.masked(&x, MASK_STREAM + eval_stream(split), i)?;
        let logits = self.logits(&batch, false)?;
        let loss = cross_entropy(&logits, &batch.labels).double_value(&[]);
        let acc = logits.argmax(-1, false).eq_tensor(&batch.labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        Ok(EvalScore { loss, metrics: vec![(forja_core::metric::MLM_ACCURACY, acc)] })
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        (self.write)(vs, dir)
    }

    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        self.data.micro_rows(step, micro)
    }

    fn tokens_per_micro(&self) -> f64 {
        self.data.tokens_per_micro()
    }
}
