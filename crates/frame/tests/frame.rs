#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Artifacts read as polars frames keep every value; SQL over them answers
//! what a hand count answers; bad input is an error naming the file or query.

use forja_core::artifacts::Artifact;
use forja_core::{Document, Generation, MetricRow, Reject, TokenRow};
use forja_frame::polars::prelude::AnyValue;
use forja_frame::{read_frame, show, table_name, Show, Tables};
use std::path::Path;

fn rejects() -> Vec<Reject> {
    let reasons = [("a.jsonl", "invalid", ""), ("a.jsonl", "gopher_enough_stop_words", "es"), ("b.txt", "gopher_enough_stop_words", "en")];
    (0..30)
        .map(|i| {
            let (src, rule, lang) = reasons[i % 3];
            Reject::new(src, i as u64 + 1, format!("reason {i}"), &format!("raw ñ {i}")).with_rule(rule, lang)
        })
        .collect()
}

#[test]
fn every_value_of_an_artifact_reaches_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rejects.arrow");
    let rows = rejects();
    Reject::write(&path, "clean", "h1", &rows).unwrap();
    let f = read_frame(&path, None).unwrap();
    assert_eq!(f.kind.as_deref(), Some("rejects"));
    assert_eq!(f.stage.as_deref(), Some("clean"));
    assert_eq!(f.config_hash.as_deref(), Some("h1"));
    assert_eq!(f.df.height(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        let row = f.df.get_row(i).unwrap().0;
        assert_eq!(row[0], AnyValue::String(&r.source));
        assert_eq!(row[1], AnyValue::UInt64(r.position));
        assert_eq!(row[2], AnyValue::String(&r.reason));
        assert_eq!(row[3], AnyValue::String(&r.raw));
        assert_eq!(row[5], AnyValue::String(&r.rule));
        assert_eq!(row[6], AnyValue::String(&r.lang));
    }
    // Only the columns asked for, in that order.
    let f = read_frame(&path, Some(&["rule", "source"])).unwrap();
    assert_eq!(f.df.get_column_names().iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["rule", "source"]);
    let err = read_frame(&path, Some(&["nope"])).unwrap_err().to_string();
    assert!(err.contains("rejects.arrow") && err.contains("nope") && err.contains("reason"), "{err}");
}

#[test]
fn sql_counts_what_a_hand_count_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rejects.arrow");
    let rows = rejects();
    Reject::write(&path, "clean", "h", &rows).unwrap();
    let mut t = Tables::new();
    t.add(&table_name(&path), read_frame(&path, None).unwrap().df).unwrap();
    let out = t.sql("SELECT rule, count(*) AS n FROM rejects GROUP BY rule ORDER BY n DESC, rule").unwrap();
    let got: Vec<(String, u64)> = (0..out.height())
        .map(|i| {
            let r = out.get_row(i).unwrap().0;
            (r[0].get_str().unwrap().to_string(), r[1].extract::<u64>().unwrap())
        })
        .collect();
    let mut want = std::collections::BTreeMap::<String, u64>::new();
    for r in &rows {
        *want.entry(r.rule.clone()).or_default() += 1;
    }
    let mut want: Vec<(String, u64)> = want.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(got, want);
    let table = show(&out, Show::default());
    assert!(table.contains("gopher_enough_stop_words") && table.contains("20"), "{table}");
}

#[test]
fn lists_and_nested_columns_convert_and_same_named_tables_append() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.arrow");
    TokenRow::write(
        &tokens,
        "tokenize",
        "h",
        &[TokenRow { doc_id: "a".into(), ids: vec![5, 6, 7] }, TokenRow { doc_id: "b".into(), ids: vec![] }],
    )
    .unwrap();
    let mut t = Tables::new();
    t.add("tokens", read_frame(&tokens, None).unwrap().df).unwrap();
    let out = t.sql("SELECT doc_id, ids FROM tokens ORDER BY doc_id").unwrap();
    let ids = out.column("ids").unwrap().as_materialized_series().list().unwrap().get_as_series(0).unwrap();
    assert_eq!(ids.u32().unwrap().into_no_null_iter().collect::<Vec<_>>(), [5, 6, 7]);

    let gens = dir.path().join("generations.arrow");
    Generation::write(&gens, "eval", "h", &[Generation { prompt: "p".into(), completion: "c".into(), model: "m".into(), reward: None }])
        .unwrap();
    let f = read_frame(&gens, None).unwrap();
    assert_eq!(f.df.column("reward").unwrap().null_count(), 1, "a null stays null");

    // Every stage's metrics as one table.
    let (m1, m2) = (dir.path().join("m1.arrow"), dir.path().join("m2.arrow"));
    MetricRow::write(&m1, "pretrain", "h", &[MetricRow::new("pretrain", 10, "loss", 2.5, "val")]).unwrap();
    MetricRow::write(&m2, "eval", "h", &[MetricRow::new("eval", 0, "loss", 2.25, "val"), MetricRow::new("eval", 0, "ppl", 9.5, "val")])
        .unwrap();
    let mut t = Tables::new();
    t.add("metrics", read_frame(&m1, None).unwrap().df).unwrap();
    t.add("metrics", read_frame(&m2, None).unwrap().df).unwrap();
    let out = t.sql("SELECT stage, sum(value) AS v FROM metrics WHERE name = 'loss' GROUP BY stage ORDER BY stage").unwrap();
    assert_eq!(out.height(), 2);
    assert_eq!(out.get_row(0).unwrap().0[1].extract::<f64>().unwrap(), 2.25);
    // A table of other columns under the same name is refused, naming both.
    let err = t.add("metrics", read_frame(&gens, None).unwrap().df).unwrap_err().to_string();
    assert!(err.contains("metrics") && err.contains("prompt") && err.contains("stage"), "{err}");
}

#[test]
fn bad_input_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("train.arrow");
    Document::write(&docs, "clean", "h", &[]).unwrap();
    let mut t = Tables::new();
    let f = read_frame(&docs, None).unwrap();
    assert_eq!(f.df.height(), 0, "an empty artifact is an empty frame");
    t.add("train", f.df).unwrap();
    let err = t.sql("SELECT nope FROM train").unwrap_err().to_string();
    assert!(err.contains("SELECT nope FROM train") && err.contains("train (id: str"), "{err}");
    let err = t.sql("SELECT * FROM missing").unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    let not_arrow = dir.path().join("x.arrow");
    std::fs::write(&not_arrow, "not arrow").unwrap();
    let err = read_frame(&not_arrow, None).unwrap_err().to_string();
    assert!(err.contains("x.arrow") && err.contains("not a readable Arrow IPC file"), "{err}");
    let err = read_frame(Path::new("/nonexistent/y.arrow"), None).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/y.arrow"), "{err}");
    assert!(Tables::new().add("1bad-name", t.get("train").unwrap().clone()).is_err());
    assert_eq!(table_name(Path::new("runs/x/val-2.arrow")), "val_2");
    assert_eq!(table_name(Path::new("3.arrow")), "_3");
}
