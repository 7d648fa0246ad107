#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja_model::generate::sample;
use forja_model::{
    generate, generate_batch, load_model, save_model, Activation, AnyModel, Arch, Gpt, GptConfig, KvCache, LoraConfig, PagedCache,
    PagedRow, Precision, SamplingConfig,
};
use forja_tokenizer::char_tokenizer;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> GptConfig {
    GptConfig {
        vocab_size: 11,
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        dropout: 0.0,
        layer_norm_epsilon: 1e-5,
        ..Default::default()
    }
}

/// GPT-2's block, the Llama block (grouped-query attention, untied head), and
/// the Llama block with the speedrun's QK-norm, ReLU² and soft-capped logits.
fn variants() -> Vec<GptConfig> {
    let llama = GptConfig { arch: Arch::Llama, n_head: 4, n_kv_head: 2, n_embd: 16, tie_word_embeddings: false, ..tiny() };
    let speedrun = GptConfig { qk_norm: true, activation: Some(Activation::Relu2), logit_softcap: 15.0, ..llama.clone() };
    vec![tiny(), llama, speedrun]
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
    assert_eq!(m.forward(&x, false, None).unwrap().size(), vec![3, 7, 11]);
    let loss = m.loss(&x, &x, false).unwrap().double_value(&[]);
    // Untrained: about ln(vocab).
    assert!((loss - (11f64).ln()).abs() < 0.5, "{loss}");
}

#[test]
fn changing_a_future_token_leaves_earlier_logits_unchanged() {
    for cfg in variants() {
        let (_vs, m) = model(&cfg);
        let a = ids(&[1, 2, 3, 4, 5, 6]);
        let b = ids(&[1, 2, 3, 9, 5, 6]);
        let la = m.forward(&a, false, None).unwrap();
        let lb = m.forward(&b, false, None).unwrap();
        let before = |l: &Tensor| l.narrow(1, 0, 3);
        assert!(before(&la).allclose(&before(&lb), 0.0, 0.0, false), "positions 0..3 must not see position 3");
        let after = |l: &Tensor| l.narrow(1, 3, 3);
        assert!(!after(&la).allclose(&after(&lb), 1e-6, 1e-6, false), "positions 3.. must see it");
    }
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    for cfg in variants() {
        let (_vs, m) = model(&cfg);
        let _guard = tch::no_grad_guard();
        let seq = [3i64, 1, 4, 1, 5, 9, 2, 6];
        let full = m.forward(&ids(&seq), false, None).unwrap();
        let mut cache = KvCache::new(cfg.n_layer);
        let mut rows = vec![m.forward(&ids(&seq[..3]), false, Some(&mut cache)).unwrap()];
        let multi = m.forward(&ids(&seq[3..5]), false, Some(&mut cache)).unwrap(); // several tokens after a past
        rows.push(multi);
        for &t in &seq[5..] {
            rows.push(m.forward(&ids(&[t]), false, Some(&mut cache)).unwrap());
        }
        assert_eq!(cache.len(), 8);
        let incremental = Tensor::cat(&rows, 1);
        assert!(full.allclose(&incremental, 1e-5, 1e-5, false));
    }
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
    let AnyModel::Gpt(g) = &loaded.model else { panic!("loaded as {}", loaded.model.model_type()) };
    assert!(m.forward(&x, false, None).unwrap().allclose(&g.forward(&x, false, None).unwrap(), 0.0, 0.0, false));
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

#[test]
fn a_sequence_longer_than_the_context_is_an_error_naming_the_limit() {
    let (_vs, m) = model(&tiny());
    let long = Tensor::zeros([1, 17], (Kind::Int64, Device::Cpu));
    let err = m.forward(&long, false, None).unwrap_err().to_string();
    assert!(err.contains("17 tokens") && err.contains("context of 16"), "{err}");
    let mut cache = KvCache::new(2);
    let _cached = m.forward(&Tensor::zeros([1, 10], (Kind::Int64, Device::Cpu)), false, Some(&mut cache)).unwrap();
    let err = m.forward(&Tensor::zeros([1, 7], (Kind::Int64, Device::Cpu)), false, Some(&mut cache)).unwrap_err().to_string();
    assert!(err.contains("after 10 cached"), "{err}");
    assert!(m.forward(&Tensor::zeros([4], (Kind::Int64, Device::Cpu)), false, None).is_err(), "not [batch, seq]");
}

#[test]
fn hidden_states_and_the_head_compose_to_the_logits() {
    for cfg in variants() {
        let (_vs, m) = model(&cfg);
        let x = ids(&[1, 2, 3, 4]);
        let h = m.hidden(&x, false, None).unwrap();
        assert_eq!(h.size(), vec![1, 4, cfg.n_embd]);
        assert!(m.lm_head(&h).allclose(&m.forward(&x, false, None).unwrap(), 0.0, 0.0, false));
    }
}

#[test]
fn lora_starts_as_the_identity_with_the_expected_parameter_count() {
    let cfg = tiny();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let base = Gpt::new(&vs.root(), &cfg).unwrap();
    tch::manual_seed(0);
    let vs_lora = nn::VarStore::new(Device::Cpu);
    let lora = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec!["c_attn".into(), "c_fc".into()] };
    let with = Gpt::with_lora(&vs_lora.root(), &cfg, Some(&lora)).unwrap();
    // Same base weights: copy them over (variable creation order differs).
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            vs_lora.variables()[&name].shallow_clone().copy_(&t);
        }
    });
    let params = with.lora_params();
    // Per layer: c_attn A [2, 8] + B [24, 2], c_fc A [2, 8] + B [32, 2]; 2 layers.
    let count: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(count, 2 * (2 * 8 + 24 * 2 + 2 * 8 + 32 * 2));
    assert!(params.iter().any(|(n, _)| n == "transformer.h.1.mlp.c_fc.lora_B.weight"));
    let x = ids(&[1, 2, 3, 4, 5]);
    assert!(base.forward(&x, false, None).unwrap().allclose(&with.forward(&x, false, None).unwrap(), 1e-6, 1e-6, false), "B = 0 at start");
    // A non-zero B changes the output.
    tch::no_grad(|| {
        let _ = params[1].1.shallow_clone().fill_(0.1);
    });
    assert!(!base.forward(&x, false, None).unwrap().allclose(&with.forward(&x, false, None).unwrap(), 1e-6, 1e-6, false));
    let bad = LoraConfig { rank: 0, ..lora };
    assert!(Gpt::with_lora(&nn::VarStore::new(Device::Cpu).root(), &cfg, Some(&bad)).is_err());
}

