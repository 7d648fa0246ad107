//! What every causal language model offers the trainers and the evaluator,
//! whatever its architecture (GPT, LSTM).

use tch::{Device, Tensor};

/// A causal language model: logits for each position from the positions before it.
pub trait LanguageModel {
    /// # Shapes
    /// `idx`: `[batch, seq]` (i64, seq ≤ [`Self::context`]) → `[batch, seq, vocab]` float32
    fn logits(&self, idx: &Tensor, train: bool) -> anyhow::Result<Tensor>;
    /// Longest sequence the model takes.
    fn context(&self) -> i64;
    fn vocab_size(&self) -> i64;
    fn device(&self) -> Device;

    /// Mean next-token cross-entropy (targets of -100 are ignored).
    fn loss(&self, idx: &Tensor, targets: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        Ok(cross_entropy(&self.logits(idx, train)?, targets))
    }
}

/// Mean cross-entropy of `[.., vocab]` logits against `[..]` targets, ignoring -100.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().unwrap_or(&1);
    logits.view([-1, v]).cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
}

impl LanguageModel for crate::gpt::Gpt {
    fn logits(&self, idx: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        self.forward(idx, train, None)
    }
    fn context(&self) -> i64 {
        self.cfg.block_size
    }
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }
    fn device(&self) -> Device {
        crate::gpt::Gpt::device(self)
    }
}
