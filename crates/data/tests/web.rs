#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The web-text chain of the `clean` stage on real data: the count invariant,
//! determinism across thread counts, and agreement with people (DCLM labels).

use forja_core::artifacts::Artifact;
use forja_core::stage::{OutDir, StageCtx};
use forja_core::{Document, MetricRow, Reject};
use forja_data::stages::{run_clean, CleanStageConfig};
use forja_data::web::Preset;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

fn ctx() -> StageCtx {
    StageCtx { name: "clean".into(), seed: 7, device: "cpu".into(), config_hash: "test".into(), code_hash: "test" }
}

fn web() -> CleanStageConfig {
    CleanStageConfig { preset: Preset::Web, ..Default::default() }
}

fn run(cfg: &CleanStageConfig, files: &[PathBuf], out: &Path) -> forja_data::stages::CleanReport {
    std::fs::create_dir_all(out).unwrap();
    run_clean(cfg, files, &OutDir::new(out), &ctx()).unwrap()
}

const OUTPUTS: [&str; 7] = ["train.arrow", "val.arrow", "test.arrow", "rejects.arrow", "metrics.arrow", "report.md", "lengths.svg"];

#[test]
fn the_web_preset_on_c4_and_oscar_loses_nothing_and_reports_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let files = [fixture("c4-sample/c4_sample.jsonl")];
    let report = run(&web(), &files, dir.path());
    let c = &report.counts;
    let kept: usize = ["train", "val", "test"].iter().map(|s| Document::read(&dir.path().join(format!("{s}.arrow"))).unwrap().len()).sum();
    let rejects = Reject::read(&dir.path().join("rejects.arrow")).unwrap();
    let lines = std::fs::read_to_string(&files[0]).unwrap().lines().count();
    assert_eq!(c.read as usize, lines);
    assert_eq!(kept + rejects.len(), lines, "read = kept + rejected");
    assert!(kept > lines / 10 && kept < lines, "the chain keeps some and drops some: {kept} of {lines}");
    assert!(c.rejected.keys().any(|r| r.starts_with("gopher_")), "{:?}", c.rejected);
    assert!(c.langs.get("en").copied().unwrap_or(0) as usize >= kept * 9 / 10, "{:?}", c.langs);
    let metrics = MetricRow::read(&dir.path().join("metrics.arrow")).unwrap();
    let metric = |name: &str| metrics.iter().find(|m| m.name == name && m.split == "-").map(|m| m.value);
    assert_eq!(metric("docs_read"), Some(lines as f64));
    assert_eq!(metric("docs_kept"), Some(kept as f64));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for section in
        ["## Rejected, by rule", "## Per source", "## PII redacted", "## Language mix", "lengths.svg", "## Top rejection reasons"]
    {
        assert!(md.contains(section), "report lacks {section}");
    }
    assert!(std::fs::read_to_string(dir.path().join("lengths.svg")).unwrap().starts_with("<svg"));
}

#[test]
fn outputs_are_byte_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let files = [fixture("c4-sample/c4_sample.jsonl"), fixture("oscar-sample/data.jsonl")];
    let mut cfg = web();
    cfg.read.text_field = "text".into();
    let run_with = |threads: usize| {
        let out = dir.path().join(format!("t{threads}"));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&cfg, &files, &out));
        out
    };
    let (one, two) = (run_with(1), run_with(2));
    for name in OUTPUTS {
        assert_eq!(
            std::fs::read(one.join(name)).unwrap(),
            std::fs::read(two.join(name)).unwrap(),
            "{name} differs between 1 and 2 threads"
        );
    }
}

