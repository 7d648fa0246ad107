//! The data stages: `clean`, `train_tokenizer`, `tokenize`.

use crate::clean::CleanConfig;
use crate::corpus::{self, Batched, Candidates, ClassBalance, Dup, LabelConfig, PassOne, Sinks, SplitSink, Tally, Written};
use crate::lang::LangConfig;
use crate::minhash::MinHashConfig;
use crate::pii::PiiConfig;
use crate::profile::ProfilesConfig;
use crate::quality::{BoilerplateConfig, C4Config, GopherQualityConfig, GopherRepetitionConfig};
use crate::read::ReadConfig;
use crate::split::SplitConfig;
use crate::tokenizer::{self, Tokenizer, TokenizerConfig};
use crate::web::{ChainCounts, DocLengthConfig, DocQualityConfig, Enabled, Preset, Rules};
use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, OutDir, OutputSpec, Stage, StageCtx};
use forja_core::{Document, Reject, TokenRow};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The document splits, in the order `clean` writes and `tokenize` reads them.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Parameters of the `clean` stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanStageConfig {
    /// Defaults for the whole chain: `none` or `web`.
    pub preset: Preset,
    pub read: ReadConfig,
    pub clean: CleanConfig,
    pub lang: LangConfig,
    pub boilerplate: BoilerplateConfig,
    pub repetition: GopherRepetitionConfig,
    pub quality: GopherQualityConfig,
    pub c4: C4Config,
    pub doc_quality: DocQualityConfig,
    pub doc_length: DocLengthConfig,
    pub pii: PiiConfig,
    pub near_dedup: MinHashConfig,
    /// Per-language profiles of the language-dependent rules.
    pub profiles: ProfilesConfig,
    /// Labeled data: the class field, stratified splits, rebalancing.
    pub label: LabelConfig,
    pub split: SplitConfig,
    /// Overrides the run's seed for the split.
    pub seed: Option<u64>,
    /// `clean_shard` only: this process's shard, `I/N` (`--shard I/N`); else
    /// from the scheduler's variables.
    pub shard: Option<String>,
}

impl CleanStageConfig {
    /// The chain's rules (serde cannot flatten them and still refuse unknown keys).
    pub fn rules(&self) -> Rules {
        Rules {
            lang: self.lang.clone(),
            boilerplate: self.boilerplate.clone(),
            repetition: self.repetition.clone(),
            quality: self.quality.clone(),
            c4: self.c4.clone(),
            doc_quality: self.doc_quality.clone(),
            doc_length: self.doc_length.clone(),
            pii: self.pii.clone(),
            near_dedup: self.near_dedup.clone(),
            profiles: self.profiles.clone(),
            localized: Default::default(),
        }
    }
}

/// What `clean` did: every count of the run.
#[derive(Debug, Serialize)]
pub struct CleanReport {
    pub files: Vec<String>,
    pub preset: Preset,
    pub enabled: Enabled,
    pub counts: ChainCounts,
    pub train: u64,
    pub val: u64,
    pub test: u64,
    /// Up to [`corpus::EXAMPLES_PER_RULE`] rejected records per rule: (source, reason, text start).
    pub examples: BTreeMap<String, Vec<(String, String, String)>>,
    /// Extra train rows written by over-sampling.
    pub oversampled_rows: u64,
    /// Classes per split, train rows after rebalancing, loss weights (labeled data).
    pub balance: Option<ClassBalance>,
}

/// The hash recorded in the chain's outputs: the configuration without `shard`,
/// so a sharded run and a single-process run write the same bytes.
pub fn chain_hash(cfg: &CleanStageConfig) -> String {
    forja_core::hash::hash_json(&CleanStageConfig { shard: None, ..cfg.clone() })
}

