#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use arrow_array::{RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use forja_core::artifacts::Artifact;
use forja_core::hash::{canonical_json, hash_json, hash_path};
use forja_core::stage::set_param;
use forja_core::{ArtifactError, ArtifactKind, Document, EmbeddingRow, Generation, MetricRow, Preference, Rating, Reject, TokenRow};
use std::sync::Arc;

fn doc(i: usize) -> Document {
    Document { id: format!("id{i}"), text: format!("texto ñ {i}"), source: format!("f.txt:{i}"), lang: "und".into(), meta: "{}".into() }
}

#[test]
fn every_artifact_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<_> = (0..3).map(doc).collect();
    Document::write(&dir.path().join("d.arrow"), "clean", "h", &docs).unwrap();
    assert_eq!(Document::read(&dir.path().join("d.arrow")).unwrap(), docs);

    let rejects = vec![Reject::new("a.jsonl", 7, "invalid JSON", "{oops")];
    Reject::write(&dir.path().join("r.arrow"), "clean", "h", &rejects).unwrap();
    assert_eq!(Reject::read(&dir.path().join("r.arrow")).unwrap(), rejects);

    let tokens = vec![TokenRow { doc_id: "a".into(), ids: vec![1, 2, 3] }, TokenRow { doc_id: "b".into(), ids: vec![] }];
    TokenRow::write(&dir.path().join("t.arrow"), "tokenize", "h", &tokens).unwrap();
    assert_eq!(TokenRow::read(&dir.path().join("t.arrow")).unwrap(), tokens);
    let embeddings =
        vec![EmbeddingRow { doc_id: "a".into(), vector: vec![0.5, -0.25] }, EmbeddingRow { doc_id: "b".into(), vector: vec![] }];
    EmbeddingRow::write(&dir.path().join("e.arrow"), "embed", "h", &embeddings).unwrap();
    assert_eq!(EmbeddingRow::read(&dir.path().join("e.arrow")).unwrap(), embeddings);
    let err = TokenRow::read(&dir.path().join("e.arrow")).unwrap_err().to_string();
    assert!(err.contains("e.arrow") && err.contains("embeddings"), "an embeddings file is not tokens: {err}");

    let metrics = vec![MetricRow::new("pretrain", 10, "loss", 1.5, "val")];
    MetricRow::write(&dir.path().join("m.arrow"), "pretrain", "h", &metrics).unwrap();
    assert_eq!(MetricRow::read(&dir.path().join("m.arrow")).unwrap(), metrics);

    let gens = vec![
        Generation { prompt: "p".into(), completion: "c".into(), model: "m".into(), reward: None },
        Generation { prompt: "q".into(), completion: "d".into(), model: "m".into(), reward: Some(0.5) },
    ];
    Generation::write(&dir.path().join("g.arrow"), "eval", "h", &gens).unwrap();
    assert_eq!(Generation::read(&dir.path().join("g.arrow")).unwrap(), gens);

    let prefs = vec![Preference {
        prompt: "p".into(),
        chosen: "good".into(),
        rejected: "bad".into(),
        annotator: "ana".into(),
        source: "serve:m:cmpl-1".into(),
    }];
    Preference::write(&dir.path().join("p.arrow"), "serve", "h", &prefs).unwrap();
    assert_eq!(Preference::read(&dir.path().join("p.arrow")).unwrap(), prefs);
    let ratings = vec![Rating {
        id: "cmpl-1".into(),
        prompt: "p".into(),
        completion: "c".into(),
        model: "m@h".into(),
        rating: -1,
        annotator: "key-1".into(),
    }];
    Rating::write(&dir.path().join("ra.arrow"), "serve", "h", &ratings).unwrap();
    assert_eq!(Rating::read(&dir.path().join("ra.arrow")).unwrap(), ratings);
}

#[test]
fn reject_raw_is_truncated_on_a_char_boundary_and_keeps_its_length() {
    let raw = "é".repeat(1500); // 3000 bytes
    let r = Reject::new("f", 1, "why", &raw);
    assert_eq!(r.raw_len, 3000);
    assert!(r.raw.len() <= forja_core::artifacts::REJECT_RAW_MAX);
    assert!(r.raw.chars().all(|c| c == 'é'));
}

#[test]
fn reading_a_file_with_other_columns_names_file_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.arrow");
    let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
    let mut w = arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();

    let err = Document::read(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::SchemaMismatch { .. }));
    let msg = err.to_string();
    assert!(msg.contains("odd.arrow"), "{msg}");
    assert!(msg.contains("expected columns [id: Utf8, text: Utf8"), "{msg}");
    assert!(msg.contains("found [body: Utf8]"), "{msg}");
}

