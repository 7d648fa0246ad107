//! The data stages: `clean`, `train_tokenizer`, `tokenize`.

use crate::clean::{clean, CleanConfig, CleanCounts};
use crate::read::{read_file, ReadConfig, ReadOutput};
use crate::split::{split, SplitConfig};
use crate::tokenizer::{self, Tokenizer, TokenizerConfig};
use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, FromInputs, InputSpec, OutDir, OutputSpec, Stage, StageCtx, StageInputs};
use forja_core::{Document, Reject, TokenRow};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The document splits, in the order `clean` writes and `tokenize` reads them.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Parameters of the `clean` stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanStageConfig {
    pub read: ReadConfig,
    pub clean: CleanConfig,
    pub split: SplitConfig,
    /// Overrides the run's seed for the split.
    pub seed: Option<u64>,
}

/// What `clean` wrote.
#[derive(Debug, Serialize)]
pub struct CleanReport {
    pub files: Vec<String>,
    pub unreadable_records: usize,
    pub counts: CleanCounts,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub rejected: usize,
}

/// Reads `files`, cleans, de-duplicates and splits them. Writes `train.arrow`,
/// `val.arrow`, `test.arrow` (documents), `rejects.arrow` and `report.md`.
/// Invariant: records read = kept (train + val + test) + rejected.
pub fn run_clean(cfg: &CleanStageConfig, files: &[PathBuf], out: &OutDir, ctx: &StageCtx) -> anyhow::Result<CleanReport> {
    cfg.split.validate()?;
    anyhow::ensure!(!files.is_empty(), "clean: no input files");
    let mut read = ReadOutput::default();
    for f in files {
        read_file(f, &cfg.read, &mut read)?;
    }
    let unreadable = read.rejects.len();
    let mut rejects = read.rejects;
    let (docs, counts) = clean(read.records, &cfg.clean, &mut rejects);
    let splits = split(docs, &cfg.split, cfg.seed.unwrap_or(ctx.seed));
    let report = CleanReport {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        unreadable_records: unreadable,
        train: splits.train.len(),
        val: splits.val.len(),
        test: splits.test.len(),
        rejected: rejects.len(),
        counts,
    };
    for (spec, docs) in CLEAN_SPLITS.iter().zip([&splits.train, &splits.val, &splits.test]) {
        Document::write(&out.path(spec), &ctx.name, &ctx.config_hash, docs)?;
    }
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), clean_report_md(&report, &rejects).as_bytes())?;
    tracing::info!(
        read = report.counts.read + unreadable,
        kept = report.counts.kept,
        rejected = report.rejected,
        train = report.train,
        val = report.val,
        "clean done"
    );
    Ok(report)
}

fn clean_report_md(r: &CleanReport, rejects: &[Reject]) -> String {
    let c = &r.counts;
    let mut s = String::from("# Data report\n\n");
    s += &format!("Files: {}\n\n", r.files.join(", "));
    s += "| rule | records |\n|---|---|\n";
    s += &format!("| records read | {} |\n", c.read + r.unreadable_records);
    s += &format!("| unreadable (bad JSON, invalid UTF-8, missing text) | {} |\n", r.unreadable_records);
    s += &format!("| changed by normalization | {} |\n", c.changed_by_normalization);
    s += &format!("| empty after normalization | {} |\n", c.empty);
    s += &format!("| shorter than min_chars | {} |\n", c.too_short);
    s += &format!("| exact duplicates | {} |\n", c.duplicates);
    s += &format!("| kept | {} (train {}, val {}, test {}) |\n\n", c.kept, r.train, r.val, r.test);
    if !rejects.is_empty() {
        s += "First rejects:\n\n| source | position | reason |\n|---|---|---|\n";
        for rj in rejects.iter().take(20) {
            s += &format!("| {} | {} | {} |\n", rj.source, rj.position, rj.reason.replace('|', "\\|"));
        }
    }
    s
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
    OutputSpec { name: "train", path: "train.arrow" },
    OutputSpec { name: "val", path: "val.arrow" },
    OutputSpec { name: "test", path: "test.arrow" },
];
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow" };
/// Output of `train_tokenizer`.
pub const TOKENIZER: OutputSpec = OutputSpec { name: "tokenizer", path: "tokenizer.json" };
/// Outputs of `tokenize`: one tokens artifact per split, in [`SPLITS`] order.
pub const TOKEN_SPLITS: [OutputSpec; 3] = [
    OutputSpec { name: "train", path: "train.tokens.arrow" },
    OutputSpec { name: "val", path: "val.tokens.arrow" },
    OutputSpec { name: "test", path: "test.tokens.arrow" },
];