/// Reads `files` as a stream, runs the chain (normalisation, length, and the
/// rules the preset and switches turn on), removes exact and near duplicates
/// and splits (see [`corpus`] for the passes). Writes `train.arrow`,
/// `val.arrow`, `test.arrow` (documents), `rejects.arrow`, `metrics.arrow`,
/// `report.md` and `lengths.svg`. Memory holds one chunk of records plus a few
/// numbers per kept document; the documents themselves go through a staging
/// file. Invariant, checked: records read = kept + rejected.
pub fn run_clean(cfg: &CleanStageConfig, files: &[PathBuf], out: &OutDir, ctx: &StageCtx) -> anyhow::Result<CleanReport> {
    anyhow::ensure!(cfg.shard.is_none(), "clean: `shard` is a parameter of clean_shard (the sharded path), not of clean");
    let (rules, on) = check_clean(cfg, files)?;
    let hash = chain_hash(cfg);
    let staging_path = out.dir().join(".staging.arrow");
    let mut staging = Batched::create(&staging_path, &ctx.name, &hash)?;
    let mut sinks = open_sinks(out, !cfg.label.field.is_empty(), &ctx.name, &hash)?;
    let mut tally = Tally::default();
    let pass = PassOne { read: &cfg.read, min_chars: cfg.clean.min_chars, rules: &rules, on: &on, label_field: &cfg.label.field };
    let cand = corpus::first_pass(&pass, files, &mut staging, &mut sinks.rejects, &mut tally)?;
    staging.finish()?;
    let dups = corpus::duplicates(&cand, cfg.clean.dedup, on.near_dedup);
    let split = corpus::second_pass(
        std::slice::from_ref(&staging_path),
        &cand,
        &dups,
        &cfg.split,
        &cfg.label,
        cfg.seed.unwrap_or(ctx.seed),
        &mut sinks,
        &mut tally,
    );
    let _cleanup = std::fs::remove_file(&staging_path);
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    finish_clean(cfg, &on, files, split?, sinks, tally, out, &ctx.name, &hash)
}

/// The rules a configuration turns on, after checking it.
fn check_clean(cfg: &CleanStageConfig, files: &[PathBuf]) -> anyhow::Result<(Rules, Enabled)> {
    cfg.split.validate()?;
    anyhow::ensure!(!files.is_empty(), "clean: no input files");
    let rules = cfg.rules();
    let on = rules.enabled(cfg.preset);
    if on.near_dedup {
        rules.near_dedup.validate()?;
    }
    if on.profiles {
        let profiles = rules.profiles.load()?;
        let _built = rules.localized.set(rules.localize(&profiles));
    }
    Ok((rules, on))
}

fn open_sinks(out: &OutDir, labeled: bool, name: &str, hash: &str) -> anyhow::Result<Sinks> {
    Ok(Sinks {
        splits: [
            SplitSink::create(&out.path(&CLEAN_SPLITS[0]), labeled, name, hash)?,
            SplitSink::create(&out.path(&CLEAN_SPLITS[1]), labeled, name, hash)?,
            SplitSink::create(&out.path(&CLEAN_SPLITS[2]), labeled, name, hash)?,
        ],
        rejects: Batched::create(&out.path(&REJECTS), name, hash)?,
    })
}

/// Closes the outputs, checks the count invariant, writes metrics and report.
#[allow(clippy::too_many_arguments)]
fn finish_clean(
    cfg: &CleanStageConfig,
    on: &Enabled,
    files: Vec<String>,
    written: Written,
    sinks: Sinks,
    tally: Tally,
    out: &OutDir,
    name: &str,
    hash: &str,
) -> anyhow::Result<CleanReport> {
    let [a, b, c] = sinks.splits;
    for w in [a, b, c] {
        w.finish()?;
    }
    sinks.rejects.finish()?;
    let report = CleanReport {
        files,
        preset: cfg.preset,
        enabled: *on,
        counts: tally.counts,
        train: written.per_split[0],
        val: written.per_split[1],
        test: written.per_split[2],
        examples: tally.examples,
        oversampled_rows: written.oversampled_rows,
        balance: written.balance,
    };
    let c = &report.counts;
    anyhow::ensure!(
        c.read == c.kept + c.rejected_total(),
        "clean: count invariant broken: {} records read, {} kept + {} rejected",
        c.read,
        c.kept,
        c.rejected_total()
    );
    crate::report::write_clean_report(&report, out, name, hash)?;
    tracing::info!(read = c.read, kept = c.kept, rejected = c.rejected_total(), train = report.train, val = report.val, "clean done");
    Ok(report)
}

/// What a shard wrote besides its documents, rejects and signatures
/// (`shard.json`): enough for the later steps to check that the shards belong
/// together and to finish exactly as one process would.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// Stage name and chain hash recorded in the outputs.
    pub stage: String,
    pub chain_hash: String,
    pub config: CleanStageConfig,
    pub seed: u64,
    pub files: Vec<String>,
    pub tally: Tally,
}

