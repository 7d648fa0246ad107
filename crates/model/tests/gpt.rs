#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja_data::tokenizer::char_tokenizer;
use forja_model::generate::sample;
use forja_model::{generate, load_model, save_model, Gpt, GptConfig, KvCache, SamplingConfig};
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> GptConfig {
    GptConfig { vocab_size: 11, block_size: 16, n_layer: 2, n_head: 2, n_embd: 8, dropout: 0.0, layer_norm_epsilon: 1e-5 }
}

fn model(cfg: &GptConfig) -> (nn::VarStore, Gpt) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Gpt::new(&vs.root(), cfg).unwrap();
    (vs, m)
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, -1])
}

#[test]
fn forward_gives_one_logit_row_per_position() {
    let (_vs, m) = model(&tiny());
    let x = Tensor::randint(11, [3, 7], (Kind::Int64, Device::Cpu));
    assert_eq!(m.forward(&x, false, None).size(), vec![3, 7, 11]);
    let loss = m.loss(&x, &x, false).double_value(&[]);
    // Untrained: about ln(vocab).
    assert!((loss - (11f64).ln()).abs() < 0.5, "{loss}");
}

#[test]
fn changing_a_future_token_leaves_earlier_logits_unchanged() {
    let (_vs, m) = model(&tiny());
    let a = ids(&[1, 2, 3, 4, 5, 6]);
    let b = ids(&[1, 2, 3, 9, 5, 6]);
    let la = m.forward(&a, false, None);
    let lb = m.forward(&b, false, None);
    let before = |l: &Tensor| l.narrow(1, 0, 3);
    assert!(before(&la).allclose(&before(&lb), 0.0, 0.0, false), "positions 0..3 must not see position 3");
    let after = |l: &Tensor| l.narrow(1, 3, 3);
    assert!(!after(&la).allclose(&after(&lb), 1e-6, 1e-6, false), "positions 3.. must see it");
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    let (_vs, m) = model(&tiny());
    let _guard = tch::no_grad_guard();
    let seq = [3i64, 1, 4, 1, 5, 9, 2, 6];
    let full = m.forward(&ids(&seq), false, None);
    let mut cache = KvCache::new(2);
    let mut rows = vec![m.forward(&ids(&seq[..3]), false, Some(&mut cache))];
    let multi = m.forward(&ids(&seq[3..5]), false, Some(&mut cache)); // several tokens after a past
    rows.push(multi);
    for &t in &seq[5..] {
        rows.push(m.forward(&ids(&[t]), false, Some(&mut cache)));
    }
    assert_eq!(cache.len(), 8);
    let incremental = Tensor::cat(&rows, 1);
    assert!(full.allclose(&incremental, 1e-5, 1e-5, false));
}

#[test]
fn a_saved_model_loads_with_gpt2_names_and_identical_outputs() {
    let cfg = tiny();
    let (vs, m) = model(&cfg);
    let tok = char_tokenizer(["abcdefghij"].into_iter(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    save_model(&path, &vs, &cfg, &tok).unwrap();

    let weights = Tensor::read_safetensors(path.join("model.safetensors")).unwrap();
    let find = |n: &str| weights.iter().find(|(k, _)| k == n).map(|(_, t)| t.size());
    assert_eq!(find("transformer.wte.weight"), Some(vec![11, 8]));
    assert_eq!(find("transformer.wpe.weight"), Some(vec![16, 8]));
    assert_eq!(find("transformer.h.0.attn.c_attn.weight"), Some(vec![8, 24]), "GPT-2 Conv1D layout [in, out]");
    assert_eq!(find("transformer.h.1.mlp.c_proj.weight"), Some(vec![32, 8]));
    assert_eq!(find("transformer.ln_f.bias"), Some(vec![8]));
    assert_eq!(find("lm_head.weight"), None, "tied to wte");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["n_positions"], 16);
    assert_eq!(config["architectures"][0], "GPT2LMHeadModel");

    let loaded = load_model(&path, Device::Cpu).unwrap();
    let x = ids(&[1, 2, 3]);
    assert!(m.forward(&x, false, None).allclose(&loaded.model.forward(&x, false, None), 0.0, 0.0, false));
    assert_eq!(loaded.tokenizer.encode("cab").unwrap(), tok.encode("cab").unwrap());
}

#[test]
fn an_invalid_config_is_refused() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = Gpt::new(&vs.root(), &GptConfig { n_embd: 10, n_head: 3, ..tiny() }).unwrap_err();
    assert!(err.to_string().contains("multiple of n_head"));
}

#[test]
fn sampling_controls_behave() {
    let logits = [0.1f32, 2.0, 1.9, -1.0];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let greedy = SamplingConfig { temperature: 0.0, ..Default::default() };
    assert_eq!(sample(&logits, &greedy, &mut rng), 1);
    let top1 = SamplingConfig { temperature: 1.0, top_k: 1, ..Default::default() };
    let nucleus = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 0.01, ..Default::default() };
    let top2 = SamplingConfig { temperature: 1.0, top_k: 2, ..Default::default() };
    for _ in 0..50 {
        assert_eq!(sample(&logits, &top1, &mut rng), 1);
        assert_eq!(sample(&logits, &nucleus, &mut rng), 1);
        assert!([1, 2].contains(&sample(&logits, &top2, &mut rng)));
    }
    let err = SamplingConfig { top_p: 1.5, ..Default::default() }.validate().unwrap_err();
    assert!(err.to_string().contains("`top_p` must be > 0.0 and <= 1.0"));
}

#[test]
fn generation_is_seeded_and_runs_past_the_context() {
    let (_vs, m) = model(&tiny());
    let cfg = SamplingConfig { max_new_tokens: 40, seed: 5, ..Default::default() };
    let a = generate(&m, &[1, 2], None, &cfg).unwrap();
    let b = generate(&m, &[1, 2], None, &cfg).unwrap();
    assert_eq!(a.len(), 40, "longer than block_size 16: the cache is rebuilt");
    assert_eq!(a, b);
    assert!(a.iter().all(|&t| t < 11));
    assert!(generate(&m, &[], None, &cfg).is_err());
}
