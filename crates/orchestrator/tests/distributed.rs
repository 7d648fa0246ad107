#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Data-parallel training on libtorch's c10d (Gloo), two ranks on loopback,
//! one thread each, a few steps of tiny models: against one process with
//! twice the accumulation, with the sharded optimizer, under torchrun, with a
//! rank killed, and with ranks that disagree.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn forja() -> Command {
    Command::new(env!("CARGO_BIN_EXE_forja"))
}

/// The data stages and a pre-training stage of `steps` steps with dropout
/// (so the per-micro-batch seeding is exercised); `sft_dpo` adds SFT with
/// LoRA and DPO on the pre-trained model.
fn write_pipeline(dir: &Path, name: &str, accum: u64, shard: bool, steps: u64, sft_dpo: bool) -> PathBuf {
    let text = std::fs::read_to_string(root().join("fixtures/tinyshakespeare/input.txt")).unwrap();
    std::fs::write(dir.join("corpus.txt"), &text[..60_000]).unwrap();
    let fixtures = root().join("fixtures");
    let train = format!(
        "batch_size = 4\ngrad_accum = {accum}\nmax_steps = {{steps}}\neval_interval = {{steps}}\neval_iters = 2\ncheckpoint_interval = 4\nthreads = 1\ndistributed = {{ shard_optimizer = {shard}, timeout_s = 30 }}\n"
    );
    let mut toml = format!(
        r#"
[pipeline]
name = "{name}"
seed = 3

[[stage]]
name = "clean"
kind = "clean"
inputs = {{ files = ["corpus.txt"] }}
params = {{ split = {{ mode = "tail", val_fraction = 0.1 }} }}

[[stage]]
name = "tok"
kind = "train_tokenizer"
inputs = {{ corpus = ["@clean.train"] }}
params = {{ kind = "bpe", vocab_size = 300, special_tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] }}

[[stage]]
name = "ids"
kind = "tokenize"
inputs = {{ tokenizer = "@tok.tokenizer", train = "@clean.train", val = "@clean.val" }}

[[stage]]
name = "lm"
kind = "pretrain"
inputs = {{ tokenizer = "@tok.tokenizer", train = "@ids.train", val = "@ids.val" }}
[stage.params]
model = {{ block_size = 256, n_layer = 2, n_head = 2, n_embd = 32, dropout = 0.1 }}
[stage.params.train]
{}
"#,
        train.replace("{steps}", &steps.to_string())
    );
    if sft_dpo {
        toml += &format!(
            r#"
[[stage]]
name = "instructions"
kind = "sft_data"
inputs = {{ files = ["{gsm}"] }}
params = {{ val_fraction = 0.1, max_examples = 200 }}

[[stage]]
name = "sft"
kind = "sft"
inputs = {{ model = "@lm.model", train = "@instructions.train", val = "@instructions.val" }}
[stage.params]
samples = 0
lora = {{ rank = 4, alpha = 8.0, targets = ["c_attn", "c_fc"] }}
[stage.params.train]
{sft_train}
[[stage]]
name = "prefs"
kind = "preferences"
inputs = {{ files = ["{hh}"] }}
params = {{ val_fraction = 0.1, test_fraction = 0.0 }}

[[stage]]
name = "dpo"
kind = "dpo"
inputs = {{ model = "@sft.model", train = "@prefs.train", val = "@prefs.val" }}
[stage.params]
max_length = 256
[stage.params.train]
{dpo_train}
"#,
            gsm = fixtures.join("self-instruct/seed_tasks.jsonl").display(),
            hh = fixtures.join("hh-rlhf/harmless-base-test-1000.jsonl").display(),
            sft_train = train.replace("{steps}", "3"),
            dpo_train = train.replace("{steps}", "3").replace("batch_size = 4", "batch_size = 2"),
        );
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `cmd` to its end, or kills it after `limit` and fails.
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let started = Instant::now();
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command ran past {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter.join().unwrap()
}

fn forja_run(file: &Path, nproc: usize) -> Output {
    let mut cmd = forja();
    cmd.arg("run").arg(file);
    if nproc > 1 {
        cmd.arg("--nproc").arg(nproc.to_string());
    }
    let out = run_within(cmd, Duration::from_secs(600));
    assert!(out.status.success(), "forja run {} failed:\n{}", file.display(), String::from_utf8_lossy(&out.stderr));
    out
}

fn weights(dir: &Path, stage: &str) -> Vec<u8> {
    std::fs::read(dir.join(stage).join("model/model.safetensors")).unwrap()
}

fn stage_dir(dir: &Path, run: &str) -> PathBuf {
    dir.join("runs").join(run)
}

#[test]
fn two_ranks_match_one_process_with_twice_the_accumulation_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let one = write_pipeline(dir.path(), "one", 2, false, 6, true);
    let two = write_pipeline(dir.path(), "two", 1, false, 6, true);
    let sharded = write_pipeline(dir.path(), "sharded", 1, true, 6, true);
    forja_run(&one, 1);
    let out = forja_run(&two, 2);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[lm] running pretrain on 2 local ranks"));
    forja_run(&sharded, 2);
    let (a, b, c) = (stage_dir(dir.path(), "one"), stage_dir(dir.path(), "two"), stage_dir(dir.path(), "sharded"));
    // Not a comparison of untrained weights: half the global batch trains others.
    let half = write_pipeline(dir.path(), "half", 1, false, 6, false);
    forja_run(&half, 1);
    assert!(weights(&stage_dir(dir.path(), "half"), "lm") != weights(&a, "lm"), "the batch size made no difference");
    for stage in ["lm", "sft", "dpo"] {
        assert!(weights(&a, stage) == weights(&b, stage), "{stage}: 2 ranks differ from one process with twice the accumulation");
        assert!(weights(&b, stage) == weights(&c, stage), "{stage}: the sharded optimizer differs from plain data parallelism");
        let report = std::fs::read_to_string(b.join(stage).join("report.md")).unwrap();
        assert!(report.contains("| ranks × threads | 2 × 1 |"), "{stage}: {report}");
        assert!(report.contains("parameters identical on every rank"), "{stage}: {report}");
        let sharded_report = std::fs::read_to_string(c.join(stage).join("report.md")).unwrap();
        assert!(sharded_report.contains("(sharded;"), "{stage}: {sharded_report}");
        // Rank 1 kept nothing.
        assert!(!b.join(stage).join(".ranks").exists());
    }
}