/// Outputs of `clean_shard`.
pub const SHARD_PART: OutputSpec = OutputSpec { name: "part", path: "part.arrow", kind: port::DOCUMENTS };
pub const SHARD_REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const SHARD_SIGNATURES: OutputSpec = OutputSpec { name: "signatures", path: "signatures.bin", kind: port::SIGNATURES };
pub const SHARD_INFO: OutputSpec = OutputSpec { name: "shard", path: "shard.json", kind: port::JSON };
/// Output of `dedup_clusters`.
pub const DUPLICATES: OutputSpec = OutputSpec { name: "duplicates", path: "duplicates.jsonl", kind: port::JSONL };

/// Pass 1 of shard I/N (a contiguous range of the input files): candidates,
/// rejects, signatures and `shard.json`.
pub fn run_clean_shard(cfg: &CleanStageConfig, files: &[PathBuf], out: &OutDir, ctx: &StageCtx) -> anyhow::Result<ShardInfo> {
    let (index, count) = corpus::resolve_shard(cfg.shard.as_deref())?;
    let (rules, on) = check_clean(cfg, files)?;
    let mine = corpus::shard_files(files, index, count);
    let hash = chain_hash(cfg);
    let mut staging = Batched::create(&out.path(&SHARD_PART), &ctx.name, &hash)?;
    let mut rejects = Batched::create(&out.path(&SHARD_REJECTS), &ctx.name, &hash)?;
    let mut tally = Tally::default();
    let pass = PassOne { read: &cfg.read, min_chars: cfg.clean.min_chars, rules: &rules, on: &on, label_field: &cfg.label.field };
    let cand = corpus::first_pass(&pass, mine, &mut staging, &mut rejects, &mut tally)?;
    staging.finish()?;
    rejects.finish()?;
    cand.write(&out.path(&SHARD_SIGNATURES))?;
    let info = ShardInfo {
        index,
        count,
        stage: ctx.name.clone(),
        chain_hash: hash,
        config: CleanStageConfig { shard: None, ..cfg.clone() },
        seed: cfg.seed.unwrap_or(ctx.seed),
        files: mine.iter().map(|f| f.display().to_string()).collect(),
        tally,
    };
    forja_core::fsutil::atomic_write(&out.path(&SHARD_INFO), serde_json::to_string_pretty(&info)?.as_bytes())?;
    tracing::info!(shard = index, of = count, files = mine.len(), candidates = cand.len(), "clean_shard done");
    Ok(info)
}

/// The shards' folders in shard order, with their `shard.json`, checked to be
/// every shard 0..N of one configuration.
pub fn load_shards(dirs: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, ShardInfo)>> {
    let mut shards = Vec::new();
    for d in dirs {
        let path = d.join(SHARD_INFO.path);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is {} a clean_shard output?)", path.display(), d.display()))?;
        let info: ShardInfo = serde_json::from_str(&text).with_context(|| format!("{}: not a shard description", path.display()))?;
        shards.push((d.clone(), info));
    }
    shards.sort_by_key(|(_, s)| s.index);
    let count = shards.first().map(|(_, s)| s.count).context("no shard folders given")?;
    for (i, (d, s)) in shards.iter().enumerate() {
        anyhow::ensure!(s.count == count, "{}: shard {}/{} mixed with shards of {count}", d.display(), s.index, s.count);
        anyhow::ensure!(
            s.index == i,
            "shard {i}/{count} is missing (found shards {:?})",
            shards.iter().map(|(_, s)| s.index).collect::<Vec<_>>()
        );
        anyhow::ensure!(
            s.chain_hash == shards[0].1.chain_hash,
            "{}: shard {i} was run with another configuration than shard 0 (chain hash {} vs {})",
            d.display(),
            s.chain_hash,
            shards[0].1.chain_hash
        );
    }
    anyhow::ensure!(shards.len() == count, "{} of {count} shards given", shards.len());
    Ok(shards)
}

/// All shards' candidates, in shard order.
fn load_candidates(shards: &[(PathBuf, ShardInfo)]) -> anyhow::Result<Candidates> {
    let mut all = Candidates::default();
    for (d, _) in shards {
        all.extend(&Candidates::read(&d.join(SHARD_SIGNATURES.path))?);
    }
    Ok(all)
}

