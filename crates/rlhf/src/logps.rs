//! Log-probabilities of answers given prompts, batched: the quantity DPO,
//! PPO and GRPO all train on.
//!
//! Each sequence is one right-padded row `prompt ++ answer` (minus the last
//! answer token, which predicts nothing); causal attention alone keeps real
//! tokens from seeing the padding after them. Only the positions that predict
//! an answer token go through the vocabulary projection and the log-softmax —
//! the prompt's positions would be computed and thrown away (what makes TRL's
//! log-probability head its most expensive part).

use forja_model::Gpt;
use tch::{Device, Kind, Tensor};

/// A prompt and an answer, as ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

impl Seq {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.answer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The padded inputs of a batch and where its answer tokens are.
pub struct Batch {
    /// `[b, t]` inputs.
    pub ids: Tensor,
    /// `[n]` flat positions (in `[b·t]`) whose hidden state predicts an answer token.
    pub at: Tensor,
    /// `[n]` the answer tokens predicted there.
    pub targets: Tensor,
    /// `[n]` the sequence of each answer token.
    pub seq_of: Tensor,
    /// Answer length of each sequence.
    pub lengths: Vec<usize>,
    /// Longest answer.
    pub max_answer: usize,
}

/// Builds the batch of `seqs` (every answer non-empty, every prompt non-empty).
pub fn batch(seqs: &[&Seq], device: Device) -> anyhow::Result<Batch> {
    anyhow::ensure!(!seqs.is_empty(), "an empty batch");
    let t = seqs.iter().map(|s| s.len() - 1).max().unwrap_or(1);
    let (mut ids, mut at, mut targets, mut seq_of, mut lengths) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, s) in seqs.iter().enumerate() {
        anyhow::ensure!(!s.prompt.is_empty() && !s.answer.is_empty(), "sequence {i} has an empty prompt or answer");
        let row: Vec<i64> = s.prompt.iter().chain(&s.answer).take(s.len() - 1).map(|&x| i64::from(x)).collect();
        let p = s.prompt.len();
        for (j, &tok) in s.answer.iter().enumerate() {
            at.push((i * t + p - 1 + j) as i64);
            targets.push(i64::from(tok));
            seq_of.push(i as i64);
        }
        lengths.push(s.answer.len());
        ids.extend_from_slice(&row);
        ids.extend(std::iter::repeat_n(0, t - row.len()));
    }
    let max_answer = lengths.iter().copied().max().unwrap_or(0);
    let to = |v: Vec<i64>| Tensor::from_slice(&v).to(device);
    Ok(Batch {
        ids: to(ids).view([seqs.len() as i64, t as i64]),
        at: to(at),
        targets: to(targets),
        seq_of: to(seq_of),
        lengths,
        max_answer,
    })
}

/// What a forward pass over a batch gives per answer token.
pub struct TokenScores {
    /// `[n]` log-probability of each answer token.
    pub logps: Tensor,
    /// `[n]` entropy of the distribution it was drawn from (when asked for).
    pub entropy: Option<Tensor>,
    /// `[n, c]` the hidden state that predicted it (value heads read it).
    pub hidden: Tensor,
}

/// Log-probabilities of every answer token under `model` (train mode: dropout).
pub fn token_scores(model: &Gpt, b: &Batch, train: bool, entropy: bool) -> anyhow::Result<TokenScores> {
    let hidden = model.hidden(&b.ids, train, None)?; // [b, t, c]
    let c = hidden.size()[2];
    let picked = hidden.view([-1, c]).index_select(0, &b.at); // [n, c]
    let logp_all = model.lm_head(&picked).log_softmax(-1, Kind::Float); // [n, vocab]
    let logps = logp_all.gather(1, &b.targets.unsqueeze(1), false).squeeze_dim(1);
    let entropy = entropy.then(|| -(logp_all.exp() * &logp_all).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float));
    Ok(TokenScores { logps, entropy, hidden: picked })
}

/// Per-sequence sums of per-token values `[n]` → `[b]`.
pub fn per_seq_sum(b: &Batch, values: &Tensor) -> Tensor {
    Tensor::zeros([b.lengths.len() as i64], (values.kind(), values.device())).index_add(0, &b.seq_of, values)
}

/// Per-token values `[n]` laid out as `[b, max_answer]`, zero after each answer.
pub fn to_padded(b: &Batch, values: &Tensor) -> Tensor {
    let cols: Vec<i64> = b.lengths.iter().flat_map(|&n| 0..n as i64).collect();
    let cols = Tensor::from_slice(&cols).to(values.device());
    let flat = &b.seq_of * b.max_answer as i64 + cols;
    let out = Tensor::zeros([(b.lengths.len() * b.max_answer) as i64], (values.kind(), values.device()));
    out.index_put(&[Some(flat)], values, false).view([b.lengths.len() as i64, b.max_answer as i64])
}

/// `[b, max_answer]` mask of real answer tokens (1.0) and padding (0.0).
pub fn answer_mask(b: &Batch, device: Device) -> Tensor {
    let ones = Tensor::ones([b.lengths.iter().sum::<usize>() as i64], (Kind::Float, device));
    to_padded(b, &ones)
}

/// Summed answer log-probabilities of each sequence, without gradients, in
/// chunks of `batch` sequences.
pub fn sequence_logps(model: &Gpt, seqs: &[Seq], batch_size: usize) -> anyhow::Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&Seq> = chunk.iter().collect();
        let b = batch(&refs, model.device())?;
        let s = token_scores(model, &b, false, false)?;
        out.extend(Vec::<f64>::try_from(&per_seq_sum(&b, &s.logps).to_kind(Kind::Double).to(Device::Cpu))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use forja_model::GptConfig;
    use tch::nn;

    #[test]
    fn batched_logps_match_one_sequence_at_a_time() -> anyhow::Result<()> {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GptConfig { vocab_size: 50, block_size: 16, n_layer: 2, n_head: 2, n_embd: 16, ..Default::default() };
        let model = Gpt::new(&vs.root(), &cfg)?;
        let seqs = vec![
            Seq { prompt: vec![1, 2, 3], answer: vec![4, 5] },
            Seq { prompt: vec![7], answer: vec![8, 9, 10, 11] },
            Seq { prompt: vec![3, 3, 3, 3, 3], answer: vec![1] },
        ];
        let together = sequence_logps(&model, &seqs, 8)?;
        for (s, t) in seqs.iter().zip(&together) {
            // By hand: full logits over the unpadded sequence.
            let ids: Vec<i64> = s.prompt.iter().chain(&s.answer).map(|&x| i64::from(x)).collect();
            let logits = model.forward(&Tensor::from_slice(&ids).view([1, -1]), false, None)?.log_softmax(-1, Kind::Float);
            let mut sum = 0.0;
            for (j, &tok) in s.answer.iter().enumerate() {
                sum += logits.double_value(&[0, (s.prompt.len() - 1 + j) as i64, i64::from(tok)]);
            }
            assert!((sum - t).abs() < 1e-4, "{sum} vs {t}");
        }
        let refs: Vec<&Seq> = seqs.iter().collect();
        let b = batch(&refs, Device::Cpu)?;
        let mask = answer_mask(&b, Device::Cpu);
        assert_eq!(mask.size(), [3, 4]);
        assert_eq!(mask.sum(Kind::Float).double_value(&[]), 7.0);
        Ok(())
    }
}