#[test]
fn batched_generation_matches_one_at_a_time_and_returns_log_probabilities() {
    for cfg in variants() {
        let (_vs, m) = model(&cfg);
        let greedy = SamplingConfig { temperature: 0.0, max_new_tokens: 6, ..Default::default() };
        let prompts = vec![vec![1u32, 2, 3], vec![4u32], vec![5u32, 6]];
        let batch = generate_batch(&m, &prompts, &[], &greedy).unwrap();
        for (p, g) in prompts.iter().zip(&batch) {
            let single = generate(&m, p, None, &greedy).unwrap();
            assert_eq!(g.tokens, single, "prompt {p:?}: left padding must not change the continuation");
            assert_eq!(g.logprobs.len(), g.tokens.len());
            // The log-probability of each token: the model's, at that point.
            let mut seq: Vec<i64> = p.iter().map(|&t| t as i64).collect();
            for (&t, &lp) in g.tokens.iter().zip(&g.logprobs) {
                let logits = m.forward(&ids(&seq), false, None).unwrap().select(1, -1).log_softmax(-1, Kind::Float);
                assert!((logits.double_value(&[0, t as i64]) - lp as f64).abs() < 1e-4);
                seq.push(t as i64);
            }
        }
        // A stop token ends a row.
        let stop = batch[0].tokens[1];
        let stopped = generate_batch(&m, &prompts[..1], &[stop], &greedy).unwrap();
        assert!(stopped[0].stopped && stopped[0].tokens.len() < 6 && !stopped[0].tokens.contains(&stop));
        let full = generate_batch(&m, &[vec![1; 16]], &[], &greedy);
        assert!(full.unwrap_err().to_string().contains("context of 16"));
    }
}

#[test]
fn bf16_matrix_products_stay_close_to_float32() {
    for cfg in variants() {
        let (_vs, mut m) = model(&cfg);
        let x = ids(&[1, 2, 3, 4, 5, 6]);
        let f32_logits = m.forward(&x, false, None).unwrap();
        m.precision = Precision::Bf16;
        let bf16_logits = m.forward(&x, false, None).unwrap();
        assert_eq!(bf16_logits.kind(), Kind::Float, "logits come back in float32");
        let diff = (&f32_logits - &bf16_logits).abs().max().double_value(&[]);
        assert!(diff > 0.0 && diff < 0.05, "{diff}");
    }
}