/// The pre-training stage of [`write_pipeline`] as a grouped-query Llama
/// trained by Muon.
fn llama_muon_pipeline(dir: &Path, name: &str, accum: u64, shard: bool) -> PathBuf {
    let path = write_pipeline(dir, name, accum, shard, 6, false);
    let toml = std::fs::read_to_string(&path).unwrap();
    let gpt = "model = { block_size = 256, n_layer = 2, n_head = 2, n_embd = 32, dropout = 0.1 }";
    let llama = "model = { arch = \"llama\", block_size = 256, n_layer = 2, n_head = 4, n_kv_head = 2, n_embd = 32, dropout = 0.1 }";
    assert!(toml.contains(gpt));
    let toml = toml.replace(gpt, llama).replace("threads = 1\n", "threads = 1\noptim = { kind = \"muon\", lr = 3e-3, muon_lr = 0.02 }\n");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn muon_on_a_llama_is_exact_across_ranks_with_its_state_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let one = llama_muon_pipeline(dir.path(), "one", 2, false);
    let sharded = llama_muon_pipeline(dir.path(), "sharded", 1, true);
    forja_run(&one, 1);
    forja_run(&sharded, 2);
    let (a, b) = (stage_dir(dir.path(), "one"), stage_dir(dir.path(), "sharded"));
    assert!(weights(&a, "lm") == weights(&b, "lm"), "Muon sharded on 2 ranks differs from one process with twice the accumulation");
    let config = std::fs::read_to_string(a.join("lm/model/config.json")).unwrap();
    assert!(config.contains("\"model_type\": \"llama\""), "{config}");
    let report = std::fs::read_to_string(b.join("lm/report.md")).unwrap();
    assert!(report.contains("(sharded;"), "{report}");
}

