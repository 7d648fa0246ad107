#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Parity with the Python ecosystem: forja's GPT and BERT against Hugging Face
//! `transformers` (through `scripts/checks/hf-check.py` in the project's venv), and
//! sentence embeddings of the imported all-MiniLM-L6-v2 against the golden file
//! written by `sentence-transformers` (`scripts/fixtures/minilm-golden.py`).
//! `scripts/setup --test` installs the venv packages and links `models/all-MiniLM-L6-v2`.

mod common;

use common::{root, tensor};
use forja_core::artifacts::Artifact;
use forja_core::stage::{OutDir, StageCtx};
use forja_core::{Document, EmbeddingRow};
use forja_model::bert::{Bert, BertConfig, BertMlmHead};
use forja_model::checkpoint::{write_folder, AnyModel};
use forja_model::{load_model, save_model, Arch, Gpt, GptConfig};
use forja_pretrain::models::{embed_texts, import_model, run_embed, EmbedConfig};
use forja_train::TrainerConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

fn minilm() -> PathBuf {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run scripts/setup --test", dir.display());
    dir
}

/// Runs `scripts/checks/hf-check.py KIND DIR` on `ids`; returns its JSON.
fn hf_check(kind: &str, dir: &Path, ids: &[Vec<i64>]) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let (ids_path, out_path) = (tmp.path().join("ids.json"), tmp.path().join("out.json"));
    std::fs::write(&ids_path, serde_json::to_string(ids).unwrap()).unwrap();
    let python = root().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/hf-check.py"))
        .args([kind, dir.to_str().unwrap(), ids_path.to_str().unwrap(), out_path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(out.status.success(), "hf-check {kind} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(out_path).unwrap()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn ids_tensor(ids: &[Vec<i64>]) -> Tensor {
    Tensor::from_slice(&ids.concat()).view([ids.len() as i64, -1])
}

fn char_tok(vocab: usize) -> forja_tokenizer::Tokenizer {
    let chars: String = (0..vocab as u32).filter_map(|i| char::from_u32('a' as u32 + i)).collect();
    forja_tokenizer::char_tokenizer(std::iter::once(chars.as_str()), &[]).unwrap()
}

#[test]
fn a_forja_gpt_gives_the_logits_of_transformers_gpt2() {
    let cfg = GptConfig { vocab_size: 30, block_size: 16, n_layer: 2, n_head: 2, n_embd: 16, ..Default::default() };
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_model(&dir.path().join("m"), &vs, &cfg, &char_tok(29)).unwrap();
    let ids = vec![vec![1i64, 5, 9, 2, 28, 3, 3, 0], vec![4, 4, 4, 7, 8, 1, 2, 29]];
    let want = tensor(&hf_check("gpt2", &dir.path().join("m"), &ids)["logits"]);
    let got = tch::no_grad(|| model.forward(&ids_tensor(&ids), false, None).unwrap());
    let d = max_diff(&got, &want);
    eprintln!("GPT logits: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "max |forja - transformers| = {d}");
}

/// A Llama with everything that differs from GPT-2's block at a non-default
/// value: grouped-query attention, an untied head, `rope_theta`.
fn llama_cfg() -> GptConfig {
    GptConfig {
        arch: Arch::Llama,
        vocab_size: 40,
        block_size: 32,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 32,
        intermediate_size: 48,
        rope_theta: 50_000.0,
        tie_word_embeddings: false,
        ..Default::default()
    }
}

/// Norm weights away from one, so that a norm applied without its weight shows.
fn perturb_norms(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("norm") {
                let _ = t.g_add_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
}

#[test]
fn a_forja_llama_gives_the_logits_of_transformers_llama() {
    let cfg = llama_cfg();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg).unwrap();
    perturb_norms(&vs);
    let dir = tempfile::tempdir().unwrap();
    save_model(&dir.path().join("m"), &vs, &cfg, &char_tok(39)).unwrap();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("m/config.json")).unwrap()).unwrap();
    assert_eq!(written["model_type"], "llama");
    assert_eq!(written["architectures"][0], "LlamaForCausalLM");
    assert_eq!(written["num_key_value_heads"], 2);
    let ids = vec![vec![1i64, 5, 9, 2, 38, 3, 3, 0, 12, 17], vec![4, 4, 4, 7, 8, 1, 2, 39, 30, 31]];
    let want = tensor(&hf_check("causal", &dir.path().join("m"), &ids)["logits"]);
    let got = tch::no_grad(|| model.forward(&ids_tensor(&ids), false, None).unwrap());
    let d = max_diff(&got, &want);
    eprintln!("Llama logits: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "max |forja - transformers| = {d}");
}

/// Writes a random `ARCH` model with transformers itself; returns its folder
/// (with a character tokenizer added) and transformers' logits of `ids`.
fn hf_random_decoder(arch: &str, dir: &Path, ids: &[Vec<i64>]) -> (PathBuf, Tensor) {
    let folder = dir.join(arch);
    let (ids_path, out_path) = (dir.join("ids.json"), dir.join("logits.json"));
    std::fs::write(&ids_path, serde_json::to_string(ids).unwrap()).unwrap();
    let python = root().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/hf-random-decoder.py"))
        .args([arch, folder.to_str().unwrap(), ids_path.to_str().unwrap(), out_path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(out.status.success(), "hf-random-decoder {arch} failed: {}", String::from_utf8_lossy(&out.stderr));
    char_tok(39).save(&folder.join("tokenizer.json")).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out_path).unwrap()).unwrap();
    (folder, tensor(&v["logits"]))
}

#[test]
fn a_tiny_llama_and_qwen2_written_by_transformers_import_with_their_logits() {
    let ids = vec![vec![1i64, 5, 9, 2, 38, 3, 3, 0, 11, 12, 13], vec![4, 4, 4, 7, 8, 1, 2, 39, 0, 1, 2]];
    for (arch, kind) in [("llama", Arch::Llama), ("qwen2", Arch::Qwen2)] {
        let tmp = tempfile::tempdir().unwrap();
        let (hf_dir, want) = hf_random_decoder(arch, tmp.path(), &ids);
        let imported = tmp.path().join("imported");
        assert_eq!(import_model(&hf_dir, &imported).unwrap(), arch);
        let (_vs, model, _tok) = forja_model::load_gpt(&imported, Device::Cpu).unwrap();
        assert_eq!(model.cfg.arch, kind);
        assert_eq!((model.cfg.n_head, model.cfg.kv_heads()), (4, 2), "{arch}: grouped-query attention kept");
        let got = tch::no_grad(|| model.forward(&ids_tensor(&ids), false, None).unwrap());
        let d = max_diff(&got, &want);
        eprintln!("{arch} imported: max |forja - transformers| = {d:e}");
        assert!(d < 1e-4, "{arch}: max |forja - transformers| = {d}");
        // forja's own folder of it reads back in transformers to the same logits.
        let again = tensor(&hf_check("causal", &imported, &ids)["logits"]);
        assert!(max_diff(&again, &want) < 1e-5, "{arch}: forja's rewrite changed the model");
    }
}

#[test]
fn a_forja_bert_gives_the_hidden_states_and_mlm_logits_of_transformers() {
    let cfg = BertConfig::sized(40, 24, 2, 3, 32, 0.0);
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let bert = Bert::new(&(&root / "bert"), &cfg, None).unwrap();
    let head = BertMlmHead::new(&(&root / "cls" / "predictions"), &cfg);
    // Non-trivial LayerNorm and bias values, so that a misplaced one would show.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("bias") || name.contains("LayerNorm") {
                let _ = t.g_add_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("bert");
    std::fs::create_dir_all(&folder).unwrap();
    write_folder(&folder, &vs, &cfg, &char_tok(39)).unwrap();
    let ids = vec![vec![1i64, 5, 9, 2, 38, 3, 3, 0, 11, 12], vec![4, 4, 4, 7, 8, 1, 2, 39, 0, 1]];
    let hidden = tch::no_grad(|| bert.forward(&ids_tensor(&ids), None, None, false).unwrap());
    let want = tensor(&hf_check("bert", &folder, &ids)["last_hidden_state"]);
    let d = max_diff(&hidden, &want);
    eprintln!("BERT hidden states: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "hidden states: max |forja - transformers| = {d}");
    let logits = tch::no_grad(|| head.forward(&hidden, &bert));
    let want = tensor(&hf_check("bert-mlm", &folder, &ids)["logits"]);
    let d = max_diff(&logits, &want);
    eprintln!("BERT MLM logits: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "MLM logits: max |forja - transformers| = {d}");
}

/// The golden file: sentences, their token ids and embeddings.
struct Golden {
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    embeddings: Tensor,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(root().join("fixtures/minilm/golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Golden {
        sentences: serde_json::from_value(v["sentences"].clone()).unwrap(),
        input_ids: serde_json::from_value(v["input_ids"].clone()).unwrap(),
        embeddings: tensor(&v["embeddings"]),
    }
}

fn ctx() -> StageCtx {
    StageCtx { name: "embed".into(), seed: 1, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" }
}

#[test]
fn imported_minilm_embeds_sentences_as_sentence_transformers_does() {
    let g = golden();
    assert!(g.sentences.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("minilm");
    assert_eq!(import_model(&minilm(), &imported).unwrap(), "bert");
    let loaded = load_model(&imported, Device::Cpu).unwrap();
    // The WordPiece tokenizer: the same ids as the Python tokenizer.
    for (s, want) in g.sentences.iter().zip(&g.input_ids) {
        assert_eq!(&loaded.tokenizer.encode_with_special(s).unwrap(), want, "{s:?}");
    }
    let texts: Vec<&str> = g.sentences.iter().map(String::as_str).collect();
    let got = embed_texts(&loaded, &texts, &EmbedConfig { batch_size: 7, ..Default::default() }).unwrap();
    let got = Tensor::from_slice(&got.concat()).view([texts.len() as i64, -1]);
    let d = max_diff(&got, &g.embeddings);
    eprintln!("MiniLM embeddings: max |forja - sentence-transformers| = {d:e} over {} sentences", texts.len());
    assert!(d < 1e-4, "max |forja - sentence-transformers| = {d} over {} sentences", texts.len());

    // The same through the `embed` stage, from a documents artifact.
    let docs: Vec<Document> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Document {
            id: format!("d{i}"),
            text: t.to_string(),
            source: format!("golden:{i}"),
            lang: "und".into(),
            meta: "{}".into(),
        })
        .collect();
    let docs_path = dir.path().join("docs.arrow");
    Document::write(&docs_path, "t", "t", &docs).unwrap();
    let out = OutDir::new(dir.path());
    let emb_path = out.path(&forja_pretrain::EMBEDDINGS);
    run_embed(&EmbedConfig::default(), &imported, &docs_path, &emb_path, &ctx()).unwrap();
    let rows = EmbeddingRow::read(&emb_path).unwrap();
    assert_eq!(rows.len(), 24);
    assert_eq!(rows[3].doc_id, "d3");
    let stage = Tensor::from_slice(&rows.iter().flat_map(|r| r.vector.clone()).collect::<Vec<f32>>()).view([24, -1]);
    assert!(max_diff(&stage, &g.embeddings) < 1e-4);
}

#[test]
fn imported_minilm_hidden_states_match_transformers() {
    let g = golden();
    let loaded = load_model(&minilm(), Device::Cpu).unwrap();
    let AnyModel::Bert(b) = &loaded.model else { panic!("MiniLM loads as BERT") };
    let ids: Vec<Vec<i64>> = vec![g.input_ids[1].iter().map(|&t| i64::from(t)).collect()];
    let got = tch::no_grad(|| b.bert.forward(&ids_tensor(&ids), None, None, false).unwrap());
    let want = tensor(&hf_check("bert", &minilm(), &ids)["last_hidden_state"]);
    let d = max_diff(&got, &want);
    eprintln!("MiniLM hidden states: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "max |forja - transformers| = {d}");
}

#[test]
fn a_folder_missing_a_tensor_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm().join(f), broken.join(f)).unwrap();
    }
    let mut tensors = Tensor::read_safetensors(minilm().join("model.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "encoder.layer.3.output.dense.weight");
    Tensor::write_safetensors(&tensors, broken.join("model.safetensors")).unwrap();
    let err = format!("{:#}", import_model(&broken, &dir.path().join("out")).unwrap_err());
    assert!(err.contains("bert.encoder.layer.3.output.dense.weight") && err.contains("lacks 1 tensor"), "{err}");
}

#[test]
fn masked_lm_continues_from_the_imported_minilm() {
    use forja_core::{MetricRow, TokenRow};
    use forja_pretrain::{Architecture, PretrainConfig, PretrainInputs};
    let dir = tempfile::tempdir().unwrap();
    let tok = forja_tokenizer::Tokenizer::load(&minilm().join("tokenizer.json")).unwrap();
    let text = golden().sentences.join(" [SEP] ").repeat(4);
    let write = |name: &str| {
        let path = dir.path().join(name);
        TokenRow::write(&path, "t", "t", &[TokenRow { doc_id: name.into(), ids: tok.encode(&text).unwrap() }]).unwrap();
        path
    };
    let inputs = PretrainInputs {
        tokenizer: minilm().join("tokenizer.json"),
        train: write("train.arrow"),
        val: write("val.arrow"),
        init: Some(minilm()),
    };
    let cfg = PretrainConfig {
        architecture: Architecture::Bert,
        model: forja_model::GptConfig { block_size: 32, ..Default::default() },
        train: TrainerConfig {
            optim: forja_train::OptimConfig { lr: 1e-3, warmup_steps: 0, ..Default::default() },
            batch_size: 4,
            max_steps: 12,
            eval_interval: 6,
            eval_iters: 2,
            checkpoint_interval: 0,
            threads: 2,
            ..PretrainConfig::default().train
        },
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let s = forja_pretrain::run(&cfg, &inputs, &OutDir::new(out.path()), &ctx()).unwrap();
    assert_eq!(s.steps, 12);
    // The head starts fresh (uniform: ln 30522 ≈ 10.3) over MiniLM's encoder and learns.
    let m = MetricRow::read(&out.path().join("metrics.arrow")).unwrap();
    let val: Vec<f64> = m.iter().filter(|r| r.name == "loss" && r.split == "val").map(|r| r.value).collect();
    assert!(val[0] < 9.0 && val[1] < val[0], "{val:?}");
    // The encoder kept MiniLM's size and loads with its head.
    let loaded = load_model(&out.path().join("model"), Device::Cpu).unwrap();
    let AnyModel::Bert(b) = &loaded.model else { panic!("a BERT") };
    assert_eq!((b.bert.cfg.hidden_size, b.bert.cfg.num_hidden_layers), (384, 6));
    assert!(b.mlm.is_some());
}

#[test]
fn models_of_the_wrong_kind_or_broken_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A GPT cannot embed; a BERT cannot be scored as a causal LM.
    let cfg = GptConfig { vocab_size: 30, block_size: 16, n_layer: 1, n_head: 2, n_embd: 8, ..Default::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let _gpt = Gpt::new(&vs.root(), &cfg).unwrap();
    let gpt_dir = dir.path().join("gpt");
    save_model(&gpt_dir, &vs, &cfg, &char_tok(29)).unwrap();
    let loaded = load_model(&gpt_dir, Device::Cpu).unwrap();
    let err = embed_texts(&loaded, &["hello"], &EmbedConfig::default()).unwrap_err().to_string();
    assert!(err.contains("embed needs a BERT encoder") && err.contains("gpt2"), "{err}");
    let tokens = dir.path().join("t.arrow");
    forja_core::TokenRow::write(&tokens, "t", "t", &[forja_core::TokenRow { doc_id: "d".into(), ids: vec![1, 2, 3, 4] }]).unwrap();
    let err = format!(
        "{:#}",
        forja_eval::run(
            &forja_eval::EvalConfig::default(),
            &forja_eval::EvalInputs { model: minilm(), split: tokens.clone(), questions: None },
            &OutDir::new(dir.path()),
            &ctx()
        )
        .unwrap_err()
    );
    assert!(err.contains("causal language models") && err.contains("`bert`"), "{err}");
    // A folder without config.json, and one of an unknown model_type.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(minilm().join("tokenizer.json"), empty.join("tokenizer.json")).unwrap();
    let err = format!("{:#}", import_model(&empty, &dir.path().join("o1")).unwrap_err());
    assert!(err.contains("empty/config.json"), "{err}");
    std::fs::write(empty.join("config.json"), r#"{"model_type": "mistral"}"#).unwrap();
    let err = format!("{:#}", import_model(&empty, &dir.path().join("o2")).unwrap_err());
    assert!(err.contains("model_type `mistral` is not supported"), "{err}");
    assert!(!dir.path().join("o2").exists(), "nothing is written for a refused import");
}

#[test]
fn a_gpt2_folder_written_by_transformers_imports_with_the_same_logits() {
    // Hugging Face's own GPT-2 (defaults: gelu_new, dropout 0.1, no n_ctx), tiny and random.
    let dir = tempfile::tempdir().unwrap();
    let hf_dir = dir.path().join("hf-gpt2");
    let script = format!(
        "import torch\nfrom transformers import GPT2Config, GPT2LMHeadModel\ntorch.manual_seed(0)\n\
         cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=2, n_head=2)\n\
         GPT2LMHeadModel(cfg).save_pretrained({:?})\n",
        hf_dir.display().to_string()
    );
    let out = std::process::Command::new(root().join(".venv/bin/python")).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    char_tok(29).save(&hf_dir.join("tokenizer.json")).unwrap();
    let imported = dir.path().join("imported");
    assert_eq!(import_model(&hf_dir, &imported).unwrap(), "gpt2");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(imported.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["activation_function"], "gelu_new");
    let loaded = load_model(&imported, Device::Cpu).unwrap();
    let AnyModel::Gpt(g) = &loaded.model else { panic!("a GPT") };
    let ids = vec![vec![1i64, 5, 9, 2, 28, 3, 3, 0], vec![4, 4, 4, 7, 8, 1, 2, 29]];
    let want = tensor(&hf_check("gpt2", &hf_dir, &ids)["logits"]);
    let got = tch::no_grad(|| g.forward(&ids_tensor(&ids), false, None).unwrap());
    let d = max_diff(&got, &want);
    eprintln!("imported HF GPT-2 logits: max |forja - transformers| = {d:e}");
    assert!(d < 1e-4, "max |forja - transformers| = {d}");
}
