#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja_core::artifacts::Artifact;
use forja_core::stage::StageCtx;
use forja_core::{Document, Reject};
use forja_data::clean::{normalize, CleanConfig};
use forja_data::read::{read_file, read_jsonl, read_text, ReadConfig, ReadOutput, TextUnit};
use forja_data::split::{split, SplitConfig, SplitMode};
use forja_data::stages::{run_clean, tokenize_docs, CleanStageConfig, TokenizeConfig};
use forja_data::tokenizer::{self, TokenizerConfig, TokenizerKind};
use std::path::PathBuf;

fn shakespeare() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tinyshakespeare/input.txt");
    let text = std::fs::read_to_string(p).unwrap();
    text[..20_000].to_string()
}

fn ctx() -> StageCtx {
    StageCtx { name: "clean".into(), seed: 7, device: "cpu".into(), config_hash: "test".into(), code_hash: "test" }
}

fn doc(text: &str) -> Document {
    Document {
        id: forja_core::hash::hash_bytes(text.as_bytes()),
        text: text.into(),
        source: "s".into(),
        lang: "und".into(),
        meta: "{}".into(),
    }
}

#[test]
fn jsonl_rejects_each_kind_of_bad_record_with_position_and_reason() {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"text\": \"good one\", \"label\": \"a\"}\n");
    bytes.extend_from_slice(b"{\"text\": \"unterminated\n");
    bytes.extend_from_slice(b"[1, 2]\n");
    bytes.extend_from_slice(b"{\"body\": \"no text field\"}\n");
    bytes.extend_from_slice(b"{\"text\": 42}\n");
    bytes.extend_from_slice(b"{\"text\": \"bad \xff byte\"}\n");
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(b"{\"text\": null}\n");
    let mut out = ReadOutput::default();
    read_jsonl("in.jsonl", &bytes, "text", &mut out);

    assert_eq!(out.records.len(), 1);
    assert_eq!(out.records[0].text, "good one");
    assert_eq!(out.records[0].meta["label"], "a");
    let got: Vec<(u64, &str)> = out.rejects.iter().map(|r| (r.position, r.reason.as_str())).collect();
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0].0, 2);
    assert!(got[0].1.starts_with("invalid JSON"), "{got:?}");
    assert_eq!(got[1], (3, "expected a JSON object, found an array"));
    assert_eq!(got[2], (4, "missing text field `text`"));
    assert_eq!(got[3], (5, "text field `text` is a number, not a string"));
    assert_eq!(got[4].0, 6);
    assert!(got[4].1.starts_with("invalid UTF-8 at byte 14"), "{got:?}");
    assert_eq!(got[5], (8, "missing text field `text`"));
    assert!(out.rejects.iter().all(|r| r.source == "in.jsonl"));
}

#[test]
fn text_paragraphs_keep_their_first_line_and_reject_invalid_utf8_lines() {
    let bytes = b"First para\nline two\n\n\nSecond \xc3\x28 bad\nSecond ok\n\nThird\n";
    let mut out = ReadOutput::default();
    read_text("t.txt", bytes, TextUnit::Paragraph, &mut out);
    let recs: Vec<(u64, &str)> = out.records.iter().map(|r| (r.position, r.text.as_str())).collect();
    assert_eq!(recs, vec![(1, "First para\nline two"), (6, "Second ok"), (8, "Third")]);
    assert_eq!(out.rejects.len(), 1);
    assert_eq!(out.rejects[0].position, 5);
    assert!(out.rejects[0].reason.contains("invalid UTF-8"));

    let mut lines = ReadOutput::default();
    read_text("t.txt", b"a\n\nb", TextUnit::Line, &mut lines);
    assert_eq!(lines.records.len(), 3);
    let mut file = ReadOutput::default();
    read_text("t.txt", b"a\n\nb\n", TextUnit::File, &mut file);
    assert_eq!(file.records[0].text, "a\n\nb");
}

