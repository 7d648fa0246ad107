//! The `clean` report: `report.md`, `metrics.arrow`, `lengths.svg` and
//! `class_weights.json`.
//!
//! The report's tables (rejections by rule and by language, documents per
//! source and per language, lengths of the kept documents) are computed with
//! polars over the artifacts the stage wrote (`rejects.arrow` and the splits),
//! and checked equal to the chain's own counters, which were kept while the
//! records streamed through: two independent counts of every number in the
//! report. Lengths as read are the counters' alone (a kept document's text as
//! read is not kept).

use crate::corpus::{split_source, ClassBalance};
use crate::stages::{CleanReport, CLASS_WEIGHTS, CLEAN_SPLITS, LENGTHS, REJECTS, SPLITS};
use crate::web::{length_bin, ChainCounts, Enabled};
use arrow_array::cast::AsArray;
use forja_core::artifacts::Artifact;
use forja_core::metric;
use forja_core::schema::col;
use forja_core::stage::{outputs, OutDir};
use forja_core::MetricRow;
use forja_frame::polars::prelude::{AnyValue, DataFrame, NamedFrom, Series};
use forja_frame::Tables;
use forja_render::Series as Line;
use std::collections::BTreeMap;
use std::path::Path;

/// The report's aggregations, computed with polars over the written artifacts.
#[derive(Debug, Default, PartialEq)]
pub struct ReportTables {
    /// Rejected records by rule.
    pub rejected: BTreeMap<String, u64>,
    /// Rejected records by language, then rule.
    pub rejected_by_lang: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per input file: records read (kept + rejected), kept.
    pub sources: BTreeMap<String, (u64, u64)>,
    /// Kept documents by language.
    pub langs: BTreeMap<String, u64>,
    /// Kept documents by length bin `floor(log2(chars))`.
    pub length_after: BTreeMap<u32, u64>,
}

/// The tables polars reads: `rejects` (source, rule, lang) and `kept` (split,
/// id, source file, lang, length bin; one row per written row, so an
/// over-sampled document appears once per copy).
fn load_tables(out: &OutDir) -> anyhow::Result<Tables> {
    let mut tables = Tables::new();
    let rejects = forja_frame::read_frame(&out.path(&REJECTS), Some(&[col::SOURCE, col::RULE, col::LANG]))?;
    tables.add("rejects", rejects.df)?;
    for (split, spec) in SPLITS.iter().zip(CLEAN_SPLITS.iter()) {
        tables.add("kept", kept_frame(&out.path(spec), split)?)?;
    }
    Ok(tables)
}

/// One split's documents as (split, id, source, lang, bin), read batch by
/// batch: the texts are measured and dropped, never held together.
fn kept_frame(path: &Path, split: &str) -> anyhow::Result<DataFrame> {
    let (mut ids, mut sources, mut langs, mut bins) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let cols = [col::ID, col::SOURCE, col::LANG, col::TEXT];
    forja_frame::for_each_batch(path, &cols, |b| -> anyhow::Result<()> {
        let strings = |i: usize| {
            b.column(i).as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("{}: column `{}` is not text", path.display(), cols[i]))
        };
        let (id, source, lang, text) = (strings(0)?, strings(1)?, strings(2)?, strings(3)?);
        for i in 0..b.num_rows() {
            ids.push(id.value(i).to_string());
            sources.push(split_source(source.value(i)).0.to_string());
            langs.push(lang.value(i).to_string());
            bins.push(length_bin(text.value(i).chars().count()));
        }
        Ok(())
    })?;
    let n = ids.len();
    let columns = vec![
        Series::new("split".into(), vec![split; n]).into(),
        Series::new("id".into(), ids).into(),
        Series::new("source".into(), sources).into(),
        Series::new("lang".into(), langs).into(),
        Series::new("bin".into(), bins).into(),
    ];
    Ok(DataFrame::new(n, columns)?)
}

const QUERIES: [(&str, &str); 5] = [
    ("rejected", "SELECT rule, lang, COUNT(*) AS n FROM rejects GROUP BY rule, lang"),
    ("rejected_sources", "SELECT source, COUNT(*) AS n FROM rejects GROUP BY source"),
    ("kept_sources", "SELECT source, COUNT(*) AS n FROM (SELECT DISTINCT split, id, source FROM kept) GROUP BY source"),
    ("kept_langs", "SELECT lang, COUNT(*) AS n FROM (SELECT DISTINCT split, id, lang FROM kept) GROUP BY lang"),
    ("kept_lengths", "SELECT bin, COUNT(*) AS n FROM (SELECT DISTINCT split, id, bin FROM kept) GROUP BY bin"),
];

