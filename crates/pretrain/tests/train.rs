#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja_core::artifacts::Artifact;
use forja_core::stage::{OutDir, StageCtx};
use forja_core::{MetricRow, TokenRow};
use forja_model::{Arch, GptConfig};
use forja_pretrain::{Architecture, PretrainConfig, PretrainInputs};
use forja_tokenizer::char_tokenizer;
use forja_train::batches::TokenStream;
use forja_train::TrainerConfig;
use forja_train::{OptimConfig, OptimKind, Schedule, TrainSummary};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// libtorch's RNG is global to the process: tests that seed it run one at a time.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn ctx() -> StageCtx {
    StageCtx { name: "pretrain".into(), seed: 3, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" }
}

/// Tokenizer and train/val token files from the first 30 kB of Tiny Shakespeare.
fn fixture(dir: &Path) -> PretrainInputs {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tinyshakespeare/input.txt");
    let text = std::fs::read_to_string(p).unwrap()[..30_000].to_string();
    let tok = char_tokenizer(std::iter::once(text.as_str()), &[]).unwrap();
    let (train, val) = text.split_at(27_000);
    let write = |name: &str, t: &str| {
        let path = dir.join(name);
        TokenRow::write(&path, "tokenize", "t", &[TokenRow { doc_id: name.into(), ids: tok.encode(t).unwrap() }]).unwrap();
        path
    };
    tok.save(&dir.join("tokenizer.json")).unwrap();
    PretrainInputs { tokenizer: dir.join("tokenizer.json"), train: write("train.arrow", train), val: write("val.arrow", val), init: None }
}

fn tiny_cfg() -> PretrainConfig {
    PretrainConfig {
        model: GptConfig { block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, ..Default::default() },
        train: TrainerConfig {
            optim: OptimConfig { lr: 3e-3, warmup_steps: 2, ..Default::default() },
            batch_size: 4,
            grad_accum: 2,
            max_steps: 9,
            eval_interval: 4,
            eval_iters: 2,
            checkpoint_interval: 3,
            log_interval: 2,
            threads: 1,
            ..PretrainConfig::default().train
        },
        ..Default::default()
    }
}

/// The tiny model as a Llama (grouped-query) trained by Muon on a WSD schedule.
fn llama_muon_cfg() -> PretrainConfig {
    let t = tiny_cfg();
    PretrainConfig {
        model: GptConfig { arch: Arch::Llama, n_kv_head: 1, ..t.model },
        train: TrainerConfig { optim: OptimConfig { kind: OptimKind::Muon, schedule: Schedule::Wsd, ..t.train.optim }, ..t.train },
        ..t
    }
}

fn run(cfg: &PretrainConfig, inputs: &PretrainInputs, out: &Path, ctx: &StageCtx) -> anyhow::Result<TrainSummary> {
    forja_pretrain::run(cfg, inputs, &OutDir::new(out), ctx)
}

fn run_with_hook(
    cfg: &PretrainConfig,
    inputs: &PretrainInputs,
    out: &Path,
    ctx: &StageCtx,
    hook: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> anyhow::Result<TrainSummary> {
    forja_pretrain::run_with_hook(cfg, inputs, &OutDir::new(out), ctx, hook)
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("model/model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    // GPT-2 with AdamW; a Llama with Muon, its momentum in the checkpoint.
    for cfg in [tiny_cfg(), llama_muon_cfg()] {
        let straight = tempfile::tempdir().unwrap();
        let s = run(&cfg, &inputs, straight.path(), &ctx()).unwrap();
        assert_eq!((s.steps, s.resumed_from), (9, None));

        // Killed after step 5: the last checkpoint is step 3, steps 4-5 are lost and redone.
        let crashed = tempfile::tempdir().unwrap();
        let err = run_with_hook(&cfg, &inputs, crashed.path(), &ctx(), &mut |step| {
            if step == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("stopped by hook after step 5"));
        assert!(!crashed.path().join("model").exists(), "no final model from a crashed run");
        let r = run(&cfg, &inputs, crashed.path(), &ctx()).unwrap();
        assert_eq!((r.steps, r.resumed_from), (9, Some(3)));

        let (a, b) = (weights(straight.path()), weights(crashed.path()));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na} differs after resume");
        }
        let ma = MetricRow::read(&straight.path().join("metrics.arrow")).unwrap();
        let mb = MetricRow::read(&crashed.path().join("metrics.arrow")).unwrap();
        let losses = |m: &[MetricRow]| m.iter().filter(|r| r.name == "batch_loss").map(|r| (r.step, r.value)).collect::<Vec<_>>();
        assert_eq!(losses(&ma), losses(&mb), "the metrics history is whole and identical");
        assert!(ma.iter().any(|r| r.name == "loss" && r.split == "val" && r.step == 9));
    }
}

#[test]
fn a_checkpoint_of_another_configuration_is_not_resumed() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let out = tempfile::tempdir().unwrap();
    run(&tiny_cfg(), &inputs, out.path(), &ctx()).unwrap();
    let other = PretrainConfig {
        train: TrainerConfig { optim: OptimConfig { lr: 1e-3, ..tiny_cfg().train.optim }, ..tiny_cfg().train },
        ..tiny_cfg()
    };
    let s = run(&other, &inputs, out.path(), &ctx()).unwrap();
    assert_eq!(s.resumed_from, None);
}

