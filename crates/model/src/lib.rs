//! forja-model: models on libtorch.
//!
//! - [`gpt`]: the decoder-only Transformer (GPT-2 layout, HF-compatible names);
//! - [`generate`]: KV-cache generation and sampling;
//! - [`checkpoint`]: model folders (safetensors + config.json + tokenizer.json).

pub mod checkpoint;
pub mod generate;
pub mod gpt;

pub use checkpoint::{load_model, parse_device, save_model, LoadedModel};
pub use generate::{generate, SamplingConfig};
pub use gpt::{Gpt, GptConfig, KvCache};