#[test]
fn csv_reads_quoted_fields_and_rejects_missing_and_undecodable_values_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.csv");
    let mut bytes = b"text,label\n\"hello, world\",greet\n,empty\n\"multi\nline\",ml\n".to_vec();
    bytes.extend_from_slice(b"bad \xff here,x\n");
    std::fs::write(&path, &bytes).unwrap();
    let mut out = ReadOutput::default();
    read_file(&path, &ReadConfig::default(), &mut out).unwrap();
    let texts: Vec<&str> = out.records.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, vec!["hello, world", "multi\nline"]);
    assert_eq!(out.records[0].meta["label"], "greet");
    let rejects: Vec<(u64, &str)> = out.rejects.iter().map(|r| (r.position, r.reason.as_str())).collect();
    assert_eq!(rejects, vec![(3, "missing value in text column `text`"), (6, "invalid UTF-8 in record")]);

    let cfg = ReadConfig { text_field: "body".into(), ..Default::default() };
    let err = read_file(&path, &cfg, &mut ReadOutput::default()).unwrap_err().to_string();
    assert!(err.contains("d.csv") && err.contains("no text column `body`") && err.contains("text, label"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = read_file(&PathBuf::from("/no/such/file.jsonl"), &ReadConfig::default(), &mut ReadOutput::default()).unwrap_err();
    assert!(format!("{err:#}").contains("/no/such/file.jsonl"));
}

#[test]
fn normalize_makes_format_consistent() {
    // e + combining acute -> é (NFC); CRLF; NUL and zero-width removed; NBSP -> space.
    let raw = "Cafe\u{301}\r\nline\u{0}two\u{200B}  \r\n\n\n\nend\u{a0}here  ";
    assert_eq!(normalize(raw), "Café\nlinetwo\n\nend here");
    assert_eq!(normalize(" \n\t \n"), "");
}

#[test]
fn clean_drops_empty_short_and_duplicate_records_into_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let lines = [
        r#"{"text": "alpha beta"}"#,
        r#"{"text": "alpha beta  "}"#, // duplicate after normalisation
        r#"{"text": "   "}"#,
        r#"{"text": "hi"}"#,
        r#"{"text": "gamma delta"}"#,
        r#"not json"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let cfg = CleanStageConfig {
        clean: CleanConfig { min_chars: 3, dedup: true },
        split: SplitConfig { val_fraction: 0.0, ..Default::default() },
        ..Default::default()
    };
    let report = run_clean(&cfg, std::slice::from_ref(&path), &forja_core::stage::OutDir::new(&out), &ctx()).unwrap();
    let docs = Document::read(&out.join("train.arrow")).unwrap();
    let rejects = Reject::read(&out.join("rejects.arrow")).unwrap();
    assert_eq!(docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), vec!["alpha beta", "gamma delta"]);
    let rule = |r: &str| report.counts.rejected.get(r).copied().unwrap_or(0);
    assert_eq!((rule("exact_duplicate"), rule("empty"), rule("too_short"), rule("unreadable")), (1, 1, 1, 1));
    let reasons: Vec<(u64, String)> = rejects.iter().map(|r| (r.position, r.reason.clone())).collect();
    assert!(reasons.iter().any(|(p, r)| *p == 2 && r.starts_with("exact duplicate of") && r.contains("c.jsonl:1")), "{reasons:?}");
    assert!(reasons.iter().any(|(p, r)| *p == 3 && r == "empty after normalization"));
    assert!(reasons.iter().any(|(p, r)| *p == 4 && r.starts_with("shorter than min_chars=3")));
    assert!(reasons.iter().any(|(p, r)| *p == 6 && r.starts_with("invalid JSON")));
    assert_eq!(docs.len() + rejects.len(), lines.len());
    assert_eq!(docs[0].source, format!("{}:1", path.display()));
}

