//! The blocks of the paged KV cache: which are empty, which sequences hold,
//! and which keep a cached prefix for later requests (vLLM's automatic prefix
//! caching).
//!
//! A full block is named by a hash of its parent block's hash and its own
//! tokens (BLAKE3, 256 bits: two different prefixes never share a name in
//! practice), so a name stands for the whole prefix up to the block's end. A
//! block is reference-counted: every sequence whose prefix it holds counts
//! once. When the last one lets go, a named block stays in the pool, idle,
//! keeping its keys and values for the next request with that prefix, until
//! a block is needed and none is empty: then the least recently used idle
//! block is evicted (a sequence's last blocks before its first ones, since
//! they are released in reverse order).

use std::collections::{BTreeMap, HashMap};

/// The name of a full block: its prefix's hash.
pub type BlockHash = [u8; 32];

/// The bookkeeping of one model's paged cache (no tensors: the engine owns them).
#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// The name of each block that holds a published full block.
    name: Vec<Option<BlockHash>>,
    by_name: HashMap<BlockHash, u32>,
    /// Blocks with no content, taken first.
    empty: Vec<u32>,
    /// Named blocks nobody holds, by the tick they were released at (oldest first).
    idle: BTreeMap<u64, u32>,
    idle_at: Vec<u64>,
    tick: u64,
    caching: bool,
}

