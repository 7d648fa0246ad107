//! The engine: one thread that owns the weights and runs continuous batching.
//!
//! Sequences wait in a bounded queue; between decoding steps the engine admits
//! waiting ones while the running batch has room and the paged KV cache
//! ([`PagedCache`], its blocks kept by a [`BlockPool`]) has free blocks for
//! their prompts, reusing the blocks of a cached prefix (a chat's earlier
//! turns, a shared system prompt) and prefilling only the rest, all admitted
//! prompts together. Then it advances every running sequence by one token in
//! one batched step, giving a sequence a new block when it fills its last one;
//! when none is free, the newest sequences are preempted (their blocks freed;
//! they wait again, first in line, and are recomputed when readmitted, as in
//! vLLM). A sequence leaves when it stops, reaches its limit or deadline, or
//! its client goes away (its event channel closes), releasing its blocks. After
//! a reload, sequences admitted on the old model finish on it while new ones
//! go to the new model; the old weights are dropped when idle.

use crate::blocks::{BlockHash, BlockPool};
use crate::metrics::Metrics;
use crate::model::{Frontend, Weights};
use forja_model::bert::embed_rows;
use forja_model::generate::{draw, sample, SamplingConfig};
use forja_model::{PagedCache, PagedRow};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

/// How one sequence is generated.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Text that ends generation (not included in the output).
    pub stop: Vec<String>,
    /// Tokens that end generation (not included).
    pub stop_ids: Vec<u32>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
}

/// A token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine tells a request about one of its sequences (`index`).
#[derive(Debug, Clone)]
pub enum Event {
    /// New text (possibly empty when held back for a stop string) and the
    /// tokens behind it, with log-probabilities when asked for.
    Delta { index: usize, text: String, logprobs: Vec<TokenLogprob> },
    Done {
        index: usize,
        finish: Finish,
        completion_tokens: usize,
        /// Prompt tokens read from the prefix cache when it was first admitted.
        cached_tokens: usize,
    },
    /// The sequence failed inside the engine (a bug or a device error).
    Failed { index: usize, message: String },
}

/// A sequence to generate.
pub struct GenRequest {
    pub front: Arc<Frontend>,
    pub prompt: Vec<u32>,
    pub index: usize,
    pub params: GenParams,
    pub events: mpsc::UnboundedSender<Event>,
    /// Whether the client reads the text as it comes: without, the engine
    /// sends a sequence's text once, when it ends (no wake-up per token).
    pub stream: bool,
    pub arrived: Instant,
    pub deadline: Instant,
}

/// Texts to embed (already tokenized with the encoder's special tokens).
pub struct EmbedRequest {
    pub front: Arc<Frontend>,
    pub inputs: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<anyhow::Result<Vec<Vec<f32>>>>,
}

/// Prompts to score: the log-probability of each token given the ones before
/// (what `echo` with `logprobs` returns).
pub struct ScoreRequest {
    pub front: Arc<Frontend>,
    pub prompts: Vec<Vec<u32>>,
    /// Alternatives to report per position.
    pub top: usize,
    pub reply: oneshot::Sender<anyhow::Result<Vec<Vec<Option<TokenLogprob>>>>>,
}

enum Msg {
    Generate(Box<GenRequest>),
    Embed(EmbedRequest),
    Score(ScoreRequest),
    Swap(Arc<Frontend>, Box<Weights>, oneshot::Sender<anyhow::Result<()>>),
}

/// The queue was full.
#[derive(Debug)]
pub struct QueueFull;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Sequences that may wait for a place in the batch before requests are refused.
    pub queue_capacity: usize,
    /// Prompt tokens prefilled in one step (bounds the pause running sequences see).
    pub max_prefill_tokens: usize,
    pub kv: KvConfig,
}

/// How the KV cache is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// Blocks of this many positions, given to sequences as they grow.
    Paged(usize),
    /// One block of the whole context per sequence (fixed slots; no prefix caching).
    Slots,
}

/// The KV cache's memory and layout.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Bytes of keys and values the cache holds (`None`: `max_batch` full contexts).
    pub bytes: Option<usize>,
    pub layout: KvLayout,
    /// Reuse the blocks of cached prefixes.
    pub prefix_cache: bool,
}