#[test]
fn clean_stage_loses_nothing_across_formats() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("a.txt");
    std::fs::write(&txt, b"one para\n\ntwo para\n\none para\n\n\n\nthree \xff\n").unwrap();
    let jsonl = dir.path().join("b.jsonl");
    std::fs::write(&jsonl, "{\"text\":\"json doc\"}\n{\"text\":\n{\"x\":1}\n").unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, "text\ncsv doc\n\"\"\n").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let cfg = CleanStageConfig { split: SplitConfig { val_fraction: 0.3, ..Default::default() }, ..Default::default() };
    let report = run_clean(&cfg, &[txt, jsonl, csv], &forja_core::stage::OutDir::new(&out), &ctx()).unwrap();

    let kept: usize = ["train", "val", "test"].iter().map(|s| Document::read(&out.join(format!("{s}.arrow"))).unwrap().len()).sum();
    let rejects = Reject::read(&out.join("rejects.arrow")).unwrap();
    // Records: 4 text paragraphs + 3 JSONL lines + 2 CSV rows.
    assert_eq!(kept + rejects.len(), 9, "{rejects:?}");
    assert_eq!(kept, 4); // one para, two para, json doc, csv doc
    assert_eq!(report.counts.rejected_total() as usize, rejects.len());
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("| exact_duplicate | 1 |"));
}

#[test]
fn splits_are_deterministic_by_seed_and_independent_of_order() {
    let docs: Vec<Document> = (0..400).map(|i| doc(&format!("document number {i:03}"))).collect();
    let cfg = SplitConfig { mode: SplitMode::Random, val_fraction: 0.2, test_fraction: 0.1 };
    let a = split(docs.clone(), &cfg, 1);
    let mut reversed = docs.clone();
    reversed.reverse();
    let b = split(reversed, &cfg, 1);
    let ids = |v: &[Document]| {
        let mut x: Vec<String> = v.iter().map(|d| d.id.clone()).collect();
        x.sort();
        x
    };
    assert_eq!(ids(&a.val), ids(&b.val));
    assert_eq!(ids(&a.test), ids(&b.test));
    assert!((60..100).contains(&a.val.len()), "val {}", a.val.len());
    assert!((20..60).contains(&a.test.len()), "test {}", a.test.len());
    let c = split(docs.clone(), &cfg, 2);
    assert_ne!(ids(&a.val), ids(&c.val), "another seed gives another split");

    let tail = split(docs, &SplitConfig { mode: SplitMode::Tail, val_fraction: 0.25, test_fraction: 0.0 }, 0);
    assert_eq!(tail.val.first().unwrap().text, "document number 300");
    assert!(SplitConfig { val_fraction: 0.7, test_fraction: 0.4, ..Default::default() }.validate().is_err());
}

#[test]
fn bpe_tokenizer_round_trips_and_saves_as_hf_json() {
    let text = shakespeare();
    let cfg = TokenizerConfig { kind: TokenizerKind::Bpe, vocab_size: 400, min_frequency: 2, special_tokens: vec!["<|endoftext|>".into()] };
    let tok = tokenizer::train(text.split("\n\n"), &cfg).unwrap();
    assert_eq!(tok.vocab_size(), 400);
    let sample = "ROMEO: What say'st thou, my dear nurse?\n  Ünïcödé ☃";
    let ids = tok.encode(sample).unwrap();
    assert!(ids.len() < sample.len(), "merges compress");
    assert_eq!(tok.decode(&ids).unwrap(), sample);
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![tok.token_to_id("<|endoftext|>").unwrap()]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
    let again = tokenizer::Tokenizer::load(&path).unwrap();
    assert_eq!(again.encode(sample).unwrap(), ids);
}

#[test]
fn char_tokenizer_uses_sorted_characters_and_unk() {
    let tok = tokenizer::char_tokenizer(["ba\n", "cab"].into_iter(), &[]).unwrap();
    assert_eq!(tok.vocab_size(), 5); // \n a b c <unk>
    assert_eq!(tok.encode("abc\n").unwrap(), vec![1, 2, 3, 0]);
    assert_eq!(tok.decode(&[3, 1, 2]).unwrap(), "cab");
    assert_eq!(tok.encode("az").unwrap(), vec![1, 4], "unseen characters map to <unk>");
    let text = shakespeare();
    let tok = tokenizer::char_tokenizer(std::iter::once(text.as_str()), &[]).unwrap();
    assert_eq!(tok.decode(&tok.encode(&text).unwrap()).unwrap(), text);
}