impl BlockPool {
    /// `blocks` blocks of `block_tokens` positions; `caching` turns prefix caching on.
    pub fn new(blocks: usize, block_tokens: usize, caching: bool) -> Self {
        Self {
            block_tokens: block_tokens.max(1),
            refs: vec![0; blocks],
            name: vec![None; blocks],
            by_name: HashMap::new(),
            // Popped from the end: block 0 is handed out first.
            empty: (0..blocks as u32).rev().collect(),
            idle: BTreeMap::new(),
            idle_at: vec![0; blocks],
            tick: 0,
            caching,
        }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence can be given now (empty or idle).
    pub fn available(&self) -> usize {
        self.empty.len() + self.idle.len()
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Idle blocks that keep a prefix for later requests.
    pub fn cached(&self) -> usize {
        self.idle.len()
    }

    /// The name of a full block of `tokens` after the block named `parent`.
    pub fn name_of(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = blake3::Hasher::new();
        h.update(parent.map_or(&[0u8; 32][..], |p| &p[..]));
        for t in tokens {
            h.update(&t.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// The longest cached prefix of `tokens` in whole blocks, leaving at least
    /// the last token to compute (its logits start the generation): the blocks,
    /// each now held once more, and their names.
    pub fn reuse(&mut self, tokens: &[u32]) -> (Vec<u32>, Vec<BlockHash>) {
        let (mut blocks, mut names) = (Vec::new(), Vec::new());
        if !self.caching {
            return (blocks, names);
        }
        let whole = tokens.len().saturating_sub(1) / self.block_tokens;
        for chunk in tokens.chunks_exact(self.block_tokens).take(whole) {
            let name = Self::name_of(names.last(), chunk);
            let Some(&block) = self.by_name.get(&name) else { break };
            self.hold(block);
            blocks.push(block);
            names.push(name);
        }
        (blocks, names)
    }

    fn hold(&mut self, block: u32) {
        let b = block as usize;
        if self.refs[b] == 0 {
            self.idle.remove(&self.idle_at[b]);
        }
        self.refs[b] += 1;
    }

    /// A block for a sequence to write into: an empty one, else the least
    /// recently used idle one (its prefix forgotten); `None` when every block
    /// is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                self.forget(&[b]);
                b
            }
        };
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// A sequence lets go of its blocks (in reverse order, so its last blocks
    /// are evicted before its first).
    pub fn release(&mut self, blocks: &[u32]) {
        for &block in blocks.iter().rev() {
            let b = block as usize;
            debug_assert!(self.refs[b] > 0, "block {block} released more often than held");
            if self.refs[b] == 0 {
                // Already free: listing it twice would hand it out twice.
                continue;
            }
            self.refs[b] -= 1;
            if self.refs[b] > 0 {
                continue;
            }
            if self.name[b].is_some() {
                self.tick += 1;
                self.idle_at[b] = self.tick;
                self.idle.insert(self.tick, block);
            } else {
                self.empty.push(block);
            }
        }
    }

    /// Drops the names of `blocks` (their contents are about to be overwritten,
    /// or are not what the names say).
    pub fn forget(&mut self, blocks: &[u32]) {
        for &block in blocks {
            if let Some(name) = self.name[block as usize].take() {
                self.by_name.remove(&name);
            }
        }
    }

    /// Names a block a sequence fills (or is about to fill, in the step that
    /// runs next), so later sequences with the same prefix reuse it. A prefix
    /// already cached in another block keeps that one; this block is then
    /// emptied when released.
    pub fn publish(&mut self, block: u32, name: BlockHash) {
        let b = block as usize;
        if !self.caching || self.name[b].is_some() || self.by_name.contains_key(&name) {
            return;
        }
        self.name[b] = Some(name);
        self.by_name.insert(name, block);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    /// Fills blocks for `tokens` like the engine does: reuse, then allocate and
    /// publish the rest.
    fn admit(pool: &mut BlockPool, tokens: &[u32]) -> (Vec<u32>, usize) {
        let (mut blocks, mut names) = pool.reuse(tokens);
        let reused = blocks.len();
        let bt = pool.block_tokens();
        while blocks.len() * bt < tokens.len() {
            blocks.push(pool.allocate().unwrap());
        }
        for i in names.len()..tokens.len() / bt {
            let name = BlockPool::name_of(names.last(), &tokens[i * bt..(i + 1) * bt]);
            pool.publish(blocks[i], name);
            names.push(name);
        }
        (blocks, reused)
    }

    #[test]
    fn blocks_are_counted_shared_and_evicted_least_recently_used_first() {
        let mut pool = BlockPool::new(8, 2, true);
        let (ba, reused) = admit(&mut pool, &[1, 2, 3, 4, 5]);
        assert_eq!((ba.clone(), reused, pool.used(), pool.available()), (vec![0, 1, 2], 0, 3, 5));
        // The same first four tokens: two blocks shared, two of its own.
        let (bb, reused) = admit(&mut pool, &[1, 2, 3, 4, 9, 9, 9]);
        assert_eq!((bb.clone(), reused, pool.used()), (vec![0, 1, 3, 4], 2, 5));
        // A different first token shares nothing, though later tokens agree.
        let (bc, reused) = admit(&mut pool, &[7, 2, 3, 4, 5]);
        assert_eq!((bc.clone(), reused, pool.used()), (vec![5, 6, 7], 0, 8));
        assert_eq!(pool.allocate(), None, "every block is held");
        // c's partial block is emptied, its two named blocks kept idle.
        pool.release(&bc);
        assert_eq!((pool.used(), pool.cached(), pool.available()), (5, 2, 3));
        // a's shared blocks are still held by b.
        pool.release(&ba);
        assert_eq!((pool.used(), pool.cached()), (4, 2));
        pool.release(&bb);
        assert_eq!((pool.used(), pool.cached(), pool.available()), (0, 5, 8));
        // Empty blocks go first, then the least recently used idle one: c's
        // second block (released before its first).
        let got: Vec<u32> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(got, vec![4, 2, 7, 6]);
        pool.release(&got);
        // c's prefix is cached up to its first block only; a's two blocks survive,
        // and the last token is always left to compute.
        assert_eq!(pool.reuse(&[7, 2, 3, 4, 5]).0, vec![5]);
        assert_eq!(pool.reuse(&[1, 2, 3, 4, 5]).0, vec![0, 1]);
        assert_eq!(pool.reuse(&[1, 2, 3, 4]).0, vec![0]);
        assert_eq!(pool.used(), 3, "blocks 5, 0 and 1 are held again (0 twice)");
    }

    #[test]
    fn without_caching_nothing_is_shared_or_kept() {
        let mut pool = BlockPool::new(4, 2, false);
        let (ba, _) = admit(&mut pool, &[1, 2, 3, 4, 5]);
        let (bb, reused) = admit(&mut pool, &[1, 2]);
        assert_eq!(reused, 0);
        assert_eq!(pool.allocate(), None);
        pool.release(&ba);
        pool.release(&bb);
        assert_eq!((pool.used(), pool.cached(), pool.available()), (0, 0, 4));
    }
}
