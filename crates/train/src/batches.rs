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
