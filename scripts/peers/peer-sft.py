#!/usr/bin/env python3
"""TRL SFTTrainer steps/s peer for forja's SFT trainer (completion-only loss).

Trains a local Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json) on a
prompt-completion JSONL ({"prompt": ..., "completion": ...}, chat-template text already rendered, so TRL
applies no template) with TRL's SFTTrainer: completion_only_loss, no packing, pad to the longest in the batch,
float32 on CPU, AdamW, no eval/saving/logging. Prints diagnostics on stderr and one final stdout line:

    trl steps/s: N.NNN      (steady state: steps after the first --warmup, timed at on_step_end)

Usage:
    .venv/bin/python scripts/peers/peer-sft.py --model DIR --data FILE.jsonl --batch 8 --max-length 256 \
        --steps 30 --warmup 5 [--threads N] [--lr 1e-4] [--dump-mask OUT.json]

--dump-mask writes, before training, the first 4 prepared examples as TRL tokenized them (input_ids, labels
with -100 on non-loss tokens, completion_mask = labels != -100) plus the padded labels of a collated batch of
those 4. Note: TRL appends tokenizer.eos_token to each completion that does not already end with it.
"""
import argparse, contextlib, json, os, shutil, sys, tempfile, time

import torch
import datasets
from datasets import Dataset
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
from trl import SFTConfig, SFTTrainer


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends = []  # perf_counter() at the end of step 1, 2, ...

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dump-mask", metavar="FILE")
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 1:
        p.error("--steps and --warmup must be >= 1 (timing starts at the end of step --warmup)")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.model, "tokenizer.json"))
    if tok.convert_tokens_to_ids("<|endoftext|>") not in (None, tok.unk_token_id):
        tok.pad_token = tok.eos_token = "<|endoftext|>"
    else:
        tok.pad_token = tok.convert_ids_to_tokens(0)
        if tok.eos_token is None:  # SFTTrainer requires an eos token; fall back to the pad token
            tok.eos_token = tok.pad_token
    model = GPT2LMHeadModel.from_pretrained(a.model, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id

    with open(a.data) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    out_dir = tempfile.mkdtemp(prefix="peer-sft-")
    cfg = SFTConfig(
        output_dir=out_dir,
        max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=a.lr,
        weight_decay=0.0,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        max_length=a.max_length,
        bf16=False,  # TRL defaults bf16=True
        fp16=False,
        activation_checkpointing=False,  # TRL defaults gradient_checkpointing (its old name) to True
        use_cpu=True,
        seed=1337,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, optim {cfg.optim}, bf16 {cfg.bf16}, "
        f"checkpointing {cfg.activation_checkpointing}/{cfg.gradient_checkpointing}, "
        f"{len(trainer.train_dataset)} prepared examples, eos {tok.eos_token!r} pad {tok.pad_token!r}")

    if a.dump_mask:
        ex = [trainer.train_dataset[i] for i in range(min(4, len(trainer.train_dataset)))]
        batch = trainer.data_collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in ex])
        dump = {
            "examples": [{
                "prompt": e.get("prompt"), "completion": e.get("completion"),  # completion as TRL saw it (+eos)
                "input_ids": e["input_ids"], "labels": e["labels"],
                "completion_mask": [int(l != -100) for l in e["labels"]],
            } for e in ex],
            "batch_input_ids": batch["input_ids"].tolist(),
            "batch_labels": batch["labels"].tolist(),
            "batch_attention_mask": batch["attention_mask"].tolist(),
        }
        with open(a.dump_mask, "w") as f:
            json.dump(dump, f)
        log(f"wrote {a.dump_mask}")

    try:  # Trainer prints its final metrics dict on stdout: send it to stderr
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    t = timer.ends
    if len(t) != a.warmup + a.steps:
        sys.exit(f"expected {a.warmup + a.steps} step ends, got {len(t)}")
    start = t[a.warmup - 1]  # end of step `warmup`
    log(f"{a.steps} timed steps in {t[-1] - start:.3f}s")
    print(f"trl steps/s: {a.steps / (t[-1] - start):.3f}")


if __name__ == "__main__":
    main()