#[test]
fn continued_pretraining_starts_from_the_init_model() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let first = tempfile::tempdir().unwrap();
    let a = run(&tiny_cfg(), &inputs, first.path(), &ctx()).unwrap();
    let second = tempfile::tempdir().unwrap();
    let cont = PretrainInputs { init: Some(first.path().join("model")), ..inputs.clone() };
    let cfg = PretrainConfig { train: TrainerConfig { max_steps: 4, ..tiny_cfg().train }, ..tiny_cfg() };
    let b = run(&cfg, &cont, second.path(), &ctx()).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let c = run(&cfg, &inputs, fresh.path(), &ctx()).unwrap();
    assert!(
        b.final_val_loss < c.final_val_loss,
        "continued {} vs fresh {} (first run ended at {})",
        b.final_val_loss,
        c.final_val_loss,
        a.final_val_loss
    );
}

#[test]
fn token_ids_beyond_the_vocabulary_are_refused_with_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.arrow");
    TokenRow::write(&path, "t", "t", &[TokenRow { doc_id: "d0".into(), ids: vec![1, 2, 99] }]).unwrap();
    let err = TokenStream::load(&path, 50, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("bad.arrow") && err.contains("doc d0") && err.contains("token id 99 >= vocab_size 50"), "{err}");
}

/// The real thing: the stage binary is SIGKILLed once its first checkpoint exists,
/// started again, and must end with the weights of an uninterrupted run.
#[test]
fn a_killed_process_resumes_to_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let run_bin = |out: &Path| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_forja-pretrain"));
        cmd.arg("pretrain")
            .arg("--input")
            .arg(format!("tokenizer={}", inputs.tokenizer.display()))
            .arg("--input")
            .arg(format!("train={}", inputs.train.display()))
            .arg("--input")
            .arg(format!("val={}", inputs.val.display()))
            .args(["--set", "model={\"block_size\":16,\"n_layer\":1,\"n_head\":2,\"n_embd\":16}"])
            .args(["--set", "train.max_steps=60", "--set", "train.checkpoint_interval=5", "--set", "train.eval_interval=20"])
            .args(["--set", "train.eval_iters=2", "--set", "train.batch_size=4", "--set", "train.threads=1", "--seed", "11"])
            .arg("--out")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let straight = tempfile::tempdir().unwrap();
    assert!(run_bin(straight.path()).status().unwrap().success());

    let killed = tempfile::tempdir().unwrap();
    let mut child = run_bin(killed.path()).spawn().unwrap();
    let state = killed.path().join("checkpoint/trainer_state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !state.exists() && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap_or(()); // SIGKILL; it may have finished already
    child.wait().unwrap();
    assert!(run_bin(killed.path()).status().unwrap().success());

    let (a, b) = (weights(straight.path()), weights(killed.path()));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{na} differs after kill and resume");
    }
}

