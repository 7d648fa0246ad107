//! Alignment throughput, shaped like the peers (`scripts/peers/peer-dpo.py`: TRL's
//! `DPOTrainer`). Each step is the training engine's own
//! [`forja_train::Engine::train_step`] on the `dpo` stage's objective.
//!
//! - `prepare --out DIR`: a byte-level BPE (8192, `<|endoftext|>`) trained on
//!   the bundled HH-RLHF dialogues, a random GPT-2 with 4 layers, 4 heads,
//!   128 wide, 256 positions, and the first `--pairs` HH pairs whose prompt
//!   and longer answer (plus end token) fit 256 tokens, as plain text:
//!   `pairs.arrow` (preferences) and `pairs.jsonl` (`prompt`, `chosen`,
//!   `rejected`: the same strings, for TRL);
//! - `dpo --dir DIR`: DPO steps/s (sigmoid loss, β 0.1, batch 8 pairs); the
//!   reference log-probabilities are computed once before the timed steps, as
//!   TRL's `precompute_ref_log_probs`; prints one JSON line;
//! - `rollout --dir DIR`: PPO-style rollout generation (temperature 1, no
//!   top-k, 64 new tokens) of 16 prompts batched against one at a time,
//!   tokens/s; prints one JSON line.

use clap::{Parser, Subcommand};
use forja_core::artifacts::Artifact;
use forja_core::Preference;
use forja_model::generate::{generate_batch, SamplingConfig};
use forja_model::{checkpoint, Gpt, GptConfig};
use forja_rlhf::common::{self, encode_pairs};
use forja_rlhf::dpo::{pair_logps, Dpo, DpoConfig, RefPair};
use forja_rlhf::import::split_hh;
use forja_rlhf::text::Formatter;
use forja_train::bench::{ctx, engine_cfg, peak_rss_mb, time_steps, Timing};
use forja_train::TrainerConfig;
use forja_train::{Engine, OptimConfig, ParamGroup, RunSpec};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the benchmark's model folder and pairs.
    Prepare {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "fixtures/hh-rlhf/harmless-base-test-1000.jsonl")]
        hh: PathBuf,
        #[arg(long, default_value_t = 200)]
        pairs: usize,
    },
    /// DPO steps/s.
    Dpo {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: u64,
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
    /// Rollout tokens/s, batched and one prompt at a time.
    Rollout {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        prompts: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
}

const BLOCK: i64 = 256;

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Prepare { out, hh, pairs } => prepare(&out, &hh, pairs),
        Cmd::Dpo { dir, batch, steps, warmup, threads } => {
            let _threads = forja_train::ThreadsGuard::set(threads);
            bench_dpo(&dir, batch, Timing { steps, warmup })
        }
        Cmd::Rollout { dir, prompts, new_tokens, threads } => {
            let _threads = forja_train::ThreadsGuard::set(threads);
            bench_rollout(&dir, prompts, new_tokens)
        }
    }
}

fn prepare(out: &Path, hh: &Path, n: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(hh)?;
    let records: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let corpus: Vec<String> = records.iter().filter_map(|r| r["chosen"].as_str().map(str::to_string)).collect();
    let tok_cfg =
        forja_tokenizer::TokenizerConfig { vocab_size: 8192, special_tokens: vec![forja_tokenizer::EOT.to_string()], ..Default::default() };
    let tok = forja_tokenizer::train(corpus.iter().map(String::as_str), &tok_cfg)?;
    let cfg = GptConfig {
        vocab_size: tok.vocab_size() as i64,
        block_size: BLOCK,
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        dropout: 0.1,
        ..Default::default()
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg)?;
    let model_dir = out.join("model");
    std::fs::create_dir_all(&model_dir)?;
    checkpoint::write_model_files(&model_dir, &vs, &cfg, &tok)?;
    let fmt = Formatter::for_model(&model_dir)?;
    let (mut prefs, mut jsonl) = (Vec::new(), String::new());
    for r in &records {
        let (Some(c), Some(rj)) = (r["chosen"].as_str(), r["rejected"].as_str()) else { continue };
        let Ok((prompt, chosen, rejected)) = split_hh(c, rj) else { continue };
        let (chosen, rejected) = (format!(" {chosen}"), format!(" {rejected}"));
        let p = fmt.prompt_ids(&prompt)?.len();
        let longest = fmt.answer_ids(&prompt, &chosen)?.len().max(fmt.answer_ids(&prompt, &rejected)?.len());
        if p + longest > BLOCK as usize || chosen == rejected {
            continue;
        }
        jsonl += &serde_json::json!({ "prompt": prompt, "chosen": chosen, "rejected": rejected }).to_string();
        jsonl.push('\n');
        prefs.push(Preference { prompt, chosen, rejected, annotator: "hh-rlhf".into(), source: hh.display().to_string() });
        if prefs.len() == n {
            break;
        }
    }
    Preference::write(&out.join("pairs.arrow"), "bench", "", &prefs)?;
    std::fs::write(out.join("pairs.jsonl"), jsonl)?;
    eprintln!("prepare: {} pairs of at most {BLOCK} tokens, vocab {}, {} parameters", prefs.len(), cfg.vocab_size, cfg.n_params());
    Ok(())
}