/// The handlers' side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Msg>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl EngineHandle {
    /// Queues sequences, all or none: refused when the queue cannot take them.
    pub fn submit(&self, reqs: Vec<GenRequest>) -> Result<(), QueueFull> {
        let n = reqs.len();
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(QueueFull);
        }
        for r in reqs {
            if self.tx.send(Msg::Generate(Box::new(r))).is_err() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    pub fn embed(&self, req: EmbedRequest) -> anyhow::Result<()> {
        self.tx.send(Msg::Embed(req)).map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }

    pub fn score(&self, req: ScoreRequest) -> anyhow::Result<()> {
        self.tx.send(Msg::Score(req)).map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }

    /// Hands new weights to the engine; resolves once new requests go to them.
    pub async fn swap(&self, front: Arc<Frontend>, weights: Weights) -> anyhow::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Msg::Swap(front, Box::new(weights), done)).map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        wait.await.map_err(|_| anyhow::anyhow!("the engine stopped during the swap"))?
    }

    /// Sequences waiting for a place in the batch.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// A sequence, waiting or running.
struct Seq {
    req: GenRequest,
    /// Its block table (empty while it waits).
    blocks: Vec<u32>,
    /// The names of its full blocks, in order (prefix caching).
    names: Vec<BlockHash>,
    /// Arrival order: the newest running sequences are preempted first.
    order: u64,
    /// Prompt tokens the prefix cache held at its first admission.
    cached: Option<usize>,
    /// Tokens of this sequence in the cache.
    len: usize,
    generated: Vec<u32>,
    detok: Detokenizer,
    /// Bytes of the decoded text already sent.
    sent: usize,
    /// Bytes of the decoded text already searched for stop strings (a
    /// non-streamed sequence sends nothing until it ends).
    searched: usize,
    held: Vec<TokenLogprob>,
    rng: ChaCha8Rng,
    first_token: Option<Instant>,
    /// The client went away (its event channel closed).
    left: bool,
}

impl Seq {
    fn new(req: GenRequest, order: u64) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(req.params.seed);
        Self {
            req,
            blocks: Vec::new(),
            names: Vec::new(),
            order,
            cached: None,
            len: 0,
            generated: Vec::new(),
            detok: Detokenizer::default(),
            sent: 0,
            searched: 0,
            held: Vec::new(),
            rng,
            first_token: None,
            left: false,
        }
    }

    /// Its prompt and the tokens generated so far.
    fn tokens(&self) -> Vec<u32> {
        self.req.prompt.iter().chain(&self.generated).copied().collect()
    }
}

/// Text of generated tokens, decoded incrementally (as vLLM and Hugging Face's
/// streamers do): only the last few tokens are decoded at each step, and text
/// is taken once it no longer ends in an incomplete UTF-8 character.
#[derive(Default)]
struct Detokenizer {
    text: String,
    /// Tokens before `prefix` are in `text` and no longer decoded.
    prefix: usize,
    /// Tokens before `read` are in `text`.
    read: usize,
}

impl Detokenizer {
    /// Takes the text of `tokens[read..]` when complete (or at the `end`).
    fn push(&mut self, tok: &forja_tokenizer::Tokenizer, tokens: &[u32], end: bool) {
        if self.read >= tokens.len() {
            return;
        }
        let before = tok.decode_text(&tokens[self.prefix..self.read]).unwrap_or_default();
        let now = tok.decode_text(&tokens[self.prefix..]).unwrap_or_default();
        if now.len() > before.len() && (end || !now.ends_with('\u{FFFD}')) {
            match now.strip_prefix(before.as_str()) {
                Some(new) => self.text.push_str(new),
                None => self.text.push_str(now.get(before.len()..).unwrap_or_default()),
            }
            self.prefix = self.read;
            self.read = tokens.len();
        }
    }
}

/// One model's weights, cache and sequences.
struct Generation {
    front: Arc<Frontend>,
    weights: Weights,
    cache: Option<PagedCache>,
    pool: BlockPool,
    /// Blocks kept free for running sequences to grow into while any run
    /// (vLLM's watermark: 1% of the cache; none for slots, which never grow).
    reserve: usize,
    /// Preempted sequences, readmitted before any new one (oldest first).
    waiting: VecDeque<Seq>,
    active: Vec<Seq>,
}

