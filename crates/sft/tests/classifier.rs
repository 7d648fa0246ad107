#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The intent classifier: all-MiniLM-L6-v2 plus a head overfits a tiny
//! Banking77 fixture to 100%, the exported folder loads in `transformers` as a
//! `BertForSequenceClassification` with the same logits, and the scores and
//! the stratified split are what they should be.

use forja_core::artifacts::Artifact;
use forja_core::metric;
use forja_core::stage::{OutDir, StageCtx};
use forja_core::{Document, MetricRow};
use forja_model::bert::encode_for_bert;
use forja_model::classifier::load_classifier;
use forja_sft::classify::{run, score, stratified_split, ClassifierInputs, ClassifierStageConfig};
use forja_train::TrainerConfig;
use std::path::PathBuf;
use tch::{Device, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Four queries of each of three intents from Banking77's training file.
fn fixture() -> Vec<Document> {
    let text = std::fs::read_to_string(root().join("fixtures/banking77/train.csv")).unwrap();
    let mut docs = Vec::new();
    for intent in ["card_arrival", "exchange_rate", "lost_or_stolen_phone"] {
        let rows = text.lines().filter(|l| l.ends_with(&format!(",{intent}")) && !l.starts_with('"')).take(4);
        for (i, line) in rows.enumerate() {
            let query = line.rsplit_once(',').unwrap().0;
            docs.push(Document {
                id: format!("{intent}{i}"),
                text: query.to_string(),
                source: "banking77".into(),
                lang: "en".into(),
                meta: serde_json::json!({ "category": intent }).to_string(),
            });
        }
    }
    assert_eq!(docs.len(), 12);
    docs
}

#[test]
fn minilm_with_a_head_overfits_a_tiny_fixture_and_loads_in_transformers_as_a_sequence_classifier() {
    let minilm = root().join("models/all-MiniLM-L6-v2");
    assert!(minilm.join("model.safetensors").exists(), "{} is missing: run scripts/setup --test", minilm.display());
    let tmp = tempfile::tempdir().unwrap();
    let docs_path = tmp.path().join("docs.arrow");
    let mut docs = fixture();
    // A document without a label is rejected, not fatal.
    docs.push(Document { id: "x".into(), text: "no label here".into(), source: "s".into(), lang: "en".into(), meta: "{}".into() });
    Document::write(&docs_path, "t", "t", &docs).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = ClassifierStageConfig {
        label_field: "category".into(),
        val_fraction: 0.0,
        dropout: Some(0.0),
        train: TrainerConfig {
            batch_size: 12,
            max_steps: 30,
            checkpoint_interval: 0,
            eval_interval: 30,
            optim: forja_train::OptimConfig { lr: 3e-4, min_lr: 3e-5, warmup_steps: 3, weight_decay: 0.0, ..Default::default() },
            ..ClassifierStageConfig::default().train
        },
        ..Default::default()
    };
    let inputs = ClassifierInputs { model: minilm, train: docs_path.clone(), test: Some(docs_path), class_weights: None };
    let ctx = StageCtx { name: "classify".into(), seed: 3, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" };
    let summary = run(&cfg, &inputs, &OutDir::new(&out), &ctx).unwrap();
    let test = summary.test.unwrap();
    assert_eq!(test.accuracy, 1.0, "confusion {:?}", test.confusion);
    assert_eq!(test.f1.macro_, 1.0);
    assert_eq!(summary.labels, vec!["card_arrival", "exchange_rate", "lost_or_stolen_phone"]);
    let metrics = MetricRow::read(&out.join("metrics.arrow")).unwrap();
    assert!(metrics.iter().any(|m| m.name == metric::ACCURACY && m.split == "test" && m.value == 1.0));
    let rejects = forja_core::Reject::read(&out.join("rejects.arrow")).unwrap();
    assert_eq!(rejects.len(), 2, "the unlabeled document, once as train and once as test: {rejects:?}");
    assert!(rejects[0].reason.contains("no field `category`"));
    assert!(std::fs::read_to_string(out.join("confusion.svg")).unwrap().contains("<svg"));
    evaluate_the_trained_classifier(&out.join("model"), &docs_path_for_eval(tmp.path()), &ctx);

    // transformers reads the folder as a sequence classifier with the same logits.
    let model_dir = out.join("model");
    let loaded = load_classifier(&model_dir, Device::Cpu).unwrap();
    let ids: Vec<i64> = encode_for_bert(&loaded.tokenizer, "Where is my new card?", 64).unwrap().into_iter().map(i64::from).collect();
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let ours = tch::no_grad(|| loaded.model.forward(&x, &x.ones_like(), false).unwrap());
    let tmp_ids = tmp.path().join("ids.json");
    let hf_out = tmp.path().join("hf.json");
    std::fs::write(&tmp_ids, serde_json::to_string(&vec![ids]).unwrap()).unwrap();
    let python = root().join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/hf-check.py"))
        .args(["bert-cls", model_dir.to_str().unwrap(), tmp_ids.to_str().unwrap(), hf_out.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(run.status.success(), "hf-check failed: {}", String::from_utf8_lossy(&run.stderr));
    let hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf_out).unwrap()).unwrap();
    assert_eq!(hf["labels"], serde_json::json!(summary.labels));
    let theirs: Vec<f32> = hf["logits"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let diff = (ours.squeeze_dim(0) - Tensor::from_slice(&theirs)).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "forja and transformers logits differ by {diff}");
}

#[test]
fn scores_and_the_stratified_split_are_right() {
    // 3 classes; class 2 is never predicted (its precision counts as 0).
    let pairs = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (2, 0)];
    let s = score(&pairs, 3);
    assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
    assert_eq!(s.confusion, vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
    // Precision 2/3, 2/3, 0; recall 2/3, 1, 0; F1 2/3, 0.8, 0 (as scikit-learn computes them).
    assert!((s.precision.macro_ - (2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    assert!((s.recall.macro_ - (2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
    assert!((s.f1.macro_ - (2.0 / 3.0 + 0.8) / 3.0).abs() < 1e-12);

    let labels: Vec<i64> = (0..100)
        .map(|i| {
            if i < 80 {
                0
            } else if i < 98 {
                1
            } else {
                2
            }
        })
        .collect();
    let (train, val) = stratified_split(&labels, 0.1, 7);
    let count = |idx: &[usize], c: i64| idx.iter().filter(|&&i| labels[i] == c).count();
    assert_eq!((count(&val, 0), count(&val, 1), count(&val, 2)), (8, 2, 1), "each class keeps its share (at least one)");
    assert_eq!(train.len() + val.len(), 100);
    assert_eq!(stratified_split(&labels, 0.1, 7), (train, val), "deterministic");
}

#[test]
fn a_lora_classifier_merges_into_a_plain_one_with_the_same_logits() {
    use forja_model::bert::BertConfig;
    use forja_model::classifier::{BertClassifier, ClassifierConfig};
    use forja_model::{merge_lora, Layout, LoraConfig};
    use tch::{nn, Kind};
    let bert = BertConfig::sized(50, 16, 2, 2, 16, 0.0);
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let cfg = ClassifierConfig::new(&bert, &labels);
    let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["query".into(), "value".into()] };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = BertClassifier::new(&vs.root(), &cfg, Some(&lora)).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    for expected in
        ["bert.pooler.dense.weight", "classifier.weight", "classifier.bias", "bert.encoder.layer.1.attention.self.value.lora_B.weight"]
    {
        assert!(names.iter().any(|n| n == expected), "no `{expected}` among {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("key.lora_")), "only the targets get adapters");
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("lora_B") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    let ids = Tensor::from_slice(&[2i64, 7, 9, 11, 3, 2, 8, 4]).view([2, 4]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0]).view([2, 4]);
    let adapted = tch::no_grad(|| model.forward(&ids, &mask, false).unwrap());
    let merged: std::collections::HashMap<String, Tensor> =
        merge_lora(vs.variables().into_iter().collect(), lora.alpha / lora.rank as f64, Layout::OutIn).unwrap().into_iter().collect();
    let plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = BertClassifier::new(&plain_vs.root(), &cfg, None).unwrap();
    tch::no_grad(|| {
        for (name, mut v) in plain_vs.variables() {
            v.copy_(&merged[&name]);
        }
    });
    let merged_logits = tch::no_grad(|| plain.forward(&ids, &mask, false).unwrap());
    assert!((adapted - merged_logits).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn padding_never_changes_a_bert_sequence_s_hidden_states() {
    use forja_model::bert::{Bert, BertConfig};
    use tch::{nn, Kind};
    let cfg = BertConfig::sized(60, 16, 2, 2, 16, 0.0);
    let vs = nn::VarStore::new(Device::Cpu);
    let bert = Bert::new(&vs.root(), &cfg, None).unwrap();
    let long = [2i64, 17, 33, 5, 9, 41, 3];
    let short = [2i64, 8, 3];
    let mut ids = long.to_vec();
    ids.extend(short.iter().chain([0, 0, 0, 0].iter()));
    let ids = Tensor::from_slice(&ids).view([2, 7]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]).view([2, 7]);
    let padded = tch::no_grad(|| bert.forward(&ids, None, Some(&mask), false).unwrap());
    let alone = |seq: &[i64]| {
        let x = Tensor::from_slice(seq).view([1, -1]);
        tch::no_grad(|| bert.forward(&x, None, Some(&x.ones_like()), false).unwrap()).squeeze_dim(0)
    };
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(diff(&padded.get(0), &alone(&long)) < 1e-5);
    assert!(diff(&padded.get(1).narrow(0, 0, 3), &alone(&short)) < 1e-5);
    assert_eq!(padded.get(1).narrow(0, 3, 4).abs().sum(Kind::Float).double_value(&[]), 0.0, "padding positions are zeros");
}

/// The fixture with keyword slices' words in it, plus one document of a label
/// the model does not know.
fn docs_path_for_eval(dir: &std::path::Path) -> PathBuf {
    let mut docs = fixture();
    docs.push(Document {
        id: "u".into(),
        text: "what is this".into(),
        source: "s".into(),
        lang: "en".into(),
        meta: serde_json::json!({ "category": "not_a_label" }).to_string(),
    });
    let path = dir.join("eval_docs.arrow");
    Document::write(&path, "t", "t", &docs).unwrap();
    path
}

/// `eval_classifier` on the model that fits the fixture: metrics, slices,
/// perturbations (strength 0 changes nothing), HotFlip (never helps), and
/// attributions that meet completeness.
fn evaluate_the_trained_classifier(model: &std::path::Path, test: &std::path::Path, ctx: &StageCtx) {
    use forja_eval::classifier::{run, AttributionConfig, ClassifierEvalConfig, ClassifierEvalInputs, RobustnessConfig, SliceConfig};
    use forja_eval::perturb::Perturbation;
    let out = tempfile::tempdir().unwrap();
    let cfg = ClassifierEvalConfig {
        label_field: "category".into(),
        slices: SliceConfig {
            keywords: [("card".to_string(), vec!["card".to_string()]), ("phone".to_string(), vec!["phone".to_string()])]
                .into_iter()
                .collect(),
            min_size: 2,
            ..Default::default()
        },
        robustness: RobustnessConfig {
            perturbations: vec![Perturbation::Typo(0.0), Perturbation::WordDrop(0.5)],
            hotflip: vec![1, 3],
            max_examples: 0,
        },
        attributions: AttributionConfig { examples: 2, steps: 48, tolerance: 0.05 },
        ..Default::default()
    };
    let inputs = ClassifierEvalInputs { model: model.to_path_buf(), test: test.to_path_buf() };
    let r = run(&cfg, &inputs, &OutDir::new(out.path()), ctx).unwrap();
    assert_eq!(r.scores.n, 12, "the document of an unknown label is a reject");
    assert_eq!(forja_core::Reject::read(&out.path().join("rejects.arrow")).unwrap().len(), 1);
    assert_eq!(r.scores.accuracy, 1.0);
    assert!(r.ece >= 0.0 && r.ece < 1.0 && r.log_loss > 0.0);
    let names: Vec<&str> = r.slices.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["(none)", "card", "phone"], "{names:?}");
    assert!(r.slices.iter().all(|s| s.accuracy == 1.0));
    assert_eq!(r.disparity.as_ref().unwrap().gap, 0.0);
    assert_eq!(r.robustness[0].key, "typo@0");
    assert_eq!(r.robustness[0].drop, 0.0, "strength 0 changes no text");
    let flips: Vec<f64> = r.robustness.iter().filter(|x| x.key.starts_with("hotflip")).map(|x| x.accuracy).collect();
    assert!(flips.len() == 2 && flips[0] <= 1.0 && flips[1] <= flips[0], "more flips never help the model: {flips:?}");
    assert!(flips[1] < 1.0, "three gradient-guided substitutions fool a 12-example model at least once: {flips:?}");
    assert_eq!(r.attributions.len(), 1, "one right prediction (there is no wrong one)");
    for e in &r.attributions {
        assert!(
            e.complete,
            "completeness error {} for F(x) − F(b) = {}",
            e.attribution.completeness_error(),
            e.attribution.f_input - e.attribution.f_baseline
        );
        assert_eq!(e.attribution.scores[0], 0.0, "[CLS] is the same in input and baseline");
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for part in ["## Per-class metrics", "## Slices", "## Robustness", "## Attributions", "class=\"attr\""] {
        assert!(report.contains(part), "{part}");
    }
}

#[test]
fn class_weights_from_the_clean_stage_file_cover_every_label_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("class_weights.json");
    std::fs::write(&path, r#"{"card_arrival": 0.5, "cash": 2.0}"#).unwrap();
    let labels = vec!["card_arrival".to_string(), "cash".to_string()];
    assert_eq!(forja_sft::classify::weights_from_file(&path, &labels).unwrap(), vec![0.5, 2.0]);
    let err = forja_sft::classify::weights_from_file(&path, &["refund".to_string()]).unwrap_err().to_string();
    assert!(err.contains("no weight for label `refund`") && err.contains("class_weights.json"), "{err}");
    std::fs::write(&path, r#"{"card_arrival": -1, "cash": 2.0}"#).unwrap();
    assert!(forja_sft::classify::weights_from_file(&path, &labels).unwrap_err().to_string().contains("not a positive number"));
}
