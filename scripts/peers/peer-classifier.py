#!/usr/bin/env python3
"""Plain PyTorch/transformers classifier training loop: steps/s peer for forja's text classifier.

Fine-tunes BertForSequenceClassification from a local BERT folder (config.json, model.safetensors,
tokenizer.json; e.g. models/all-MiniLM-L6-v2) on a CSV with columns text,category (K = distinct categories).
Each step: a seeded random batch, padded to the longest in the batch, forward with labels, backward,
clip_grad_norm_(1.0), AdamW (weight_decay 0.01) step. Prints one final stdout line:

    pytorch steps/s: N.NNN      (steps after the first --warmup untimed ones)

Usage:
    .venv/bin/python scripts/peers/peer-classifier.py --model DIR --train CSV --batch 32 --max-length 64 \
        --steps 30 --warmup 5 [--threads N] [--lr 1e-4]
"""
import argparse, csv, os, random, sys, time

import torch
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    rng = random.Random(1337)

    with open(a.train, newline="") as f:  # csv module: fields may hold newlines
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    cats = sorted({c for _, c in rows})
    cat_id = {c: i for i, c in enumerate(cats)}

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.model, "tokenizer.json"))
    pad_id = tok.convert_tokens_to_ids("[PAD]")
    pad_id = 0 if pad_id is None else pad_id
    # tokenizer.json's post-processor adds [CLS] ... [SEP]; truncate to --max-length
    enc = tok([t for t, _ in rows], add_special_tokens=True, truncation=True, max_length=a.max_length)["input_ids"]
    labels = [cat_id[c] for _, c in rows]

    hf_logging.set_verbosity_error()  # "some weights newly initialized" (the classifier head) is expected
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=len(cats), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(rows)} rows, {len(cats)} labels, "
          f"cls {enc[0][0]} sep {enc[0][-1]} pad {pad_id}", file=sys.stderr)

    def batch():
        idx = [rng.randrange(len(enc)) for _ in range(a.batch)]
        longest = max(len(enc[i]) for i in idx)
        ids = torch.full((a.batch, longest), pad_id, dtype=torch.long)
        mask = torch.zeros((a.batch, longest), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(enc[i])] = torch.tensor(enc[i])
            mask[r, : len(enc[i])] = 1
        return ids, mask, torch.tensor([labels[i] for i in idx])

    def step():
        ids, mask, y = batch()
        loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    print(f"{a.steps} timed steps in {dt:.3f}s, last loss {loss:.4f}", file=sys.stderr)
    print(f"pytorch steps/s: {a.steps / dt:.3f}")


if __name__ == "__main__":
    main()
