//! `forja-eval eval --input model=DIR --input split=TOKENS --set KEY=VALUE --out DIR`

fn main() -> std::process::ExitCode {
    forja_core::stage::stage_main(forja_eval::STAGES)
}