/// What one round of admission may still take.
struct Admission {
    /// Prompt tokens left to prefill this round.
    budget: usize,
    /// Nothing was admitted yet (the first prompt goes in whatever its length).
    first: bool,
    max_batch: usize,
}

impl Generation {
    fn new(front: Arc<Frontend>, weights: Weights, cfg: &EngineConfig) -> anyhow::Result<Self> {
        let (cache, pool) = match &weights {
            Weights::Gpt { model, .. } => {
                let (cache, pool) = kv_cache(model, cfg)?;
                (Some(cache), pool)
            }
            Weights::Bert { .. } => (None, BlockPool::new(0, 1, false)),
        };
        let grows = cache.as_ref().is_some_and(|c| c.block_tokens() < c.context());
        let reserve = if grows { (pool.total() / 100).max(1) } else { 0 };
        Ok(Self { front, weights, cache, pool, reserve, waiting: VecDeque::new(), active: Vec::new() })
    }

    /// Gives `s` blocks for its tokens, reusing a cached prefix, when the
    /// batch, the prefill budget and the free blocks (less `reserve` while
    /// anything runs) allow; false: it waits.
    fn place(&mut self, s: &mut Seq, adm: &mut Admission, admitting: usize, metrics: &Metrics) -> bool {
        if self.active.len() + admitting >= adm.max_batch {
            return false;
        }
        if self.cache.is_none() {
            // Not a generator: the step reports it to the client.
            adm.first = false;
            return true;
        }
        let tokens = s.tokens();
        let bt = self.pool.block_tokens();
        let (blocks, names) = self.pool.reuse(&tokens);
        let cached = blocks.len() * bt;
        let compute = tokens.len() - cached;
        let need = tokens.len().div_ceil(bt) - blocks.len();
        let reserve = if self.active.is_empty() && admitting == 0 { 0 } else { self.reserve };
        if compute > adm.budget && !adm.first || self.pool.available() < need + reserve {
            self.pool.release(&blocks);
            return false;
        }
        s.blocks = blocks;
        s.names = names;
        s.blocks.extend((0..need).map_while(|_| self.pool.allocate()));
        s.len = cached;
        s.cached.get_or_insert(cached.min(s.req.prompt.len()));
        // Named now, before the step fills them: a sequence admitted in the
        // same round with the same prefix (eight chats opening on one system
        // prompt) shares them, and the step writes each layer's keys before
        // any row reads them.
        self.publish(s, &tokens);
        metrics.prompt_cached_tokens.inc_by(cached as u64);
        adm.budget = adm.budget.saturating_sub(compute);
        adm.first = false;
        true
    }

    /// Gives every running sequence room for its next token (`live`, oldest
    /// first): a new block when it has filled its last; while none is free, the
    /// newest sequence is preempted (its blocks released, to be recomputed when
    /// readmitted).
    fn grow(&mut self, live: &mut Vec<Seq>, metrics: &Metrics) {
        let bt = self.pool.block_tokens();
        let mut i = 0;
        while i < live.len() {
            if live[i].len < live[i].blocks.len() * bt {
                i += 1;
                continue;
            }
            if let Some(block) = self.pool.allocate() {
                live[i].blocks.push(block);
                i += 1;
                continue;
            }
            let Some(mut victim) = live.pop() else { break };
            self.pool.release(&victim.blocks);
            tracing::debug!(index = victim.req.index, tokens = victim.len, "preempted: no free KV block");
            victim.blocks.clear();
            victim.names.clear();
            victim.len = 0;
            metrics.preemptions.inc();
            self.waiting.push_front(victim);
        }
    }

    /// Whether `s` has full blocks within its first `filled` tokens that are
    /// not named yet.
    fn unnamed(&self, s: &Seq, filled: usize) -> bool {
        self.pool.caching() && s.names.len() < filled / self.pool.block_tokens()
    }

