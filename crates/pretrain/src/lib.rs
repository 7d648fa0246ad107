//! forja-pretrain: self-supervised pre-training on the training engine, and
//! pretrained models in and out.
//!
//! - [`pretrain`]: the `pretrain` stage (GPT / LSTM next-token, BERT masked-LM;
//!   continued pre-training from any model folder);
//! - [`objectives`]: the causal-LM and masked-LM [`forja_train::Objective`]s;
//! - [`models`]: `import_model` (HF BERT / GPT-2 / Llama folders), `embed`
//!   (sentence embeddings), `export_gguf` (llama.cpp's format) and `quantize`
//!   (a folder with int8 weights).

pub mod models;
pub mod objectives;
pub mod pretrain;

use forja_core::stage::{port, OutDir, OutputSpec, Stage, StageCtx};
pub use pretrain::{run, run_with_hook, Architecture, PretrainConfig, PretrainInputs};

/// The `pretrain` stage.
pub struct Pretrain;

impl Stage for Pretrain {
    const KIND: &'static str = "pretrain";
    const ABOUT: &'static str = "pre-train a GPT or LSTM (next token) or a BERT (masked LM), with validation, best weights, diagnosis, checkpoints and exact resume";
    const OUTPUTS: &'static [OutputSpec] = &pretrain::OUTPUTS;
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = PretrainConfig;
    type Inputs = PretrainInputs;
    const DISTRIBUTED: bool = true;

    fn run(&self, cfg: &PretrainConfig, inputs: &PretrainInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

forja_core::stage_inputs! {
    /// Input of `import_model`.
    pub struct ModelDir {
        /// A Hugging Face (or forja) model folder.
        model: one[MODEL],
    }
}

/// The `import_model` stage.
pub struct ImportModel;

impl Stage for ImportModel {
    const KIND: &'static str = "import_model";
    const ABOUT: &'static str = "check and import a Hugging Face BERT or GPT-2 model folder (safetensors, config.json, tokenizer.json)";
    const OUTPUTS: &'static [OutputSpec] = &[pretrain::MODEL];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = models::ImportConfig;
    type Inputs = ModelDir;

    fn run(&self, _cfg: &models::ImportConfig, input: &ModelDir, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        models::import_model(&input.model, &out.path(&pretrain::MODEL))?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

forja_core::stage_inputs! {
    /// Inputs of `embed`.
    pub struct EmbedInputs {
        /// A BERT encoder folder.
        model: one[MODEL],
        documents: one[DOCUMENTS],
    }
}

/// Output of `embed`.
pub const EMBEDDINGS: OutputSpec = OutputSpec { name: "embeddings", path: "embeddings.arrow", kind: port::EMBEDDINGS };

/// The `embed` stage.
pub struct Embed;

impl Stage for Embed {
    const KIND: &'static str = "embed";
    const ABOUT: &'static str = "mean-pooled, L2-normalised sentence embeddings of documents with a BERT encoder";
    const OUTPUTS: &'static [OutputSpec] = &[EMBEDDINGS];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = models::EmbedConfig;
    type Inputs = EmbedInputs;

    fn run(&self, cfg: &models::EmbedConfig, inputs: &EmbedInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        models::run_embed(cfg, &inputs.model, &inputs.documents, &out.path(&EMBEDDINGS), ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// Output of `export_gguf`.
pub const GGUF: OutputSpec = OutputSpec { name: "gguf", path: "model.gguf", kind: port::GGUF };

/// The `export_gguf` stage.
pub struct ExportGguf;

impl Stage for ExportGguf {
    const KIND: &'static str = "export_gguf";
    const ABOUT: &'static str =
        "write a decoder model folder (GPT-2 or Llama block, byte-level BPE) as one GGUF file for llama.cpp, ollama and LM Studio";
    const OUTPUTS: &'static [OutputSpec] = &[GGUF];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = models::GgufConfig;
    type Inputs = ModelDir;

    fn run(&self, cfg: &models::GgufConfig, input: &ModelDir, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        let file = out.path(&GGUF);
        let s = forja_model::gguf::write_gguf(&input.model, &file, cfg.dtype)?;
        println!(
            "export_gguf: {} ({}, {} tensors, {:?}, {} bytes) → {}",
            input.model.display(),
            s.arch,
            s.tensors,
            cfg.dtype,
            s.bytes,
            file.display()
        );
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// The `quantize` stage.
pub struct Quantize;

impl Stage for Quantize {
    const KIND: &'static str = "quantize";
    const ABOUT: &'static str = "write a decoder model folder with per-channel int8 projections and head (the rest float32; `forja serve`, and `eval` on the CPU, run it on int8 kernels, every other tool loads it as float32)";
    const OUTPUTS: &'static [OutputSpec] = &[pretrain::MODEL];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = models::QuantizeConfig;
    type Inputs = ModelDir;

    fn run(&self, cfg: &models::QuantizeConfig, input: &ModelDir, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        anyhow::ensure!(cfg.method == forja_model::Quantization::Int8, "quantize: method must be `int8`");
        let dir = out.path(&pretrain::MODEL);
        let s = forja_model::quant::write_quantized_folder(&input.model, &dir)?;
        println!(
            "quantize: {} ({} matrices to int8, weights {} → {} bytes) → {}",
            input.model.display(),
            s.tensors,
            s.bytes_before,
            s.bytes_after,
            dir.display()
        );
        Ok(Self::OUTPUTS.to_vec())
    }
}

/// All stages of this crate.
pub const STAGES: &[&dyn forja_core::stage::DynStage] = &[&Pretrain, &ImportModel, &Embed, &ExportGguf, &Quantize];
