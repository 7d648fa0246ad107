//! Fine-tuning throughput of forja's objectives, shaped like their peers
//! (`scripts/peers/peer-sft.py`: TRL's `SFTTrainer`; `scripts/peers/peer-classifier.py`: a
//! plain PyTorch/transformers loop). Each step is the training engine's own
//! [`forja_train::Engine::train_step`], the one the stages run.
//!
//! - `prepare --out DIR`: a byte-level BPE (4096, with ChatML tokens) trained on
//!   GSM8K, a random 4-layer, 128-wide GPT-2 (dropout 0.1, as `transformers`'
//!   default), and the first GSM8K training problems that fit the context as
//!   conversations (`examples.arrow`) and as TRL's prompt/completion JSONL
//!   (`data.jsonl`, the same text);
//! - `sft --dir DIR`: instruction SFT steps/s, padded (TRL's default) or packed,
//!   full or LoRA; prints one JSON line with steps/s, examples/s, trainable
//!   parameters and peak resident memory;
//! - `classifier --model DIR --train CSV`: MiniLM + head steps/s on Banking77.

use clap::{Parser, Subcommand};
use forja_core::artifacts::Artifact;
use forja_core::{Message, SftExample};
use forja_model::bert::encode_for_bert;
use forja_model::chat::{self, ChatTemplate, IM_END, IM_START};
use forja_model::classifier::{BertClassifier, ClassifierConfig};
use forja_model::{checkpoint, Gpt, GptConfig, LoraConfig};
use forja_sft::classify::{Classify, Example};
use forja_sft::instruct::{build_rows, prepare, Instruct, SftConfig};
use forja_train::batches::EpochBatches;
use forja_train::bench::{ctx as bench_ctx, engine_cfg, peak_rss_mb, time_steps, Timing};
use forja_train::TrainerConfig;
use forja_train::{Engine, OptimConfig, ParamGroup, RunSpec};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the benchmark's model folder and data.
    Prepare {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "fixtures/gsm8k/train.jsonl")]
        gsm8k: PathBuf,
        #[arg(long, default_value_t = 2000)]
        examples: usize,
        #[arg(long, default_value_t = 256)]
        block: i64,
    },
    /// Instruction-SFT steps/s.
    Sft {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 30)]
        steps: u64,
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long)]
        packing: bool,
        /// LoRA rank (0: full fine-tuning); adapters on c_attn, c_proj, c_fc.
        #[arg(long, default_value_t = 0)]
        lora: i64,
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
    /// Classifier fine-tuning steps/s.
    Classifier {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        train: PathBuf,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        max_length: usize,
        #[arg(long, default_value_t = 30)]
        steps: u64,
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Prepare { out, gsm8k, examples, block } => prepare_bench(&out, &gsm8k, examples, block),
        Cmd::Sft { dir, batch, steps, warmup, packing, lora, threads } => {
            let _threads = forja_train::ThreadsGuard::set(threads);
            bench_sft(&dir, batch, Timing { steps, warmup }, packing, lora)
        }
        Cmd::Classifier { model, train, batch, max_length, steps, warmup, threads } => {
            let _threads = forja_train::ThreadsGuard::set(threads);
            bench_classifier(&model, &train, batch, max_length, Timing { steps, warmup })
        }
    }
}

fn gsm8k_pairs(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let field = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("{}: no `{k}`", path.display()));
            Ok((field("question")?, field("answer")?))
        })
        .collect()
}

