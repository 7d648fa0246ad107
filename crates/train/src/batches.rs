//! Token streams and the mini-batches drawn from them.

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::TokenRow;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One split's documents concatenated into a single token stream.
pub struct TokenStream {
    data: Tensor, // [n] i64 on the training device
    len: i64,
}

impl TokenStream {
    /// Reads a `tokens` artifact and checks every id against `vocab_size`.
    pub fn load(path: &Path, vocab_size: i64, device: Device) -> anyhow::Result<Self> {
        let rows = TokenRow::read(path)?;
        TokenRow::check_vocab(&rows, path, vocab_size as u64)?;
        let ids: Vec<i64> = rows.iter().flat_map(|r| r.ids.iter().map(|&t| i64::from(t))).collect();
        Self::from_ids(&ids, device).with_context(|| path.display().to_string())
    }

    pub fn from_ids(ids: &[i64], device: Device) -> anyhow::Result<Self> {
        Ok(Self { data: Tensor::from_slice(ids).to(device), len: ids.len() as i64 })
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inputs and next-token targets starting at `offsets`.
    ///
    /// # Shapes
    /// → `([batch, block], [batch, block])`, i64
    pub fn batch_at(&self, offsets: &[i64], block: i64) -> (Tensor, Tensor) {
        let device = self.data.device();
        let starts = Tensor::from_slice(offsets).to(device).view([-1, 1]); // [b, 1]
        let idx = starts + Tensor::arange(block + 1, (Kind::Int64, device)).view([1, -1]); // [b, block+1]
        let rows = self.data.index_select(0, &idx.view([-1])).view([offsets.len() as i64, block + 1]);
        (rows.narrow(1, 0, block), rows.narrow(1, 1, block))
    }

    /// A random batch, a pure function of `(seed, stream, step)`: resuming at a
    /// step draws exactly the batch an uninterrupted run drew there.
    pub fn random_batch(&self, batch: i64, block: i64, seed: u64, stream: u64, step: u64) -> (Tensor, Tensor) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng.set_word_pos(u128::from(step) << 20);
        let hi = (self.len - block - 1).max(1);
        let offsets: Vec<i64> = (0..batch).map(|_| rng.random_range(0..hi)).collect();
        self.batch_at(&offsets, block)
    }

    /// Whether the stream holds at least one full block plus its target.
    pub fn fits(&self, block: i64) -> bool {
        self.len > block
    }
}

/// Mini-batches of a finite example set in shuffled epochs: micro-batch
/// `(step, micro)` is batch `b` of epoch `e`'s permutation, where `step ×
/// grad_accum + micro = e × batches_per_epoch + b` — a pure function of
/// `(seed, step, micro)`, so resumed runs see the same batches.
#[derive(Debug, Clone)]
pub struct EpochBatches {
    pub n: usize,
    pub batch_size: usize,
    pub grad_accum: u64,
    pub seed: u64,
    /// The permutation of the last epoch asked for.
    cached: Option<(u64, Vec<usize>)>,
}

impl EpochBatches {
    pub fn new(n: usize, batch_size: usize, grad_accum: u64, seed: u64) -> Self {
        Self { n, batch_size: batch_size.max(1), grad_accum: grad_accum.max(1), seed, cached: None }
    }

    /// Batches per pass over the examples (the last may be smaller).
    pub fn per_epoch(&self) -> u64 {
        self.n.div_ceil(self.batch_size).max(1) as u64
    }

    fn position(&self, step: u64, micro: u64) -> (u64, usize) {
        let i = step * self.grad_accum + micro;
        (i / self.per_epoch(), (i % self.per_epoch()) as usize)
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut perm: Vec<usize> = (0..self.n).collect();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        perm
    }

    fn slice(&self, perm: &[usize], b: usize) -> Vec<usize> {
        perm[(b * self.batch_size).min(perm.len())..((b + 1) * self.batch_size).min(perm.len())].to_vec()
    }

    /// Example indices of micro-batch `(step, micro)` (the epoch's permutation is cached).
    pub fn indices(&mut self, step: u64, micro: u64) -> Vec<usize> {
        let (epoch, b) = self.position(step, micro);
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, self.permutation(epoch)));
        }
        let perm = self.cached.as_ref().map(|(_, p)| p.as_slice()).unwrap_or_default();
        self.slice(perm, b)
    }

    /// As [`EpochBatches::indices`], without touching the cache.
    pub fn peek(&self, step: u64, micro: u64) -> Vec<usize> {
        let (epoch, b) = self.position(step, micro);
        self.slice(&self.permutation(epoch), b)
    }
}

impl EpochBatches {
    /// Fixed evaluation batch `i` over `len` examples in their order (wrapping),
    /// as an index range.
    pub fn fixed(&self, i: u64, len: usize) -> std::ops::Range<usize> {
        let start = (i as usize * self.batch_size) % len.max(1);
        start..(start + self.batch_size).min(len)
    }

    /// Batches that cover `len` examples once (at least 1).
    pub fn covering(&self, len: usize) -> u64 {
        len.div_ceil(self.batch_size).max(1) as u64
    }
}
