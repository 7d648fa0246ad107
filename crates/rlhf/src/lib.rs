//! forja-rlhf: learning from human preferences, on the training engine.
//!
//! - [`label`]: the `label` stage — a page on localhost where people pick the
//!   better of two answers; an append-only judgement log; the `preferences`
//!   artifact and inter-annotator agreement (Cohen's kappa);
//! - [`import`]: the `preferences` stage — HH-RLHF dialogues and
//!   prompt/chosen/rejected records into `preferences`, with rejects;
//! - [`reward`]: the `reward_model` stage — a GPT with a scalar head and the
//!   Bradley–Terry loss, exported as a Hugging Face sequence classifier;
//! - [`dpo`]: the `dpo` stage — DPO / IPO / length-normalised DPO with the
//!   reference log-probabilities computed once as an artifact;
//! - [`rl`]: the `ppo` and `grpo` stages — rollouts, rewards (a reward model
//!   or a verifiable rule), KL to the reference, PPO with a value head and
//!   GAE, and group-relative advantages;
//! - [`judge`]: the `align_eval` stage — win rates against the SFT model by a
//!   held-out reward model, KL from it, side-by-side samples;
//! - [`losses`], [`logps`], [`text`], [`common`]: the formulas, batched
//!   answer log-probabilities, prompt formatting, shared loading and writing.

pub mod common;
pub mod dpo;
pub mod import;
pub mod judge;
pub mod label;
pub mod logps;
pub mod losses;
pub mod reward;
pub mod rl;
pub mod text;

use forja_core::stage::{OutDir, OutputSpec, Stage, StageCtx};

forja_core::stage_inputs! {
    /// Input files of `preferences`.
    pub struct PreferenceFiles {
        /// HH-RLHF or prompt/chosen/rejected JSONL, or `preferences` artifacts; globs allowed.
        files: many[FILES, PREFERENCES],
    }
}

/// The `preferences` stage.
pub struct Preferences;

impl Stage for Preferences {
    const KIND: &'static str = "preferences";
    const ABOUT: &'static str = "read preference pairs (HH-RLHF chosen/rejected dialogues, prompt/chosen/rejected JSONL, preferences artifacts) into preferences train/val, with rejects";
    const OUTPUTS: &'static [OutputSpec] = &import::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = import::ImportConfig;
    type Inputs = PreferenceFiles;