#[test]
fn early_stopping_ends_the_run_when_validation_stops_improving() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    // lr = 0: the weights never change, so validation never improves on its first value.
    let cfg = PretrainConfig {
        train: TrainerConfig {
            optim: OptimConfig { lr: 0.0, min_lr: 0.0, ..tiny_cfg().train.optim },
            max_steps: 20,
            eval_interval: 4,
            early_stopping_patience: 2,
            ..tiny_cfg().train
        },
        ..tiny_cfg()
    };
    let out = tempfile::tempdir().unwrap();
    let s = run(&cfg, &inputs, out.path(), &ctx()).unwrap();
    assert!(s.early_stopped);
    assert_eq!(s.steps, 12, "evaluations at 4 (best), 8 and 12 (two without improvement)");
    assert!(out.path().join("model/model.safetensors").exists());
    assert_eq!(s.best_step, Some(4), "the first validation stays the best");
    let vals = MetricRow::read(&out.path().join("metrics.arrow")).unwrap();
    assert_eq!(vals.iter().filter(|m| m.name == "loss" && m.split == "val").count(), 3);

    // Run again on the same folder: the checkpoint says it stopped, so it stays stopped.
    let again = run(&cfg, &inputs, out.path(), &ctx()).unwrap();
    assert_eq!((again.steps, again.resumed_from, again.early_stopped), (12, Some(12), true));
}

fn val_losses(dir: &Path) -> Vec<f64> {
    let m = MetricRow::read(&dir.join("metrics.arrow")).unwrap();
    m.iter().filter(|r| r.name == "loss" && r.split == "val").map(|r| r.value).collect()
}

/// A periodic text ("abcdefghij" repeated) with BERT's special tokens.
fn periodic_fixture(dir: &Path) -> PretrainInputs {
    let text = "abcdefghij".repeat(600);
    let specials = ["[CLS]".to_string(), "[SEP]".to_string(), "[MASK]".to_string()];
    let tok = char_tokenizer(std::iter::once(text.as_str()), &specials).unwrap();
    let write = |name: &str| {
        let path = dir.join(name);
        TokenRow::write(&path, "tokenize", "t", &[TokenRow { doc_id: name.into(), ids: tok.encode(&text).unwrap() }]).unwrap();
        path
    };
    tok.save(&dir.join("tokenizer.json")).unwrap();
    PretrainInputs { tokenizer: dir.join("tokenizer.json"), train: write("train.arrow"), val: write("val.arrow"), init: None }
}

#[test]
fn a_resumed_masked_lm_run_with_dropout_ends_with_the_weights_of_an_uninterrupted_one() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = periodic_fixture(data.path());
    let cfg = PretrainConfig {
        architecture: Architecture::Bert,
        model: GptConfig { block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.1, ..Default::default() },
        train: TrainerConfig {
            batch_size: 4,
            grad_accum: 2,
            max_steps: 8,
            eval_interval: 4,
            eval_iters: 2,
            checkpoint_interval: 3,
            threads: 1,
            ..PretrainConfig::default().train
        },
        ..Default::default()
    };
    let straight = tempfile::tempdir().unwrap();
    run(&cfg, &inputs, straight.path(), &ctx()).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let stop_at_5 = &mut |step: u64| if step == 5 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) };
    assert!(run_with_hook(&cfg, &inputs, crashed.path(), &ctx(), stop_at_5).is_err());
    let r = run(&cfg, &inputs, crashed.path(), &ctx()).unwrap();
    assert_eq!(r.resumed_from, Some(3));
    for ((na, ta), (_, tb)) in weights(straight.path()).iter().zip(&weights(crashed.path())) {
        assert!(ta.equal(tb), "{na} differs after resume (masks and dropout must come from (seed, step))");
    }
}

