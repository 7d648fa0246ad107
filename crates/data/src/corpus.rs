//! The corpus-level passes of `clean`, shared by the single-process stage and
//! the sharded steps (`clean_shard` → `dedup_clusters` → `merge_shards`), so
//! both write the same bytes:
//!
//! 1. **pass 1** streams the input files through the per-document chain
//!    ([`crate::web::process`]) in parallel, writes rejects as they come, and
//!    stages the candidates (documents that passed) in a file, keeping in memory
//!    only their ids, sources, lengths and near-duplicate band keys
//!    ([`Candidates`]; a shard writes them to `signatures.bin`);
//! 2. **duplicates** over all candidates in input order: exact (same content
//!    hash, the first kept) and near (MinHash LSH clusters, the smallest index
//!    kept) ([`duplicates`]);
//! 3. **pass 2** streams the staged candidates again, rejects the duplicates
//!    (naming what they duplicate) and writes the rest to their splits.

use crate::minhash::clusters_flat;
use crate::quality::LineStats;
use crate::read::{read_file_chunked, ReadConfig, ReadOutput, CHUNK_RECORDS};
use crate::split::{unit_hash, SplitConfig, Splitter};
use crate::web::{process, ChainCounts, Enabled, Outcome, Rules};
use anyhow::Context;
use forja_core::artifacts::{Artifact, RowWriter};
use forja_core::{Document, LabeledDocument, Reject};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Rejected examples kept per rule for the report.
pub const EXAMPLES_PER_RULE: usize = 2;
/// Rows per written batch (bounded memory; fixed, so outputs are byte-identical
/// however the work was divided).
pub const WRITE_BATCH: usize = 2048;

/// Counts of a run with a few rejected examples per rule: (source, reason, text start).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tally {
    pub counts: ChainCounts,
    pub examples: BTreeMap<String, Vec<(String, String, String)>>,
}

impl Tally {
    /// Counts a reject under `rule`, keeping it as an example while there are
    /// few; returns it with its rule and language set, to be written.
    pub fn reject(&mut self, rule: &str, lang: &str, reject: Reject) -> Reject {
        let reject = reject.with_rule(rule, lang);
        self.counts.reject(rule, lang);
        let examples = self.examples.entry(rule.to_string()).or_default();
        if examples.len() < EXAMPLES_PER_RULE {
            let start: String = reject.raw.chars().take(160).collect();
            examples.push((format!("{}:{}", reject.source, reject.position), reject.reason.clone(), start));
        }
        reject
    }

    /// Adds a later shard's tally (examples in shard order, as one process finds them).
    pub fn add(&mut self, other: &Tally) {
        self.counts.add(&other.counts);
        for (rule, ex) in &other.examples {
            let mine = self.examples.entry(rule.clone()).or_default();
            let room = EXAMPLES_PER_RULE.saturating_sub(mine.len());
            mine.extend(ex.iter().take(room).cloned());
        }
    }
}

/// A writer with a row buffer flushed every [`WRITE_BATCH`] rows.
pub struct Batched<A: Artifact> {
    writer: RowWriter<A>,
    rows: Vec<A>,
}

impl<A: Artifact> Batched<A> {
    pub fn create(path: &Path, stage: &str, config_hash: &str) -> anyhow::Result<Self> {
        Ok(Self { writer: A::writer(path, stage, config_hash)?, rows: Vec::new() })
    }
    pub fn push(&mut self, row: A) -> anyhow::Result<()> {
        self.rows.push(row);
        if self.rows.len() >= WRITE_BATCH {
            self.writer.write(&self.rows)?;
            self.rows.clear();
        }
        Ok(())
    }
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.writer.write(&self.rows)?;
        self.writer.finish()?;
        Ok(())
    }
}

/// What the later passes need of each staged candidate, in input order, packed
/// in a few large buffers (no allocation per document: millions of small
/// strings interleaved with the texts would pin the allocator's pages).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Candidates {
    /// Content hashes (blake3) of the candidates' final text.
    ids: Vec<[u8; 32]>,
    /// Sources (`file:position`) and labels, concatenated; `spans[i]` is the
    /// end of candidate `i`'s source and of its label in `text`.
    text: String,
    spans: Vec<(usize, usize)>,
    /// Text length in bytes.
    lens: Vec<u64>,
    /// MinHash band keys, `bands` per candidate (none when near-duplicate
    /// removal is off).
    bands: usize,
    keys: Vec<u64>,
}

