#!/usr/bin/env python3
"""Checks that a forja reward model folder loads in Hugging Face transformers as a
one-label sequence classifier and scores as forja does.

    .venv/bin/python scripts/checks/reward-hf-check.py CASES.json [--arch LlamaForSequenceClassification]

CASES.json: {"model": DIR, "cases": [{"ids": [token ids], "score": forja's reward}, ...]}
(written by crates/rlhf/tests/rlhf.rs). Loads DIR with AutoModelForSequenceClassification
(the class the folder's config names: GPT2-, Llama-, Qwen2- or BertForSequenceClassification, num_labels 1;
--arch NAME requires that class), scores every case once alone and
once in a right-padded batch with the folder's pad_token_id and an attention mask, and
compares with forja's rewards (tolerance 1e-4). Prints "reward-hf-check: ok (N cases, max
difference D)" and exits 0, else names the case and exits 1.
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases")
    p.add_argument("--arch", help="the class transformers must load (default: any *ForSequenceClassification)")
    a = p.parse_args()
    spec = json.load(open(a.cases))
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"]).eval()
    name = type(model).__name__
    named = (model.config.architectures or [None])[0]
    if model.config.num_labels != 1 or not name.endswith("ForSequenceClassification") or name != named or (a.arch and name != a.arch):
        sys.exit(f"reward-hf-check: loaded {name} with {model.config.num_labels} labels (config names {named}, wanted {a.arch or 'any'})")
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
