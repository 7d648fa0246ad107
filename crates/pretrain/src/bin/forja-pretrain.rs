//! `forja-pretrain pretrain --input tokenizer=.. --input train=.. --input val=.. --set KEY=VALUE --out DIR`

fn main() -> std::process::ExitCode {
    forja_core::stage::stage_main(forja_pretrain::STAGES)
}