    /// Names the full blocks of `s` within `tokens` (its tokens, those the
    /// cache holds or is about to) not named yet, so later requests with the
    /// same prefix reuse them.
    fn publish(&mut self, s: &mut Seq, tokens: &[u32]) {
        if !self.unnamed(s, tokens.len()) {
            return;
        }
        let bt = self.pool.block_tokens();
        for i in s.names.len()..tokens.len() / bt {
            let name = BlockPool::name_of(s.names.last(), &tokens[i * bt..(i + 1) * bt]);
            self.pool.publish(s.blocks[i], name);
            s.names.push(name);
        }
    }
}

/// The paged cache of `model` and its block pool, sized by `cfg.kv`.
fn kv_cache(model: &forja_model::Gpt, cfg: &EngineConfig) -> anyhow::Result<(PagedCache, BlockPool)> {
    let context = model.cfg.block_size as usize;
    let per_token = PagedCache::bytes_per_token(&model.cfg);
    let bt = match cfg.kv.layout {
        KvLayout::Paged(n) => n.clamp(1, context),
        KvLayout::Slots => context,
    };
    let bytes = cfg.kv.bytes.unwrap_or(cfg.max_batch.max(1) * context * per_token);
    let blocks = bytes / (bt * per_token);
    let mib = |b: usize| b as f64 / f64::from(1 << 20);
    anyhow::ensure!(
        blocks * bt >= context,
        "a KV cache of {:.1} MiB holds {} tokens of this model ({per_token} bytes each), less than its context of {context} tokens: give it at least {:.1} MiB",
        mib(bytes),
        blocks * bt,
        mib(context.div_ceil(bt) * bt * per_token)
    );
    let prefix = cfg.kv.prefix_cache && cfg.kv.layout != KvLayout::Slots;
    tracing::info!(
        blocks,
        block_tokens = bt,
        mib = format!("{:.1}", mib(blocks * bt * per_token)),
        full_contexts = blocks * bt / context,
        prefix_cache = prefix,
        "KV cache"
    );
    Ok((PagedCache::new(model, blocks, bt)?, BlockPool::new(blocks, bt, prefix)))
}

/// Starts the engine thread.
pub fn start(front: Arc<Frontend>, weights: Weights, cfg: EngineConfig, metrics: Arc<Metrics>) -> anyhow::Result<EngineHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle { tx, queued: queued.clone(), capacity: cfg.queue_capacity };
    let engine = Engine {
        gens: vec![Generation::new(front, weights, &cfg)?],
        pending: VecDeque::new(),
        next_order: 0,
        rx,
        queued,
        metrics,
        cfg,
        rate: RateWindow::default(),
    };
    std::thread::Builder::new()
        .name("forja-engine".into())
        .spawn(move || engine.run())
        // Spawning a thread fails only when the system is out of resources.
        .expect("starting the engine thread");
    Ok(handle)
}

/// Generated tokens per second over the last few seconds.
#[derive(Default)]
struct RateWindow {
    marks: VecDeque<(Instant, usize)>,
    /// Tokens in `marks` (kept as they come and go: a step adds one mark).
    total: usize,
}

impl RateWindow {
    fn add(&mut self, n: usize) -> f64 {
        let now = Instant::now();
        self.marks.push_back((now, n));
        self.total += n;
        while let Some(&(t, old)) = self.marks.front() {
            if now.duration_since(t) <= Duration::from_secs(5) {
                break;
            }
            self.total -= old;
            self.marks.pop_front();
        }
        let span = self.marks.front().map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64()).max(1.0);
        self.total as f64 / span
    }
}

struct Engine {
    gens: Vec<Generation>,
    /// New sequences in arrival order.
    pending: VecDeque<Seq>,
    next_order: u64,
    rx: mpsc::UnboundedReceiver<Msg>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    cfg: EngineConfig,
    rate: RateWindow,
}

