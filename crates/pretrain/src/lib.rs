//! forja-pretrain: self-supervised pre-training of a GPT (next-token prediction).
//!
//! - [`train`]: the loop (read it top to bottom);
//! - [`optim`]: AdamW with owned state, LR schedule, gradient clipping;
//! - [`batches`]: token streams and deterministic batches.

pub mod batches;
pub mod optim;
pub mod train;

use forja_core::stage::{parse_params, InputSpec, OutputSpec, Stage};
pub use train::{run, run_with_hook, PretrainConfig, PretrainInputs, PretrainSummary};

/// The `pretrain` stage.
pub const PRETRAIN: Stage = Stage {
    kind: "pretrain",
    about: "next-token pre-training of a GPT, with validation, checkpoints and exact resume",
    inputs: &[
        InputSpec { name: "tokenizer", required: true, many: false },
        InputSpec { name: "train", required: true, many: false },
        InputSpec { name: "val", required: true, many: false },
        InputSpec { name: "init", required: false, many: false },
    ],
    outputs: &[
        OutputSpec { name: "model", path: "model" },
        OutputSpec { name: "metrics", path: "metrics.arrow" },
        OutputSpec { name: "plot", path: "loss.svg" },
    ],
    check: |p| parse_params::<PretrainConfig>("pretrain", p).map(drop),
    run: |p, inputs, out, ctx| {
        let cfg: PretrainConfig = parse_params("pretrain", p)?;
        let inputs = PretrainInputs {
            tokenizer: inputs.one("tokenizer")?.to_path_buf(),
            train: inputs.one("train")?.to_path_buf(),
            val: inputs.one("val")?.to_path_buf(),
            init: inputs.optional("init")?.map(Into::into),
        };
        run(&cfg, &inputs, out, ctx).map(drop)
    },
};

/// All stages of this crate.
pub const STAGES: &[Stage] = &[PRETRAIN];
