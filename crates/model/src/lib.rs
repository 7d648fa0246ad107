//! forja-model: models on libtorch.
//!
//! - [`gpt`]: the decoder-only Transformer, GPT-2's block or the Llama family's
//!   (rotary, RMSNorm, SwiGLU, grouped-query attention), HF-compatible names;
//! - [`hf`]: a decoder's `config.json` as Hugging Face's classes read it;
//! - [`bert`]: the encoder (HF `BertModel` names), its masked-LM head, mean pooling;
//! - [`classifier`]: BERT sequence classifier (`BertForSequenceClassification` layout);
//! - [`lstm`]: the recurrent language-model baseline;
//! - [`lm`]: the [`LanguageModel`] trait every causal model implements;
//! - [`layers`]: projections plain or LoRA, precision, shape checks;
//! - [`generate`]: KV-cache generation (single and batched with log-probabilities)
//!   and sampling;
//! - [`paged`]: a paged KV cache for continuous batching and prefix caching (serving);
//! - [`checkpoint`]: model folders (safetensors + config.json + tokenizer.json),
//!   loading by `model_type`;
//! - [`chat`]: chat templates (Jinja, as HF stores them in
//!   `tokenizer_config.json`), assistant-token masks, chat generation with
//!   end-of-turn and stop strings;
//! - [`peft`]: LoRA adapters in the `peft` package's layout;
//! - [`gguf`]: a decoder folder as one GGUF file for llama.cpp / ollama;
//! - [`quant`]: weight-only int8 (per output channel) for serving, and the
//!   quantized model folder;
//! - [`export`]: trained models written as folders (chat model, GPT policy,
//!   classifier, reward model), adapters merged.
//!
//! `checkpoint`, `chat`, `peft`, `quant` and `export` are the only code that knows a
//! model folder's files; stages read and write folders through them.

pub mod bert;
pub mod chat;
pub mod checkpoint;
pub mod classifier;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod gpt;
pub mod hf;
pub mod layers;
pub mod lm;
pub mod lstm;
pub mod paged;
pub mod peft;
pub mod quant;

pub use bert::{mean_pool, Bert, BertConfig, BertMlmHead};
pub use checkpoint::{load_gpt, load_model, parse_device, save_model, AnyModel, LoadedModel};
pub use classifier::{BertClassifier, ClassifierConfig};
pub use generate::{generate, generate_batch, Generated, SamplingConfig};
pub use gpt::{Activation, Arch, Gpt, GptConfig, KvCache};
pub use layers::{merge_lora, Layout, LoraConfig, Precision};
pub use lm::LanguageModel;
pub use lstm::{LstmConfig, LstmLm};
pub use paged::{PagedCache, PagedRow};
pub use quant::Quantization;
