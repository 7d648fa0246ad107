#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! `forja inspect`: the web chain's rejects on the OSCAR sample counted with
//! polars SQL from the command line agree with the rejects read row by row and
//! with the stage's own metrics; a folder's artifacts are tables by name (a
//! run's own `metrics.arrow` not counted twice with its stages'); a bad
//! query is an error (exit 1) that quotes it, never a panic.

use forja_core::artifacts::Artifact;
use forja_core::{MetricRow, Reject};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn forja(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forja")).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn oscar() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/oscar-sample/data.jsonl")
}

/// `rule | n` rows of a printed table, as a map.
fn counts(table: &str) -> BTreeMap<String, u64> {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).filter(|c| !c.is_empty()).collect();
            match cells.as_slice() {
                [rule, n] => Some((rule.trim_matches('"').to_string(), n.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn inspect_counts_rejects_with_sql_and_describes_files_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("clean");
    let input = format!("files={}", oscar().display());
    ok(&forja(&[
        "stage",
        "clean",
        "--input",
        &input,
        "--set",
        "preset=web",
        "--set",
        "read.text_field=content",
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    let rejects_path = out_dir.join("rejects.arrow");
    let rejects = Reject::read(&rejects_path).unwrap();
    assert!(rejects.len() > 5, "the web preset rejects some OSCAR pages");
    let mut want = BTreeMap::<String, u64>::new();
    for r in &rejects {
        assert!(!r.rule.is_empty() && !r.lang.is_empty(), "every reject of clean has its rule and language: {r:?}");
        *want.entry(r.rule.clone()).or_default() += 1;
    }
    // The same counts as the stage's metrics.
    let metrics = MetricRow::read(&out_dir.join("metrics.arrow")).unwrap();
    let from_metrics: BTreeMap<String, u64> =
        metrics.iter().filter_map(|m| m.name.strip_prefix("rejected:").map(|r| (r.to_string(), m.value as u64))).collect();
    assert_eq!(from_metrics, want);

    let sql = "SELECT rule, count(*) AS n FROM rejects GROUP BY rule ORDER BY rule";
    let printed = ok(&forja(&["inspect", rejects_path.to_str().unwrap(), "--sql", sql, "--rows", "0"]));
    assert_eq!(counts(&printed), want, "{printed}");
    assert!(printed.contains(&format!("{} row(s)", want.len())), "{printed}");

    // One file: its metadata, columns and first rows.
    let described = ok(&forja(&["inspect", rejects_path.to_str().unwrap(), "--rows", "3"]));
    for needle in [
        "artifact: rejects",
        "stage: clean",
        &format!("rows: {}", rejects.len()),
        "rule: Utf8",
        "lang: Utf8",
        "table name for --sql: rejects",
    ] {
        assert!(described.contains(needle), "`{needle}` in:\n{described}");
    }

    // A folder: every artifact listed; `metrics` and the qualified names query.
    let listed = ok(&forja(&["inspect", dir.path().to_str().unwrap()]));
    let rejects_line = format!("rejects, clean_rejects\t{}\trejects\tclean\t", rejects.len());
    for needle in ["train, clean_train", &rejects_line, "metrics, clean_metrics"] {
        assert!(listed.contains(needle), "`{needle}` in:\n{listed}");
    }
    let kept = ok(&forja(&["inspect", dir.path().to_str().unwrap(), "--sql", "SELECT lang, count(*) AS n FROM clean_train GROUP BY lang"]));
    assert!(kept.contains("row(s)"), "{kept}");
    // A run folder's own metrics.arrow (every stage's rows) keeps `metrics`
    // to itself: the stage's copy is `clean_metrics`, not counted twice.
    std::fs::copy(out_dir.join("metrics.arrow"), dir.path().join("metrics.arrow")).unwrap();
    let n = |table: &str| {
        let q = format!("SELECT name FROM {table}");
        let printed = ok(&forja(&["inspect", dir.path().to_str().unwrap(), "--sql", &q]));
        printed.lines().last().unwrap().to_string()
    };
    assert_eq!(n("metrics"), format!("{} row(s)", metrics.len()));
    assert_eq!(n("clean_metrics"), format!("{} row(s)", metrics.len()));

    // A bad query: exit 1, the query quoted, the tables listed, no panic.
    let bad = forja(&["inspect", rejects_path.to_str().unwrap(), "--sql", "SELECT nope FROM rejects"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SELECT nope FROM rejects") && stderr.contains("rule: str") && !stderr.contains("panicked"), "{stderr}");
    let missing = forja(&["inspect", dir.path().join("nothing.arrow").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing.arrow") && stderr.contains("no such file"), "{stderr}");
}
