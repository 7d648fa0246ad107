#!/usr/bin/env python3
"""forja's PyTorch peer for `scripts/bench pretrain`: the GPT that forja-bench-pretrain
trains, written in plain PyTorch and trained by a plain PyTorch loop, so that the
benchmark compares forja's Rust/libtorch training step with what a PyTorch user
would write, on the same machine in the same run (a ratio, not an absolute time).

The model is GPT-2's layout, as forja's `Gpt` (crates/model): learned position
embeddings, pre-LayerNorm blocks, causal attention through
scaled_dot_product_attention, a GELU MLP four times as wide, a final LayerNorm,
the output projection tied to the token embeddings; weights drawn from
N(0, 0.02), biases zero; no dropout. Training: AdamW (lr 1e-3, weight decay 0.1
on every parameter, PyTorch's default implementation), gradient clipping at 1.0,
float32.

Data: a text file's bytes (--text; vocabulary 256) or random tokens (--vocab),
batches of --batch windows of --block tokens at random offsets.

GPU options: --device cuda, --bf16 (autocast to bfloat16, the loss in float32, as
PyTorch users train), --fused (AdamW(fused=True), PyTorch's fastest AdamW on
CUDA). On CUDA every step is synchronised before its time is read. --compile
wraps the model in torch.compile (compilation happens in the --warmup steps).

Runs --warmup untimed steps, then --steps timed ones, and prints one JSON line:
  {"peer", "device", "torch", "threads", "params", "tokens_per_s",
   "step_ms_median", "final_loss", "first_loss"}
(tokens_per_s = batch x block / median step time; the losses are of the timed
steps). scripts/bench reads tokens_per_s, final_loss, params, threads and torch.

  .venv/bin/python scripts/peers/torch_gpt.py --text fixtures/tinyshakespeare/input.txt \\
      --n-layer 4 --n-head 4 --n-embd 128 --block 64 --batch 12 --steps 30 --warmup 5

Other scripts import it (scripts/peers/peer-phases.py, peer-profile.py): GPT(vocab,
block, n_layer, n_head, n_embd) returns the mean cross-entropy of (idx, targets).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Causal self-attention with one fused query/key/value projection."""

    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        b, t, c = x.shape
        heads = lambda z: z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q, k, v = map(heads, self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = Attention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = Mlp(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def load_tokens(text, vocab, device):
    """The training tokens: a file's bytes (vocabulary 256), else a million
    random tokens of `vocab` (drawn after torch.manual_seed)."""
    if text:
        with open(text, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
        vocab = 256
    else:
        data = torch.randint(0, vocab, (1_000_000,))
    return data.to(device), vocab


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", help="train on this file's bytes (vocabulary 256)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary of random tokens (no --text)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="libtorch threads (0: its default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True)")
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return a


def main():
    a = parse_args()
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    data, vocab = load_tokens(a.text, a.vocab, device)

    model = GPT(vocab, a.block, a.n_layer, a.n_head, a.n_embd).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # the tied matrix once
    step_model = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=a.fused or None)

    times, losses = [], []
    for step in range(a.warmup + a.steps):
        starts = torch.randint(len(data) - a.block - 1, (a.batch,), device=device)
        x = torch.stack([data[s : s + a.block] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + a.block] for s in starts])
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = step_model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        elapsed = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(elapsed)
            losses.append(loss.item())

    median = statistics.median(times)
    name = "pytorch-eager" + "".join(tag for on, tag in
                                     ((a.compile, "+compile"), (a.bf16, "+bf16"), (a.fused, "+fused")) if on)
    print(json.dumps({
        "peer": name,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": n_params,
        "tokens_per_s": a.batch * a.block / median,
        "step_ms_median": median * 1000,
        "final_loss": losses[-1],
        "first_loss": losses[0],
    }))


if __name__ == "__main__":
    main()