/// Last-position hidden state of `seq` through the plain forward.
fn last_hidden(m: &Gpt, seq: &[u32]) -> Tensor {
    let v: Vec<i64> = seq.iter().map(|&t| i64::from(t)).collect();
    m.hidden(&ids(&v), false, None).unwrap().select(1, -1).squeeze_dim(0)
}

#[test]
fn paged_cache_steps_match_the_full_forward_as_sequences_join_leave_and_share_prefixes() {
    // Host memory with decoding in place, and tensors with a gather (the GPU's);
    // heads of 4 dimensions (the kernel for any size) and of 32 (an unrolled one).
    type Build = fn(&Gpt, usize, usize) -> anyhow::Result<PagedCache>;
    let wide = GptConfig { n_embd: 64, ..tiny() };
    let configs = variants().into_iter().chain([wide]);
    for (cfg, build) in configs.flat_map(|c| [(c.clone(), PagedCache::new as Build), (c, PagedCache::in_tensors as Build)]) {
        let (_vs, m) = model(&cfg);
        // Blocks of 2 positions; tables scattered over the cache on purpose.
        let mut cache = build(&m, 12, 2).unwrap();
        let (a, b, c): (Vec<u32>, Vec<u32>, Vec<u32>) = (vec![1, 2, 3, 4, 5], vec![6, 7], vec![9, 8, 7, 6]);
        let (ta, tb, tc): ([u32; 4], [u32; 2], [u32; 3]) = ([7, 0, 11, 3], [5, 9], [2, 8, 10]);
        let h = m
            .hidden_paged(&[PagedRow { blocks: &ta, start: 0, tokens: &a }, PagedRow { blocks: &tb, start: 0, tokens: &b }], &mut cache)
            .unwrap();
        assert!(h.get(0).allclose(&last_hidden(&m, &a), 1e-5, 1e-5, false));
        assert!(h.get(1).allclose(&last_hidden(&m, &b), 1e-5, 1e-5, false));
        // One decoding step for both (b's third token is the first in its
        // second block), then c joins while a takes a step.
        let h = m
            .hidden_paged(
                &[PagedRow { blocks: &ta, start: 5, tokens: &[10] }, PagedRow { blocks: &tb, start: 2, tokens: &[3] }],
                &mut cache,
            )
            .unwrap();
        assert!(h.get(0).allclose(&last_hidden(&m, &[1, 2, 3, 4, 5, 10]), 1e-5, 1e-5, false));
        assert!(h.get(1).allclose(&last_hidden(&m, &[6, 7, 3]), 1e-5, 1e-5, false));
        let h = m.hidden_paged(&[PagedRow { blocks: &tc, start: 0, tokens: &c }], &mut cache).unwrap();
        assert!(h.get(0).allclose(&last_hidden(&m, &c), 1e-5, 1e-5, false));
        // A new sequence shares a's first two blocks (the prefix 1 2 3 4) and
        // prefills only its own end into a block of its own; a keeps decoding.
        let shared: [u32; 3] = [7, 0, 4];
        let h = m
            .hidden_paged(
                &[
                    PagedRow { blocks: &ta, start: 6, tokens: &[0] },
                    PagedRow { blocks: &tc, start: 4, tokens: &[2] },
                    PagedRow { blocks: &shared, start: 4, tokens: &[8, 8] },
                ],
                &mut cache,
            )
            .unwrap();
        assert!(h.get(0).allclose(&last_hidden(&m, &[1, 2, 3, 4, 5, 10, 0]), 1e-5, 1e-5, false));
        assert!(h.get(1).allclose(&last_hidden(&m, &[9, 8, 7, 6, 2]), 1e-5, 1e-5, false));
        assert!(h.get(2).allclose(&last_hidden(&m, &[1, 2, 3, 4, 8, 8]), 1e-5, 1e-5, false));
        // A table too short, a block outside the cache, and the context are errors.
        let err = m.hidden_paged(&[PagedRow { blocks: &[1], start: 1, tokens: &[1, 2] }], &mut cache).unwrap_err();
        assert!(err.to_string().contains("need 2 blocks of 2"), "{err}");
        let err = m.hidden_paged(&[PagedRow { blocks: &[12], start: 0, tokens: &[1] }], &mut cache).unwrap_err();
        assert!(err.to_string().contains("block 12 of a cache of 12"), "{err}");
        let long: Vec<u32> = (0..12).collect();
        let err = m.hidden_paged(&[PagedRow { blocks: &long, start: 15, tokens: &[1, 2] }], &mut cache).unwrap_err();
        assert!(err.to_string().contains("context of 16"), "{err}");
    }
}
