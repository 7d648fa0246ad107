//! `forja-pretrain pretrain --input tokenizer=.. --input train=.. --input val=.. --set KEY=VALUE --out DIR`

use clap::Parser;
use forja_core::stage::{init_logging, run_from_args, StageArgs};
use std::process::ExitCode;

fn main() -> ExitCode {
    init_logging();
    match run_from_args(forja_pretrain::STAGES, &StageArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
