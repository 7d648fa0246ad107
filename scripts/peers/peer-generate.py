#!/usr/bin/env python3
"""The transformers peer for single-request generation speed (batch 1, CPU,
float32, eval mode, torch.inference_mode(), KV cache as transformers defaults).

Loads an HF GPT-2 folder (config.json, model.safetensors, tokenizer.json) with
GPT2LMHeadModel.from_pretrained and PreTrainedTokenizerFast(tokenizer_file=...),
then samples exactly N new tokens (do_sample, temperature 0.8, top_k 0,
min_new_tokens = max_new_tokens = N, so the end-of-text token cannot stop it
early): one untimed warm-up run, then R timed runs. Prints each run; the last
line is `transformers tokens/s: X` for the best run (N / seconds).

  .venv/bin/python scripts/peers/peer-generate.py --model DIR [--prompt TEXT] \
      [--max-new-tokens 256] [--runs 3] [--threads 0]
"""
import argparse
import os
import sys
import time

import torch
import transformers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF GPT-2 folder")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.max_new_tokens < 1 or args.runs < 1:
        sys.exit("peer-generate: --max-new-tokens and --runs must be >= 1")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tok_file = os.path.join(args.model, "tokenizer.json")
    if not os.path.exists(tok_file):
        sys.exit(f"peer-generate: {tok_file} not found")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tok_file)
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32)
    model.to("cpu").eval()

    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        sys.exit("peer-generate: the prompt tokenizes to nothing")
    n = args.max_new_tokens
    if ids.shape[1] + n > model.config.n_positions:
        sys.exit(f"peer-generate: prompt ({ids.shape[1]}) + {n} new tokens exceed "
                 f"n_positions {model.config.n_positions}")
    attn = torch.ones_like(ids)
    eos = model.config.eos_token_id
    gen_kwargs = dict(
        attention_mask=attn,
        do_sample=True,
        temperature=0.8,
        top_k=0,
        top_p=1.0,
        min_new_tokens=n,
        max_new_tokens=n,
        pad_token_id=eos if eos is not None else 0,
    )
    print(f"peer-generate: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, prompt {ids.shape[1]} tokens, {n} new tokens, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    def run():
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(ids, **gen_kwargs)
            dt = time.perf_counter() - t0
        got = out.shape[1] - ids.shape[1]
        if got != n:
            sys.exit(f"peer-generate: generated {got} tokens, expected {n}")
        return dt

    torch.manual_seed(args.seed)
    dt = run()
    print(f"warm-up: {dt:.3f} s ({n / dt:.1f} tokens/s, untimed)")
    best = None
    for i in range(args.runs):
        torch.manual_seed(args.seed + 1 + i)
        dt = run()
        print(f"run {i + 1}: {dt:.3f} s, {n / dt:.1f} tokens/s")
        best = dt if best is None else min(best, dt)
    print(f"transformers tokens/s: {n / best:.1f}")


if __name__ == "__main__":
    main()
