//! Time to a target validation loss (`scripts/bench speedrun`): forja trains a
//! recipe — the `pretrain` stage parameters of a pipeline file, with `--set`
//! overrides for the ablations — until its validation loss first reaches a
//! target, evaluated exactly as the PyTorch peer (`scripts/peers/nanogpt_speedrun.py`)
//! does it, on the same tokens at the same interval.
//!
//! `prepare` writes the data both sides read: `train.bin` and `val.bin` (token
//! ids, int32 little-endian) and `meta.json`. Characters as nanoGPT's
//! `prepare.py` (vocabulary = the sorted characters of the whole text, first
//! 90% train, last 10% val), or a byte-level BPE trained on the training
//! documents of a JSONL file (`--bpe VOCAB`; first 90% of the documents train,
//! each document followed by `<|endoftext|>`).
//!
//! `train` draws training windows through the engine's own step
//! ([`forja_train::Engine::train_step`], as the `pretrain` stage) and, every
//! `--eval-interval` steps, scores every non-overlapping window of the
//! validation ids (start 0, block, 2·block, …; mean cross-entropy of all
//! positions). The clock counts training steps only, not evaluation. Prints one
//! JSON line: `{"peer": "forja", "seconds_to_target", "steps_to_target",
//! "final_val", "evals": [[step, seconds, val], …], "params", "threads"}`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use forja_core::stage::StageCtx;
use forja_model::checkpoint::write_model_files;
use forja_model::Gpt;
use forja_pretrain::objectives::{CausalLm, Streams};
use forja_pretrain::PretrainConfig;
use forja_train::batches::TokenStream;
use forja_train::{Engine, ParamGroup, RunSpec, StepOutcome};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Tensor};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes DIR/train.bin, DIR/val.bin and DIR/meta.json.
    Prepare(PrepareArgs),
    /// Trains a recipe until its validation loss reaches the target.
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// A text file (characters), or with `--bpe` a JSONL file of `{"text": …}` lines.
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Byte-level BPE of this vocabulary size (0: characters).
    #[arg(long, default_value_t = 0)]
    bpe: usize,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Folder written by `prepare`.
    #[arg(long)]
    data: PathBuf,
    /// Pipeline file holding the recipe.
    #[arg(long)]
    recipe: PathBuf,
    /// The pretrain stage of the recipe file.
    #[arg(long, default_value = "pretrain")]
    stage: String,
    /// Overrides of the stage's parameters: `model.qk_norm=false`, `train.optim.kind="adamw"`.
    #[arg(long = "set")]
    sets: Vec<String>,
    #[arg(long)]
    target: f64,
    #[arg(long, default_value_t = 50)]
    eval_interval: u64,
    /// Steps at most (the recipe's `max_steps` is its schedule's length; after
    /// it the rate stays at `min_lr`).
    #[arg(long, default_value_t = 5000)]
    max_steps: u64,
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Prepare(a) => prepare(&a),
        Cmd::Train(a) => train(&a),
    }
}