/// Exact and near duplicates across all shards (buckets of band keys, union of
/// clusters), as JSON lines `{"doc": I, "kind": "exact"|"near", "of": J}` over
/// the candidates numbered in shard order.
pub fn run_dedup_clusters(dirs: &[PathBuf], out: &OutDir) -> anyhow::Result<usize> {
    let shards = load_shards(dirs)?;
    let cfg = &shards[0].1.config;
    let on = cfg.rules().enabled(cfg.preset);
    let cand = load_candidates(&shards)?;
    let dups = corpus::duplicates(&cand, cfg.clean.dedup, on.near_dedup);
    let mut text = String::new();
    for (i, d) in dups.iter().enumerate() {
        if let Some(d) = d {
            let line = serde_json::json!({ "doc": i, "dup": d });
            text += &line.to_string();
            text.push('\n');
        }
    }
    forja_core::fsutil::atomic_write(&out.path(&DUPLICATES), text.as_bytes())?;
    let n = dups.iter().flatten().count();
    tracing::info!(candidates = cand.len(), duplicates = n, "dedup_clusters done");
    Ok(n)
}

/// The shards' candidates filtered by `duplicates.jsonl` and split: the same
/// outputs, byte for byte, as one `clean` run over all the files (the stage
/// name recorded in them is this stage's; run it under the name the single run
/// would have, e.g. `forja-data merge_shards --name clean`).
pub fn run_merge_shards(dirs: &[PathBuf], duplicates: &Path, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<CleanReport> {
    let shards = load_shards(dirs)?;
    let cfg = shards[0].1.config.clone();
    let on = cfg.rules().enabled(cfg.preset);
    let hash = shards[0].1.chain_hash.clone();
    let cand = load_candidates(&shards)?;
    let mut dups = vec![None; cand.len()];
    let text = std::fs::read_to_string(duplicates).with_context(|| format!("reading {}", duplicates.display()))?;
    for (no, line) in text.lines().enumerate() {
        #[derive(Deserialize)]
        struct Line {
            doc: usize,
            dup: Dup,
        }
        let l: Line =
            serde_json::from_str(line).with_context(|| format!("{}: line {}: not a duplicate record", duplicates.display(), no + 1))?;
        let of = match l.dup {
            Dup::Exact(j) | Dup::Near(j) => j,
        };
        anyhow::ensure!(
            l.doc < cand.len() && of < l.doc,
            "{}: line {}: document {} duplicating {} does not fit these {} candidates (a duplicates file of other shards?)",
            duplicates.display(),
            no + 1,
            l.doc,
            of,
            cand.len()
        );
        dups[l.doc] = Some(l.dup);
    }
    let mut sinks = open_sinks(out, !cfg.label.field.is_empty(), &ctx.name, &hash)?;
    let mut tally = Tally::default();
    let mut files = Vec::new();
    for (d, s) in &shards {
        tally.add(&s.tally);
        files.extend(s.files.iter().cloned());
        for batch in forja_core::ipc::read_artifact_batches(&d.join(SHARD_REJECTS.path), Reject::KIND)? {
            for r in Reject::from_batch(&d.join(SHARD_REJECTS.path), &batch?)? {
                sinks.rejects.push(r)?;
            }
        }
    }
    let parts: Vec<PathBuf> = shards.iter().map(|(d, _)| d.join(SHARD_PART.path)).collect();
    let split = corpus::second_pass(&parts, &cand, &dups, &cfg.split, &cfg.label, shards[0].1.seed, &mut sinks, &mut tally)?;
    finish_clean(&cfg, &on, files, split, sinks, tally, out, &ctx.name, &hash)
}

/// Trains a tokenizer on the documents of `corpus`; writes `tokenizer.json`.
pub fn run_train_tokenizer(cfg: &TokenizerConfig, corpus: &[PathBuf], out: &OutDir) -> anyhow::Result<Tokenizer> {
    let mut docs = Vec::new();
    for p in corpus {
        docs.extend(Document::read(p)?);
    }
    anyhow::ensure!(!docs.is_empty(), "train_tokenizer: the corpus has no documents");
    let tok = tokenizer::train(docs.iter().map(|d| d.text.as_str()), cfg)?;
    tok.save(&out.path(&TOKENIZER))?;
    tracing::info!(vocab = tok.vocab_size(), docs = docs.len(), "tokenizer trained");
    Ok(tok)
}

/// Parameters of the `tokenize` stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizeConfig {
    /// Text appended after each document, e.g. `"\n\n"` or `"<|endoftext|>"`.
    pub doc_separator: String,
}