/// Input files of `clean` (the `files` input).
pub struct Files(pub Vec<PathBuf>);

impl FromInputs for Files {
    fn from_inputs(inputs: &StageInputs) -> anyhow::Result<Self> {
        Ok(Self(inputs.many("files").to_vec()))
    }
}

/// Documents of `train_tokenizer` (the `corpus` input).
pub struct Corpus(pub Vec<PathBuf>);

impl FromInputs for Corpus {
    fn from_inputs(inputs: &StageInputs) -> anyhow::Result<Self> {
        Ok(Self(inputs.many("corpus").to_vec()))
    }
}

/// The `clean` stage.
pub struct Clean;

impl Stage for Clean {
    const KIND: &'static str = "clean";
    const ABOUT: &'static str = "read text/JSONL/CSV, normalise, drop empty and duplicate records, split";
    const INPUTS: &'static [InputSpec] = &[InputSpec { name: "files", required: true, many: true }];
    const OUTPUTS: &'static [OutputSpec] = &[CLEAN_SPLITS[0], CLEAN_SPLITS[1], CLEAN_SPLITS[2], REJECTS, outputs::REPORT];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = CleanStageConfig;
    type Inputs = Files;

    fn run(&self, cfg: &CleanStageConfig, files: &Files, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_clean(cfg, &files.0, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `train_tokenizer` stage.
pub struct TrainTokenizer;

impl Stage for TrainTokenizer {
    const KIND: &'static str = "train_tokenizer";
    const ABOUT: &'static str = "train a byte-level BPE or character tokenizer, saved as tokenizer.json";
    const INPUTS: &'static [InputSpec] = &[InputSpec { name: "corpus", required: true, many: true }];
    const OUTPUTS: &'static [OutputSpec] = &[TOKENIZER];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = TokenizerConfig;
    type Inputs = Corpus;

    fn run(&self, cfg: &TokenizerConfig, corpus: &Corpus, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run_train_tokenizer(cfg, &corpus.0, out)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// Inputs of `tokenize`.
pub struct TokenizeInputs {
    pub tokenizer: PathBuf,
    /// Document splits in [`SPLITS`] order; a missing one is written empty.
    pub splits: [Option<PathBuf>; 3],
}

impl FromInputs for TokenizeInputs {
    fn from_inputs(inputs: &StageInputs) -> anyhow::Result<Self> {
        let split = |name| inputs.optional(name).map(|p| p.map(Path::to_path_buf));
        Ok(Self { tokenizer: inputs.one("tokenizer")?.to_path_buf(), splits: [split("train")?, split("val")?, split("test")?] })
    }
}

/// The `tokenize` stage.
pub struct Tokenize;

impl Stage for Tokenize {
    const KIND: &'static str = "tokenize";
    const ABOUT: &'static str = "tokenise document splits in parallel into token files";
    const INPUTS: &'static [InputSpec] = &[
        InputSpec { name: "tokenizer", required: true, many: false },
        InputSpec { name: "train", required: true, many: false },
        InputSpec { name: "val", required: false, many: false },
        InputSpec { name: "test", required: false, many: false },
    ];
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
    for ((split, spec), path) in SPLITS.into_iter().zip(&TOKEN_SPLITS).zip(&inputs.splits) {
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
pub const STAGES: &[&dyn forja_core::stage::DynStage] = &[&Clean, &TrainTokenizer, &Tokenize];
