//! `forja-data KIND --input NAME=PATH --set KEY=VALUE --out DIR`: runs one data
//! stage (`clean`, `train_tokenizer`, `tokenize`), as `forja stage` does.

use clap::Parser;
use forja_core::stage::{init_logging, run_from_args, StageArgs};
use std::process::ExitCode;

fn main() -> ExitCode {
    init_logging();
    let args = StageArgs::parse();
    match run_from_args(forja_data::STAGES, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