fn bench_dpo(dir: &Path, batch: usize, t: Timing) -> anyhow::Result<()> {
    let model_dir = dir.join("model");
    let cfg = DpoConfig { train: TrainerConfig { batch_size: batch, ..DpoConfig::default().train }, ..Default::default() };
    let policy = common::load_policy(&model_dir, Device::Cpu, None, cfg.dropout, cfg.train.precision)?;
    let mut vs = policy.vs;
    let pairs_file = dir.join("pairs.arrow");
    let mut rejects = Vec::new();
    let (pairs, _) = encode_pairs(&policy.fmt, &Preference::read(&pairs_file)?, BLOCK as usize, &pairs_file, &mut rejects);
    let started = Instant::now();
    let reference = pair_logps(&policy.model, &pairs, batch)?;
    let reference_s = started.elapsed().as_secs_f64();
    let train: Vec<RefPair> = pairs
        .into_iter()
        .zip(reference)
        .map(|(pair, r)| RefPair { pair, ref_chosen: r.chosen_logp, ref_rejected: r.rejected_logp })
        .collect();
    let n = train.len();
    let optim = OptimConfig { lr: 1e-4, weight_decay: 0.0, grad_clip: 1.0, warmup_steps: 0, ..Default::default() };
    let groups = ParamGroup::decay_split(&vs, 0.0);
    let write: forja_train::ModelWriter = Box::new(|_, _| Ok(()));
    let mut obj = Dpo::new(&policy.model, &cfg, train, Vec::new(), 0, write);
    let ecfg = engine_cfg(optim, t);
    let ctx = ctx();
    let scratch = std::env::temp_dir();
    let mut engine = Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: 0, run_key: String::new(), ctx: &ctx, out_dir: &scratch })?;
    let steps_per_s = time_steps(&mut engine, &mut obj, t, ecfg.optim.lr)?;
    println!(
        "{}",
        serde_json::json!({
            "peer": "forja", "pairs": n, "threads": tch::get_num_threads(), "steps_per_s": steps_per_s,
            "reference_s": reference_s, "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

fn bench_rollout(dir: &Path, n: usize, new_tokens: usize) -> anyhow::Result<()> {
    let model_dir = dir.join("model");
    let policy = common::load_policy(&model_dir, Device::Cpu, None, Some(0.0), forja_model::Precision::F32)?;
    let prefs = Preference::read(&dir.join("pairs.arrow"))?;
    let prompts: Vec<Vec<u32>> = prefs
        .iter()
        .take(n)
        .map(|p| Ok(forja_rlhf::text::last_tokens(policy.fmt.prompt_ids(&p.prompt)?, BLOCK as usize - new_tokens)))
        .collect::<anyhow::Result<_>>()?;
    // Fixed-length answers (no stop token), so both sides generate the same number of tokens.
    let sampling = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, max_new_tokens: new_tokens, seed: 0 };
    let _ = generate_batch(&policy.model, &prompts[..1], &[], &sampling)?; // warm-up
    let t0 = Instant::now();
    let batched: usize = generate_batch(&policy.model, &prompts, &[], &sampling)?.iter().map(|g| g.tokens.len()).sum();
    let batched_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut single = 0;
    for p in &prompts {
        single += generate_batch(&policy.model, std::slice::from_ref(p), &[], &sampling)?.iter().map(|g| g.tokens.len()).sum::<usize>();
    }
    let single_s = t1.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "prompts": prompts.len(), "new_tokens": new_tokens, "threads": tch::get_num_threads(),
            "batched_tokens_per_s": batched as f64 / batched_s, "batch1_tokens_per_s": single as f64 / single_s,
        })
    );
    Ok(())
}
