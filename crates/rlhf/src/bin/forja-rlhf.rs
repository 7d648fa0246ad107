//! `forja-rlhf KIND --input NAME=PATH --set KEY=VALUE --out DIR`: the stages of
//! forja-rlhf (`label`, `preferences`, `reward_model`, `dpo`, `ppo`, `grpo`,
//! `align_eval`), the same functions `forja run` calls.

fn main() -> std::process::ExitCode {
    forja_core::stage::stage_main(forja_rlhf::STAGES)
}