const SIGNATURES_MAGIC: &[u8; 10] = b"FORJASIG2\n";

/// A 64-hex-digit content hash as bytes (zeros where it is not one: ids are
/// made by `forja_core::hash::hash_bytes`, so that never happens here).
fn id_bytes(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, pair) in id.as_bytes().chunks(2).take(32).enumerate() {
        let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
        out[i] = hex(pair[0]) << 4 | pair.get(1).map_or(0, |&b| hex(b));
    }
    out
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends one candidate; `keys` must have the same length for every
    /// candidate (or be empty for all).
    pub fn push(&mut self, id: &str, source: &str, label: &str, len: u64, keys: &[u64]) {
        self.ids.push(id_bytes(id));
        self.text.push_str(source);
        let source_end = self.text.len();
        self.text.push_str(label);
        self.spans.push((source_end, self.text.len()));
        self.lens.push(len);
        if !keys.is_empty() {
            self.bands = keys.len();
            self.keys.extend_from_slice(keys);
        }
    }

    /// Candidate `i`'s id as its 64 hex digits.
    pub fn id(&self, i: usize) -> String {
        self.ids[i].iter().map(|b| format!("{b:02x}")).collect()
    }
    fn raw_id(&self, i: usize) -> &[u8; 32] {
        &self.ids[i]
    }
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.spans[i - 1].1
        }
    }
    pub fn source(&self, i: usize) -> &str {
        &self.text[self.start(i)..self.spans[i].0]
    }
    pub fn label(&self, i: usize) -> &str {
        &self.text[self.spans[i].0..self.spans[i].1]
    }
    pub fn text_len(&self, i: usize) -> u64 {
        self.lens[i]
    }
    /// Whether every candidate has band keys.
    pub fn has_keys(&self) -> bool {
        self.bands > 0 && self.keys.len() == self.bands * self.len()
    }
    pub fn keys(&self, i: usize) -> &[u64] {
        if self.has_keys() {
            &self.keys[i * self.bands..(i + 1) * self.bands]
        } else {
            &[]
        }
    }

    /// Appends a later shard's candidates.
    pub fn extend(&mut self, other: &Candidates) {
        for i in 0..other.len() {
            self.push(&other.id(i), other.source(i), other.label(i), other.lens[i], other.keys(i));
        }
    }

    /// Writes `signatures.bin` (atomically): the magic line, then per candidate
    /// its id, source, label, length and band keys, little-endian, strings as
    /// u32 length + UTF-8.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        forja_core::fsutil::atomic_write_with(path, |w| {
            w.write_all(SIGNATURES_MAGIC)?;
            w.write_all(&(self.len() as u64).to_le_bytes())?;
            for i in 0..self.len() {
                let id = self.id(i);
                for s in [id.as_str(), self.source(i), self.label(i)] {
                    w.write_all(&(s.len() as u32).to_le_bytes())?;
                    w.write_all(s.as_bytes())?;
                }
                w.write_all(&self.lens[i].to_le_bytes())?;
                let keys = self.keys(i);
                w.write_all(&(keys.len() as u32).to_le_bytes())?;
                for k in keys {
                    w.write_all(&k.to_le_bytes())?;
                }
            }
            Ok(())
        })
        .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a `signatures.bin`, naming the file and the record on any problem.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut r = &bytes[..];
        let mut magic = [0u8; 10];
        r.read_exact(&mut magic)
            .ok()
            .filter(|()| &magic == SIGNATURES_MAGIC)
            .with_context(|| format!("{}: not a forja signatures file", path.display()))?;
        let n = read_u64(&mut r).with_context(|| format!("{}: truncated header", path.display()))?;
        let mut c = Candidates::default();
        for i in 0..n {
            let rec = (|| -> std::io::Result<()> {
                let id = read_string(&mut r)?;
                let source = read_string(&mut r)?;
                let label = read_string(&mut r)?;
                let len = read_u64(&mut r)?;
                let mut k = [0u8; 4];
                r.read_exact(&mut k)?;
                let keys = (0..u32::from_le_bytes(k)).map(|_| read_u64(&mut r)).collect::<std::io::Result<Vec<u64>>>()?;
                c.push(&id, &source, &label, len, &keys);
                Ok(())
            })();
            rec.with_context(|| format!("{}: record {} of {n} unreadable", path.display(), i + 1))?;
        }
        Ok(c)
    }
}