#[test]
fn masked_lm_trains_a_bert_that_loads_by_its_model_type() {
    let _serial = serial();
    // A masked character of a periodic text is fixed by its neighbours: a BERT
    // that attends both ways learns to fill it in (after the plateau at the
    // unigram loss, ln 10 ≈ 2.3, that BERTs from scratch go through: Hugging
    // Face's BertForMaskedLM on the same task leaves it at about the same step).
    let data = tempfile::tempdir().unwrap();
    let inputs = periodic_fixture(data.path());
    let cfg = PretrainConfig {
        architecture: Architecture::Bert,
        model: GptConfig { block_size: 24, n_layer: 2, n_head: 2, n_embd: 32, ..Default::default() },
        train: TrainerConfig {
            optim: OptimConfig { lr: 3e-3, warmup_steps: 10, ..Default::default() },
            batch_size: 16,
            max_steps: 500,
            eval_interval: 250,
            eval_iters: 4,
            threads: 1,
            ..PretrainConfig::default().train
        },
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let s = run(&cfg, &inputs, out.path(), &ctx()).unwrap();
    let v = val_losses(out.path());
    let m = MetricRow::read(&out.path().join("metrics.arrow")).unwrap();
    let acc: Vec<f64> = m.iter().filter(|r| r.name == "mlm_accuracy" && r.split == "val").map(|r| r.value).collect();
    eprintln!("masked-LM val losses {v:?}, masked-token accuracy {acc:?}");
    assert!(v[1] < 0.5, "masked-LM validation loss far below the unigram 2.3: {v:?}");
    assert!(acc[1] > 0.9, "masked tokens are filled in from both sides: {acc:?}");
    assert_eq!(s.steps, 500);
    let loaded = forja_model::load_model(&out.path().join("model"), Device::Cpu).unwrap();
    assert_eq!(loaded.model.model_type(), "bert");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("model/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    // Without a mask token, masked-LM is refused with the reason.
    let plain = tempfile::tempdir().unwrap();
    let err = run(&cfg, &fixture(plain.path()), tempfile::tempdir().unwrap().path(), &ctx()).unwrap_err().to_string();
    assert!(err.contains("mask token"), "{err}");
}

#[test]
fn masking_follows_the_80_10_10_recipe_and_never_masks_specials() {
    use forja_pretrain::objectives::{mask_batch, MlmConfig, MlmTokens};
    let tok = MlmTokens { mask: 99, cls: Some(97), sep: Some(98), vocab_size: 90 };
    let rows: Vec<Vec<i64>> =
        (0..200).map(|r| std::iter::once(97).chain((0..48).map(|c| (r + c) % 90)).chain(std::iter::once(98)).collect()).collect();
    let (input, positions, labels) = mask_batch(&rows, &MlmConfig::default(), tok, 5, 0, 0);
    let total = (200 * 48) as f64;
    let frac = positions.len() as f64 / total;
    assert!((frac - 0.15).abs() < 0.02, "{frac}");
    let (mut masked, mut kept) = (0, 0);
    for (&p, &l) in positions.iter().zip(&labels) {
        let (r, c) = (p as usize / 50, p as usize % 50);
        assert!(c != 0 && c != 49, "special tokens are never chosen");
        assert_eq!(rows[r][c], l);
        match input[r][c] {
            99 => masked += 1,
            t if t == l => kept += 1,
            _ => {}
        }
    }
    let n = positions.len() as f64;
    assert!((masked as f64 / n - 0.8).abs() < 0.03, "{}", masked as f64 / n);
    assert!(kept as f64 / n > 0.08, "about 10% kept (plus random draws equal to the label)");
    let again = mask_batch(&rows, &MlmConfig::default(), tok, 5, 0, 0);
    assert_eq!(again.1, positions, "a pure function of (seed, stream, index)");
}

#[test]
fn an_lstm_trains_through_the_same_engine_and_evaluates() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let cfg = PretrainConfig {
        architecture: Architecture::Lstm,
        model: GptConfig { block_size: 32, n_layer: 1, n_embd: 48, ..Default::default() },
        train: TrainerConfig {
            optim: OptimConfig { lr: 2e-2, warmup_steps: 5, ..Default::default() },
            batch_size: 16,
            max_steps: 90,
            eval_interval: 30,
            ..tiny_cfg().train
        },
        ..tiny_cfg()
    };
    let out = tempfile::tempdir().unwrap();
    run(&cfg, &inputs, out.path(), &ctx()).unwrap();
    let v = val_losses(out.path());
    eprintln!("LSTM val losses {v:?}");
    assert!(v[2] < v[0] - 0.3, "LSTM validation loss falls: {v:?}");
    let eval_out = tempfile::tempdir().unwrap();
    let score = forja_eval::run(
        &forja_eval::EvalConfig { prompts: vec!["ROMEO:".into()], ..Default::default() },
        &forja_eval::EvalInputs { model: out.path().join("model"), split: inputs.val.clone(), questions: None },
        &OutDir::new(eval_out.path()),
        &ctx(),
    )
    .unwrap();
    assert!((score.loss - v[2]).abs() < 0.3, "eval over the whole split ({}) is near the estimate ({})", score.loss, v[2]);
}

#[test]
fn bf16_training_lowers_the_loss_with_float32_weights() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let cfg = PretrainConfig {
        train: TrainerConfig { precision: forja_model::Precision::Bf16, max_steps: 30, eval_interval: 15, ..tiny_cfg().train },
        ..tiny_cfg()
    };
    let out = tempfile::tempdir().unwrap();
    run(&cfg, &inputs, out.path(), &ctx()).unwrap();
    let v = val_losses(out.path());
    assert!(v[1] < v[0], "{v:?}");
    assert!(weights(out.path()).iter().all(|(_, t)| t.kind() == tch::Kind::Float), "weights stay float32");
}

