//! `forja-sft finetune_classifier --input model=.. --input train=.. [--input test=..] --set KEY=VALUE --out DIR`

fn main() -> std::process::ExitCode {
    forja_core::stage::stage_main(forja_sft::STAGES)
}
