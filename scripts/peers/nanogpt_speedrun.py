#!/usr/bin/env python3
"""forja's PyTorch peer for the "time to target validation loss" benchmark: Karpathy's
nanoGPT recipe for character-level Tiny Shakespeare (config/train_shakespeare_char.py
with the CPU settings of nanoGPT's README: --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0, which
reaches a validation loss of about 1.88), rewritten here in plain PyTorch, timed by
the seconds of training it takes to reach --target.

The model is nanoGPT's GPT: token and learned position embeddings, pre-LayerNorm
blocks (LayerNorm without bias, nanoGPT's bias=False), causal attention through
scaled_dot_product_attention with a fused c_attn and a c_proj (Linear, no bias), an
MLP four times as wide with exact GELU, a final LayerNorm, lm_head tied to wte;
weights drawn from N(0, 0.02), every c_proj.weight from N(0, 0.02/sqrt(2 n_layer)).
Training as nanoGPT's train.py: AdamW (betas 0.9, 0.99; lr 1e-3; weight decay 0.1 on
parameters of two or more dimensions, 0 on the rest; PyTorch's default
implementation, which on CPU is the for-loop one), lr warmed up linearly over 100
steps then cosine-decayed to 1e-4 at step 2000 and held there, gradient clipping at
1.0, float32, one micro-batch per step of --batch windows at torch.randint offsets.

Data (as nanoGPT's data/shakespeare_char/prepare.py): the vocabulary is the sorted set
of the text's characters; the first int(0.9 n) characters train, the rest validate.
Or --data: the token ids `forja-bench-speedrun prepare` wrote (the same split for
characters; a BPE for the C4 sample), so that both sides read the same tokens.

Evaluation, fixed so that another implementation scores the same tokens: the
validation ids cut into non-overlapping windows starting at 0, block, 2 block, ...
(while start + block + 1 <= len), x = val[s:s+block], y = val[s+1:s+1+block]; the
loss is the mean cross-entropy over every position of every window. It runs after
every --eval-interval steps (not at step 0); training stops at the first loss <=
--target or after --max-steps. The clock sums perf_counter around each training step
(batch draw, forward, backward, clipping, optimizer step); evaluation is not timed.

Prints progress to stderr and one JSON line to stdout:
  {"peer": "nanogpt", "torch", "threads", "params", "seconds_to_target",
   "steps_to_target", "final_val", "evals": [[step, train_seconds, val_loss], ...]}
(params excludes the position embeddings, as nanoGPT's get_num_params; the *_to_target
fields are null when the target was not reached).

  .venv/bin/python scripts/peers/nanogpt_speedrun.py --text fixtures/tinyshakespeare/input.txt --threads 1
"""
import argparse
import json
import os
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        heads = lambda z: z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q, k, v = map(heads, self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, n_embd, dropout):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied, as nanoGPT
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def num_params(self):
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(it, a):
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr, then min_lr."""
    if it < a.warmup:
        return a.lr * (it + 1) / (a.warmup + 1)
    if it > a.lr_decay_iters:
        return a.min_lr
    ratio = (it - a.warmup) / (a.lr_decay_iters - a.warmup)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


@torch.no_grad()
def evaluate(model, val, block, batch=256):
    """Mean cross-entropy over the non-overlapping validation windows."""
    model.eval()
    starts = list(range(0, len(val) - block, block))  # start + block + 1 <= len(val)
    total = 0.0
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        x = torch.stack([val[s : s + block] for s in chunk])
        y = torch.stack([val[s + 1 : s + 1 + block] for s in chunk])
        total += model(x, y).item() * len(chunk)
    model.train()
    return total / len(starts)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the corpus (Tiny Shakespeare's input.txt), split as nanoGPT's prepare.py")
    src.add_argument("--data", help="a folder of token ids (train.bin, val.bin: int32 little-endian; meta.json "
                     "with vocab_size), as `forja-bench-speedrun prepare` writes it")
    p.add_argument("--target", type=float, default=1.88, help="stop at this validation loss")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1)
    recipe = (("--block", 64), ("--batch", 12), ("--n-layer", 4), ("--n-head", 4), ("--n-embd", 128),
              ("--lr", 1e-3), ("--min-lr", 1e-4), ("--warmup", 100), ("--lr-decay-iters", 2000),
              ("--beta2", 0.99), ("--weight-decay", 0.1), ("--grad-clip", 1.0), ("--dropout", 0.0))
    for flag, default in recipe:  # nanoGPT's shakespeare_char recipe, README CPU settings
        p.add_argument(flag, type=type(default), default=default)
    return p.parse_args()


def main():
    a = parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    if a.text:
        with open(a.text, encoding="utf-8") as f:
            text = f.read()
        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
        n_train = int(len(data) * 0.9)
        train, val, vocab = data[:n_train], data[n_train:], len(chars)
    else:
        read = lambda name: torch.frombuffer(bytearray(open(os.path.join(a.data, name), "rb").read()), dtype=torch.int32).long()
        train, val = read("train.bin"), read("val.bin")
        with open(os.path.join(a.data, "meta.json"), encoding="utf-8") as f:
            vocab = json.load(f)["vocab_size"]

    model = GPT(vocab, a.block, a.n_layer, a.n_head, a.n_embd, a.dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, a.beta2))

    seconds, evals, reached = 0.0, [], None
    for step in range(a.max_steps):
        t0 = time.perf_counter()
        lr = get_lr(step, a)
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(train) - a.block, (a.batch,))
        x = torch.stack([train[i : i + a.block] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + a.block] for i in ix])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0

        done = step + 1
        if done % a.eval_interval == 0 or done == a.max_steps:
            val_loss = evaluate(model, val, a.block)
            evals.append([done, seconds, val_loss])
            print(f"step {done}: train loss {loss.item():.4f}, val {val_loss:.4f}, "
                  f"{seconds:.1f}s training, lr {lr:.2e}", file=sys.stderr, flush=True)
            if val_loss <= a.target:
                reached = (seconds, done)
                break

    print(json.dumps({
        "peer": "nanogpt",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": model.num_params(),
        "seconds_to_target": reached[0] if reached else None,
        "steps_to_target": reached[1] if reached else None,
        "final_val": evals[-1][2] if evals else None,
        "evals": evals,
    }))


if __name__ == "__main__":
    main()