/// Computes the report's tables with polars from the stage's outputs.
pub fn report_tables(out: &OutDir) -> anyhow::Result<ReportTables> {
    let tables = load_tables(out)?;
    let mut t = ReportTables::default();
    for (what, query) in QUERIES {
        let df = tables.sql(query)?;
        for row in rows(&df)? {
            match (what, row.as_slice()) {
                ("rejected", [rule, lang, n]) => {
                    let n = count(n)?;
                    *t.rejected.entry(text(rule)).or_default() += n;
                    *t.rejected_by_lang.entry(text(lang)).or_default().entry(text(rule)).or_default() += n;
                }
                ("rejected_sources", [source, n]) => t.sources.entry(text(source)).or_default().0 += count(n)?,
                ("kept_sources", [source, n]) => {
                    let e = t.sources.entry(text(source)).or_default();
                    e.0 += count(n)?;
                    e.1 += count(n)?;
                }
                ("kept_langs", [lang, n]) => *t.langs.entry(text(lang)).or_default() += count(n)?,
                ("kept_lengths", [bin, n]) => {
                    let bin = u32::try_from(count(bin)?)?;
                    *t.length_after.entry(bin).or_default() += count(n)?;
                }
                _ => anyhow::bail!("report query `{query}`: unexpected row {row:?}"),
            }
        }
    }
    Ok(t)
}

/// The rows of a (small) result.
fn rows(df: &DataFrame) -> anyhow::Result<Vec<Vec<AnyValue<'_>>>> {
    (0..df.height()).map(|i| Ok(df.get_row(i)?.0)).collect()
}

fn text(v: &AnyValue) -> String {
    match v {
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

fn count(v: &AnyValue) -> anyhow::Result<u64> {
    v.extract::<u64>().ok_or_else(|| anyhow::anyhow!("report: expected a count, found {v}"))
}

/// The counters' view of the same tables.
fn counted(c: &ChainCounts) -> ReportTables {
    ReportTables {
        rejected: c.rejected.clone(),
        rejected_by_lang: c.rejected_by_lang.clone(),
        sources: c.sources.clone(),
        langs: c.langs.clone(),
        length_after: c.length_after.clone(),
    }
}

/// Writes the report files; its tables come from polars and must equal the
/// chain's counters (a difference is a bug, named here).
pub fn write_clean_report(report: &CleanReport, out: &OutDir, name: &str, hash: &str) -> anyhow::Result<()> {
    let tables = report_tables(out)?;
    let counters = counted(&report.counts);
    if tables != counters {
        anyhow::bail!(
            "clean: the report's counts from the artifacts (polars) differ from the chain's counters:\n  artifacts: {tables:?}\n  counters:  {counters:?}"
        );
    }
    write_outputs(report, &tables, out, name, hash)
}

fn write_outputs(report: &CleanReport, t: &ReportTables, out: &OutDir, name: &str, hash: &str) -> anyhow::Result<()> {
    let c = &report.counts;
    let mut rows = vec![
        MetricRow::new(name, 0, metric::DOCS_READ, c.read as f64, metric::split::NONE),
        MetricRow::new(name, 0, metric::DOCS_KEPT, c.kept as f64, metric::split::NONE),
        MetricRow::new(name, 0, metric::DOCS_REJECTED, c.rejected_total() as f64, metric::split::NONE),
    ];
    for (split, n) in SPLITS.iter().zip([report.train, report.val, report.test]) {
        rows.push(MetricRow::new(name, 0, metric::DOCS_KEPT, n as f64, split));
    }
    let named = |prefix: &str, m: &BTreeMap<String, u64>| -> Vec<MetricRow> {
        m.iter().map(|(k, v)| MetricRow::new(name, 0, &format!("{prefix}{k}"), *v as f64, metric::split::NONE)).collect()
    };
    rows.extend(named("rejected:", &t.rejected));
    rows.extend(named("lines_removed:", &c.line_edits));
    rows.extend(named("pii:", &c.pii));
    rows.extend(named("lang:", &t.langs));
    rows.extend(named("lang_unprofiled:", &c.unprofiled));
    for (lang, m) in &t.rejected_by_lang {
        rows.extend(named(&format!("lang_rejected:{lang}:"), m));
    }
    if let Some(b) = &report.balance {
        for (class, counts) in &b.per_split {
            for (split, n) in SPLITS.iter().zip(counts) {
                rows.push(MetricRow::new(name, 0, &format!("class:{class}"), *n as f64, split));
            }
        }
    }
    MetricRow::write(&out.path(&outputs::METRICS), name, hash, &rows)?;
    let weights = report.balance.as_ref().map(|b| b.weights.clone()).unwrap_or_default();
    forja_core::fsutil::atomic_write(&out.path(&CLASS_WEIGHTS), serde_json::to_string_pretty(&weights)?.as_bytes())?;
    let svg = lengths_svg(&c.length_before, &t.length_after).unwrap_or_default();
    forja_core::fsutil::atomic_write(&out.path(&LENGTHS), svg.as_bytes())?;
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), clean_report_md(report, t).as_bytes())?;
    Ok(())
}