#[test]
fn parallel_tokenization_matches_one_by_one_and_appends_the_separator() {
    let text = shakespeare();
    let docs: Vec<Document> = text.split("\n\n").map(doc).collect();
    let tok = tokenizer::char_tokenizer(std::iter::once(text.as_str()), &[]).unwrap();
    let rows = tokenize_docs(&tok, &docs, &TokenizeConfig { doc_separator: "\n\n".into() }).unwrap();
    assert_eq!(rows.len(), docs.len());
    let nl = tok.encode("\n").unwrap()[0];
    for (row, d) in rows.iter().zip(&docs) {
        let mut want = tok.encode(&d.text).unwrap();
        want.extend([nl, nl]);
        assert_eq!(row.ids, want);
        assert_eq!(row.doc_id, d.id);
    }
}

#[test]
fn the_stage_binary_runs_clean_and_refuses_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, "para one\n\npara two\n").unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_forja-data"))
            .args(["clean", "--input", &format!("files={}", input.display()), "--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["--set", "split.val_fraction=0.0"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(Document::read(&out.join("train.arrow")).unwrap().len(), 2);
    let bad = run(&["--set", "split.val_fractio=0.2"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr.contains("unknown key `split.val_fractio`") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_csv_with_ragged_rows_an_unclosed_quote_and_a_multiline_field_keeps_the_good_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.csv");
    let csv = "\u{FEFF}text,label\n\"two\nlines, quoted\",a\nok,b\ntoo,many,fields\nfew\n\"never closed,c\nafter,d\nlast,e\n";
    std::fs::write(&path, csv).unwrap();
    let mut out = ReadOutput::default();
    read_file(&path, &ReadConfig::default(), &mut out).unwrap();
    let kept: Vec<(u64, &str)> = out.records.iter().map(|r| (r.position, r.text.as_str())).collect();
    assert_eq!(kept, vec![(2, "two\nlines, quoted"), (4, "ok"), (8, "after"), (9, "last")]);
    assert_eq!(out.records[0].meta["label"], "a", "the BOM does not stick to the first column name");
    let rejects: Vec<(u64, &str)> = out.rejects.iter().map(|r| (r.position, r.reason.as_str())).collect();
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    assert_eq!(rejects[0], (5, "line 5 has 3 fields where the header has 2"));
    assert_eq!(rejects[1], (6, "line 6 has 1 fields where the header has 2"));
    assert_eq!(rejects[2].0, 7);
    assert!(rejects[2].1.starts_with("unclosed quote"), "{rejects:?}");
}

#[test]
fn compressed_inputs_read_like_plain_ones_and_a_truncated_stream_is_a_reject() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // Enough varied text for several compressed blocks, so half a file still decodes in part.
    let n = 40_000;
    let lines: String =
        (0..n).map(|i| format!("{{\"text\": \"document number {i} {}\"}}\n", (i as u64 * 2_654_435_761) % 1_000_003)).collect();
    let gz = dir.path().join("a.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(lines.as_bytes()).unwrap();
    let gz_bytes = enc.finish().unwrap();
    std::fs::write(&gz, &gz_bytes).unwrap();
    let zst = dir.path().join("a.jsonl.zst");
    let zst_bytes = zstd::encode_all(lines.as_bytes(), 3).unwrap();
    std::fs::write(&zst, &zst_bytes).unwrap();
    for path in [&gz, &zst] {
        let mut out = ReadOutput::default();
        read_file(path, &ReadConfig::default(), &mut out).unwrap();
        assert_eq!(out.records.len(), n, "{}", path.display());
        assert!(out.rejects.is_empty());
        assert!(out.records[n - 1].text.starts_with("document number 39999 "));
    }
    for (name, bytes) in [("cut.jsonl.gz", &gz_bytes), ("cut.jsonl.zst", &zst_bytes)] {
        let cut = dir.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let mut out = ReadOutput::default();
        read_file(&cut, &ReadConfig::default(), &mut out).unwrap();
        assert!(!out.records.is_empty() && out.records.len() < n, "{name}: {}", out.records.len());
        assert_eq!(out.rejects.len(), 1, "{name}");
        assert!(out.rejects[0].reason.contains("truncated or corrupt"), "{}", out.rejects[0].reason);
        assert!(out.rejects[0].position as usize > out.records.len(), "the reject names the line where the stream broke off");
    }
}

#[test]
fn a_byte_order_mark_does_not_cost_the_first_jsonl_record() {
    let mut out = ReadOutput::default();
    read_jsonl("bom.jsonl", b"\xEF\xBB\xBF{\"text\": \"first\"}\n{\"text\": \"second\"}\n", "text", &mut out);
    assert_eq!(out.records.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), vec!["first", "second"]);
    assert!(out.rejects.is_empty());
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

#[test]
fn banking77_csv_reads_every_record_including_quoted_newlines() {
    let mut out = ReadOutput::default();
    read_file(&fixture("banking77/train.csv"), &ReadConfig::default(), &mut out).unwrap();
    assert_eq!(out.records.len(), 10_003, "SOURCE.md: 10,003 records in 10,017 lines");
    assert!(out.rejects.is_empty(), "{:?}", out.rejects.first());
    assert_eq!(out.records[0].text, "I am still waiting on my card?");
    assert_eq!(out.records[0].meta["category"], "card_arrival");
    assert!(out.records.iter().any(|r| r.text.contains('\n')), "multi-line quoted fields survive");
}

#[test]
fn c4_jsonl_keeps_text_and_moves_other_fields_to_meta() {
    let mut out = ReadOutput::default();
    read_file(&fixture("c4-sample/c4_sample.jsonl"), &ReadConfig::default(), &mut out).unwrap();
    assert_eq!(out.records.len(), 1_000);
    assert!(out.rejects.is_empty());
    assert!(out.records.iter().all(|r| r.meta.contains_key("url") && r.meta.contains_key("timestamp")));
    assert!(out.records[0].text.starts_with("Beginners BBQ Class Taking Place in Missoula!"));
    assert!(out.records[0].meta["url"].as_str().unwrap().starts_with("http"));
}

#[test]
fn csv_quotes_inside_a_field_blank_lines_and_bad_multiline_records_cost_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut out = ReadOutput::default();
        read_file(&path, &ReadConfig::default(), &mut out).unwrap();
        let kept: Vec<(u64, String)> = out.records.iter().map(|r| (r.position, r.text.clone())).collect();
        let rejects: Vec<u64> = out.rejects.iter().map(|r| r.position).collect();
        (kept, rejects)
    };
    // A quote inside an unquoted field is a character, as in Python's csv.
    let (kept, rejects) = read("inch.csv", b"text,label\na 12\" pizza,food\na 6\" sub,food\n");
    assert_eq!(kept, vec![(2, "a 12\" pizza".into()), (3, "a 6\" sub".into())]);
    assert!(rejects.is_empty());
    // Blank lines between records are skipped, not rejected.
    let (kept, rejects) = read("blank.csv", b"text,label\none,a\n\ntwo,b\n");
    assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![2, 4]);
    assert!(rejects.is_empty());
    // A closed multi-line record with the wrong field count is rejected whole:
    // its inner lines are not read as records.
    let (kept, rejects) = read("multi.csv", b"id,text\n1,\"first para\nsecond, para\nend\",extra\n2,next\n");
    assert_eq!(kept, vec![(5, "next".into())]);
    assert_eq!(rejects, vec![2]);
    // Invalid UTF-8 on the first line of a multi-line record rejects the record.
    let (kept, rejects) = read("utf8.csv", b"id,text\n1,\"caf\xE9\n3,looks like a record\"\n4,real\n");
    assert_eq!(kept, vec![(4, "real".into())]);
    assert_eq!(rejects, vec![2]);
}
