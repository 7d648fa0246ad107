//! `forja`: runs pipeline files and single stages.

use anyhow::Result;
use clap::{Parser, Subcommand};
use forja::pipeline::{load, Override};
use forja::run::{run_plan, RunOptions};
use forja_core::stage::{init_logging, run_from_args, StageArgs};
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
    },
    /// Check a pipeline file without running anything.
    Check {
        file: PathBuf,
        #[arg(long = "set")]
        set: Vec<Override>,
    },
    /// Run one stage alone: forja stage KIND --input NAME=PATH --set KEY=VALUE --out DIR
    Stage(StageArgs),
    /// List the stage kinds with their inputs and outputs.
    Stages,
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
        Cmd::Run { file, force, set } => {
            let plan = load(&file, &registry, &set)?;
            let manifest = run_plan(&plan, &RunOptions { force: force.into_iter().collect() })?;
            let ran = manifest.stages.iter().filter(|s| s.status == forja_core::manifest::StageStatus::Ran).count();
            println!(
                "run `{}`: {} stage(s) ran, {} skipped; manifest {}",
                plan.name,
                ran,
                manifest.stages.len() - ran,
                plan.out_dir.join("manifest.json").display()
            );
        }
        Cmd::Check { file, set } => {
            let plan = load(&file, &registry, &set)?;
            let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
            println!("{}: ok ({} stages: {})", file.display(), names.len(), names.join(" -> "));
        }
        Cmd::Stage(args) => run_from_args(&registry, &args)?,
        Cmd::Stages => {
            for s in &registry {
                let ins: Vec<_> = s.inputs().iter().map(|i| format!("{}{}", i.name, if i.required { "" } else { "?" })).collect();
                let outs: Vec<_> = s.outputs().iter().map(|o| o.name).collect();
                println!("{:16} {}\n{:16} inputs: {}; outputs: {}", s.kind(), s.about(), "", ins.join(", "), outs.join(", "));
            }
        }
    }
    Ok(())
}