fn write_ids(path: &Path, ids: &[u32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = ids.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_ids(path: &Path) -> anyhow::Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(bytes.len() % 4 == 0, "{}: {} bytes is not a whole number of int32 ids", path.display(), bytes.len());
    Ok(bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
}

fn prepare(a: &PrepareArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let raw = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let (train, val, vocab, kind) = if a.bpe == 0 {
        // nanoGPT's prepare.py: the sorted characters of the whole text; 90/10.
        let chars: std::collections::BTreeSet<char> = raw.chars().collect();
        let index: std::collections::HashMap<char, u32> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        let ids: Vec<u32> = raw.chars().map(|c| index[&c]).collect();
        let cut = ids.len() * 9 / 10;
        (ids[..cut].to_vec(), ids[cut..].to_vec(), chars.len(), "char")
    } else {
        let mut docs = Vec::new();
        for (i, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", a.input.display(), i + 1))?;
            let text = v["text"].as_str().with_context(|| format!("{}:{}: no \"text\" string", a.input.display(), i + 1))?;
            docs.push(text.to_string());
        }
        let cut = docs.len() * 9 / 10;
        let cfg = forja_tokenizer::TokenizerConfig { vocab_size: a.bpe, ..Default::default() };
        let tok = forja_tokenizer::train(docs[..cut].iter().map(String::as_str), &cfg)?;
        let eot = tok.token_to_id(forja_tokenizer::EOT).context("the BPE has no <|endoftext|>")?;
        let encode = |docs: &[String]| -> anyhow::Result<Vec<u32>> {
            let mut ids = Vec::new();
            for d in docs {
                ids.extend(tok.encode(d)?);
                ids.push(eot);
            }
            Ok(ids)
        };
        tok.save(&a.out.join("tokenizer.json"))?;
        (encode(&docs[..cut])?, encode(&docs[cut..])?, tok.vocab_size(), "bpe")
    };
    write_ids(&a.out.join("train.bin"), &train)?;
    write_ids(&a.out.join("val.bin"), &val)?;
    let meta = serde_json::json!({"kind": kind, "vocab_size": vocab, "train_tokens": train.len(), "val_tokens": val.len()});
    std::fs::write(a.out.join("meta.json"), meta.to_string())?;
    eprintln!("prepare: {kind}, vocabulary {vocab}, {} train and {} val tokens → {}", train.len(), val.len(), a.out.display());
    Ok(())
}

/// The recipe: the `params` of stage `stage` of a pipeline file, overridden.
fn recipe(a: &TrainArgs) -> anyhow::Result<PretrainConfig> {
    let text = std::fs::read_to_string(&a.recipe).with_context(|| format!("reading {}", a.recipe.display()))?;
    let file: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not TOML", a.recipe.display()))?;
    let stages = file.get("stage").and_then(|s| s.as_array()).context("no [[stage]] tables")?;
    let stage = stages
        .iter()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(&a.stage))
        .with_context(|| format!("{}: no stage named `{}`", a.recipe.display(), a.stage))?;
    // The stage's parameters, then the overrides as `forja stage --set` reads them.
    let mut params = serde_json::to_value(stage.get("params").cloned().unwrap_or(toml::Value::Table(Default::default())))?;
    for s in &a.sets {
        forja_core::stage::set_param(&mut params, s).with_context(|| format!("--set `{s}`"))?;
    }
    serde_json::from_value(params).with_context(|| format!("{} stage `{}` (with {:?})", a.recipe.display(), a.stage, a.sets))
}

/// Mean cross-entropy over every non-overlapping window of `val` (which holds
/// at least one: `block + 1` tokens).
fn evaluate(model: &Gpt, val: &Tensor, block: i64) -> anyhow::Result<f64> {
    let _guard = tch::no_grad_guard();
    let n = (val.size()[0] - 1) / block;
    let (mut total, mut count) = (0.0, 0i64);
    let mut start = 0;
    while start < n {
        let b = (n - start).min(256);
        let x = val.narrow(0, start * block, b * block).view([b, block]);
        let y = val.narrow(0, start * block + 1, b * block).view([b, block]); // each window's next tokens
        let loss = forja_model::lm::cross_entropy(&model.forward(&x, false, None)?, &y).double_value(&[]);
        total += loss * (b * block) as f64;
        count += b * block;
        start += b;
    }
    Ok(total / count as f64)
}

fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let cfg = recipe(a)?;
    let _threads = forja_train::ThreadsGuard::set(a.threads);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.data.join("meta.json"))?)?;
    let vocab = meta["vocab_size"].as_i64().context("meta.json: no vocab_size")?;
    let (train_ids, val_ids) = (read_ids(&a.data.join("train.bin"))?, read_ids(&a.data.join("val.bin"))?);
    let block = cfg.model.block_size;
    anyhow::ensure!(
        val_ids.len() as i64 > block,
        "{}: {} validation tokens, fewer than one window of {} + 1",
        a.data.join("val.bin").display(),
        val_ids.len(),
        block
    );
    tch::manual_seed(a.seed as i64);
    let device = tch::Device::Cpu;
    let model_cfg = forja_model::GptConfig { vocab_size: vocab, ..cfg.model.clone() };
    let mut vs = nn::VarStore::new(device);
    let mut model = Gpt::new(&vs.root(), &model_cfg)?;
    model.precision = cfg.train.precision;
    let data = Streams {
        train: TokenStream::from_ids(&train_ids, device)?,
        val: TokenStream::from_ids(&val_ids, device)?,
        batch_size: cfg.train.batch_size as i64,
        block,
        grad_accum: cfg.train.grad_accum,
        seed: a.seed,
    };
    let tokenizer = forja_tokenizer::char_tokenizer(std::iter::once("ab"), &[])?;
    let write: forja_train::ModelWriter = Box::new(|vs, dir| write_model_files(dir, vs, &model_cfg, &tokenizer));
    let mut obj = CausalLm { model: &model, data, write };
    let ecfg = cfg.train.engine(cfg.train.max_steps.max(1), 1);
    let groups = ParamGroup::decay_split(&vs, ecfg.optim.weight_decay);
    let ctx = StageCtx { name: "speedrun".into(), seed: a.seed, device: "cpu".into(), config_hash: String::new(), code_hash: "" };
    let scratch = std::env::temp_dir();
    let mut engine = Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: a.seed, run_key: String::new(), ctx: &ctx, out_dir: &scratch })?;
    let val = Tensor::from_slice(&val_ids);
    let (mut clock, mut evals, mut reached) = (0.0, Vec::new(), None);
    for step in 0..a.max_steps {
        let t0 = Instant::now();
        let lr = engine.lr_at(step);
        let outcome = engine.train_step(&mut obj, step, lr, false)?;
        clock += t0.elapsed().as_secs_f64();
        if let StepOutcome::Divergent { kind, .. } = outcome {
            anyhow::bail!("step {}: {kind:?}", step + 1);
        }
        let done = step + 1;
        if done % a.eval_interval == 0 || done == a.max_steps {
            let v = evaluate(&model, &val, block)?;
            eprintln!("step {done}: val {v:.4} after {clock:.1} s of training");
            evals.push(serde_json::json!([done, clock, v]));
            if v <= a.target {
                reached = Some((clock, done));
                break;
            }
        }
    }
    let final_val = evals.last().and_then(|e| e[2].as_f64()).unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "peer": "forja", "threads": tch::get_num_threads(), "params": model_cfg.n_params(),
            "seconds_to_target": reached.map(|r| r.0), "steps_to_target": reached.map(|r| r.1),
            "final_val": final_val, "evals": evals, "recipe": a.sets,
        })
    );
    Ok(())
}
