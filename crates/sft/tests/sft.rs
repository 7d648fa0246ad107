#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Instruction SFT: the assistant-only loss mask, packing that never lets
//! examples see each other, LoRA (parameter count, identity at start, merge,
//! `peft` loading forja's adapters), the `sft_data` rejects, and LoRA runs
//! (GPT-2 and Llama bases) whose merged model stops generating at the
//! end-of-turn token.

use forja_core::artifacts::Artifact;
use forja_core::stage::{OutDir, StageCtx};
use forja_core::{Message, Reject, SftExample};
use forja_model::chat::{respond, ChatConfig, ChatTemplate, IM_END, IM_START};
use forja_model::checkpoint::write_model_files;
use forja_model::layers::Layout;
use forja_model::peft::ADAPTER_DIR;
use forja_model::{load_gpt, merge_lora, Arch, Gpt, GptConfig, LoraConfig};
use forja_sft::data::{run_sft_data, SftDataConfig};
use forja_sft::instruct::{build_rows, collate, run as run_sft, SftConfig, SftInputs};
use forja_tokenizer::{Tokenizer, TokenizerConfig};
use forja_train::TrainerConfig;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{nn, Device, Kind, Tensor};

/// libtorch's RNG is global: tests that seed it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ctx(name: &str) -> StageCtx {
    StageCtx { name: name.into(), seed: 5, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" }
}

fn msg(role: &str, content: &str) -> Message {
    Message { role: role.into(), content: content.into() }
}

/// A byte-level BPE trained on some GSM8K answers, with the ChatML tokens.
fn tokenizer(with_chat_tokens: bool) -> Tokenizer {
    let text = std::fs::read_to_string(root().join("fixtures/gsm8k/train.jsonl")).unwrap();
    let sample: String = text.lines().take(200).collect::<Vec<_>>().join("\n");
    let mut specials = vec![forja_tokenizer::EOT.to_string()];
    if with_chat_tokens {
        specials.extend([IM_START.to_string(), IM_END.to_string()]);
    }
    let cfg = TokenizerConfig { vocab_size: 400, special_tokens: specials, ..Default::default() };
    forja_tokenizer::train(std::iter::once(sample.as_str()), &cfg).unwrap()
}

fn conversation() -> Vec<Message> {
    vec![
        msg("system", "You are terse."),
        msg("user", "How many legs do 3 cats have?"),
        msg("assistant", "3 * 4 = 12 legs."),
        msg("user", "And 2 birds?"),
        msg("assistant", "2 * 2 = 4 legs."),
    ]
}

#[test]
fn the_loss_mask_covers_exactly_the_assistant_tokens() {
    let tok = tokenizer(true);
    let t = ChatTemplate::chatml();
    let conv = conversation();
    let enc = t.encode(&tok, &conv).unwrap();
    assert_eq!(enc.ids.len(), enc.assistant.len());
    // The whole conversation is the template's text, token for token.
    assert_eq!(tok.decode(&enc.ids).unwrap(), t.render(&conv, false).unwrap());
    // Each run of marked tokens is one assistant turn with its end-of-turn token.
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for (i, &a) in enc.assistant.iter().enumerate() {
        if a {
            if i == 0 || !enc.assistant[i - 1] {
                runs.push(Vec::new());
            }
            runs.last_mut().unwrap().push(enc.ids[i]);
        }
    }
    let turns: Vec<String> = runs.iter().map(|r| tok.decode(r).unwrap()).collect();
    assert_eq!(turns, vec![format!("3 * 4 = 12 legs.{IM_END}\n"), format!("2 * 2 = 4 legs.{IM_END}\n")]);
    // What is not marked is the system and user turns and the role headers.
    let rest: Vec<u32> = enc.ids.iter().zip(&enc.assistant).filter(|(_, &a)| !a).map(|(&id, _)| id).collect();
    let rest = tok.decode(&rest).unwrap();
    assert!(rest.contains("How many legs") && rest.contains("And 2 birds?") && rest.contains("You are terse."));
    assert!(!rest.contains("legs.") && !rest.contains("12"));
    // Rows learn the next token only where that token is an assistant token.
    let rows = build_rows(std::slice::from_ref(&enc), 512, true);
    let learned: Vec<u32> = rows[0].targets.iter().filter(|&&t| t != -100).map(|&t| t as u32).collect();
    assert_eq!(learned, runs.concat());
}

