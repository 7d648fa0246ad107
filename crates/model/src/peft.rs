//! LoRA adapters in the layout of Hugging Face's `peft`: `adapter_config.json`
//! plus `adapter_model.safetensors` with tensors named
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`, so
//! `PeftModel.from_pretrained(base, dir)` puts them on the exported base.

use crate::{Layout, LoraConfig};
use anyhow::Context;
use std::path::Path;
use tch::Tensor;

/// The PEFT adapter folder inside a model folder (LoRA runs).
pub const ADAPTER_DIR: &str = "adapter";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Writes the adapter tensors among `named` (forja's variable names) and the
/// config into `dir` (created). GPT-2's projections are `Conv1D`s (`[in, out]`
/// weights), hence `fan_in_fan_out`; Llama's are `nn.Linear`s.
pub fn write_adapter(dir: &Path, named: &[(String, Tensor)], lora: &LoraConfig, base: &Path, layout: Layout) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let adapters: Vec<(String, Tensor)> =
        named.iter().filter(|(n, _)| n.contains(".lora_")).map(|(n, t)| (format!("base_model.model.{n}"), t.shallow_clone())).collect();
    anyhow::ensure!(!adapters.is_empty(), "no LoRA adapter matched the targets {:?}", lora.targets);
    // The modules that really have adapters (a target given by another name,
    // `c_attn` on a Llama, is written as the module it became).
    let mut modules: Vec<String> =
        adapters.iter().filter_map(|(n, _)| n.split(".lora_").next().and_then(|m| m.rsplit('.').next()).map(str::to_string)).collect();
    modules.sort();
    modules.dedup();
    let path = dir.join(ADAPTER_WEIGHTS);
    Tensor::write_safetensors(&adapters, &path).with_context(|| format!("writing {}", path.display()))?;
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "fan_in_fan_out": layout == Layout::InOut,
        "bias": "none",
        "inference_mode": true,
        "modules_to_save": null,
        "base_model_name_or_path": base.display().to_string(),
    });
    std::fs::write(dir.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&cfg)?)?;
    Ok(adapters.len())
}