/// The pids of the processes whose parent is `parent` and whose
/// environment says `RANK=rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn spawn_run(file: &Path, nproc: usize) -> Child {
    forja().arg("run").arg(file).arg("--nproc").arg(nproc.to_string()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_killed_rank_stops_the_other_and_the_restarted_job_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let reference = write_pipeline(dir.path(), "reference", 1, false, 60, false);
    forja_run(&reference, 2);
    let file = write_pipeline(dir.path(), "killed", 1, false, 60, false);
    // A random moment after the first checkpoint.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let delay = Duration::from_millis(u64::from(nanos % 800));
    let mut child = spawn_run(&file, 2);
    let started = Instant::now();
    let checkpoint = stage_dir(dir.path(), "killed").join("lm/checkpoint/trainer_state.json");
    let victim = loop {
        if let Some(pid) = rank_pid(child.id(), 1).filter(|_| checkpoint.exists()) {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "rank 1 never started or no checkpoint was written");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(delay);
    let killed_at = Instant::now();
    assert!(Command::new("kill").arg("-9").arg(victim.to_string()).status().unwrap().success());
    let waiter = std::thread::spawn(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    });
    while !waiter.is_finished() {
        assert!(killed_at.elapsed() < Duration::from_secs(90), "the surviving rank did not stop within the timeout");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, err) = waiter.join().unwrap();
    assert!(!status.success(), "the run went on without rank 1");
    assert!(err.contains("rank 1 of 2 was killed by signal 9"), "{err}");
    assert!(err.contains("rank 1 (no heartbeat"), "the survivor's error names the missing rank:\n{err}");
    // The same job again: resumes from the last checkpoint, ends as the uninterrupted run.
    forja_run(&file, 2);
    let (a, b) = (stage_dir(dir.path(), "reference"), stage_dir(dir.path(), "killed"));
    let report = std::fs::read_to_string(b.join("lm/report.md")).unwrap();
    assert!(report.contains("| resumed from step |"), "the restart did not resume:\n{report}");
    assert!(weights(&a, "lm") == weights(&b, "lm"), "the restarted job ended with other weights");
}

/// The data stages once, then `pretrain` started by hand as two ranks (the
/// variables torchrun sets), one with another learning rate.
#[test]
fn a_rank_with_another_learning_rate_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path(), "data", 1, false, 2, false);
    forja_run(&file, 1);
    let runs = stage_dir(dir.path(), "data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rank = |r: usize, lr: &str| {
        let mut cmd = forja();
        cmd.args(["stage", "pretrain", "--set", "model.block_size=32", "--set", "model.n_layer=1", "--set", "model.n_embd=16"]);
        cmd.args(["--set", "model.n_head=2", "--set", "train.max_steps=2", "--set", "train.threads=1"]);
        cmd.args(["--set", &format!("train.optim.lr={lr}"), "--set", "train.distributed.timeout_s=30"]);
        cmd.arg("--input").arg(format!("tokenizer={}", runs.join("tok/tokenizer.json").display()));
        cmd.arg("--input").arg(format!("train={}", runs.join("ids/train.tokens.arrow").display()));
        cmd.arg("--input").arg(format!("val={}", runs.join("ids/val.tokens.arrow").display()));
        cmd.arg("--out").arg(dir.path().join("refused"));
        cmd.env("RANK", r.to_string()).env("WORLD_SIZE", "2").env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        std::thread::spawn(move || run_within(cmd, Duration::from_secs(120)))
    };
    let (r0, r1) = (rank(0, "0.001"), rank(1, "0.002"));
    let (o0, o1) = (r0.join().unwrap(), r1.join().unwrap());
    assert!(!o0.status.success() && !o1.status.success());
    let e1 = String::from_utf8_lossy(&o1.stderr);
    assert!(e1.contains("rank 1 refuses to start") && e1.contains("cfg.train.optim.lr: 0.002 here, 0.001 on rank 0"), "{e1}");
    assert!(String::from_utf8_lossy(&o0.stderr).contains("cfg.train.optim.lr: 0.001 here, 0.002 on rank 1"));
}