fn tiny_gpt(vs: &nn::VarStore, vocab: i64, lora: Option<&LoraConfig>) -> Gpt {
    let cfg = GptConfig { vocab_size: vocab, block_size: 32, n_layer: 2, n_head: 2, n_embd: 16, ..Default::default() };
    Gpt::with_lora(&vs.root(), &cfg, lora).unwrap()
}

/// Logits of one example alone (plain causal attention).
fn alone(model: &Gpt, ids: &[u32]) -> Tensor {
    let x = Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).view([1, -1]);
    model.forward(&x, false, None).unwrap().squeeze_dim(0)
}

#[test]
fn packed_examples_never_see_each_other() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_gpt(&vs, 50, None);
    let ex = |ids: Vec<u32>| forja_model::chat::Encoded { assistant: vec![true; ids.len()], ids };
    let a = ex(vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let b = ex(vec![9, 10, 11, 12, 13, 14]);
    let a2 = ex(vec![40, 41, 42, 43, 44, 45, 46, 47]);
    let logits = |examples: &[forja_model::chat::Encoded]| {
        let rows = build_rows(examples, 32, true);
        assert_eq!(rows.len(), 1, "both examples fit one row");
        let (ids, _, pos, seg) = collate(&[&rows[0]], Device::Cpu);
        let h = model.hidden_packed(&ids, &pos, &seg, false).unwrap();
        model.lm_head(&h).squeeze_dim(0)
    };
    let packed = logits(&[a.clone(), b.clone()]);
    let (na, nb) = (a.ids.len() as i64 - 1, b.ids.len() as i64 - 1);
    // Each example's logits are those it has alone, positions restarting at 0.
    let max_diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
    assert!(max_diff(&packed.narrow(0, 0, na), &alone(&model, &a.ids[..na as usize])) < 1e-5);
    assert!(max_diff(&packed.narrow(0, na, nb), &alone(&model, &b.ids[..nb as usize])) < 1e-5);
    // Changing the first example leaves the second's logits exactly as they were.
    let changed = logits(&[a2, b]);
    assert!(max_diff(&changed.narrow(0, 0, na), &packed.narrow(0, 0, na)) > 1e-3, "the first example did change");
    assert_eq!(max_diff(&changed.narrow(0, na, nb), &packed.narrow(0, na, nb)), 0.0);
}

#[test]
fn lora_has_the_expected_size_starts_as_the_base_and_merges_into_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["c_attn".into(), "c_proj".into()] };
    tch::manual_seed(3);
    let base_vs = nn::VarStore::new(Device::Cpu);
    let base = tiny_gpt(&base_vs, 50, None);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_gpt(&vs, 50, Some(&lora));
    tch::no_grad(|| {
        let base_vars = base_vs.variables();
        for (name, mut v) in vs.variables() {
            if let Some(src) = base_vars.get(&name) {
                v.copy_(src);
            }
        }
    });
    // Rank r on c_attn (C → 3C), attn.c_proj (C → C) and mlp.c_proj (4C → C) of 2 layers.
    let (c, r) = (16, 4);
    let expected = 2 * r * ((c + 3 * c) + (c + c) + (4 * c + c));
    let adapters: i64 = model.lora_params().iter().map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(adapters, expected);
    let groups = forja_train::ParamGroup::train_only(&vs, |n| n.contains(".lora_"), 0.0);
    assert_eq!(groups.iter().flat_map(|g| &g.params).map(|(_, t)| t.numel() as i64).sum::<i64>(), expected);
    // B = 0 at start: the adapted model is the base.
    let ids = [1u32, 5, 9, 13, 17, 21];
    assert_eq!((alone(&model, &ids) - alone(&base, &ids)).abs().max().double_value(&[]), 0.0);
    // With B ≠ 0, the merged weights in a plain model give the adapted logits.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("lora_B") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    let adapted = alone(&model, &ids);
    assert!((&adapted - alone(&base, &ids)).abs().max().double_value(&[]) > 1e-3);
    let merged = merge_lora(vs.variables().into_iter().collect(), lora.alpha / lora.rank as f64, Layout::InOut).unwrap();
    let mut plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = tiny_gpt(&plain_vs, 50, None);
    tch::no_grad(|| {
        let merged: std::collections::HashMap<String, Tensor> = merged.into_iter().collect();
        for (name, mut v) in plain_vs.variables() {
            v.copy_(&merged[&name]);
        }
    });
    plain_vs.freeze();
    assert!((adapted - alone(&plain, &ids)).abs().max().double_value(&[]) < 1e-5);
}