fn read_u64(r: &mut &[u8]) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut &[u8]) -> std::io::Result<String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let len = u32::from_le_bytes(b) as usize;
    if len > r.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("a string of {len} bytes runs past the end")));
    }
    let mut s = vec![0u8; len];
    r.read_exact(&mut s)?;
    String::from_utf8(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Settings of pass 1.
pub struct PassOne<'a> {
    pub read: &'a ReadConfig,
    pub min_chars: usize,
    pub rules: &'a Rules,
    pub on: &'a Enabled,
    /// The meta field holding each document's class; empty: not labeled.
    pub label_field: &'a str,
}

/// Pass 1 over `files`: the chain in parallel (order kept), rejects written as
/// they come, candidates staged at `staging` (documents).
pub fn first_pass(
    p: &PassOne,
    files: &[PathBuf],
    staging: &mut Batched<Document>,
    rejects: &mut Batched<Reject>,
    tally: &mut Tally,
) -> anyhow::Result<Candidates> {
    let mut cand = Candidates::default();
    let progress = progress_bar(files.len() as u64);
    for f in files {
        let file_name = f.display().to_string();
        let boilerplate = if p.on.boilerplate { boilerplate_lines(f, p.read, p.rules)? } else { HashSet::new() };
        read_file_chunked(f, p.read, CHUNK_RECORDS, &mut |chunk: ReadOutput| {
            for r in chunk.rejects {
                tally.counts.read_one(&file_name, r.raw_len as usize);
                rejects.push(tally.reject("unreadable", crate::lang::UNDETERMINED, r))?;
            }
            let results: Vec<(Outcome, Option<Vec<u64>>)> = chunk
                .records
                .par_iter()
                .map(|rec| {
                    let outcome = process(&rec.text, p.min_chars, p.rules, p.on, &boilerplate);
                    let keys = match &outcome {
                        Outcome::Kept(k) if p.on.near_dedup => {
                            let mh = &p.rules.near_dedup;
                            Some(mh.band_keys(&mh.signature(&k.text)))
                        }
                        _ => None,
                    };
                    (outcome, keys)
                })
                .collect();
            for (rec, (outcome, keys)) in chunk.records.into_iter().zip(results) {
                tally.counts.read_one(&file_name, rec.text.chars().count());
                let (lang, judged) = match &outcome {
                    Outcome::Kept(k) => (k.lang, k.judged),
                    Outcome::Dropped { lang, judged, .. } => (*lang, *judged),
                };
                tally.counts.judged(lang, judged);
                let label = match label_of(&rec.meta, p.label_field) {
                    Ok(label) => label,
                    Err(reason) => {
                        let r = Reject::new(&rec.file, rec.position, reason, &rec.text);
                        rejects.push(tally.reject("missing_label", lang, r))?;
                        continue;
                    }
                };
                let kept = match outcome {
                    Outcome::Dropped { rule, reason, .. } => {
                        let r = Reject::new(&rec.file, rec.position, reason, &rec.text);
                        rejects.push(tally.reject(&rule, lang, r))?;
                        continue;
                    }
                    Outcome::Kept(k) => k,
                };
                tally.counts.candidate(&kept);
                let id = forja_core::hash::hash_bytes(kept.text.as_bytes());
                let source = format!("{}:{}", rec.file, rec.position);
                cand.push(&id, &source, &label, kept.text.len() as u64, keys.as_deref().unwrap_or(&[]));
                let meta = serde_json::Value::Object(rec.meta).to_string();
                staging.push(Document { id, text: kept.text, source, lang: kept.lang.into(), meta })?;
            }
            Ok(())
        })?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(cand)
}

/// The class of a record (`Ok("")` when not labeled), or why it has none.
fn label_of(meta: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<String, String> {
    if field.is_empty() {
        return Ok(String::new());
    }
    match meta.get(field) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Err(format!("label field `{field}` is empty or not a string/number: {other}")),
        None => Err(format!("missing label field `{field}`")),
    }
}

fn progress_bar(files: u64) -> indicatif::ProgressBar {
    if std::env::var_os("CI").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    indicatif::ProgressBar::new(files).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

/// Pass 0 of one file (boilerplate on): the lines frequent enough across its
/// documents to be boilerplate.
fn boilerplate_lines(f: &Path, read: &ReadConfig, rules: &Rules) -> anyhow::Result<HashSet<u64>> {
    let mut stats = LineStats::default();
    read_file_chunked(f, read, CHUNK_RECORDS, &mut |chunk| {
        for rec in &chunk.records {
            stats.add(&rules.boilerplate, &crate::clean::normalize(&rec.text));
        }
        Ok(())
    })?;
    Ok(stats.boilerplate(&rules.boilerplate))
}

/// A candidate removed as a duplicate of an earlier one (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "of")]
pub enum Dup {
    Exact(usize),
    Near(usize),
}

/// Exact duplicates (same id; the first kept) and near duplicates (MinHash LSH
/// clusters; the smallest index kept, which is never an exact duplicate itself:
/// identical texts share every band).
pub fn duplicates(c: &Candidates, exact: bool, near: bool) -> Vec<Option<Dup>> {
    let mut out = vec![None; c.len()];
    if exact {
        let mut first: HashMap<&[u8; 32], usize> = HashMap::with_capacity(c.len());
        for (i, slot) in out.iter_mut().enumerate() {
            match first.get(c.raw_id(i)) {
                Some(&j) => *slot = Some(Dup::Exact(j)),
                None => {
                    first.insert(c.raw_id(i), i);
                }
            }
        }
    }
    if near && c.has_keys() {
        for (i, rep) in clusters_flat(&c.keys, c.bands).into_iter().enumerate() {
            if rep != i && out[i].is_none() {
                out[i] = Some(Dup::Near(rep));
            }
        }
    }
    out
}

/// How the train split of labeled documents is rebalanced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    None,
    /// Every class's train documents repeated up to the largest class's count
    /// (each document `target / n` times, the first `target % n` by seeded hash
    /// once more); the copies are extra rows, not extra documents.
    Oversample,
    /// Every class cut to the smallest class's count in train (the first by
    /// seeded hash kept); the rest are rejected as `undersampled`.
    Undersample,
}

/// Labeled-data settings of `clean`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    /// Field (JSONL, Parquet) or column (CSV) holding each document's class;
    /// empty: the documents are not labeled. Labeled output splits are
    /// `labeled` artifacts (documents + `label`), split stratified by class.
    pub field: String,
    pub balance: Balance,
}

