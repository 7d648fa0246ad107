#!/usr/bin/env python3
"""Check that Hugging Face `peft` loads a forja LoRA adapter to the same logits as forja's merged model.

Loads --base (a GPT-2 or Llama folder) with AutoModelForCausalLM, applies --adapter (PEFT LoRA folder: adapter_config.json +
adapter_model.safetensors, keys like base_model.model.transformer.h.0.attn.c_attn.lora_A.weight, no adapter
name) with peft.PeftModel.from_pretrained, and compares its logits on one sequence of token ids with those of
--merged (GPT-2 folder) loaded alone. Fails (exit 1) if peft reports missing/unexpected adapter keys, if a
tensor in the file was not loaded as is, or if every lora_B is zero after loading.

Usage:
    .venv/bin/python scripts/checks/peft-check.py --base DIR --adapter DIR --merged DIR --ids 1,2,3 [--out FILE.json]

Prints `max |peft - merged|: X` as its last stdout line; --out writes
{"ids", "peft_logits", "merged_logits", "max_abs_diff"} (logits as [T][vocab] lists).
"""
import argparse, json, os, sys, warnings

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def fail(msg):
    print(f"peft-check: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--merged", required=True)
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--out")
    a = p.parse_args()
    ids = [int(x) for x in a.ids.split(",") if x.strip()]
    x = torch.tensor([ids])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base), a.adapter)
        except Exception as e:  # e.g. shape mismatch, bad adapter_config.json
            fail(f"peft failed to load the adapter: {type(e).__name__}: {e}")
    for w in caught:  # peft's "Found missing adapter keys ..." is a UserWarning; skip deprecation noise
        if not issubclass(w.category, (FutureWarning, DeprecationWarning)):
            print(f"warning: {w.message}", file=sys.stderr)
    model.eval()

    # Independent key check: the file's keys must be exactly what peft saves for this config (no adapter name),
    # and each tensor must now be in the model unchanged.
    file_sd = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    want_sd = get_peft_model_state_dict(model)
    missing = sorted(set(want_sd) - set(file_sd))
    unexpected = sorted(set(file_sd) - set(want_sd))
    if missing and sorted(k.replace(".default.", ".") for k in unexpected) == missing:
        fail("adapter keys carry the adapter name ('.lora_A.default.weight'): peft's save_pretrained writes them "
             "without it ('.lora_A.weight'); peft 0.21 loads such keys only into an adapter named 'default' and "
             "silently drops them under any other name")
    if missing or unexpected:
        fail(f"adapter keys do not match peft's: missing {missing[:8]} ({len(missing)}), "
             f"unexpected {unexpected[:8]} ({len(unexpected)})")
    changed = [k for k in file_sd if not torch.equal(file_sd[k].to(want_sd[k].dtype), want_sd[k])]
    if changed:
        fail(f"tensors not loaded as stored: {changed[:8]} ({len(changed)})")
    if all(not t.any() for k, t in want_sd.items() if "lora_B" in k):
        fail("every lora_B is zero after loading: the adapter is a no-op")
    print(f"peft loaded {len(file_sd)} adapter tensors", file=sys.stderr)

    merged = AutoModelForCausalLM.from_pretrained(a.merged).eval()
    with torch.no_grad():
        peft_logits = model(input_ids=x).logits[0]
        merged_logits = merged(input_ids=x).logits[0]
        diff = (peft_logits - merged_logits).abs().max().item()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"ids": ids, "peft_logits": peft_logits.tolist(), "merged_logits": merged_logits.tolist(),
                       "max_abs_diff": diff}, f)
    print(f"max |peft - merged|: {diff:.3e}")


if __name__ == "__main__":
    main()