/// Writes a JSONL of conversations.
fn write_jsonl(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn sft_data_reads_the_usual_formats_and_rejects_bad_examples_with_file_line_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("chat.jsonl");
    let good = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
    write_jsonl(
        &jsonl,
        &[
            format!("\u{feff}{good}"), // a byte-order mark does not cost the first record
            r#"{"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}"#.into(),
            r#"{"question": "2+2?", "answer": "   "}"#.into(),
            r#"{"messages": [{"role": "wizard", "content": "abracadabra"}, {"role": "assistant", "content": "x"}]}"#.into(),
            "{not json".into(),
            r#"{"messages": [{"role": "user", "content": "only a question"}]}"#.into(),
            r#"{"question": "2+2?", "answer": "4"}"#.into(),
        ],
    );
    let csv = tmp.path().join("pairs.csv");
    std::fs::write(&csv, "prompt,response\n\"Say hi, politely\",Hello there\n").unwrap();
    let files = vec![jsonl.clone(), csv, root().join("fixtures/self-instruct/seed_tasks.jsonl")];
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = SftDataConfig { val_fraction: 0.0, ..Default::default() };
    let report = run_sft_data(&cfg, &files, &OutDir::new(&out), &ctx("sft_data")).unwrap();
    let rejects = Reject::read(&out.join("rejects.arrow")).unwrap();
    let found: Vec<(u64, &str)> = rejects.iter().map(|r| (r.position, r.reason.as_str())).collect();
    let reason = |line: u64| found.iter().find(|(l, _)| *l == line).map(|(_, r)| r.to_string()).unwrap_or_default();
    assert!(reason(2).contains("has no role"), "{found:?}");
    assert!(reason(3).contains("empty response"), "{found:?}");
    assert!(reason(4).contains("role `wizard`"), "{found:?}");
    assert!(reason(5).contains("invalid JSON"), "{found:?}");
    assert!(reason(6).contains("no assistant message"), "{found:?}");
    assert!(rejects.iter().all(|r| r.source.ends_with("chat.jsonl")));
    assert_eq!(rejects.len(), 5);
    // Lines 1 and 7, the CSV pair, and every Self-Instruct instance (175 tasks, 1 instance each).
    let train = SftExample::read(&out.join("train.arrow")).unwrap();
    assert_eq!(report.train, train.len());
    assert_eq!(train.len(), 2 + 1 + 175);
    let csv_ex = train.iter().find(|e| e.source.ends_with("pairs.csv:2")).unwrap();
    assert_eq!(csv_ex.messages, vec![msg("user", "Say hi, politely"), msg("assistant", "Hello there")]);
    let first = train.iter().find(|e| e.source.ends_with("chat.jsonl:1")).unwrap();
    assert_eq!(first.messages[1].content, "Hello!");
}

/// The GPT-2 base of the LoRA runs (its vocabulary is the tokenizer's).
fn gpt2_base() -> GptConfig {
    GptConfig { block_size: 64, n_layer: 2, n_head: 2, n_embd: 32, ..Default::default() }
}

/// A Llama base: grouped-query attention (4 query heads over 2 key/value
/// heads of width 8), SwiGLU MLP of width 96, an untied head, rotary base 50 000.
fn llama_base() -> GptConfig {
    GptConfig {
        arch: Arch::Llama,
        block_size: 64,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 32,
        tie_word_embeddings: false,
        rope_theta: 50_000.0,
        ..Default::default()
    }
}

/// A base GPT folder whose tokenizer has the ChatML tokens, and conversations
/// whose every answer is the same short phrase.
fn lora_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    lora_fixture_of(dir, &gpt2_base())
}

