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

use crate::minhash::clusters;
use crate::read::{read_file_chunked, ReadConfig, ReadOutput, CHUNK_RECORDS};
use crate::split::{SplitConfig, Splitter};
use crate::web::{process, ChainCounts, Enabled, LineStats, Outcome, Rules};
use anyhow::Context;
use forja_core::artifacts::{Artifact, RowWriter};
use forja_core::{Document, Reject};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Rejected examples kept per rule for the report.
pub const EXAMPLES_PER_RULE: usize = 2;
/// Rows per written batch (bounded memory; fixed, so outputs are byte-identical
/// however the work was divided).
pub const WRITE_BATCH: usize = 8192;

/// Counts of a run with a few rejected examples per rule: (source, reason, text start).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tally {
    pub counts: ChainCounts,
    pub examples: BTreeMap<String, Vec<(String, String, String)>>,
}

impl Tally {
    /// Counts a reject under `rule`, keeping it as an example while there are few.
    pub fn reject(&mut self, rule: &str, reject: &Reject) {
        self.counts.reject(rule);
        let examples = self.examples.entry(rule.to_string()).or_default();
        if examples.len() < EXAMPLES_PER_RULE {
            let start: String = reject.raw.chars().take(160).collect();
            examples.push((format!("{}:{}", reject.source, reject.position), reject.reason.clone(), start));
        }
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

/// What the later passes need of each staged candidate, in input order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Candidates {
    /// Content hashes of the candidates' final text.
    pub ids: Vec<String>,
    /// `file:position`.
    pub sources: Vec<String>,
    /// Text length in bytes.
    pub lens: Vec<u64>,
    /// MinHash band keys (empty when near-duplicate removal is off).
    pub band_keys: Vec<Vec<u64>>,
}

const SIGNATURES_MAGIC: &[u8; 10] = b"FORJASIG1\n";

impl Candidates {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends a later shard's candidates.
    pub fn extend(&mut self, other: Candidates) {
        self.ids.extend(other.ids);
        self.sources.extend(other.sources);
        self.lens.extend(other.lens);
        self.band_keys.extend(other.band_keys);
    }

    /// Writes `signatures.bin` (atomically): the magic line, then per candidate
    /// its id, source, length and band keys, little-endian, strings as u32
    /// length + UTF-8.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let has_keys = self.band_keys.len() == self.ids.len();
        forja_core::fsutil::atomic_write_with(path, |w| {
            w.write_all(SIGNATURES_MAGIC)?;
            w.write_all(&(self.ids.len() as u64).to_le_bytes())?;
            for i in 0..self.ids.len() {
                for s in [&self.ids[i], &self.sources[i]] {
                    w.write_all(&(s.len() as u32).to_le_bytes())?;
                    w.write_all(s.as_bytes())?;
                }
                w.write_all(&self.lens[i].to_le_bytes())?;
                let keys: &[u64] = if has_keys { &self.band_keys[i] } else { &[] };
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
                let len = read_u64(&mut r)?;
                let mut k = [0u8; 4];
                r.read_exact(&mut k)?;
                let keys = (0..u32::from_le_bytes(k)).map(|_| read_u64(&mut r)).collect::<std::io::Result<Vec<u64>>>()?;
                c.ids.push(id);
                c.sources.push(source);
                c.lens.push(len);
                if !keys.is_empty() {
                    c.band_keys.push(keys);
                }
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
    let mut s = vec![0u8; u32::from_le_bytes(b) as usize];
    r.read_exact(&mut s)?;
    String::from_utf8(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Settings of pass 1.
pub struct PassOne<'a> {
    pub read: &'a ReadConfig,
    pub min_chars: usize,
    pub rules: &'a Rules,
    pub on: &'a Enabled,
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
                tally.reject("unreadable", &r);
                rejects.push(r)?;
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
                let kept = match outcome {
                    Outcome::Dropped { rule, reason } => {
                        let r = Reject::new(&rec.file, rec.position, reason, &rec.text);
                        tally.reject(&rule, &r);
                        rejects.push(r)?;
                        continue;
                    }
                    Outcome::Kept(k) => k,
                };
                tally.counts.candidate(&kept);
                let id = forja_core::hash::hash_bytes(kept.text.as_bytes());
                let source = format!("{}:{}", rec.file, rec.position);
                cand.ids.push(id.clone());
                cand.sources.push(source.clone());
                cand.lens.push(kept.text.len() as u64);
                cand.band_keys.extend(keys);
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
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(c.len());
        for (i, id) in c.ids.iter().enumerate() {
            match first.get(id.as_str()) {
                Some(&j) => out[i] = Some(Dup::Exact(j)),
                None => {
                    first.insert(id, i);
                }
            }
        }
    }
    if near && c.band_keys.len() == c.len() {
        for (i, rep) in clusters(&c.band_keys).into_iter().enumerate() {
            if rep != i && out[i].is_none() {
                out[i] = Some(Dup::Near(rep));
            }
        }
    }
    out
}

/// Where pass 2 writes: the three splits (in [`crate::stages::SPLITS`] order)
/// and the rejects.
pub struct Sinks {
    pub splits: [Batched<Document>; 3],
    pub rejects: Batched<Reject>,
}

/// Pass 2: the staged candidates (`parts` in order, together the candidates of
/// `c`) to their splits, duplicates to the rejects. Returns documents per split.
pub fn second_pass(
    parts: &[PathBuf],
    c: &Candidates,
    dups: &[Option<Dup>],
    split: &SplitConfig,
    seed: u64,
    sinks: &mut Sinks,
    tally: &mut Tally,
) -> anyhow::Result<[u64; 3]> {
    let total: u64 = (0..c.len()).filter(|&i| dups[i].is_none()).map(|i| c.lens[i]).sum();
    let mut splitter = Splitter::new(split, seed, total as usize);
    let mut per_split = [0u64; 3];
    let mut i = 0usize;
    for part in parts {
        for batch in forja_core::ipc::read_artifact_batches(part, Document::KIND)? {
            for d in Document::from_batch(part, &batch?)? {
                anyhow::ensure!(i < c.len(), "{}: more staged documents than signatures ({})", part.display(), c.len());
                anyhow::ensure!(d.id == c.ids[i], "{}: document {} does not match its signature record", part.display(), i + 1);
                let dup = dups[i];
                i += 1;
                let (file, position) = split_source(&d.source);
                if let Some(dup) = dup {
                    let (rule, reason) = match dup {
                        Dup::Exact(j) => ("exact_duplicate", format!("exact duplicate of {}", c.sources[j])),
                        Dup::Near(j) => ("near_duplicate", format!("near duplicate of {} (id {})", c.sources[j], c.ids[j])),
                    };
                    let reject = Reject::new(file, position, reason, &d.text);
                    tally.reject(rule, &reject);
                    sinks.rejects.push(reject)?;
                    continue;
                }
                tally.counts.keep(file, &d.lang, d.text.chars().count());
                let s = splitter.assign(&d.id, d.text.len());
                per_split[s] += 1;
                sinks.splits[s].push(d)?;
            }
        }
    }
    anyhow::ensure!(i == c.len(), "staged documents ({i}) and signatures ({}) differ in number", c.len());
    Ok(per_split)
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
