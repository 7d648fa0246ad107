#!/usr/bin/env python3
"""Writes a tiny, randomly initialised Hugging Face decoder with `transformers` itself
(so forja's import is checked against files it did not write), and its logits.

  python scripts/checks/hf-random-decoder.py ARCH OUT_DIR IDS_JSON LOGITS_JSON

ARCH         llama   LlamaForCausalLM: grouped-query attention (4 heads, 2 key/value
                     heads), untied head, rope_theta 50000, rms_norm_eps 1e-5
             qwen2   Qwen2ForCausalLM: the same shape (biases on q/k/v), tied head
OUT_DIR      gets config.json and model.safetensors (save_pretrained, float32)
IDS_JSON     JSON list of lists of token ids (rows of one length, ids < 40)
LOGITS_JSON  {"logits": [batch][seq][vocab]} of the model on the ids, float32, eval mode

Vocabulary 40, hidden 32, intermediate 48, 2 layers, 64 positions; weights drawn with
torch.manual_seed(7) and the norms' weights perturbed (they start at one, which would
hide a norm applied without its weight). Needs the packages in
scripts/requirements-test.txt; reads and downloads nothing.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPE = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def build(arch):
    if arch == "llama":
        cfg = LlamaConfig(**SHAPE, rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
        return LlamaForCausalLM(cfg)
    if arch == "qwen2":
        cfg = Qwen2Config(**SHAPE, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
        return Qwen2ForCausalLM(cfg)
    raise ValueError(f"unknown ARCH {arch!r} (llama, qwen2)")


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    arch, out_dir, ids_path, logits_path = sys.argv[1:]
    torch.manual_seed(7)
    model = build(arch).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(out_dir, safe_serialization=True)
    with open(ids_path, encoding="utf-8") as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    with open(logits_path, "w", encoding="utf-8") as f:
        json.dump({"logits": logits.tolist()}, f)


if __name__ == "__main__":
    main()