fn lengths_svg(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> Option<String> {
    // Every bin of either distribution, 0 where one has none.
    let bins: std::collections::BTreeSet<u32> = before.keys().chain(after.keys()).copied().collect();
    let points = |m: &BTreeMap<u32, u64>| bins.iter().map(|b| (f64::from(*b), m.get(b).copied().unwrap_or(0) as f64)).collect();
    forja_render::line_chart(
        "Document length (characters), before and after",
        "log2(characters)",
        "documents",
        &[Line { label: "read", color: "#888", points: points(before) }, Line { label: "kept", color: "#1f77b4", points: points(after) }],
    )
}

/// `report.md`: the run's totals from the counters, its tables from polars.
fn clean_report_md(r: &CleanReport, t: &ReportTables) -> String {
    let c = &r.counts;
    let pct = |n: u64| if c.read == 0 { 0.0 } else { 100.0 * n as f64 / c.read as f64 };
    let mut s = String::from("# Data report\n\n");
    s += &format!("Files: {}\n\nPreset: `{:?}`. Rules on: {}.\n\n", r.files.join(", "), r.preset, enabled_list(&r.enabled));
    s += &format!(
        "Records read: {}; kept: {} ({:.1}%: train {}, val {}, test {}); rejected: {} ({:.1}%). Read = kept + rejected: checked.\n\n",
        c.read,
        c.kept,
        pct(c.kept),
        r.train,
        r.val,
        r.test,
        c.rejected_total(),
        pct(c.rejected_total())
    );
    s += &format!("Changed by normalization: {}.\n\n", c.changed_by_normalization);
    if let Some(b) = &r.balance {
        s += &class_balance_md(b, r.oversampled_rows);
    }
    s += "## Rejected, by rule\n\n| rule | records | share of read |\n|---|---|---|\n";
    let mut by_count: Vec<_> = t.rejected.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (rule, n) in &by_count {
        s += &format!("| {rule} | {n} | {:.2}% |\n", pct(**n));
    }
    s += "\n## Per source\n\n| source | read | kept | rejected |\n|---|---|---|---|\n";
    for (src, (read, kept)) in &t.sources {
        s += &format!("| {src} | {read} | {kept} | {} |\n", read - kept);
    }
    if !c.line_edits.is_empty() {
        s += "\n## Lines removed from kept documents\n\n| kind | lines |\n|---|---|\n";
        for (k, n) in &c.line_edits {
            s += &format!("| {k} | {n} |\n");
        }
    }
    if r.enabled.pii {
        s += "\n## PII redacted\n\n| kind | replaced |\n|---|---|\n";
        for (k, n) in &c.pii {
            s += &format!("| {k} | {n} |\n");
        }
        if c.pii.is_empty() {
            s += "| (none found) | 0 |\n";
        }
    }
    if r.enabled.lang {
        s += "\n## Language mix of kept documents\n\n| language | documents | share |\n|---|---|---|\n";
        let mut langs: Vec<_> = t.langs.iter().collect();
        langs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (l, n) in langs {
            s += &format!("| {l} | {n} | {:.1}% |\n", 100.0 * *n as f64 / c.kept.max(1) as f64);
        }
        s += &per_language_md(t);
    }
    if r.enabled.profiles && r.enabled.lang {
        let profiled: Vec<&str> = crate::profile::shipped().keys().map(String::as_str).collect();
        s += &format!("\nLanguage-aware rules: profiles for {}.", profiled.join(", "));
        if c.unprofiled.is_empty() {
            s += "\n";
        } else {
            let list: Vec<String> = c.unprofiled.iter().map(|(l, n)| format!("{l} ({n})")).collect();
            s += &format!(" Judged by the language-independent rules only (no profile): {} documents.\n", list.join(", "));
        }
    }
    s += "\n## Lengths\n\n![document lengths before and after](lengths.svg)\n\n| characters | read | kept |\n|---|---|---|\n";
    let bins: std::collections::BTreeSet<u32> = c.length_before.keys().chain(t.length_after.keys()).copied().collect();
    for b in bins {
        let get = |m: &BTreeMap<u32, u64>| m.get(&b).copied().unwrap_or(0);
        s += &format!("| {}–{} | {} | {} |\n", 1u64 << b, (1u64 << (b + 1)) - 1, get(&c.length_before), get(&t.length_after));
    }
    if !by_count.is_empty() {
        s += "\n## Top rejection reasons, with examples\n\n";
        for (rule, n) in by_count.iter().take(10) {
            s += &format!("### {rule} ({n})\n\n");
            for (src, reason, start) in r.examples.get(rule.as_str()).into_iter().flatten() {
                s += &format!("- `{src}`: {reason}\n  > {}\n", start.replace('\n', " ⏎ ").replace('|', "\\|"));
            }
            s += "\n";
        }
    }
    s
}

/// Kept and rejected per language, with the rules that rejected most: one
/// language filtered harder than another shows at once.
fn per_language_md(t: &ReportTables) -> String {
    let langs: std::collections::BTreeSet<&String> = t.langs.keys().chain(t.rejected_by_lang.keys()).collect();
    let mut s = String::from(
        "\n## Kept and rejected, per language\n\n`und`: no language identified (or rejected before language ID).\n\n| language | read | kept | rejected | kept share | rejected most by |\n|---|---|---|---|---|---|\n",
    );
    for l in langs {
        let kept = t.langs.get(l).copied().unwrap_or(0);
        let rules = t.rejected_by_lang.get(l);
        let rejected: u64 = rules.map(|m| m.values().sum()).unwrap_or(0);
        let mut top: Vec<(&String, &u64)> = rules.map(|m| m.iter().collect()).unwrap_or_default();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = top.iter().take(3).map(|(r, n)| format!("{r} ({n})")).collect();
        let read = kept + rejected;
        s += &format!("| {l} | {read} | {kept} | {rejected} | {:.1}% | {} |\n", 100.0 * kept as f64 / read.max(1) as f64, top.join(", "));
    }
    s
}

fn class_balance_md(b: &ClassBalance, oversampled: u64) -> String {
    let mut s = String::from("## Class balance\n\nSplit stratified by class; train rows after rebalancing; loss weight `n / (k · n_class)` over the train rows (`class_weights.json`).\n\n| class | train | val | test | train rows | weight |\n|---|---|---|---|---|---|\n");
    for (class, [tr, va, te]) in &b.per_split {
        let rows = b.train_rows.get(class).copied().unwrap_or(0);
        let w = b.weights.get(class).copied().unwrap_or(0.0);
        s += &format!("| {} | {tr} | {va} | {te} | {rows} | {w:.3} |\n", class.replace('|', "\\|"));
    }
    let (min, max) = (b.per_split.values().map(|c| c[0]).min().unwrap_or(0), b.per_split.values().map(|c| c[0]).max().unwrap_or(0));
    s += &format!(
        "\n{} classes; train documents per class from {min} to {max} (imbalance ×{:.1}); over-sampling added {oversampled} rows.\n\n",
        b.per_split.len(),
        max as f64 / min.max(1) as f64
    );
    s
}

fn enabled_list(e: &Enabled) -> String {
    let all = [
        ("lang", e.lang),
        ("boilerplate", e.boilerplate),
        ("repetition", e.repetition),
        ("quality", e.quality),
        ("c4", e.c4),
        ("doc_quality", e.doc_quality),
        ("doc_length", e.doc_length),
        ("profiles", e.profiles),
        ("pii", e.pii),
        ("near_dedup", e.near_dedup),
    ];
    let on: Vec<&str> = all.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
    if on.is_empty() {
        "none beyond normalization and exact de-duplication".into()
    } else {
        on.join(", ")
    }
}
