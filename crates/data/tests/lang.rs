#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Language identification measured on the bundled real texts: OSCAR's six
//! languages (its own per-document labels), C4 (English), Don Quijote (Spanish).

use forja_data::lang::LangConfig;
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

fn jsonl(rel: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixture(rel)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (correct, total) of `cfg` on (text, expected code) pairs.
fn score(cfg: &LangConfig, items: &[(String, String)]) -> (usize, usize) {
    (items.iter().filter(|(t, want)| cfg.identify(t).0 == want).count(), items.len())
}

#[test]
fn whatlang_identifies_the_bundled_english_spanish_and_oscar_texts() {
    let cfg = LangConfig { min_confidence: 0.0, ..LangConfig::default() };
    let oscar: Vec<(String, String)> = jsonl("oscar-sample/data.jsonl")
        .iter()
        .map(|d| (d["content"].as_str().unwrap().to_string(), d["metadata"]["identification"]["label"].as_str().unwrap().to_string()))
        .collect();
    let c4: Vec<(String, String)> =
        jsonl("c4-sample/c4_sample.jsonl").iter().map(|d| (d["text"].as_str().unwrap().to_string(), "en".to_string())).collect();
    let quijote = std::fs::read_to_string(fixture("quijote/quijote.txt")).unwrap();
    let es: Vec<(String, String)> = quijote
        .split("\n\n")
        .map(str::trim)
        .filter(|p| p.chars().count() >= 200)
        .take(500)
        .map(|p| (p.to_string(), "es".to_string()))
        .collect();
    let mut all = Vec::new();
    for (name, items) in [("oscar (6 languages)", &oscar), ("c4 (en)", &c4), ("quijote (es)", &es)] {
        let (ok, n) = score(&cfg, items);
        eprintln!("language ID accuracy {name}: {ok}/{n} = {:.4}", ok as f64 / n as f64);
        all.push((ok, n));
        assert!(n > 50, "{name}: too few texts ({n})");
        assert!(ok as f64 / n as f64 >= 0.95, "{name}: {ok}/{n}");
    }
}
