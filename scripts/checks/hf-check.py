#!/usr/bin/env python3
"""Runs a forja (or Hugging Face) model folder through Hugging Face transformers so
the Rust tests can compare forja's forward pass with the reference one.

  python scripts/checks/hf-check.py KIND MODEL_DIR IDS_JSON OUT_JSON

KIND       gpt2      GPT2LMHeadModel         -> {"logits": [batch][seq][vocab]}
           causal    AutoModelForCausalLM (GPT-2, Llama, Qwen2 by config.json)
                                             -> {"logits": [batch][seq][vocab]}
           bert      BertModel (no pooler)   -> {"last_hidden_state": [batch][seq][hidden]}
           bert-mlm  BertForMaskedLM         -> {"logits": [batch][seq][vocab]}
           bert-cls  BertForSequenceClassification -> {"logits": [batch][labels],
                     "labels": [the id2label names in class order]}
MODEL_DIR  folder with config.json and model.safetensors (from_pretrained layout)
IDS_JSON   JSON list of lists of token ids, every row the same length
OUT_JSON   where the result goes

The model is loaded in float32, eval mode, on the CPU. BERT gets an all-ones
attention mask and all-zero token_type_ids. A weight that the model needs but the
folder lacks (which transformers would otherwise fill with random values), or one
whose shape differs, is an error; weights the folder has but the model does not use
(e.g. BERT's pooler.* for KIND bert) are ignored. Any error: a message on stderr
and exit status 1. Needs the packages in scripts/requirements-test.txt.
"""
import json
import os
import sys

KINDS = ("gpt2", "causal", "bert", "bert-mlm", "bert-cls")

# Quiet and offline: only our own message (or a real traceback) reaches stderr.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def fail(msg):
    print(f"hf-check: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        ids = json.load(f)
    if not isinstance(ids, list) or not ids or not all(isinstance(r, list) for r in ids):
        raise ValueError(f"{path}: expected a non-empty JSON list of lists of token ids")
    n = len(ids[0])
    if n == 0:
        raise ValueError(f"{path}: rows must not be empty")
    for i, row in enumerate(ids):
        if len(row) != n:
            raise ValueError(f"{path}: row {i} has {len(row)} ids, row 0 has {n}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise ValueError(f"{path}: row {i} holds a value that is not an integer")
    return ids


def load(kind, model_dir):
    import torch
    from transformers import AutoModelForCausalLM, BertForMaskedLM, BertForSequenceClassification, BertModel, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir}: no config.json")
    if kind == "gpt2":
        cls, extra = GPT2LMHeadModel, {}
    elif kind == "causal":
        cls, extra = AutoModelForCausalLM, {}
    elif kind == "bert":
        cls, extra = BertModel, {"add_pooling_layer": False}
    elif kind == "bert-cls":
        cls, extra = BertForSequenceClassification, {}
    else:
        cls, extra = BertForMaskedLM, {}
    model, info = cls.from_pretrained(
        model_dir,
        dtype=torch.float32,
        output_loading_info=True,
        local_files_only=True,
        **extra,
    )
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    errors = list(info.get("error_msgs") or [])
    if missing or mismatched or errors:
        parts = []
        if missing:
            parts.append("missing weights: " + ", ".join(missing))
        if mismatched:
            parts.append("shape mismatches: " + ", ".join(str(m) for m in mismatched))
        if errors:
            parts.append("load errors: " + "; ".join(str(e) for e in errors))
        raise ValueError(f"{model_dir} does not load cleanly as {cls.__name__}: " + " | ".join(parts))
    return model.float().eval()


def run(kind, model, ids):
    import torch

    x = torch.tensor(ids, dtype=torch.long)
    limit = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    if x.size(1) > limit:
        raise ValueError(f"sequence length {x.size(1)} exceeds the model's {limit} positions")
    vocab = model.config.vocab_size
    if int(x.min()) < 0 or int(x.max()) >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}); got [{int(x.min())}, {int(x.max())}]")
    with torch.no_grad():
        if kind in ("gpt2", "causal"):
            return {"logits": model(input_ids=x).logits.tolist()}
        mask = torch.ones_like(x)
        types = torch.zeros_like(x)
        out = model(input_ids=x, attention_mask=mask, token_type_ids=types)
        if kind == "bert":
            return {"last_hidden_state": out.last_hidden_state.tolist()}
        if kind == "bert-cls":
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            return {"logits": out.logits.tolist(), "labels": labels}
        return {"logits": out.logits.tolist()}


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in KINDS:
        print(__doc__, file=sys.stderr)
        fail(f"usage: hf-check.py {{{'|'.join(KINDS)}}} MODEL_DIR IDS_JSON OUT_JSON")
    kind, model_dir, ids_path, out_path = sys.argv[1:]
    try:
        ids = read_ids(ids_path)
        model = load(kind, model_dir)
        result = run(kind, model, ids)
        tmp = out_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(tmp, out_path)
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        fail(f"{kind} {model_dir}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
