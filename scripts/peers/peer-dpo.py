#!/usr/bin/env python3
"""TRL DPOTrainer steps/s peer for forja's DPO trainer.

Trains a local Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json) on a preference JSONL
({"prompt": ..., "chosen": ..., "rejected": ...}, plain text: no chat template, TRL applies none) with TRL's
DPOTrainer: loss_type "sigmoid", beta --beta, float32 on CPU, AdamW (TRL's default optimizer) without weight
decay, gradient clipping at norm 1.0, per_device_train_batch_size --batch (pairs; each step forwards 2*batch
sequences: the chosen rows, then the rejected rows), shuffled data loader, no eval/saving/logging. TRL's other
defaults are kept, among them disable_dropout=True (TRL turns dropout off in the policy; --keep-dropout leaves
the model's dropout on) and the linear learning-rate decay of transformers' Trainer.

The reference model is the policy's initial weights (TRL makes it: with precompute_ref_log_probs=True and no
ref_model it keeps no second model). precompute_ref_log_probs=True: TRL computes the reference log-probs of
every pair once, inside DPOTrainer.__init__ (batch size --batch, no grad), before training starts, as forja
does. That pass is outside the timing (it is over before trainer.train() is called; its time is logged on
stderr). Prints diagnostics on stderr and one final stdout line:

    trl steps/s: N.NNN      (steady state: steps after the first --warmup, timed at on_step_end)

Usage:
    .venv/bin/python scripts/peers/peer-dpo.py --model DIR --data FILE.jsonl --batch 8 --max-length 256 \\
        --steps 20 --warmup 5 [--threads N] [--lr 1e-4] [--beta 0.1] [--keep-dropout] [--dump-tokens OUT.json]

How TRL 1.16.0 turns a pair into tokens (trl/trainer/dpo_trainer.py, DPOTrainer._prepare_dataset and
DataCollatorForPreference), for plain-text (non-conversational) data:
  1. EOS is appended to the completions: chosen += eos_token and rejected += eos_token (the string
     "<|endoftext|>", unless the text already ends with it). Nothing is appended to the prompt.
  2. Three strings are tokenized, each with a plain tokenizer(text) call (add_special_tokens=True, which for a
     GPT-2 tokenizer.json adds nothing: there is NO BOS, the prompt's first token is the first text token):
       prompt_ids_full     = tok(prompt)
       prompt_chosen_ids   = tok(prompt + chosen + eos_token)
       prompt_rejected_ids = tok(prompt + rejected + eos_token)
     The "<|endoftext|>" text is matched as the special token (one id). The completion is NOT tokenized on its
     own: it is the tail of the joint tokenization.
  3. prompt_len = min(common_prefix_length(prompt_ids_full, prompt_chosen_ids),
                      common_prefix_length(prompt_ids_full, prompt_rejected_ids))
     prompt_ids = prompt_ids_full[:prompt_len]; chosen_ids = prompt_chosen_ids[prompt_len:];
     rejected_ids = prompt_rejected_ids[prompt_len:]. (Usually prompt_len = len(tok(prompt)); it is shorter only
     when BPE merges across the prompt/completion boundary, and then TRL warns once.)
  4. Pairs whose prompt_ids alone have >= max_length tokens are dropped (truncation_mode "keep_start", the
     default and the only non-deprecated mode).
  5. Collation: each of prompt_ids + chosen_ids and prompt_ids + rejected_ids is truncated to its first
     max_length tokens (keep_start: a too-long completion loses its end, EOS included), then the batch is
     [all chosen rows; all rejected rows], right-padded with pad_token_id to the longest row; attention_mask 1 on
     real tokens; completion_mask 1 on the completion tokens (EOS included), 0 on prompt and padding.
  6. A sequence's log-prob is the sum over its completion tokens of log p(token | previous tokens) (labels are
     input_ids with -100 where completion_mask is 0, shifted by one); the loss is the batch mean of
     -logsigmoid(beta * ((pc - rc) - (pr - rr))).

--dump-tokens writes, for the first 2 pairs of the prepared dataset (after the step-4 filter), the texts as TRL saw
them (EOS appended), prompt_input_ids / chosen_input_ids / rejected_input_ids (TRL's columns prompt_ids /
chosen_ids / rejected_ids), the precomputed ref_chosen_logps / ref_rejected_logps, and the collated batch of those 2
pairs (input_ids, attention_mask, completion_mask).
"""
import argparse, contextlib, json, os, shutil, sys, tempfile, time

os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's reference log-prob pass shows a tqdm bar otherwise

import torch
import datasets
from datasets import Dataset
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
from trl import DPOConfig, DPOTrainer


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
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--keep-dropout", action="store_true", help="DPOConfig(disable_dropout=False)")
    p.add_argument("--dump-tokens", metavar="FILE")
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
        if tok.eos_token is None:  # DPOTrainer appends eos_token to the completions; fall back to the pad token
            tok.eos_token = tok.pad_token
    model = GPT2LMHeadModel.from_pretrained(a.model, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id

    with open(a.data) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])

    out_dir = tempfile.mkdtemp(prefix="peer-dpo-")
    cfg = DPOConfig(
        output_dir=out_dir,
        max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=a.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type=["sigmoid"],
        beta=a.beta,
        label_smoothing=0.0,
        precompute_ref_log_probs=True,  # reference log-probs once, in DPOTrainer.__init__, before step 1
        max_length=a.max_length,
        truncation_mode="keep_start",
        padding_free=False,
        disable_dropout=not a.keep_dropout,  # TRL's default is True
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
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    t_init = time.perf_counter() - t0
    tds = trainer.train_dataset
    assert "ref_chosen_logps" in tds.column_names, "reference log-probs were not precomputed"
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, optim {cfg.optim}, bf16 {cfg.bf16}, "
        f"checkpointing {cfg.activation_checkpointing}/{cfg.gradient_checkpointing}, disable_dropout {cfg.disable_dropout}, "
        f"loss {cfg.loss_type}, beta {cfg.beta}, {len(tds)}/{len(ds)} pairs kept, "
        f"eos {tok.eos_token!r} pad {tok.pad_token!r}")
    log(f"DPOTrainer init (tokenize + reference log-probs of {len(tds)} pairs): {t_init:.1f}s, not timed")

    if a.dump_tokens:
        ex = [tds[i] for i in range(min(2, len(tds)))]
        batch = trainer.data_collator([{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in ex])
        dump = {
            "pairs": [{
                "prompt": e["prompt"], "chosen": e["chosen"], "rejected": e["rejected"],  # as TRL saw them (+eos)
                "prompt_input_ids": e["prompt_ids"],
                "chosen_input_ids": e["chosen_ids"],
                "rejected_input_ids": e["rejected_ids"],
                "ref_chosen_logps": e["ref_chosen_logps"],
                "ref_rejected_logps": e["ref_rejected_logps"],
            } for e in ex],
            "batch_input_ids": batch["input_ids"].tolist(),  # [chosen rows; rejected rows]
            "batch_attention_mask": batch["attention_mask"].tolist(),
            "batch_completion_mask": batch["completion_mask"].tolist(),
        }
        with open(a.dump_tokens, "w") as f:
            json.dump(dump, f)
        log(f"wrote {a.dump_tokens}")

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
