//! forja-sft: supervised fine-tuning on the training engine.
//!
//! - [`data`]: the `sft_data` stage — instruction data (chat `messages`,
//!   prompt/response fields, Self-Instruct tasks) from JSONL / CSV / Arrow into
//!   the `sft_examples` artifact, with rejects;
//! - [`instruct`]: the `sft` stage — instruction tuning of a GPT, assistant-only
//!   loss, packing with block-diagonal attention, full or LoRA;
//! - [`classify`]: the `finetune_classifier` stage — a pretrained BERT encoder
//!   plus a classification head, full or LoRA, scored on the test split.
//!
//! Chat templates, PEFT adapters and the exported folders' layout live in
//! `forja-model` (`chat`, `peft`, `export`).

pub mod classify;
pub mod data;
pub mod instruct;

pub use classify::{ClassifierInputs, ClassifierStageConfig};
pub use data::SftDataConfig;
use forja_core::stage::{OutDir, OutputSpec, Stage, StageCtx};
pub use instruct::{SftConfig, SftInputs};

/// The `finetune_classifier` stage.
pub struct FinetuneClassifier;

impl Stage for FinetuneClassifier {
    const KIND: &'static str = "finetune_classifier";
    const ABOUT: &'static str = "fine-tune a pretrained BERT encoder (full or LoRA) with a classification head on labeled documents; test accuracy, macro P/R/F1, confusion matrix";
    const OUTPUTS: &'static [OutputSpec] = &classify::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = ClassifierStageConfig;
    type Inputs = ClassifierInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &ClassifierStageConfig, inputs: &ClassifierInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        classify::run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

forja_core::stage_inputs! {
    /// Input files of `sft_data`.
    pub struct SftFiles {
        /// JSONL, CSV or Parquet files, or `sft_examples` artifacts; globs allowed.
        files: many[FILES, SFT_EXAMPLES],
    }
}

/// The `sft_data` stage.
pub struct SftData;

impl Stage for SftData {
    const KIND: &'static str = "sft_data";
    const ABOUT: &'static str = "read instruction data (chat messages, prompt/response fields, Self-Instruct tasks; JSONL, CSV, Parquet, Arrow) into sft_examples train/val, with rejects";
    const OUTPUTS: &'static [OutputSpec] = &data::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = SftDataConfig;
    type Inputs = SftFiles;

    fn run(&self, cfg: &SftDataConfig, inputs: &SftFiles, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        data::run_sft_data(cfg, &inputs.files, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `sft` stage.
pub struct Sft;

impl Stage for Sft {
    const KIND: &'static str = "sft";
    const ABOUT: &'static str = "instruction-tune a GPT on conversations: chat template, assistant-only loss, packing, full or LoRA (PEFT adapters), sample answers";
    const OUTPUTS: &'static [OutputSpec] = &instruct::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = SftConfig;
    type Inputs = SftInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &SftConfig, inputs: &SftInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        instruct::run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// All stages of this crate.
pub const STAGES: &[&dyn forja_core::stage::DynStage] = &[&SftData, &Sft, &FinetuneClassifier];
