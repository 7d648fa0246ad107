#!/usr/bin/env python3
"""Loads a forja model folder with Hugging Face transformers (GPT2LMHeadModel) and
scores a forja `tokens` artifact the way forja's eval stage does (non-overlapping
windows of the context length), so the two losses can be compared.

Needs `transformers` and `pyarrow` in the venv (installed by scripts/setup --test):
  .venv/bin/python scripts/checks/hf-parity.py runs/shakespeare-char/pretrain/model \
      runs/shakespeare-char/tokenize/val.tokens.arrow
Prints one JSON line with the loss.
"""
import json
import sys

import pyarrow.ipc as ipc
import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, tokens_path = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    table = ipc.open_file(tokens_path).read_all()
    ids = [t for row in table.column("ids").to_pylist() for t in row]
    block = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, block):
            n = min(block, len(ids) - 1 - s)
            x = torch.tensor(ids[s : s + n]).view(1, -1)
            y = torch.tensor(ids[s + 1 : s + 1 + n]).view(1, -1)
            logits = model(x).logits
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            total += loss.item() * n
            count += n
    print(json.dumps({"hf_transformers_loss": total / count, "tokens": count}))


if __name__ == "__main__":
    main()