#[test]
fn lora_only_training_moves_the_adapters_and_leaves_the_base_untouched() {
    use forja_core::stage::OutDir;
    use forja_model::checkpoint::write_model_files;
    use forja_model::{Gpt, LoraConfig};
    use forja_pretrain::objectives::{CausalLm, Streams};
    use forja_train::ModelWriter;
    use forja_train::{Engine, EngineConfig, ParamGroup, RunSpec};
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let inputs = fixture(data.path());
    let tok = forja_tokenizer::Tokenizer::load(&inputs.tokenizer).unwrap();
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, block_size: 16, n_layer: 2, n_head: 2, n_embd: 32, ..Default::default() };
    tch::manual_seed(0);
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["c_attn".into(), "c_fc".into()] };
    let model = Gpt::with_lora(&vs.root(), &cfg, Some(&lora)).unwrap();
    let base_before: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, _)| !n.contains("lora_")).map(|(n, t)| (n, t.copy())).collect();
    let groups = ParamGroup::train_only(&vs, |n| n.contains("lora_"), 0.0);
    let adapters: i64 = model.lora_params().iter().map(|(_, t)| t.numel() as i64).sum();
    let vars = vs.variables();
    assert!(!vars["transformer.wte.weight"].requires_grad(), "frozen base weights compute no gradient");
    assert!(vars["transformer.h.0.attn.c_attn.lora_A.weight"].requires_grad());
    let stream = || TokenStream::load(&inputs.train, cfg.vocab_size, Device::Cpu).unwrap();
    let write: ModelWriter = Box::new(|vs, dir| write_model_files(dir, vs, &cfg, &tok));
    let mut obj = CausalLm {
        model: &model,
        data: Streams { train: stream(), val: stream(), batch_size: 8, block: 16, grad_accum: 1, seed: 1 },
        write,
    };
    let ecfg = EngineConfig {
        optim: OptimConfig { lr: 1e-2, warmup_steps: 0, ..Default::default() },
        max_steps: 40,
        eval_interval: 20,
        eval_iters: 2,
        checkpoint_interval: 0,
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let ctx = ctx();
    let mut engine =
        Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: 1, run_key: "lora".into(), ctx: &ctx, out_dir: out.path() }).unwrap();
    assert_eq!(engine.trainable_params(), adapters, "only the adapters are trained");
    let outputs = forja_pretrain::pretrain::engine_outputs(&OutDir::new(out.path()));
    let s = engine.run(&mut obj, &outputs, &mut |_| ControlFlow::Continue(())).unwrap();
    let v = val_losses(out.path());
    assert!(v[1] < v[0], "{v:?}");
    assert_eq!(s.trainable_params, adapters);
    for (name, before) in &base_before {
        assert!(vs.variables()[name].equal(before), "{name} changed");
    }
    assert!(model.lora_params().iter().any(|(n, t)| n.ends_with("lora_B.weight") && t.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0));
}
