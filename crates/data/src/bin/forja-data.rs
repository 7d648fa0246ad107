//! `forja-data KIND --input NAME=PATH --set KEY=VALUE --out DIR`: runs one data
//! stage (`clean`, `train_tokenizer`, `tokenize`), as `forja stage` does.

fn main() -> std::process::ExitCode {
    forja_core::stage::stage_main(forja_data::STAGES)
}