/// As [`lora_fixture`], with a base of `base` (its vocabulary set to the tokenizer's).
fn lora_fixture_of(dir: &Path, base: &GptConfig) -> (PathBuf, PathBuf) {
    let tok = tokenizer(true);
    tch::manual_seed(21);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, ..base.clone() };
    let _ = Gpt::new(&vs.root(), &cfg).unwrap();
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    write_model_files(&base, &vs, &cfg, &tok).unwrap();
    let questions = ["How many apples?", "What is 2 plus 3?", "Is the sum even?", "How far did she walk?", "What did he buy?"];
    let mut examples: Vec<SftExample> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| SftExample {
            id: format!("q{i}"),
            messages: vec![msg("user", q), msg("assistant", "It is 12.")],
            source: format!("t:{i}"),
        })
        .collect();
    // One conversation longer than the context: rejected, not truncated.
    examples.push(SftExample {
        id: "long".into(),
        messages: vec![msg("user", &"many words ".repeat(80)), msg("assistant", "x")],
        source: "t:long".into(),
    });
    let train = dir.join("train.arrow");
    SftExample::write(&train, "t", "t", &examples).unwrap();
    (base, train)
}

#[test]
fn a_lora_run_exports_peft_adapters_and_a_merged_model_that_stops_at_the_end_of_turn() {
    // Rank 8 on c_attn (C → 3C), attn.c_proj (C → C), c_fc (C → 4C) and mlp.c_proj (4C → C) of 2 layers.
    let adapter_params: i64 = 2 * 8 * ((32 + 96) + (32 + 32) + (128 + 32) + (32 + 128));
    lora_run_stops_at_the_end_of_turn(&gpt2_base(), &["c_attn", "c_proj", "c_fc"], adapter_params);
}

#[test]
fn a_lora_run_on_a_llama_base_exports_peft_adapters_and_a_merged_model_that_stops_at_the_end_of_turn() {
    let base = llama_base();
    let (c, r, l) = (base.n_embd, 8, base.n_layer);
    let (q, kv) = (base.n_head * base.head_dim(), base.kv_heads() * base.head_dim());
    let w = base.mlp_width();
    assert_eq!((q, kv, w), (32, 16, 96), "the shapes the count below is for");
    // Rank r on q_proj (C → q), k_proj and v_proj (C → kv), o_proj (q → C),
    // gate_proj and up_proj (C → w), down_proj (w → C), per layer.
    let adapter_params = l * r * ((c + q) + 2 * (c + kv) + (q + c) + 2 * (c + w) + (w + c));
    assert_eq!(adapter_params, 2 * 8 * (64 + 2 * 48 + 64 + 3 * 128));
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    lora_run_stops_at_the_end_of_turn(&base, &targets, adapter_params);
}

