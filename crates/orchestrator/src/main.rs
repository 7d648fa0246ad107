//! `forja`: runs pipeline files and single stages.

use anyhow::Result;
use clap::{Parser, Subcommand};
use forja::pipeline::{load, Override};
use forja::run::{run_plan, RunOptions};
use forja_core::stage::{init_logging, run_from_args, StageArgs};
use forja_core::Message;
use forja_model::SamplingConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "forja", about = "Train language models end to end on libtorch", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline file; stages whose inputs and parameters are unchanged are skipped.
    Run {
        file: PathBuf,
        /// Rerun this stage even if unchanged (repeatable).
        #[arg(long)]
        force: Vec<String>,
        /// Override a parameter: STAGE.PARAM=VALUE (dotted PARAM nests; repeatable).
        #[arg(long = "set")]
        set: Vec<Override>,
        /// Run each training stage as N local ranks (data parallel on
        /// libtorch's c10d; other stages run once). Overrides `[pipeline] nproc`.
        #[arg(long)]
        nproc: Option<usize>,
    },
    /// Hyperparameter search over the `[search]` section of a pipeline file
    /// (grid, random or ASHA); each trial runs as `forja run` in its own
    /// process; results, plots and the best configuration under OUT/sweep/.
    Sweep {
        file: PathBuf,
        /// Trials at once (overrides `[search] parallel`).
        #[arg(long)]
        parallel: Option<usize>,
        /// Only write the trial pipelines (OUT/sweep/trial-NNNN/pipeline.toml),
        /// for a cluster scheduler to run; a later `forja sweep` reuses what they finished.
        #[arg(long)]
        prepare: bool,
        #[arg(long = "set")]
        set: Vec<Override>,
    },
    /// Check a pipeline file without running anything.
    Check {
        file: PathBuf,
        #[arg(long = "set")]
        set: Vec<Override>,
    },
    /// Run one stage alone: forja stage KIND --input NAME=PATH --set KEY=VALUE --out DIR
    Stage(StageArgs),
    /// List the stage kinds with their inputs and outputs (`--markdown`: the
    /// stage reference of docs/stages.md, with every parameter's default).
    Stages {
        #[arg(long)]
        markdown: bool,
    },
    /// Look into artifacts: a file's columns, metadata and first rows, or a
    /// polars SQL query over files and run folders (`--sql "SELECT rule,
    /// count(*) FROM rejects GROUP BY rule"`).
    Inspect(forja::inspect::InspectArgs),
    /// Serve a model folder over an OpenAI-compatible HTTP API (see forja-serve --help).
    Serve(forja_serve::ServeArgs),
    /// Answer a conversation with a fine-tuned GPT folder: its own chat template,
    /// stopping at the end of the turn (or a stop string).
    Chat {
        /// The model folder (e.g. runs/chat-sft/sft/model).
        model: PathBuf,
        /// The turns so far, user first, alternating user / assistant; the last is the user's.
        #[arg(required = true)]
        turns: Vec<String>,
        #[arg(long)]
        system: Option<String>,
        /// 0: greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 200)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Cut the answer before this string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let registry = forja::registry();
    match Cli::parse().cmd {
        Cmd::Run { file, force, set, nproc } => {
            anyhow::ensure!(nproc != Some(0), "--nproc must be at least 1");
            let plan = load(&file, &registry, &set)?;
            let manifest = run_plan(&plan, &RunOptions { force: force.into_iter().collect(), nproc })?;
            let ran = manifest.stages.iter().filter(|s| s.status == forja_core::manifest::StageStatus::Ran).count();
            println!(
                "run `{}`: {} stage(s) ran, {} skipped; manifest {}",
                plan.name,
                ran,
                manifest.stages.len() - ran,
                plan.out_dir.join("manifest.json").display()
            );
        }
        Cmd::Sweep { file, parallel, prepare, set } => {
            let opts = forja::sweep::SweepOptions { parallel, overrides: set, exe: None, prepare_only: prepare };
            let out = forja::sweep::sweep(&file, &registry, &opts)?;
            match out.best {
                None if prepare => {}
                Some(i) => {
                    let r = &out.results[i];
                    println!(
                        "sweep: best trial {} with {:.6} ({} trials); table {}, report {}, best pipeline {}",
                        r.trial.id,
                        r.value,
                        out.results.len(),
                        out.dir.join("trials.arrow").display(),
                        out.dir.join("report.md").display(),
                        out.dir.join("best.toml").display()
                    );
                }
                None => anyhow::bail!("sweep: no trial produced a value; see {}", out.dir.join("report.md").display()),
            }
        }
        Cmd::Check { file, set } => {
            // Every error of the file at once, one per line.
            let plan = load(&file, &registry, &set)?;
            let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
            println!("{}: ok ({} stages: {})", file.display(), names.len(), names.join(" -> "));
        }
        Cmd::Stage(args) => run_from_args(&registry, &args)?,
        Cmd::Serve(args) => forja_serve::run(args)?,
        Cmd::Inspect(args) => forja::inspect::inspect(&args)?,
        Cmd::Chat { model, turns, system, temperature, top_k, top_p, max_new_tokens, seed, stop, device } => {
            let mut messages: Vec<Message> = system.into_iter().map(|content| Message { role: "system".into(), content }).collect();
            for (i, content) in turns.into_iter().enumerate() {
                messages.push(Message { role: if i % 2 == 0 { "user" } else { "assistant" }.into(), content });
            }
            let sampling = SamplingConfig { temperature, top_k, top_p, max_new_tokens, seed };
            let cfg = forja_model::chat::ChatConfig { sampling, stop };
            let device = forja_model::parse_device(&device)?;
            println!("{}", forja_model::chat::chat_with_folder(&model, &messages, &cfg, device)?);
        }
        Cmd::Stages { markdown: true } => print!("{}", forja::reference::stages_markdown(&registry)),
        Cmd::Stages { markdown: false } => {
            for s in &registry {
                let ins: Vec<_> =
                    s.inputs().iter().map(|i| format!("{}{} ({})", i.name, if i.required { "" } else { "?" }, i.kinds_text())).collect();
                let outs: Vec<_> = s.outputs().iter().map(|o| format!("{} ({})", o.name, o.kind.name())).collect();
                println!("{:16} {}\n{:16} inputs: {}; outputs: {}", s.kind(), s.about(), "", ins.join(", "), outs.join(", "));
            }
        }
    }
    Ok(())
}