fn prepare_bench(out: &Path, gsm8k: &Path, n: usize, block: i64) -> anyhow::Result<()> {
    let pairs = gsm8k_pairs(gsm8k)?;
    let corpus: Vec<String> = pairs.iter().map(|(q, a)| format!("{q}\n{a}")).collect();
    let specials = vec![forja_tokenizer::EOT.to_string(), IM_START.to_string(), IM_END.to_string()];
    let tok_cfg = forja_tokenizer::TokenizerConfig { vocab_size: 4096, special_tokens: specials, ..Default::default() };
    let tok = forja_tokenizer::train(corpus.iter().map(String::as_str), &tok_cfg)?;
    let template = ChatTemplate::chatml();
    let (mut examples, mut jsonl) = (Vec::new(), String::new());
    for (i, (q, a)) in pairs.iter().enumerate() {
        let messages = vec![Message { role: "user".into(), content: q.clone() }, Message { role: "assistant".into(), content: a.clone() }];
        if template.encode(&tok, &messages)?.ids.len() > block as usize + 1 {
            continue;
        }
        let prompt = template.render(&messages[..1], true)?;
        let completion = template.render(&messages, false)?[prompt.len()..].to_string();
        jsonl += &serde_json::json!({ "prompt": prompt, "completion": completion }).to_string();
        jsonl.push('\n');
        examples.push(SftExample { id: format!("gsm8k{i}"), messages, source: format!("{}:{}", gsm8k.display(), i + 1) });
        if examples.len() == n {
            break;
        }
    }
    let cfg = GptConfig {
        vocab_size: tok.vocab_size() as i64,
        block_size: block,
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
    chat::write_tokenizer_config(&model_dir, &template, block)?;
    SftExample::write(&out.join("examples.arrow"), "bench", "", &examples)?;
    std::fs::write(out.join("data.jsonl"), jsonl)?;
    eprintln!(
        "prepare: {} examples of at most {} tokens, vocab {}, {} parameters",
        examples.len(),
        block + 1,
        cfg.vocab_size,
        cfg.n_params()
    );
    Ok(())
}

fn bench_sft(dir: &Path, batch: usize, t: Timing, packing: bool, lora_rank: i64) -> anyhow::Result<()> {
    let model_dir = dir.join("model");
    let lora = (lora_rank > 0).then(|| LoraConfig {
        rank: lora_rank,
        alpha: 2.0 * lora_rank as f64,
        dropout: 0.0,
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
    });
    let cfg = SftConfig {
        packing,
        lora: lora.clone(),
        train: TrainerConfig { batch_size: batch, ..SftConfig::default().train },
        ..Default::default()
    };
    let p = prepare(&model_dir, &cfg)?;
    let examples = SftExample::read(&dir.join("examples.arrow"))?;
    let encoded: Vec<_> = examples.iter().map(|e| p.template.encode(&p.tokenizer, &e.messages)).collect::<anyhow::Result<_>>()?;
    let rows = build_rows(&encoded, p.cfg.block_size as usize, packing);
    let examples_per_row = encoded.len() as f64 / rows.len() as f64;
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::with_lora(&vs.root(), &p.cfg, lora.as_ref())?;
    forja_sft::instruct::base_weights(&model_dir, &p.added, &p.cfg)?.load_into(&mut vs, &|n| n.contains(".lora_"))?;
    let optim = OptimConfig { lr: 1e-4, weight_decay: 0.0, grad_clip: 1.0, warmup_steps: 0, ..Default::default() };
    let groups = match &lora {
        Some(_) => ParamGroup::train_only(&vs, |n| n.contains(".lora_"), 0.0),
        None => ParamGroup::decay_split(&vs, 0.0),
    };
    let write: forja_train::ModelWriter = Box::new(|_, _| Ok(()));
    let mut obj = Instruct { model: &model, batches: EpochBatches::new(rows.len(), batch, 1, 0), train: rows, val: Vec::new(), write };
    let ecfg = engine_cfg(optim, t);
    let ctx = bench_ctx();
    let scratch = std::env::temp_dir();
    let mut engine = Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: 0, run_key: String::new(), ctx: &ctx, out_dir: &scratch })?;
    let trainable = engine.trainable_params();
    let steps_per_s = time_steps(&mut engine, &mut obj, t, ecfg.optim.lr)?;
    println!(
        "{}",
        serde_json::json!({
            "peer": "forja", "mode": if packing { "packed" } else { "padded" }, "lora_rank": lora_rank,
            "threads": tch::get_num_threads(), "steps_per_s": steps_per_s,
            "examples_per_s": steps_per_s * batch as f64 * examples_per_row, "examples_per_row": examples_per_row,
            "trainable_params": trainable, "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

fn bench_classifier(model_dir: &Path, train: &Path, batch: usize, max_length: usize, t: Timing) -> anyhow::Result<()> {
    let read_cfg = forja_data::read::ReadConfig { format: forja_data::read::Format::Csv, text_field: "text".into(), ..Default::default() };
    let mut raw = forja_data::read::ReadOutput::default();
    forja_data::read::read_file(train, &read_cfg, &mut raw)?;
    let label = |r: &forja_data::read::RawRecord| r.meta.get("category").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let labels: Vec<String> = raw.records.iter().map(label).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let bert_cfg = checkpoint::read_bert_config(model_dir)?;
    let tok = forja_tokenizer::Tokenizer::load(&model_dir.join(checkpoint::TOKENIZER))?;
    let examples: Vec<Example> = raw
        .records
        .iter()
        .map(|r| {
            let ids = encode_for_bert(&tok, &r.text, max_length)?.into_iter().map(i64::from).collect();
            Ok(Example { ids, label: labels.binary_search(&label(r)).unwrap_or(0) as i64 })
        })
        .collect::<anyhow::Result<_>>()?;
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = BertClassifier::new(&vs.root(), &ClassifierConfig::new(&bert_cfg, &labels), None)?;
    checkpoint::load_weights(&mut vs, &model_dir.join(checkpoint::WEIGHTS), &|n| n.starts_with("classifier."))?;
    let optim = OptimConfig { lr: 1e-4, weight_decay: 0.01, grad_clip: 1.0, warmup_steps: 0, ..Default::default() };
    let groups = ParamGroup::decay_split(&vs, optim.weight_decay);
    let write: forja_train::ModelWriter = Box::new(|_, _| Ok(()));
    let mut obj = Classify {
        model: &model,
        batches: EpochBatches::new(examples.len(), batch, 1, 0),
        train: examples,
        val: Vec::new(),
        pad: bert_cfg.pad_token_id,
        weights: None,
        label_smoothing: 0.0,
        augment: Default::default(),
        seed: 0,
        noise: None,
        write,
    };
    let ecfg = engine_cfg(optim, t);
    let ctx = bench_ctx();
    let scratch = std::env::temp_dir();
    let mut engine = Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: 0, run_key: String::new(), ctx: &ctx, out_dir: &scratch })?;
    let steps_per_s = time_steps(&mut engine, &mut obj, t, ecfg.optim.lr)?;
    println!(
        "{}",
        serde_json::json!({ "peer": "forja", "threads": tch::get_num_threads(), "steps_per_s": steps_per_s, "peak_rss_mb": peak_rss_mb() })
    );
    Ok(())
}