impl Engine {
    fn run(mut self) {
        let _guard = tch::no_grad_guard();
        self.block_gauges();
        loop {
            let idle = self.pending.is_empty() && self.gens.iter().all(|g| g.active.is_empty() && g.waiting.is_empty());
            if idle {
                match self.rx.blocking_recv() {
                    Some(msg) => self.handle(msg),
                    None => return,
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            self.drop_abandoned();
            self.admit();
            self.decode();
            self.retire();
            self.metrics.queue_depth.set(self.queued.load(Ordering::SeqCst) as i64);
            self.metrics.batch_size.set(self.gens.iter().map(|g| g.active.len()).sum::<usize>() as i64);
            self.block_gauges();
        }
    }

    fn block_gauges(&self) {
        let blocks = |f: fn(&BlockPool) -> usize| self.gens.iter().map(|g| f(&g.pool)).sum::<usize>() as i64;
        self.metrics.kv_blocks_used.set(blocks(BlockPool::used));
        self.metrics.kv_blocks_free.set(blocks(BlockPool::available));
        self.metrics.kv_blocks_cached.set(blocks(BlockPool::cached));
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Generate(r) => {
                self.pending.push_back(Seq::new(*r, self.next_order));
                self.next_order += 1;
            }
            Msg::Embed(e) => {
                let out = self.embed(&e);
                let _ = e.reply.send(out);
            }
            Msg::Score(r) => {
                let out = self.score(&r);
                let _ = r.reply.send(out);
            }
            Msg::Swap(front, weights, done) => {
                let added = Generation::new(front, *weights, &self.cfg).map(|g| self.gens.push(g));
                let _ = done.send(added);
            }
        }
    }

    fn embed(&self, e: &EmbedRequest) -> anyhow::Result<Vec<Vec<f32>>> {
        let gen = self.gens.iter().rev().find(|g| Arc::ptr_eq(&g.front, &e.front)).or(self.gens.last());
        let Some(Generation { weights: Weights::Bert { model, .. }, .. }) = gen else {
            anyhow::bail!("the served model is not an encoder");
        };
        let rows: Vec<&[u32]> = e.inputs.iter().map(Vec::as_slice).collect();
        embed_rows(model, &rows)
    }

    /// Log-probabilities of each prompt token after the ones before it (the
    /// first has none), with the `top` likeliest alternatives, by one forward
    /// pass per prompt over the model that tokenized it.
    fn score(&self, r: &ScoreRequest) -> anyhow::Result<Vec<Vec<Option<TokenLogprob>>>> {
        let gen = self.gens.iter().rev().find(|g| Arc::ptr_eq(&g.front, &r.front)).or(self.gens.last());
        let Some(Generation { weights: Weights::Gpt { model, .. }, front, .. }) = gen else {
            anyhow::bail!("the served model is not a generator");
        };
        let tok = &front.tokenizer;
        let name = |id: usize| tok.decode(&[id as u32]).unwrap_or_default();
        r.prompts
            .iter()
            .map(|p| {
                let ids: Vec<i64> = p.iter().map(|&t| i64::from(t)).collect();
                let idx = Tensor::from_slice(&ids).to(model.device()).view([1, -1]);
                let lp = model.forward(&idx, false, None)?.log_softmax(-1, Kind::Float).squeeze_dim(0).to(tch::Device::Cpu);
                let rows = Vec::<Vec<f32>>::try_from(&lp)?;
                let mut out = vec![None];
                for (i, &t) in p.iter().enumerate().skip(1) {
                    let row = &rows[i - 1];
                    let top = top_n(row, r.top).into_iter().map(|(j, v)| (name(j), v)).collect();
                    out.push(Some(TokenLogprob { token: name(t as usize), logprob: row[t as usize], top }));
                }
                Ok(out)
            })
            .collect()
    }

    /// Drops waiting sequences whose client left or whose deadline passed.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let before = self.pending.len();
        let metrics = &self.metrics;
        self.pending.retain(|Seq { req: r, .. }| {
            if r.events.is_closed() {
                metrics.cancelled.inc();
                false
            } else if now >= r.deadline {
                metrics.deadline_exceeded.inc();
                let _ = r.events.send(Event::Done { index: r.index, finish: Finish::Length, completion_tokens: 0, cached_tokens: 0 });
                false
            } else {
                true
            }
        });
        self.queued.fetch_sub(before - self.pending.len(), Ordering::SeqCst);
        for gen in &mut self.gens {
            let before = gen.waiting.len();
            gen.waiting.retain(|s| !s.req.events.is_closed());
            self.metrics.cancelled.inc_by((before - gen.waiting.len()) as u64);
        }
    }

