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