/// Tokenises documents in parallel (rayon), one output per input split.
pub fn tokenize_docs(tok: &Tokenizer, docs: &[Document], cfg: &TokenizeConfig) -> anyhow::Result<Vec<TokenRow>> {
    let sep = if cfg.doc_separator.is_empty() { vec![] } else { tok.encode(&cfg.doc_separator)? };
    docs.par_iter()
        .map(|d| {
            let mut ids = tok.encode(&d.text).with_context(|| format!("document {}", d.source))?;
            ids.extend_from_slice(&sep);
            Ok(TokenRow { doc_id: d.id.clone(), ids })
        })
        .collect()
}

/// Outputs of `clean`: one documents artifact per split, in [`SPLITS`] order.
pub const CLEAN_SPLITS: [OutputSpec; 3] = [
    OutputSpec { name: "train", path: "train.arrow", kind: port::DOCUMENTS },
    OutputSpec { name: "val", path: "val.arrow", kind: port::DOCUMENTS },
    OutputSpec { name: "test", path: "test.arrow", kind: port::DOCUMENTS },
];
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
/// Loss weight per class over the train rows, `{"label": weight}` (`{}` when
/// the documents are not labeled): `finetune_classifier`'s `class_weights` input.
pub const CLASS_WEIGHTS: OutputSpec = OutputSpec { name: "class_weights", path: "class_weights.json", kind: port::JSON };
/// Document lengths before and after cleaning (SVG).
pub const LENGTHS: OutputSpec = OutputSpec { name: "lengths", path: "lengths.svg", kind: port::SVG };
/// Output of `train_tokenizer`.
pub const TOKENIZER: OutputSpec = OutputSpec { name: "tokenizer", path: "tokenizer.json", kind: port::TOKENIZER };
/// Outputs of `tokenize`: one tokens artifact per split, in [`SPLITS`] order.
pub const TOKEN_SPLITS: [OutputSpec; 3] = [
    OutputSpec { name: "train", path: "train.tokens.arrow", kind: port::TOKENS },
    OutputSpec { name: "val", path: "val.tokens.arrow", kind: port::TOKENS },
    OutputSpec { name: "test", path: "test.tokens.arrow", kind: port::TOKENS },
];

forja_core::stage_inputs! {
    /// Input files of `clean` and `clean_shard`.
    pub struct Files {
        /// Text, JSONL, CSV or Parquet files (`.gz` / `.zst` too); globs allowed.
        files: many[FILES],
    }
}

forja_core::stage_inputs! {
    /// Documents of `train_tokenizer`.
    pub struct Corpus {
        corpus: many[DOCUMENTS],
    }
}

/// The `clean` stage.
pub struct Clean;

impl Stage for Clean {
    const KIND: &'static str = "clean";
    const ABOUT: &'static str =
        "read text/JSONL/CSV/Parquet (.gz/.zst), normalise, filter web text (preset=web), redact PII, drop exact and near duplicates, split";
    const OUTPUTS: &'static [OutputSpec] =
        &[CLEAN_SPLITS[0], CLEAN_SPLITS[1], CLEAN_SPLITS[2], REJECTS, outputs::METRICS, outputs::REPORT, LENGTHS, CLASS_WEIGHTS];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = CleanStageConfig;
    type Inputs = Files;