/// torchrun (the project venv's) starts `forja stage pretrain` as two ranks
/// through its agent's store; the result equals `forja run --nproc 2`'s.
#[test]
fn torchrun_launches_forja_stage() {
    let torchrun = root().join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} is missing (scripts/setup installs torch with it)", torchrun.display());
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path(), "local", 1, false, 4, false);
    forja_run(&file, 2);
    let runs = stage_dir(dir.path(), "local");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs.join("manifest.json")).unwrap()).unwrap();
    let lm = manifest["stages"].as_array().unwrap().iter().find(|s| s["name"] == "lm").unwrap();
    let params = dir.path().join("lm-params.json");
    std::fs::write(&params, lm["params"].to_string()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(&torchrun);
    cmd.args(["--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", &port.to_string()]);
    cmd.arg(env!("CARGO_BIN_EXE_forja")).args(["stage", "pretrain", "--name", "lm", "--seed", "3", "--params"]).arg(&params);
    cmd.arg("--input").arg(format!("tokenizer={}", runs.join("tok/tokenizer.json").display()));
    cmd.arg("--input").arg(format!("train={}", runs.join("ids/train.tokens.arrow").display()));
    cmd.arg("--input").arg(format!("val={}", runs.join("ids/val.tokens.arrow").display()));
    cmd.arg("--out").arg(dir.path().join("torchrun-lm"));
    let out = run_within(cmd, Duration::from_secs(300));
    assert!(out.status.success(), "torchrun failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let via_torchrun = std::fs::read(dir.path().join("torchrun-lm/model/model.safetensors")).unwrap();
    assert!(via_torchrun == weights(&runs, "lm"), "torchrun's ranks trained other weights than forja run --nproc 2");
}

/// GRPO and PPO on two ranks: each answers half of every rollout's prompts, the
/// halves are gathered, and the update is data parallel; the ranks end with
/// the same weights (checked by the engine, shown in the report).
#[test]
fn grpo_and_ppo_split_their_rollouts_across_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path(), "rl", 1, false, 2, false);
    let mut toml = std::fs::read_to_string(&file).unwrap();
    toml += &format!(
        "\n[[stage]]\nname = \"instructions\"\nkind = \"sft_data\"\ninputs = {{ files = [\"{}\"] }}\nparams = {{ val_fraction = 0.1 }}\n",
        root().join("fixtures/self-instruct/seed_tasks.jsonl").display()
    );
    // GRPO answers each prompt twice; PPO once.
    for (kind, group) in [("grpo", "group_size = 2\n"), ("ppo", "")] {
        toml += &format!(
            r#"
[[stage]]
name = "{kind}"
kind = "{kind}"
inputs = {{ model = "@lm.model", prompts = "@instructions.train" }}
[stage.params]
rollouts = 2
prompts_per_rollout = 4
{group}eval_prompts = 4
samples = 0
rule = {{ kind = "token_share", token = "e" }}
sampling = {{ max_new_tokens = 8 }}
[stage.params.train]
threads = 1
distributed = {{ timeout_s = 30 }}
"#
        );
    }
    std::fs::write(&file, toml).unwrap();
    let out = forja_run(&file, 2);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[grpo] running grpo on 2 local ranks"));
    for stage in ["grpo", "ppo"] {
        let report = std::fs::read_to_string(stage_dir(dir.path(), "rl").join(stage).join("report.md")).unwrap();
        assert!(
            report.contains("| ranks × threads | 2 × 1 |") && report.contains("parameters identical on every rank"),
            "{stage}: {report}"
        );
    }
}
