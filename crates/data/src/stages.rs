//! The data stages: `clean`, `train_tokenizer`, `tokenize`.

use crate::clean::{clean, CleanConfig, CleanCounts};
use crate::read::{read_file, ReadConfig, ReadOutput};
use crate::split::{split, SplitConfig};
use crate::tokenizer::{self, Tokenizer, TokenizerConfig};
use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::{parse_params, InputSpec, OutputSpec, Stage, StageCtx, StageInputs};
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
pub fn run_clean(cfg: &CleanStageConfig, files: &[PathBuf], out_dir: &Path, ctx: &StageCtx) -> anyhow::Result<CleanReport> {
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
    for (name, docs) in SPLITS.into_iter().zip([&splits.train, &splits.val, &splits.test]) {
        Document::write(&out_dir.join(format!("{name}.arrow")), &ctx.name, &ctx.config_hash, docs)?;
    }
    Reject::write(&out_dir.join("rejects.arrow"), &ctx.name, &ctx.config_hash, &rejects)?;
    forja_core::fsutil::atomic_write(&out_dir.join("report.md"), clean_report_md(&report, &rejects).as_bytes())?;
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
pub fn run_train_tokenizer(cfg: &TokenizerConfig, corpus: &[PathBuf], out_dir: &Path) -> anyhow::Result<Tokenizer> {
    let mut docs = Vec::new();
    for p in corpus {
        docs.extend(Document::read(p)?);
    }
    anyhow::ensure!(!docs.is_empty(), "train_tokenizer: the corpus has no documents");
    let tok = tokenizer::train(docs.iter().map(|d| d.text.as_str()), cfg)?;
    tok.save(&out_dir.join("tokenizer.json"))?;
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

/// The `clean` stage.
pub const CLEAN: Stage = Stage {
    kind: "clean",
    about: "read text/JSONL/CSV, normalise, drop empty and duplicate records, split",
    inputs: &[InputSpec { name: "files", required: true, many: true }],
    outputs: &[
        OutputSpec { name: "train", path: "train.arrow" },
        OutputSpec { name: "val", path: "val.arrow" },
        OutputSpec { name: "test", path: "test.arrow" },
        OutputSpec { name: "rejects", path: "rejects.arrow" },
        OutputSpec { name: "report", path: "report.md" },
    ],
    check: |p| parse_params::<CleanStageConfig>("clean", p).map(drop),
    run: |p, inputs, out, ctx| {
        let cfg = parse_params::<CleanStageConfig>("clean", p)?;
        run_clean(&cfg, inputs.many("files"), out, ctx).map(drop)
    },
};

/// The `train_tokenizer` stage.
pub const TRAIN_TOKENIZER: Stage = Stage {
    kind: "train_tokenizer",
    about: "train a byte-level BPE or character tokenizer, saved as tokenizer.json",
    inputs: &[InputSpec { name: "corpus", required: true, many: true }],
    outputs: &[OutputSpec { name: "tokenizer", path: "tokenizer.json" }],
    check: |p| parse_params::<TokenizerConfig>("train_tokenizer", p).map(drop),
    run: |p, inputs, out, _ctx| {
        let cfg = parse_params::<TokenizerConfig>("train_tokenizer", p)?;
        run_train_tokenizer(&cfg, inputs.many("corpus"), out).map(drop)
    },
};

/// The `tokenize` stage.
pub const TOKENIZE: Stage = Stage {
    kind: "tokenize",
    about: "tokenise document splits in parallel into token files",
    inputs: &[
        InputSpec { name: "tokenizer", required: true, many: false },
        InputSpec { name: "train", required: true, many: false },
        InputSpec { name: "val", required: false, many: false },
        InputSpec { name: "test", required: false, many: false },
    ],
    outputs: &[
        OutputSpec { name: "train", path: "train.tokens.arrow" },
        OutputSpec { name: "val", path: "val.tokens.arrow" },
        OutputSpec { name: "test", path: "test.tokens.arrow" },
    ],
    check: |p| parse_params::<TokenizeConfig>("tokenize", p).map(drop),
    run: |p, inputs, out, ctx| {
        let cfg = parse_params::<TokenizeConfig>("tokenize", p)?;
        run_tokenize(&cfg, inputs, out, ctx)
    },
};

fn run_tokenize(cfg: &TokenizeConfig, inputs: &StageInputs, out: &Path, ctx: &StageCtx) -> anyhow::Result<()> {
    let tok = Tokenizer::load(inputs.one("tokenizer")?)?;
    for split in SPLITS {
        // A split that is not given is written empty, so outputs are always complete.
        let docs = match inputs.optional(split)? {
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
        TokenRow::write(&out.join(format!("{split}.tokens.arrow")), &ctx.name, &ctx.config_hash, &rows)?;
        tracing::info!(split, docs = rows.len(), tokens = n, "tokenized");
    }
    Ok(())
}

/// All data stages.
pub const STAGES: &[Stage] = &[CLEAN, TRAIN_TOKENIZER, TOKENIZE];