/// A rank-8 LoRA SFT run over a base of `base_cfg` on `targets`: only the
/// `adapter_params` adapter weights train; the merged model answers "It is 12."
/// and stops at `<|im_end|>`; transformers renders its chat template to the
/// same text and ids; peft puts the exported adapters on the base to the merged
/// model's logits.
fn lora_run_stops_at_the_end_of_turn(base_cfg: &GptConfig, targets: &[&str], adapter_params: i64) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (base, train) = lora_fixture_of(tmp.path(), base_cfg);
    let out = tmp.path().join("sft");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = SftConfig {
        lora: Some(LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: targets.iter().map(|t| t.to_string()).collect() }),
        samples: 0,
        train: TrainerConfig {
            batch_size: 5,
            max_steps: 80,
            eval_interval: 80,
            checkpoint_interval: 0,
            optim: forja_train::OptimConfig { lr: 1e-2, min_lr: 1e-3, warmup_steps: 5, weight_decay: 0.0, ..Default::default() },
            ..SftConfig::default().train
        },
        ..Default::default()
    };
    let inputs = SftInputs { model: base.clone(), train, val: None, prompts: None };
    let summary = run_sft(&cfg, &inputs, &OutDir::new(&out), &ctx("sft")).unwrap();
    assert_eq!(summary.rejected, 1);
    let rejects = Reject::read(&out.join("rejects.arrow")).unwrap();
    assert!(rejects[0].reason.contains("over max_length 65"), "{:?}", rejects[0]);
    // Only the adapters trained.
    assert_eq!(summary.train.trainable_params, adapter_params);

    // The merged model answers and stops at <|im_end|>.
    let model_dir = out.join("model");
    let (_vs, model, tok) = load_gpt(&model_dir, Device::Cpu).unwrap();
    let template = forja_model::chat::read_template(&model_dir).unwrap().expect("the export keeps its template");
    assert_eq!(template.end_of_turn, IM_END);
    let conv = vec![msg("user", "How many apples?")];
    let prompt = tok.encode(&template.render(&conv, true).unwrap()).unwrap();
    let eot = tok.token_to_id(IM_END).unwrap();
    let sampling = forja_model::SamplingConfig { temperature: 0.0, max_new_tokens: 30, ..Default::default() };
    let g = forja_model::generate_batch(&model, &[prompt], &[eot], &sampling).unwrap().pop().unwrap();
    assert!(g.stopped, "generation ran {} tokens without the end-of-turn token", g.tokens.len());
    assert!(g.tokens.len() < 10, "stopped after the answer, not at the limit: {:?}", tok.decode(&g.tokens));
    let answer = respond(&model, &tok, &template, &[conv], &ChatConfig { sampling: sampling.clone(), stop: vec![] }).unwrap();
    assert_eq!(answer, vec!["It is 12.".to_string()]);
    let cut = ChatConfig { sampling: sampling.clone(), stop: vec![" 12".into()] };
    assert_eq!(respond(&model, &tok, &template, &[vec![msg("user", "What did he buy?")]], &cut).unwrap(), vec!["It is".to_string()]);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token_id"], serde_json::json!(eot));
    assert_eq!(config["model_type"], base_cfg.arch.model_type());
    // The merged model is the base's architecture (config.json spells out the MLP's width).
    let merged_cfg = forja_model::checkpoint::read_config(&model_dir).unwrap();
    assert_eq!(merged_cfg.mlp_width(), base_cfg.mlp_width());
    assert_eq!(
        GptConfig { intermediate_size: base_cfg.intermediate_size, ..merged_cfg },
        GptConfig { vocab_size: tok.vocab_size() as i64, ..base_cfg.clone() }
    );
    // The adapters name the modules they sit on, in the base's weight layout
    // (GPT-2's Conv1D is `fan_in_fan_out`, Llama's nn.Linear is not).
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join(ADAPTER_DIR).join("adapter_config.json")).unwrap()).unwrap();
    let mut modules: Vec<&str> = adapter["target_modules"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    modules.sort_unstable();
    let mut want = targets.to_vec();
    want.sort_unstable();
    assert_eq!(modules, want);
    assert_eq!(adapter["fan_in_fan_out"], serde_json::json!(base_cfg.arch == Arch::Gpt2));
    assert_eq!((adapter["r"].as_i64(), adapter["lora_alpha"].as_f64()), (Some(8), Some(16.0)));

    // transformers renders the exported template the same way, to the same token ids.
    let conv = vec![msg("system", "Be brief."), msg("user", "How many legs do 3 cats have?"), msg("assistant", "3 * 4 = 12 legs.")];
    let (messages_path, rendered_path) = (tmp.path().join("messages.json"), tmp.path().join("rendered.json"));
    std::fs::write(&messages_path, serde_json::to_string(&conv).unwrap()).unwrap();
    let python = root().join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/chat-template-check.py"))
        .args([model_dir.to_str().unwrap(), messages_path.to_str().unwrap(), rendered_path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(run.status.success(), "chat-template-check failed: {}", String::from_utf8_lossy(&run.stderr));
    let hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rendered_path).unwrap()).unwrap();
    assert_eq!(hf["text"], serde_json::json!(template.render(&conv, false).unwrap()));
    assert_eq!(hf["prompt"], serde_json::json!(template.render(&conv[..2], true).unwrap()));
    assert_eq!(hf["eos_token"], serde_json::json!(IM_END));
    assert_eq!(hf["ids"], serde_json::json!(template.encode(&tok, &conv).unwrap().ids));

    // peft loads the adapters onto the base to the merged model's logits.
    let ids: Vec<String> = tok.encode("How many apples? It is 12.").unwrap().iter().map(u32::to_string).collect();
    let run = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/peft-check.py"))
        .args(["--base", base.to_str().unwrap(), "--adapter", model_dir.join(ADAPTER_DIR).to_str().unwrap()])
        .args(["--merged", model_dir.to_str().unwrap(), "--ids", &ids.join(",")])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "peft-check failed: {}{}", stdout, String::from_utf8_lossy(&run.stderr));
    let diff: f64 = stdout.lines().last().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(diff < 1e-4, "peft's logits differ from the merged model's by {diff}");
}