    /// Moves waiting sequences into the running batch, preempted ones first,
    /// then new ones in arrival order (a model's queue stops at the first that
    /// does not fit), and prefills what their caches lack.
    fn admit(&mut self) {
        let mut adm = Admission { budget: self.cfg.max_prefill_tokens.max(1), first: true, max_batch: self.cfg.max_batch.max(1) };
        let mut batches: Vec<Vec<Seq>> = (0..self.gens.len()).map(|_| Vec::new()).collect();
        for (gen, batch) in self.gens.iter_mut().zip(&mut batches) {
            while let Some(mut s) = gen.waiting.pop_front() {
                if gen.place(&mut s, &mut adm, batch.len(), &self.metrics) {
                    batch.push(s);
                } else {
                    gen.waiting.push_front(s);
                    break;
                }
            }
        }
        let mut blocked: Vec<bool> = self.gens.iter().map(|g| !g.waiting.is_empty()).collect();
        let (mut keep, mut admitted) = (VecDeque::new(), 0);
        while let Some(mut s) = self.pending.pop_front() {
            // A request tokenized for a model goes to that model while it runs;
            // one whose model is gone goes to the newest.
            let gi = self.gens.iter().rposition(|g| Arc::ptr_eq(&g.front, &s.req.front)).unwrap_or(self.gens.len() - 1);
            if !blocked[gi] && self.gens[gi].place(&mut s, &mut adm, batches[gi].len(), &self.metrics) {
                batches[gi].push(s);
                admitted += 1;
            } else {
                blocked[gi] = true;
                keep.push_back(s);
            }
        }
        self.pending = keep;
        self.queued.fetch_sub(admitted, Ordering::SeqCst);
        for (gi, seqs) in batches.into_iter().enumerate() {
            if !seqs.is_empty() {
                step(&mut self.gens[gi], seqs, Phase::Prefill, &self.metrics, &mut self.rate);
            }
        }
    }

    /// One decoding step for every running sequence.
    fn decode(&mut self) {
        for gen in &mut self.gens {
            if gen.active.is_empty() {
                continue;
            }
            // Sequences whose client left release their blocks now.
            let (gone, mut live): (Vec<Seq>, Vec<Seq>) =
                std::mem::take(&mut gen.active).into_iter().partition(|s| s.req.events.is_closed());
            for s in gone {
                self.metrics.cancelled.inc();
                gen.pool.release(&s.blocks);
            }
            live.sort_by_key(|s| s.order);
            gen.grow(&mut live, &self.metrics);
            if live.is_empty() {
                continue;
            }
            self.metrics.batch_sizes.observe(live.len() as f64);
            step(gen, live, Phase::Decode, &self.metrics, &mut self.rate);
        }
    }

    /// Drops old models once nothing runs or waits on them.
    fn retire(&mut self) {
        let newest = self.gens.len() - 1;
        let pending = &self.pending;
        let mut i = 0;
        self.gens.retain(|g| {
            let keep =
                i == newest || !g.active.is_empty() || !g.waiting.is_empty() || pending.iter().any(|s| Arc::ptr_eq(&s.req.front, &g.front));
            i += 1;
            if !keep {
                tracing::info!(model = %g.front.id, hash = %g.front.hash, "old model drained and unloaded");
            }
            keep
        });
    }
}

/// What a step feeds each sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its tokens past its cached prefix (its prompt, and what it had
    /// generated when it was preempted).
    Prefill,
    /// Its last sampled token.
    Decode,
}