/// One split's writer: documents, or labeled documents.
pub enum SplitSink {
    Plain(Batched<Document>),
    Labeled(Batched<LabeledDocument>),
}

impl SplitSink {
    pub fn create(path: &Path, labeled: bool, stage: &str, hash: &str) -> anyhow::Result<Self> {
        Ok(if labeled { Self::Labeled(Batched::create(path, stage, hash)?) } else { Self::Plain(Batched::create(path, stage, hash)?) })
    }
    fn push(&mut self, doc: Document, label: &str) -> anyhow::Result<()> {
        match self {
            Self::Plain(w) => w.push(doc),
            Self::Labeled(w) => w.push(LabeledDocument { doc, label: label.to_string() }),
        }
    }
    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Plain(w) => w.finish(),
            Self::Labeled(w) => w.finish(),
        }
    }
}

/// Where pass 2 writes: the three splits (in [`crate::stages::SPLITS`] order)
/// and the rejects.
pub struct Sinks {
    pub splits: [SplitSink; 3],
    pub rejects: Batched<Reject>,
}

/// Documents per class and split, before and after rebalancing.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct ClassBalance {
    /// class → documents in train, val, test (before rebalancing).
    pub per_split: BTreeMap<String, [u64; 3]>,
    /// class → train rows written (after rebalancing).
    pub train_rows: BTreeMap<String, u64>,
    /// class → loss weight `n / (k · n_class)` over the train rows.
    pub weights: BTreeMap<String, f64>,
}

