#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja_eval::score_tokens;
use forja_model::{Gpt, GptConfig};
use tch::{nn, Device, Tensor};

fn model() -> Gpt {
    let cfg = GptConfig { vocab_size: 13, block_size: 8, n_layer: 1, n_head: 2, n_embd: 8, ..Default::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    Gpt::new(&vs.root(), &cfg).unwrap()
}

#[test]
fn one_window_scores_as_one_forward_pass() {
    let m = model();
    let ids: Vec<i64> = (0..9).map(|i| (i * 5) % 13).collect();
    let s = score_tokens(&m, &ids, 4).unwrap();
    let x = Tensor::from_slice(&ids[..8]).view([1, -1]);
    let y = Tensor::from_slice(&ids[1..]).view([1, -1]);
    let want = tch::no_grad(|| m.loss(&x, &y, false).unwrap().double_value(&[]));
    assert_eq!(s.tokens, 8);
    assert!((s.loss - want).abs() < 1e-6, "{} vs {want}", s.loss);
    assert!((s.perplexity - want.exp()).abs() < 1e-6);
}

#[test]
fn every_token_is_scored_once_whatever_the_batch_size() {
    let m = model();
    let ids: Vec<i64> = (0..45).map(|i| (i * 7 + 3) % 13).collect();
    let a = score_tokens(&m, &ids, 1).unwrap();
    let b = score_tokens(&m, &ids, 32).unwrap();
    assert_eq!(a.tokens, 44);
    assert_eq!(b.tokens, 44);
    assert!((a.loss - b.loss).abs() < 1e-6);
    assert!(score_tokens(&m, &ids[..1], 4).is_err(), "one token has no target");
}

#[test]
fn next_token_attributions_meet_completeness() {
    let tok =
        forja_tokenizer::char_tokenizer("hello world, how are you?".chars().map(|_| "hello world, how are you?").take(1), &[]).unwrap();
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, block_size: 16, n_layer: 2, n_head: 2, n_embd: 16, ..Default::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let g = Gpt::new(&vs.root(), &cfg).unwrap();
    let (next, a) = forja_eval::lm::explain_next_token(&g, &tok, "how are", 64).unwrap().unwrap();
    assert_eq!(a.tokens.len(), 7);
    assert!(!next.is_empty());
    assert!(a.complete_within(0.01), "error {} for F(x) − F(0) = {}", a.completeness_error(), a.f_input - a.f_baseline);
    assert!(a.scores.iter().any(|s| s.abs() > 1e-6), "the prompt moves the logit");
    // A prompt longer than the context keeps its last block_size tokens.
    let (_, long) = forja_eval::lm::explain_next_token(&g, &tok, &"how are you ".repeat(5), 8).unwrap().unwrap();
    assert_eq!(long.tokens.len(), 16);
}

#[test]
fn exact_match_scores_good_lines_and_rejects_bad_ones_with_their_reason() {
    use forja_core::artifacts::Artifact;
    let dir = tempfile::tempdir().unwrap();
    let text = "Q: What is 1 + 2?\nA: 3\n";
    let tok = forja_tokenizer::char_tokenizer(std::iter::once(text), &[]).unwrap();
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, block_size: 32, n_layer: 1, n_head: 2, n_embd: 8, ..Default::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let _gpt = Gpt::new(&vs.root(), &cfg).unwrap();
    let model = dir.path().join("model");
    forja_model::checkpoint::save_model(&model, &vs, &cfg, &tok).unwrap();
    let ids: Vec<u32> = tok.encode(text).unwrap();
    let split = dir.path().join("val.arrow");
    forja_core::TokenRow::write(&split, "t", "t", &[forja_core::TokenRow { doc_id: "d".into(), ids }]).unwrap();
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        "{\"question\": \"What is 1 + 2?\", \"answer\": \"3\"}\n{broken\n{\"question\": \"Why?\", \"answer\": \"because\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let ctx = forja_core::stage::StageCtx { name: "eval".into(), seed: 1, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" };
    let eval_cfg = forja_eval::EvalConfig {
        prompts: vec!["Q:".into()],
        qa: forja_eval::QaConfig { prompt: "Q: {question}\nA:".into(), max_new_tokens: 3, ..Default::default() },
        ..Default::default()
    };
    let inputs = forja_eval::EvalInputs { model, split, questions: Some(questions) };
    forja_eval::run(&eval_cfg, &inputs, &forja_core::stage::OutDir::new(&out), &ctx).unwrap();
    let rejects = forja_core::Reject::read(&out.join("rejects.arrow")).unwrap();
    let reasons: Vec<(u64, &str)> = rejects.iter().map(|r| (r.position, r.reason.as_str())).collect();
    assert_eq!(rejects.len(), 2, "{reasons:?}");
    assert!(rejects[0].position == 2 && rejects[0].reason.starts_with("not a {question, answer} object"), "{reasons:?}");
    assert!(rejects[1].position == 3 && rejects[1].reason.contains("holds no number"), "{reasons:?}");
    let metrics = forja_core::MetricRow::read(&out.join("metrics.arrow")).unwrap();
    let em = metrics.iter().find(|m| m.name == "exact_match").unwrap();
    assert!((0.0..=1.0).contains(&em.value));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("on 1 questions (2 line(s) left out") && report.contains("## Attributions"), "{report}");
}