/// Accuracy, keep precision and keep recall of `preset = "web"` against
/// people's keep/drop labels on DCLM's agreement set.
#[test]
fn the_web_preset_agrees_with_people_on_dclm_documents() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("dclm-quality-labels/agreement_data.jsonl");
    let labels: Vec<bool> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].as_i64().unwrap() == 1)
        .collect();
    let mut cfg = web();
    cfg.split.val_fraction = 0.0;
    run(&cfg, std::slice::from_ref(&file), dir.path());
    let kept: std::collections::HashSet<u64> = Document::read(&dir.path().join("train.arrow"))
        .unwrap()
        .iter()
        .map(|d| d.source.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
    for (i, &keep) in labels.iter().enumerate() {
        match (kept.contains(&(i as u64 + 1)), keep) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    let acc = f64::from(tp + tn) / labels.len() as f64;
    let (p, r) = (f64::from(tp) / f64::from(tp + fp), f64::from(tp) / f64::from(tp + fn_));
    eprintln!(
        "dclm agreement: accuracy={acc:.4} keep_precision={p:.4} keep_recall={r:.4} (n={}, tp={tp} fp={fp} fn={fn_} tn={tn})",
        labels.len()
    );
    assert_eq!(labels.len(), 281);
    assert!(acc >= 0.80, "agreement {acc:.4} below 0.80");
}

/// The sharded path with N processes (one per shard, run at once; one of them
/// told its shard by Slurm's variables), then `dedup_clusters` and
/// `merge_shards`, gives the bytes of one `clean` process.
#[test]
fn shards_in_separate_processes_merge_to_the_bytes_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        fixture("c4-sample/c4_sample.jsonl"),
        fixture("dclm-quality-labels/majority_data.jsonl"),
        fixture("near-dups/docs.jsonl"),
        fixture("c4-sample/c4_sample.jsonl"),
    ];
    let bin = env!("CARGO_BIN_EXE_forja-data");
    let inputs: Vec<String> = files.iter().flat_map(|f| ["--input".to_string(), format!("files={}", f.display())]).collect();
    let common = ["--set", "preset=web", "--set", "split.val_fraction=0.1", "--set", "split.test_fraction=0.05"];
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let single = dir.path().join("single");
    ok(std::process::Command::new(bin).arg("clean").args(&inputs).args(common).arg("--out").arg(&single).output().unwrap());

    let n = 3;
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("clean_shard").args(&inputs).args(common).arg("--out").arg(dir.path().join(format!("shard-{i}")));
            if i == 1 {
                cmd.env("SLURM_ARRAY_TASK_ID", "1").env("SLURM_ARRAY_TASK_COUNT", n.to_string());
            } else {
                cmd.arg("--shard").arg(format!("{i}/{n}"));
            }
            cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        ok(c.wait_with_output().unwrap());
    }
    // Shard folders in the wrong order: the steps order them by shard.json.
    let shard_inputs: Vec<String> =
        (0..n).rev().flat_map(|i| ["--input".into(), format!("shards={}", dir.path().join(format!("shard-{i}")).display())]).collect();
    let clusters = dir.path().join("clusters");
    ok(std::process::Command::new(bin).arg("dedup_clusters").args(&shard_inputs).arg("--out").arg(&clusters).output().unwrap());
    let merged = dir.path().join("merged");
    ok(std::process::Command::new(bin)
        .args(["merge_shards", "--name", "clean"])
        .args(&shard_inputs)
        .arg("--input")
        .arg(format!("duplicates={}", clusters.join("duplicates.jsonl").display()))
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    // Every output the chain writes is byte-identical; the stage adapter then
    // adds each process's own footprint (time, energy) to the metrics and the
    // report, which are compared without it.
    for name in ["train.arrow", "val.arrow", "test.arrow", "rejects.arrow", "lengths.svg"] {
        assert!(std::fs::read(single.join(name)).unwrap() == std::fs::read(merged.join(name)).unwrap(), "{name} differs");
    }
    let without_footprint = |dir: &Path| {
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let metrics: Vec<(String, String, f64)> = MetricRow::read(&dir.join("metrics.arrow"))
            .unwrap()
            .into_iter()
            .filter(|m| !["wall_s", "cpu_s", "flops", "energy_wh", "co2e_g"].contains(&m.name.as_str()))
            .map(|m| (m.name, m.split, m.value))
            .collect();
        (md.split("\n## Footprint").next().unwrap().to_string(), metrics)
    };
    assert_eq!(without_footprint(&single), without_footprint(&merged));
    let rejects = Reject::read(&single.join("rejects.arrow")).unwrap();
    assert!(rejects.iter().any(|r| r.reason.starts_with("exact duplicate of")), "the repeated C4 file spans shards 0 and 3");
    assert!(rejects.iter().any(|r| r.reason.starts_with("near duplicate of")));

    // A missing shard is refused, naming it.
    let two: Vec<String> =
        (0..2).flat_map(|i| ["--input".into(), format!("shards={}", dir.path().join(format!("shard-{i}")).display())]).collect();
    let bad = std::process::Command::new(bin).arg("dedup_clusters").args(&two).arg("--out").arg(dir.path().join("bad")).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2 of 3 shards given"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Banking77 as labeled data: every class in every split in proportion,
/// over-sampling evens the train classes, under-sampling cuts them, weights
/// are written for a weighted loss.
#[test]
fn banking77_labeled_splits_are_stratified_and_rebalanced() {
    use forja_core::LabeledDocument;
    use forja_data::corpus::Balance;
    let dir = tempfile::tempdir().unwrap();
    let files = [fixture("banking77/train.csv")];
    let mut cfg = CleanStageConfig::default();
    cfg.label.field = "category".into();
    cfg.split.val_fraction = 0.1;
    cfg.split.test_fraction = 0.1;
    let plain = run(&cfg, &files, &dir.path().join("plain"));
    let b = plain.balance.as_ref().unwrap();
    assert_eq!(b.per_split.len(), 77);
    for (class, [tr, va, te]) in &b.per_split {
        let n = (tr + va + te) as f64;
        assert!(((*va as f64) - 0.1 * n).abs() <= 0.5 && ((*te as f64) - 0.1 * n).abs() <= 0.5, "{class}: {tr}/{va}/{te}");
    }
    let train = LabeledDocument::read(&dir.path().join("plain/train.arrow")).unwrap();
    assert_eq!(train.len() as u64, plain.train);
    assert!(train.iter().all(|d| d.doc.meta.contains(&format!("\"category\":\"{}\"", d.label))), "the label column is the category field");
    assert!(Document::read(&dir.path().join("plain/train.arrow")).is_ok(), "a labeled file reads as documents too");
    let weights: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("plain/class_weights.json")).unwrap()).unwrap();
    assert_eq!(weights.len(), 77);
    let (lo, hi) = (weights.values().copied().fold(f64::MAX, f64::min), weights.values().copied().fold(0.0, f64::max));
    assert!(lo < 1.0 && hi > 1.0, "rare classes weigh more: {lo}..{hi}");
    let metrics = MetricRow::read(&dir.path().join("plain/metrics.arrow")).unwrap();
    assert_eq!(metrics.iter().filter(|m| m.name.starts_with("class:")).count(), 77 * 3, "class counts per split in the metrics");

    cfg.label.balance = Balance::Oversample;
    let over = run(&cfg, &files, &dir.path().join("over"));
    let rows = over.balance.as_ref().unwrap().train_rows.values().copied().collect::<Vec<_>>();
    assert!(rows.iter().all(|&r| r == rows[0]), "over-sampled train classes are even: {rows:?}");
    assert_eq!(LabeledDocument::read(&dir.path().join("over/train.arrow")).unwrap().len() as u64, over.train + over.oversampled_rows);
    assert_eq!(over.counts.read, over.counts.kept + over.counts.rejected_total());

    cfg.label.balance = Balance::Undersample;
    let under = run(&cfg, &files, &dir.path().join("under"));
    let rows = under.balance.as_ref().unwrap().train_rows.values().copied().collect::<Vec<_>>();
    assert!(rows.iter().all(|&r| r == rows[0]), "under-sampled train classes are even: {rows:?}");
    assert!(under.counts.rejected.get("undersampled").copied().unwrap_or(0) > 0);
    assert_eq!(under.counts.read, under.counts.kept + under.counts.rejected_total(), "under-sampled documents are rejects, not lost");
}
