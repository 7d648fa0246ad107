#!/usr/bin/env python3
"""Checks that a forja reward model folder loads in Hugging Face transformers as a
one-label sequence classifier and scores as forja does.

    .venv/bin/python scripts/checks/reward-hf-check.py CASES.json

CASES.json: {"model": DIR, "cases": [{"ids": [token ids], "score": forja's reward}, ...]}
(written by crates/rlhf/tests/rlhf.rs). Loads DIR with AutoModelForSequenceClassification
(GPT2ForSequenceClassification or BertForSequenceClassification, num_labels 1), scores every case once alone and
once in a right-padded batch with the folder's pad_token_id and an attention mask, and
compares with forja's rewards (tolerance 1e-4). Prints "reward-hf-check: ok (N cases, max
difference D)" and exits 0, else names the case and exits 1.
"""
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification


def main():
    spec = json.load(open(sys.argv[1]))
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"]).eval()
    if model.config.num_labels != 1 or type(model).__name__ not in ("GPT2ForSequenceClassification", "BertForSequenceClassification"):
        sys.exit(f"reward-hf-check: loaded {type(model).__name__} with {model.config.num_labels} labels")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    cases = spec["cases"]
    worst = 0.0
    with torch.no_grad():
        for i, c in enumerate(cases):
            got = model(torch.tensor([c["ids"]])).logits[0, 0].item()
            worst = max(worst, abs(got - c["score"]))
            if abs(got - c["score"]) > 1e-4:
                sys.exit(f"reward-hf-check: case {i}: transformers {got} vs forja {c['score']}")
        longest = max(len(c["ids"]) for c in cases)
        ids = torch.tensor([c["ids"] + [pad] * (longest - len(c["ids"])) for c in cases])
        mask = torch.tensor([[1] * len(c["ids"]) + [0] * (longest - len(c["ids"])) for c in cases])
        batch = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
        for i, (got, c) in enumerate(zip(batch, cases)):
            worst = max(worst, abs(got - c["score"]))
            if abs(got - c["score"]) > 1e-4:
                sys.exit(f"reward-hf-check: batched case {i}: transformers {got} vs forja {c['score']}")
    print(f"reward-hf-check: ok ({len(cases)} cases, max difference {worst:.2e})")


if __name__ == "__main__":
    main()