    fn run(&self, cfg: &CleanStageConfig, files: &Files, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_clean(cfg, &files.files, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// `clean_shard`: pass 1 of the sharded path.
pub struct CleanShard;

impl Stage for CleanShard {
    const KIND: &'static str = "clean_shard";
    const ABOUT: &'static str =
        "the clean chain on shard I/N of the files (--shard I/N, or Slurm / Kubernetes Indexed Job variables): candidates, rejects, MinHash signatures";
    const OUTPUTS: &'static [OutputSpec] = &[SHARD_PART, SHARD_REJECTS, SHARD_SIGNATURES, SHARD_INFO];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = CleanStageConfig;
    type Inputs = Files;

    fn run(&self, cfg: &CleanStageConfig, files: &Files, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_clean_shard(cfg, &files.files, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

forja_core::stage_inputs! {
    /// Inputs of `dedup_clusters`.
    pub struct ShardDirs {
        /// `clean_shard` output folders, in any order.
        shards: many[SHARD_DIR],
    }
}

forja_core::stage_inputs! {
    /// Inputs of `merge_shards`.
    pub struct MergeInputs {
        /// `clean_shard` output folders, in any order.
        shards: many[SHARD_DIR],
        /// `dedup_clusters`' clusters.
        duplicates: one[JSONL],
    }
}

/// No parameters: everything comes from the shards' `shard.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoParams {}

/// `dedup_clusters`: exact and near duplicates across all shards.
pub struct DedupClusters;

impl Stage for DedupClusters {
    const KIND: &'static str = "dedup_clusters";
    const ABOUT: &'static str = "exact and MinHash near duplicates across every clean_shard output (buckets of band keys, clusters)";
    const OUTPUTS: &'static [OutputSpec] = &[DUPLICATES];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = NoParams;
    type Inputs = ShardDirs;

    fn run(&self, _cfg: &NoParams, inputs: &ShardDirs, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_dedup_clusters(&inputs.shards, out)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// `merge_shards`: the duplicates filtered out, the splits, the report.
pub struct MergeShards;

impl Stage for MergeShards {
    const KIND: &'static str = "merge_shards";
    const ABOUT: &'static str = "filter the shards' candidates by dedup_clusters and split: the outputs of one clean run, byte for byte";
    const OUTPUTS: &'static [OutputSpec] = Clean::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = NoParams;
    type Inputs = MergeInputs;

    fn run(&self, _cfg: &NoParams, inputs: &MergeInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_merge_shards(&inputs.shards, &inputs.duplicates, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `train_tokenizer` stage.
pub struct TrainTokenizer;

impl Stage for TrainTokenizer {
    const KIND: &'static str = "train_tokenizer";
    const ABOUT: &'static str = "train a byte-level BPE or character tokenizer, saved as tokenizer.json";
    const OUTPUTS: &'static [OutputSpec] = &[TOKENIZER];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = TokenizerConfig;
    type Inputs = Corpus;

    fn run(&self, cfg: &TokenizerConfig, corpus: &Corpus, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_train_tokenizer(cfg, &corpus.corpus, out)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

forja_core::stage_inputs! {
    /// Inputs of `tokenize`: the tokenizer and document splits (a split not
    /// given is written empty).
    pub struct TokenizeInputs {
        tokenizer: one[TOKENIZER],
        train: one[DOCUMENTS],
        val: optional[DOCUMENTS],
        test: optional[DOCUMENTS],
    }
}

/// The `tokenize` stage.
pub struct Tokenize;

impl Stage for Tokenize {
    const KIND: &'static str = "tokenize";
    const ABOUT: &'static str = "tokenise document splits in parallel into token files";
    const OUTPUTS: &'static [OutputSpec] = &TOKEN_SPLITS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = TokenizeConfig;
    type Inputs = TokenizeInputs;

    fn run(&self, cfg: &TokenizeConfig, inputs: &TokenizeInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_tokenize(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

fn run_tokenize(cfg: &TokenizeConfig, inputs: &TokenizeInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<()> {
    let tok = Tokenizer::load(&inputs.tokenizer)?;
    let splits = [Some(&inputs.train), inputs.val.as_ref(), inputs.test.as_ref()];
    for ((split, spec), path) in SPLITS.into_iter().zip(&TOKEN_SPLITS).zip(splits) {
        // A split that is not given is written empty, so outputs are always complete.
        let docs = match path {
            Some(p) => Document::read(p)?,
            None => Vec::new(),
        };
        let rows = tokenize_docs(&tok, &docs, cfg)?;
        let n: usize = rows.iter().map(|r| r.ids.len()).sum();
        if let Some(unk) = tok.token_to_id(tokenizer::UNK) {
            let unknown = rows.iter().flat_map(|r| &r.ids).filter(|&&t| t == unk).count();
            if unknown > 0 {
                tracing::warn!(split, unknown, "characters unseen by the tokenizer were encoded as {}", tokenizer::UNK);
            }
        }
        TokenRow::write(&out.path(spec), &ctx.name, &ctx.config_hash, &rows)?;
        tracing::info!(split, docs = rows.len(), tokens = n, "tokenized");
    }
    Ok(())
}

/// All data stages.
pub const STAGES: &[&dyn forja_core::stage::DynStage] =
    &[&Clean, &CleanShard, &DedupClusters, &MergeShards, &TrainTokenizer, &Tokenize, &crate::calibrate::CalibrateQuality];