    fn run(&self, cfg: &import::ImportConfig, inputs: &PreferenceFiles, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        import::run(cfg, &inputs.files, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `reward_model` stage.
pub struct RewardModelStage;

impl Stage for RewardModelStage {
    const KIND: &'static str = "reward_model";
    const ABOUT: &'static str = "train a reward model (GPT backbone + scalar head, Bradley-Terry loss) on preference pairs; held-out accuracy; loads in transformers as a one-label sequence classifier";
    const OUTPUTS: &'static [OutputSpec] = &reward::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = reward::RewardConfig;
    type Inputs = reward::RewardInputs;
    const DISTRIBUTED: bool = true;

    fn run(
        &self,
        cfg: &reward::RewardConfig,
        inputs: &reward::RewardInputs,
        out: &OutDir,
        ctx: &StageCtx,
    ) -> anyhow::Result<Vec<OutputSpec>> {
        reward::run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `dpo` stage.
pub struct DpoStage;

impl Stage for DpoStage {
    const KIND: &'static str = "dpo";
    const ABOUT: &'static str = "align a GPT to preference pairs with DPO (sigmoid, ipo or length_normalized loss), full or LoRA; reference log-probabilities computed once as an artifact";
    const OUTPUTS: &'static [OutputSpec] = &dpo::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = dpo::DpoConfig;
    type Inputs = dpo::DpoInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &dpo::DpoConfig, inputs: &dpo::DpoInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        dpo::run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

common::params_over_defaults!(
    /// `ppo`'s parameters: [`rl::RlConfig`] over PPO's defaults.
    PpoParams(rl::RlConfig) = rl::RlConfig::ppo()
);
common::params_over_defaults!(
    /// `grpo`'s parameters: [`rl::RlConfig`] over GRPO's defaults.
    GrpoParams(rl::RlConfig) = rl::RlConfig::grpo()
);
common::params_over_defaults!(
    /// `align_eval`'s parameters over its defaults (sampling at temperature 1).
    AlignEvalParams(judge::AlignEvalConfig) = judge::AlignEvalConfig::default()
);
common::params_over_defaults!(
    /// `label`'s parameters over its defaults.
    LabelParams(label::LabelConfig) = label::LabelConfig::default()
);

/// The `ppo` stage.
pub struct PpoStage;

impl Stage for PpoStage {
    const KIND: &'static str = "ppo";
    const ABOUT: &'static str = "PPO on prompts against a reward model (or a rule): batched rollouts, KL penalty to the frozen reference (fixed or adaptive), value head with GAE, clipped policy and value losses; full or LoRA (reference = adapters off)";
    const OUTPUTS: &'static [OutputSpec] = &rl::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = PpoParams;
    type Inputs = rl::RlInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &PpoParams, inputs: &rl::RlInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        rl::run(rl::Algorithm::Ppo, &cfg.0, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `grpo` stage.
pub struct GrpoStage;

impl Stage for GrpoStage {
    const KIND: &'static str = "grpo";
    const ABOUT: &'static str = "group-relative RL (GRPO) on verifiable answers: several samples per prompt, advantages relative to the group, no value model; reward from the final number of the answer (or another rule, or a reward model)";
    const OUTPUTS: &'static [OutputSpec] = &rl::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = GrpoParams;
    type Inputs = rl::RlInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &GrpoParams, inputs: &rl::RlInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        rl::run(rl::Algorithm::Grpo, &cfg.0, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `label` stage.
pub struct LabelStage;

impl Stage for LabelStage {
    const KIND: &'static str = "label";
    const ABOUT: &'static str = "serve a page on localhost where people pick the better of two answers (from a pairs file or generated by models); waits until every pair is judged; preferences + Cohen's kappa";
    const OUTPUTS: &'static [OutputSpec] = &label::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = LabelParams;
    type Inputs = label::LabelInputs;

    fn run(&self, cfg: &LabelParams, inputs: &label::LabelInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        label::run(&cfg.0, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `align_eval` stage.
pub struct AlignEvalStage;

impl Stage for AlignEvalStage {
    const KIND: &'static str = "align_eval";
    const ABOUT: &'static str = "compare aligned models with their SFT reference: win rate judged by a held-out reward model, KL from the reference, side-by-side answers";
    const OUTPUTS: &'static [OutputSpec] = &judge::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = AlignEvalParams;
    type Inputs = judge::AlignEvalInputs;

    fn run(&self, cfg: &AlignEvalParams, inputs: &judge::AlignEvalInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        judge::run(&cfg.0, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// All stages of this crate.
pub const STAGES: &[&dyn forja_core::stage::DynStage] =
    &[&LabelStage, &Preferences, &RewardModelStage, &DpoStage, &PpoStage, &GrpoStage, &AlignEvalStage];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tables_keep_the_stages_own_defaults() {
        use forja_core::params::over;
        let p: AlignEvalParams =
            over(&AlignEvalParams::default(), serde_json::json!({ "sampling": { "max_new_tokens": 8 } })).expect("parses");
        assert_eq!((p.0.sampling.temperature, p.0.sampling.top_k, p.0.sampling.max_new_tokens), (1.0, 0, 8));
        let g: GrpoParams =
            over(&GrpoParams::default(), serde_json::json!({ "rollouts": 3, "train": { "optim": { "lr": 0.5 } } })).expect("parses");
        assert_eq!((g.0.rollouts, g.0.group_size, g.0.train.optim.lr, g.0.train.optim.grad_clip), (3, 8, 0.5, 1.0));
        let err = over(&PpoParams::default(), serde_json::json!({ "sampling": { "temprature": 1.0 } })).expect_err("a typo");
        assert!(err.to_string().contains("temprature"), "{err}");
    }
}