/// What pass 2 wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Documents per split.
    pub per_split: [u64; 3],
    /// Extra train rows from over-sampling.
    pub oversampled_rows: u64,
    pub balance: Option<ClassBalance>,
}

/// Split (and, for labeled data, train copies: 0 = rejected as under-sampled)
/// of every candidate that is not a duplicate.
fn plan(c: &Candidates, dups: &[Option<Dup>], split: &SplitConfig, label: &LabelConfig, seed: u64) -> anyhow::Result<Vec<(usize, u64)>> {
    let mut plan = vec![(0usize, 1u64); c.len()];
    if label.field.is_empty() {
        let total: u64 = (0..c.len()).filter(|&i| dups[i].is_none()).map(|i| c.text_len(i)).sum();
        let mut splitter = Splitter::new(split, seed, total as usize);
        for i in (0..c.len()).filter(|&i| dups[i].is_none()) {
            plan[i].0 = splitter.assign(&c.id(i), c.text_len(i) as usize);
        }
        return Ok(plan);
    }
    anyhow::ensure!(
        split.mode == crate::split::SplitMode::Random,
        "labeled data is split stratified by class: split.mode must be `random`"
    );
    // Per class, candidates in seeded-hash order: the first val_fraction to
    // val, the next test_fraction to test, the rest to train.
    let mut by_class: BTreeMap<&str, Vec<(f64, usize)>> = BTreeMap::new();
    for i in (0..c.len()).filter(|&i| dups[i].is_none()) {
        by_class.entry(c.label(i)).or_default().push((unit_hash(seed, &c.id(i)), i));
    }
    let mut train: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (class, mut members) in by_class {
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Every class keeps at least one train document.
        let n = members.len() as f64;
        let cap = members.len().saturating_sub(1);
        let n_val = ((n * split.val_fraction).round() as usize).min(cap);
        let n_test = ((n * split.test_fraction).round() as usize).min(cap - n_val);
        for (rank, &(_, i)) in members.iter().enumerate() {
            plan[i].0 = if rank < n_val {
                1
            } else if rank < n_val + n_test {
                2
            } else {
                train.entry(class).or_default().push(i);
                0
            };
        }
    }
    let counts: Vec<usize> = train.values().map(Vec::len).collect();
    let target = match label.balance {
        Balance::None => return Ok(plan),
        Balance::Oversample => counts.iter().copied().max().unwrap_or(0),
        Balance::Undersample => counts.iter().copied().min().unwrap_or(0),
    };
    for members in train.values() {
        let n = members.len();
        for (rank, &i) in members.iter().enumerate() {
            plan[i].1 = match label.balance {
                Balance::Oversample => (target / n + usize::from(rank < target % n)) as u64,
                _ => u64::from(rank < target),
            };
        }
    }
    Ok(plan)
}