/// Runs one step over `seqs`, samples their next tokens, and keeps the ones
/// still running (the others release their blocks).
fn step(gen: &mut Generation, mut seqs: Vec<Seq>, phase: Phase, metrics: &Metrics, rate: &mut RateWindow) {
    // The last sampled token of each sequence is not in the cache yet.
    let feeds: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| match phase {
            Phase::Prefill => s.tokens().split_off(s.len),
            Phase::Decode => vec![s.generated.last().copied().unwrap_or(0)],
        })
        .collect();
    let rows: Vec<PagedRow> = seqs.iter().zip(&feeds).map(|(s, f)| PagedRow { blocks: &s.blocks, start: s.len, tokens: f }).collect();
    let result = step_logits(gen, &rows);
    drop(rows);
    let logits = match result {
        Ok(l) => l,
        Err(e) => return fail(gen, seqs, &e),
    };
    for (s, f) in seqs.iter_mut().zip(&feeds) {
        s.len += f.len();
        // After the step the cache holds all of the sequence's tokens.
        if gen.unnamed(s, s.len) {
            let tokens = s.tokens();
            gen.publish(s, &tokens);
        }
    }
    let finished = sample_all(gen, &mut seqs, &logits, metrics, rate);
    for (s, done) in seqs.into_iter().zip(finished) {
        if done {
            gen.pool.release(&s.blocks);
        } else {
            gen.active.push(s);
        }
    }
}

fn fail(gen: &mut Generation, seqs: Vec<Seq>, e: &anyhow::Error) {
    tracing::error!("engine step failed: {e:#}");
    for s in seqs {
        let _ = s.req.events.send(Event::Failed { index: s.req.index, message: format!("{e:#}") });
        // What the step should have written is not there: forget the names.
        gen.pool.forget(&s.blocks);
        gen.pool.release(&s.blocks);
    }
}

/// Logits `[b, vocab]` (float32, on the CPU as rows) after a step of `rows`.
fn step_logits(gen: &mut Generation, rows: &[PagedRow]) -> anyhow::Result<Tensor> {
    let (Weights::Gpt { model, .. }, Some(cache)) = (&gen.weights, gen.cache.as_mut()) else {
        anyhow::bail!("the served model is not a generator");
    };
    let hidden = model.hidden_paged(rows, cache)?;
    Ok(model.lm_head(&hidden).to_kind(Kind::Float).to(tch::Device::Cpu))
}

/// The `n` largest entries of `row`, largest first.
fn top_n(row: &[f32], n: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(n);
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.into_iter().map(|i| (i, row[i])).collect()
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = row.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    row.iter().map(|&x| x - lse).collect()
}

/// The floats of `[b, vocab]` logits in one copy, and `vocab` (tch's
/// `Vec<Vec<_>>::try_from` splits the tensor and copies row by row: a dozen
/// libtorch calls per sequence per step).
fn logits_of(t: &Tensor) -> anyhow::Result<(Vec<f32>, usize)> {
    let (flat, shape) = forja_model::quant::host_floats(t);
    match shape.as_slice() {
        &[_, vocab] if vocab > 0 => Ok((flat, vocab as usize)),
        _ => anyhow::bail!("logits of shape {shape:?}, not [batch, vocab]"),
    }
}

/// Samples the next token of each sequence from its row of `logits`; returns
/// which sequences finished.
fn sample_all(gen: &Generation, seqs: &mut [Seq], logits: &Tensor, metrics: &Metrics, rate: &mut RateWindow) -> Vec<bool> {
    let (flat, vocab) = match logits_of(logits) {
        Ok(r) => r,
        Err(e) => {
            for s in seqs.iter() {
                let _ = s.req.events.send(Event::Failed { index: s.req.index, message: format!("reading logits: {e}") });
            }
            return vec![true; seqs.len()];
        }
    };
    let now = Instant::now();
    let mut done = Vec::with_capacity(seqs.len());
    let mut produced = 0;
    let mut weights = Vec::new();
    for (s, row) in seqs.iter_mut().zip(flat.chunks(vocab)) {
        let p = &s.req.params;
        let token = if p.temperature > 0.0 && p.top_k == 0 && p.top_p >= 1.0 {
            // Plain sampling: the softmax's numerators (vectorised) and one
            // walk of their CDF.
            forja_kernels::softmax_weights(row, 1.0 / p.temperature.max(1e-6) as f32, &mut weights);
            draw(&weights, &mut s.rng) as u32
        } else {
            let cfg =
                SamplingConfig { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, max_new_tokens: p.max_tokens, seed: p.seed };
            sample(row, &cfg, &mut s.rng)
        };
        produced += 1;
        if s.first_token.is_none() {
            s.first_token = Some(now);
            metrics.ttft.observe(now.duration_since(s.req.arrived).as_secs_f64());
        }
        let finished = advance(gen, s, token, row, now);
        if s.left {
            metrics.cancelled.inc();
        } else if finished {
            if let Some(first) = s.first_token {
                let n = s.generated.len();
                if n > 1 {
                    metrics.per_token.observe(now.duration_since(first).as_secs_f64() / (n - 1) as f64);
                }
            }
        }
        done.push(finished);
    }
    metrics.generated_tokens.inc_by(produced as u64);
    metrics.tokens_per_second.set(rate.add(produced));
    done
}