#[test]
fn eval_scores_a_llama_folder_with_the_speedrun_options_over_every_window() {
    use forja_core::artifacts::Artifact;
    let dir = tempfile::tempdir().unwrap();
    let text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer";
    let tok = forja_tokenizer::char_tokenizer(std::iter::once(text), &[]).unwrap();
    let cfg = GptConfig {
        arch: forja_model::Arch::Llama,
        vocab_size: tok.vocab_size() as i64,
        block_size: 16,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 16,
        qk_norm: true,
        activation: Some(forja_model::Activation::Relu2),
        logit_softcap: 15.0,
        tie_word_embeddings: false,
        ..Default::default()
    };
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), &cfg).unwrap();
    let model = dir.path().join("model");
    forja_model::checkpoint::save_model(&model, &vs, &cfg, &tok).unwrap();
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(config.contains("\"model_type\": \"forja-llama\""), "{config}");
    let ids: Vec<u32> = tok.encode(text).unwrap();
    let split = dir.path().join("val.arrow");
    forja_core::TokenRow::write(&split, "t", "t", &[forja_core::TokenRow { doc_id: "d".into(), ids: ids.clone() }]).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let ctx = forja_core::stage::StageCtx { name: "eval".into(), seed: 1, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" };
    let eval_cfg = forja_eval::EvalConfig { prompts: vec!["To".into()], ..Default::default() };
    let inputs = forja_eval::EvalInputs { model, split, questions: None };
    forja_eval::run(&eval_cfg, &inputs, &forja_core::stage::OutDir::new(&out), &ctx).unwrap();
    let metrics = forja_core::MetricRow::read(&out.join("metrics.arrow")).unwrap();
    let got = metrics.iter().find(|m| m.name == "loss").unwrap().value;
    // The same windows scored here: non-overlapping blocks of 16, token-weighted.
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let (mut total, mut count) = (0.0, 0usize);
    for s in (0..ids.len() - 1).step_by(16) {
        let n = 16.min(ids.len() - 1 - s);
        let x = Tensor::from_slice(&ids[s..s + n]).view([1, -1]);
        let y = Tensor::from_slice(&ids[s + 1..s + 1 + n]).view([1, -1]);
        total += tch::no_grad(|| gpt.loss(&x, &y, false).unwrap().double_value(&[])) * n as f64;
        count += n;
    }
    let want = total / count as f64;
    assert!((got - want).abs() < 1e-4, "eval loss {got}, the model's own {want}");
}