/// Pass 2: the staged candidates (`parts` in order, together the candidates of
/// `c`) to their splits, duplicates (and under-sampled documents) to the rejects.
#[allow(clippy::too_many_arguments)]
pub fn second_pass(
    parts: &[PathBuf],
    c: &Candidates,
    dups: &[Option<Dup>],
    split: &SplitConfig,
    label: &LabelConfig,
    seed: u64,
    sinks: &mut Sinks,
    tally: &mut Tally,
) -> anyhow::Result<Written> {
    let plan = plan(c, dups, split, label, seed)?;
    let labeled = !label.field.is_empty();
    let mut written = Written { balance: labeled.then(ClassBalance::default), ..Written::default() };
    let mut i = 0usize;
    for part in parts {
        for batch in forja_core::ipc::read_artifact_batches(part, Document::KIND)? {
            for d in Document::from_batch(part, &batch?)? {
                anyhow::ensure!(i < c.len(), "{}: more staged documents than signatures ({})", part.display(), c.len());
                anyhow::ensure!(
                    id_bytes(&d.id) == *c.raw_id(i),
                    "{}: document {} does not match its signature record",
                    part.display(),
                    i + 1
                );
                let (dup, (s, copies), label) = (dups[i], plan[i], c.label(i));
                i += 1;
                let (file, position) = split_source(&d.source);
                let rejected = match dup {
                    Some(Dup::Exact(j)) => Some(("exact_duplicate", format!("exact duplicate of {}", c.source(j)))),
                    Some(Dup::Near(j)) => Some(("near_duplicate", format!("near duplicate of {} (id {})", c.source(j), c.id(j)))),
                    None if copies == 0 => Some((
                        "undersampled",
                        format!("class `{label}` under-sampled in train: cut to the smallest class's train count (the first by seeded hash kept)"),
                    )),
                    None => None,
                };
                if let Some((rule, reason)) = rejected {
                    let reject = Reject::new(file, position, reason, &d.text);
                    sinks.rejects.push(tally.reject(rule, &d.lang, reject))?;
                    continue;
                }
                tally.counts.keep(file, &d.lang, d.text.chars().count());
                written.per_split[s] += 1;
                if let Some(b) = written.balance.as_mut() {
                    b.per_split.entry(label.to_string()).or_default()[s] += 1;
                    if s == 0 {
                        *b.train_rows.entry(label.to_string()).or_default() += copies;
                    }
                }
                let copies = if s == 0 { copies } else { 1 };
                written.oversampled_rows += copies - 1;
                for _ in 1..copies {
                    sinks.splits[s].push(d.clone(), label)?;
                }
                sinks.splits[s].push(d, label)?;
            }
        }
    }
    anyhow::ensure!(i == c.len(), "staged documents ({i}) and signatures ({}) differ in number", c.len());
    if let Some(b) = written.balance.as_mut() {
        let rows: u64 = b.train_rows.values().sum();
        let k = b.train_rows.len() as f64;
        b.weights = b.train_rows.iter().map(|(l, &n)| (l.clone(), rows as f64 / (k * n as f64))).collect();
    }
    Ok(written)
}

/// `file:position` back into its parts.
pub fn split_source(source: &str) -> (&str, u64) {
    match source.rsplit_once(':') {
        Some((file, pos)) => (file, pos.parse().unwrap_or(0)),
        None => (source, 0),
    }
}

/// Shard `I/N`: from the parameter, else the scheduler's variables
/// (`SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`; Kubernetes Indexed Jobs'
/// `JOB_COMPLETION_INDEX` with `FORJA_SHARD_COUNT`, since Kubernetes does not
/// pass the completion count).
pub fn resolve_shard(param: Option<&str>) -> anyhow::Result<(usize, usize)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (text, from) = match (param, env("SLURM_ARRAY_TASK_ID"), env("JOB_COMPLETION_INDEX")) {
        (Some(p), _, _) => (p.to_string(), "shard"),
        (None, Some(id), _) => {
            let count = env("SLURM_ARRAY_TASK_COUNT").context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
            // Slurm arrays may start at 1 (--array=1-N): count from the minimum.
            let min: usize = env("SLURM_ARRAY_TASK_MIN").and_then(|m| m.parse().ok()).unwrap_or(0);
            let id: usize = id.parse().with_context(|| format!("SLURM_ARRAY_TASK_ID `{id}` is not a number"))?;
            (format!("{}/{count}", id.saturating_sub(min)), "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
        }
        (None, None, Some(index)) => {
            let count = env("FORJA_SHARD_COUNT").context("JOB_COMPLETION_INDEX is set: set FORJA_SHARD_COUNT to the Job's completions too")?;
            (format!("{index}/{count}"), "JOB_COMPLETION_INDEX/FORJA_SHARD_COUNT")
        }
        (None, None, None) => anyhow::bail!(
            "clean_shard: which shard? pass --shard I/N, or run under a Slurm array or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with FORJA_SHARD_COUNT)"
        ),
    };
    let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n >= 1 && i < n => Ok((i, n)),
        _ => anyhow::bail!("shard `{text}` (from {from}): expected I/N with 0 <= I < N"),
    }
}

/// The files of shard `i` of `n`: a contiguous range of the input order, so
/// shards concatenated in order are the whole input in order.
pub fn shard_files(files: &[PathBuf], i: usize, n: usize) -> &[PathBuf] {
    let f = files.len();
    &files[i * f / n..(i + 1) * f / n]
}