#[test]
fn reading_an_artifact_as_another_kind_fails_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.arrow");
    MetricRow::write(&path, "s", "h", &[MetricRow::new("s", 1, "loss", 1.0, "val")]).unwrap();
    let msg = Document::read(&path).unwrap_err().to_string();
    assert!(msg.contains("expected a `documents` artifact, found schema `metrics`"), "{msg}");
}

#[test]
fn a_missing_or_garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Document::read(&dir.path().join("nope.arrow")).unwrap_err().to_string();
    assert!(missing.contains("nope.arrow"), "{missing}");
    let garbage = dir.path().join("g.arrow");
    std::fs::write(&garbage, b"not arrow at all").unwrap();
    let msg = Document::read(&garbage).unwrap_err().to_string();
    assert!(msg.contains("g.arrow") && msg.contains("not a readable Arrow IPC file"), "{msg}");
}

#[test]
fn artifact_metadata_names_schema_stage_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.arrow");
    Document::write(&path, "clean", "abc123", &[doc(0)]).unwrap();
    let reader = arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
    let meta = reader.schema().metadata().clone();
    assert_eq!(meta["forja.schema"], "documents");
    assert_eq!(meta["forja.stage"], "clean");
    assert_eq!(meta["forja.config_hash"], "abc123");
    assert_eq!(meta["forja.version"], forja_core::schema::SCHEMA_VERSION);
    assert_eq!(ArtifactKind::Documents.name(), "documents");
}

#[test]
fn a_failed_atomic_write_leaves_neither_file_nor_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    let res = forja_core::fsutil::atomic_write_with(&path, |w| {
        use std::io::Write;
        w.write_all(b"half")?;
        Err(std::io::Error::other("crash"))
    });
    assert!(res.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    forja_core::fsutil::atomic_write(&path, b"whole").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_failed_atomic_dir_keeps_the_old_folder() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model");
    forja_core::fsutil::atomic_dir(&target, |d| Ok(std::fs::write(d.join("w"), b"v1")?)).unwrap();
    let res: anyhow::Result<()> = forja_core::fsutil::atomic_dir(&target, |d| {
        std::fs::write(d.join("w"), b"v2")?;
        anyhow::bail!("crash mid-write")
    });
    assert!(res.is_err());
    assert_eq!(std::fs::read(target.join("w")).unwrap(), b"v1");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporaries left");
}

#[test]
fn content_hashes_follow_content_not_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"1").unwrap();
    std::fs::write(dir.path().join("b"), b"2").unwrap();
    let h1 = hash_path(dir.path()).unwrap();
    assert_eq!(h1, hash_path(dir.path()).unwrap());
    std::fs::write(dir.path().join("b"), b"3").unwrap();
    assert_ne!(h1, hash_path(dir.path()).unwrap());

    let a = serde_json::json!({"x": 1, "y": {"b": 2, "a": [1, 2]}});
    let b: serde_json::Value = serde_json::from_str(r#"{"y": {"a": [1, 2], "b": 2}, "x": 1}"#).unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
    assert_eq!(hash_json(&a), hash_json(&b));
    assert_ne!(hash_json(&a), hash_json(&serde_json::json!({"x": 2})));
}

#[test]
fn set_param_nests_dotted_keys_and_reads_json_values() {
    let mut p = serde_json::json!({});
    set_param(&mut p, "model.n_layer=2").unwrap();
    set_param(&mut p, "optim.lr=0.001").unwrap();
    set_param(&mut p, "name=hello").unwrap();
    set_param(&mut p, "prompts=[\"a\",\"b\"]").unwrap();
    assert_eq!(p, serde_json::json!({"model": {"n_layer": 2}, "optim": {"lr": 0.001}, "name": "hello", "prompts": ["a", "b"]}));
    assert!(set_param(&mut p, "no_equals_sign").is_err());
}

#[test]
fn a_streamed_artifact_appears_only_when_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.arrow");
    let mut w = Document::writer(&path, "clean", "h").unwrap();
    w.write(&[doc(1), doc(2)]).unwrap();
    w.write(&[doc(3)]).unwrap();
    drop(w); // a crash before finish
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "neither the artifact nor its temporary file");
    let mut w = Document::writer(&path, "clean", "h").unwrap();
    w.write(&[doc(1), doc(2)]).unwrap();
    w.write(&[doc(3)]).unwrap();
    assert_eq!(w.rows(), 3);
    w.finish().unwrap();
    assert_eq!(Document::read(&path).unwrap(), vec![doc(1), doc(2), doc(3)]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
