//! Pre-training throughput of forja's GPT step, shaped like the PyTorch peer
//! (`scripts/peers/torch_gpt.py`): same model, data (bytes of a text file,
//! vocab 256, or random tokens of `--vocab`), AdamW (lr 1e-3, weight decay 0.1),
//! clipping at 1.0. Each step is the training engine's own
//! [`forja_train::Engine::train_step`], the one the `pretrain` stage runs.
//! Prints one JSON line, with a matmul peak for model FLOPs utilisation.

use clap::Parser;
use forja_core::stage::StageCtx;
use forja_model::checkpoint::write_model_files;
use forja_model::{parse_device, Gpt, GptConfig, Precision};
use forja_pretrain::objectives::{CausalLm, Streams};
use forja_train::batches::TokenStream;
use forja_train::{DiagnosisConfig, Engine, EngineConfig, OptimConfig, ParamGroup, RunSpec, StepOutcome};
use rand::{Rng, SeedableRng};
use std::time::Instant;
use tch::{nn, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// Text file read as bytes (vocab 256); without it, random tokens of `--vocab`.
    #[arg(long)]
    text: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 256)]
    vocab: i64,
    #[arg(long, default_value_t = 4)]
    n_layer: i64,
    #[arg(long, default_value_t = 4)]
    n_head: i64,
    #[arg(long, default_value_t = 128)]
    n_embd: i64,
    #[arg(long, default_value_t = 64)]
    block: i64,
    #[arg(long, default_value_t = 12)]
    batch: i64,
    #[arg(long, default_value_t = 60)]
    steps: u64,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// bfloat16 matrix products (as `precision = "bf16"` in a pipeline).
    #[arg(long)]
    bf16: bool,
    /// Also print mean forward / backward / optimiser milliseconds.
    #[arg(long)]
    phases: bool,
    /// Launched as several ranks (torchrun's variables): shard the AdamW
    /// state across them (ZeRO-1).
    #[arg(long)]
    shard_optimizer: bool,
    /// Launched as several ranks: sum the gradients after the backward pass
    /// rather than during it.
    #[arg(long)]
    no_overlap: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.steps > 0, "--steps must be > 0");
    let _threads = forja_train::ThreadsGuard::set(a.threads);
    // Data parallel when a launcher started this as several ranks: `--batch`
    // is each rank's, tokens/s counts every rank's tokens.
    let world = forja_dist::init(std::time::Duration::from_secs(120))?.map_or(1, forja_dist::Dist::world);
    let device = parse_device(&a.device)?;
    tch::manual_seed(0);
    let (ids, vocab) = match &a.text {
        Some(path) => (std::fs::read(path)?.iter().map(|&b| i64::from(b)).collect::<Vec<_>>(), 256),
        None => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            ((0..1_000_000).map(|_| rng.random_range(0..a.vocab)).collect(), a.vocab)
        }
    };
    let cfg =
        GptConfig { vocab_size: vocab, block_size: a.block, n_layer: a.n_layer, n_head: a.n_head, n_embd: a.n_embd, ..Default::default() };
    let mut vs = nn::VarStore::new(device);
    let mut model = Gpt::new(&vs.root(), &cfg)?;
    model.precision = if a.bf16 { Precision::Bf16 } else { Precision::F32 };
    let data = Streams {
        train: TokenStream::from_ids(&ids, device)?,
        val: TokenStream::from_ids(&ids, device)?,
        batch_size: a.batch,
        block: a.block,
        grad_accum: world as u64,
        seed: 0,
    };
    let tokenizer = forja_tokenizer::char_tokenizer(std::iter::once("ab"), &[])?;
    let write: forja_train::ModelWriter = Box::new(|vs, dir| write_model_files(dir, vs, &cfg, &tokenizer));
    let mut obj = CausalLm { model: &model, data, write };
    let ecfg = EngineConfig {
        optim: OptimConfig { lr: 1e-3, weight_decay: 0.1, beta1: 0.9, beta2: 0.999, grad_clip: 1.0, warmup_steps: 0, ..Default::default() },
        max_steps: a.warmup + a.steps,
        // Throughput only: no spike or explosion checks (non-finite values still count).
        diagnosis: DiagnosisConfig { spike_factor: 0.0, explode_factor: 0.0, ..Default::default() },
        distributed: forja_train::DistributedConfig { shard_optimizer: a.shard_optimizer, overlap: !a.no_overlap, ..Default::default() },
        ..Default::default()
    };
    let groups = ParamGroup::decay_split(&vs, ecfg.optim.weight_decay);
    let ctx = StageCtx { name: "bench".into(), seed: 0, device: a.device.clone(), config_hash: String::new(), code_hash: "" };
    let scratch = std::env::temp_dir();
    let mut engine = Engine::new(&ecfg, &mut vs, groups, RunSpec { seed: 0, run_key: String::new(), ctx: &ctx, out_dir: &scratch })?;
    let (mut times, mut phases) = (Vec::new(), Vec::new());
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let outcome = engine.train_step(&mut obj, step, ecfg.optim.lr, false)?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let dt = t0.elapsed().as_secs_f64();
        let StepOutcome::Applied { stats, .. } = outcome else { anyhow::bail!("step {step} diverged") };
        if step >= a.warmup {
            times.push(dt);
            phases.push([stats.forward_s, stats.backward_s, stats.optimizer_s]);
            if step == a.warmup {
                first = stats.loss;
            }
            last = stats.loss;
        }
    }
    if a.phases {
        let n = phases.len() as f64;
        let mean = |i: usize| phases.iter().map(|p| p[i]).sum::<f64>() / n * 1000.0;
        eprintln!("phases ms: forward {:.2}, backward {:.2}, clip+optimizer {:.2}", mean(0), mean(1), mean(2));
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tps = (a.batch * a.block * world as i64) as f64 / med;
    let (state, state_unsharded) = engine.optimizer_state_bytes();
    let peak = matmul_peak_flops(device);
    let mfu = tps * cfg.flops_per_token() / peak;
    if forja_core::launch::Launch::rank_and_world().0 > 0 {
        return Ok(()); // rank 0 reports for all
    }
    println!(
        "{}",
        serde_json::json!({
            "peer": if a.bf16 { "forja+bf16" } else { "forja" }, "threads": tch::get_num_threads(), "params": cfg.n_params(),
            "tokens_per_s": tps, "step_ms_median": med * 1000.0, "first_loss": first, "final_loss": last,
            "matmul_peak_gflops": peak / 1e9, "mfu": mfu, "ranks": world,
            "peak_rss_mib": peak_rss_mib(), "adamw_state_mib": state as f64 / 1048576.0,
            "adamw_state_unsharded_mib": state_unsharded as f64 / 1048576.0,
        })
    );
    Ok(())
}

/// Measured float32 matmul throughput (FLOP/s): the best of a few 512×512 products.
fn matmul_peak_flops(device: tch::Device) -> f64 {
    let n = 512i64;
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t0 = Instant::now();
        let c = a.matmul(&b);
        let _ = c.sum(Kind::Float).double_value(&[]);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best
}

/// This process's peak resident memory (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
