//! Pre-training throughput of forja's GPT step, shaped like the PyTorch eager peer
//! (`../shared/bench/torch_gpt_ref.py`): same model, data (bytes of a text file,
//! vocab 256), AdamW (lr 1e-3, weight decay 0.1), clipping at 1.0, float32.
//! Prints one JSON line, and a matmul peak for model FLOPs utilisation.

use clap::Parser;
use forja_model::{parse_device, Gpt, GptConfig};
use forja_pretrain::batches::TokenStream;
use forja_pretrain::optim::{AdamW, OptimConfig};
use std::time::Instant;
use tch::{nn, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    text: std::path::PathBuf,
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
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also print mean forward / backward / optimiser milliseconds.
    #[arg(long)]
    phases: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.steps > 0, "--steps must be > 0");
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = parse_device(&a.device)?;
    tch::manual_seed(0);
    let bytes = std::fs::read(&a.text)?;
    let ids: Vec<i64> = bytes.iter().map(|&b| b as i64).collect();
    let data = TokenStream::from_ids(&ids, device)?;
    let cfg = GptConfig { vocab_size: 256, block_size: a.block, n_layer: a.n_layer, n_head: a.n_head, n_embd: a.n_embd, ..Default::default() };
    let vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &cfg)?;
    let mut opt = AdamW::new(&vs);
    let ocfg = OptimConfig { lr: 1e-3, weight_decay: 0.1, beta1: 0.9, beta2: 0.999, grad_clip: 1.0, ..Default::default() };
    let mut times = Vec::new();
    let mut phases: Vec<[f64; 3]> = Vec::new();
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..a.warmup + a.steps {
        let (x, y) = data.random_batch(a.batch, a.block, 0, 0, step as u64);
        let t0 = Instant::now();
        let loss = model.loss(&x, &y, true);
        let t_fwd = t0.elapsed().as_secs_f64();
        loss.backward();
        let t_bwd = t0.elapsed().as_secs_f64();
        opt.clip_grad_norm(ocfg.grad_clip);
        opt.step(&ocfg, ocfg.lr);
        opt.zero_grad();
        let l = loss.double_value(&[]);
        let t_opt = t0.elapsed().as_secs_f64();
        if a.phases && step >= a.warmup {
            phases.push([t_fwd, t_bwd - t_fwd, t_opt - t_bwd]);
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let dt = t0.elapsed().as_secs_f64();
        if step >= a.warmup {
            times.push(dt);
            if step == a.warmup {
                first = l;
            }
            last = l;
        }
    }
    if a.phases && !phases.is_empty() {
        let n = phases.len() as f64;
        let mean = |i: usize| phases.iter().map(|p| p[i]).sum::<f64>() / n * 1000.0;
        eprintln!("phases ms: forward {:.2}, backward {:.2}, clip+optimizer {:.2}", mean(0), mean(1), mean(2));
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tps = (a.batch * a.block) as f64 / med;
    let peak = matmul_peak_flops(device);
    let mfu = tps * cfg.flops_per_token() / peak;
    println!(
        "{}",
        serde_json::json!({
            "peer": "forja", "threads": tch::get_num_threads(), "params": cfg.n_params(),
            "tokens_per_s": tps, "step_ms_median": med * 1000.0, "first_loss": first, "final_loss": last,
            "matmul_peak_gflops": peak / 1e9, "mfu": mfu,
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