#[test]
fn tokens_a_model_lacks_are_added_with_the_mean_embedding() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(false);
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, block_size: 64, n_layer: 1, n_head: 2, n_embd: 16, ..Default::default() };
    let _ = Gpt::new(&vs.root(), &cfg).unwrap();
    write_model_files(tmp.path(), &vs, &cfg, &tok).unwrap();
    let p = forja_sft::instruct::prepare(tmp.path(), &SftConfig::default()).unwrap();
    assert_eq!(p.added.len(), 2);
    assert_eq!(p.cfg.vocab_size, cfg.vocab_size + 2);
    let w = forja_sft::instruct::base_weights(tmp.path(), &p.added, &p.cfg).unwrap();
    let wte = w.get("transformer.wte.weight").unwrap();
    assert_eq!(wte.size(), [cfg.vocab_size + 2, 16]);
    let mean = wte.narrow(0, 0, cfg.vocab_size).mean_dim([0i64].as_slice(), false, Kind::Float);
    for &id in &p.added {
        assert!((wte.get(i64::from(id)) - &mean).abs().max().double_value(&[]) < 1e-6);
    }
    // LoRA cannot learn rows it keeps frozen: such a run is refused with the reason.
    let cfg = SftConfig { lora: Some(LoraConfig::default()), ..Default::default() };
    let inputs = SftInputs { model: tmp.path().into(), train: tmp.path().join("none.arrow"), val: None, prompts: None };
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let err = run_sft(&cfg, &inputs, &OutDir::new(&out), &ctx("sft")).unwrap_err();
    assert!(format!("{err:#}").contains("LoRA keeps the embeddings frozen"), "{err:#}");
}

#[test]
fn an_interrupted_sft_run_resumes_to_the_weights_of_an_uninterrupted_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (base, train) = lora_fixture(tmp.path());
    let cfg = SftConfig {
        dropout: Some(0.1),
        samples: 0,
        train: TrainerConfig {
            batch_size: 2,
            max_steps: 8,
            eval_interval: 4,
            checkpoint_interval: 2,
            keep_best: false,
            ..SftConfig::default().train
        },
        ..Default::default()
    };
    let inputs = SftInputs { model: base, train, val: None, prompts: None };
    let run_to = |name: &str, stop_after: Option<u64>| {
        let out = tmp.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let mut hook = |step: u64| match stop_after {
            Some(s) if step == s => std::ops::ControlFlow::Break(()),
            _ => std::ops::ControlFlow::Continue(()),
        };
        let first = forja_sft::instruct::run_with_hook(&cfg, &inputs, &OutDir::new(&out), &ctx("sft"), &mut hook);
        if stop_after.is_some() {
            assert!(first.is_err(), "the hook stops the run");
            let resumed = run_sft(&cfg, &inputs, &OutDir::new(&out), &ctx("sft")).unwrap();
            assert_eq!(resumed.train.resumed_from, Some(4));
        }
        std::fs::read(out.join("model/model.safetensors")).unwrap()
    };
    let straight = run_to("straight", None);
    let resumed = run_to("killed", Some(5));
    assert!(straight == resumed, "resumed weights differ from the uninterrupted run's");
}

#[test]
fn sft_data_reads_conversations_from_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let conversations = vec![
        SftExample { id: "a".into(), messages: conversation(), source: "x".into() },
        SftExample { id: "b".into(), messages: vec![msg("user", "Hi")], source: "y".into() }, // no answer: rejected
    ];
    let batch = SftExample::to_batch(&conversations);
    let path = tmp.path().join("chats.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = SftDataConfig { val_fraction: 0.0, ..Default::default() };
    run_sft_data(&cfg, &[path], &OutDir::new(&out), &ctx("sft_data")).unwrap();
    let train = SftExample::read(&out.join("train.arrow")).unwrap();
    assert_eq!(train.len(), 1);
    assert_eq!(train[0].messages, conversation());
    assert!(train[0].source.ends_with("chats.parquet:1"));
    let rejects = Reject::read(&out.join("rejects.arrow")).unwrap();
    assert_eq!((rejects[0].position, rejects[0].reason.as_str()), (2, "no assistant message (nothing to learn)"));
    // Not Parquet at all: an error naming the file.
    let bogus = tmp.path().join("bogus.parquet");
    std::fs::write(&bogus, "not parquet").unwrap();
    let err = run_sft_data(&cfg, &[bogus], &OutDir::new(&out), &ctx("sft_data")).unwrap_err();
    assert!(format!("{err:#}").contains("bogus.parquet: not a readable Parquet file"), "{err:#}");
}