/// Takes `token` into sequence `s`: checks stop tokens, stop strings, limits and
/// the deadline, sends the text that is safe to send; true when it finished.
fn advance(gen: &Generation, s: &mut Seq, token: u32, row: &[f32], now: Instant) -> bool {
    let tok = &gen.front.tokenizer;
    let p = &s.req.params;
    if p.stop_ids.contains(&token) {
        return finish(s, tok, Finish::Stop, None);
    }
    if let Some(n) = p.logprobs {
        let lp = log_softmax(row);
        let name = |id: usize| tok.decode(&[id as u32]).unwrap_or_default();
        let top = top_n(&lp, n).into_iter().map(|(i, v)| (name(i), v)).collect();
        s.held.push(TokenLogprob {
            token: name(token as usize),
            logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
            top,
        });
    }
    s.generated.push(token);
    s.detok.push(tok, &s.generated, false);
    let text = &s.detok.text;
    // The first stop string in the new text ends the sequence before it.
    let search_from = s.searched.saturating_sub(p.stop.iter().map(String::len).max().unwrap_or(0));
    let search_from = (0..=search_from).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    if let Some(cut) = p.stop.iter().filter_map(|st| text[search_from..].find(st.as_str()).map(|i| i + search_from)).min() {
        return finish(s, tok, Finish::Stop, Some(cut.max(s.sent)));
    }
    s.searched = text.len();
    let limit = s.generated.len() >= p.max_tokens || s.len + 1 > gen.cache.as_ref().map_or(0, PagedCache::context);
    if limit {
        return finish(s, tok, Finish::Length, None);
    }
    if now >= s.req.deadline {
        tracing::warn!(index = s.req.index, tokens = s.generated.len(), "sequence cut at its deadline");
        return finish(s, tok, Finish::Length, None);
    }
    if !s.req.stream {
        // Its text goes out once, when it ends.
        return false;
    }
    // Hold back a tail that may still become a stop string (an incomplete UTF-8
    // character is held back by the detokenizer).
    let text = &s.detok.text;
    let mut safe = text.len();
    for st in &p.stop {
        for k in (1..st.len()).rev() {
            if st.is_char_boundary(k) && text.ends_with(&st[..k]) {
                safe = safe.min(text.len() - k);
                break;
            }
        }
    }
    if safe > s.sent {
        let delta = text[s.sent..safe].to_string();
        s.sent = safe;
        let logprobs = std::mem::take(&mut s.held);
        if s.req.events.send(Event::Delta { index: s.req.index, text: delta, logprobs }).is_err() {
            s.left = true;
            return true;
        }
    }
    false
}

/// Sends what is left of the text (up to `cut`) and the end of the sequence.
fn finish(s: &mut Seq, tok: &forja_tokenizer::Tokenizer, finish: Finish, cut: Option<usize>) -> bool {
    s.detok.push(tok, &s.generated, true);
    let text = &s.detok.text;
    let end = cut.unwrap_or(text.len()).min(text.len());
    if end > s.sent || !s.held.is_empty() {
        let delta = text.get(s.sent..end).unwrap_or_default().to_string();
        s.sent = end;
        let _ = s.req.events.send(Event::Delta { index: s.req.index, text: delta, logprobs: std::mem::take(&mut s.held) });
    }
    let _ = s.req.events.send(Event::Done {
        index: s.req.index,
        finish,
        completion_tokens: s.generated.len(),
        cached_tokens: s.cached.unwrap_or(0),
    });
    true
}
