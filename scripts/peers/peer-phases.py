#!/usr/bin/env python3
"""Splits a training step of the PyTorch eager peer (scripts/peers/torch_gpt.py,
imported as is) into forward / backward / clip+optimizer, as
`forja-bench-pretrain --phases` does for forja. Same configurations as
`scripts/bench pretrain`: nanogpt (default) or gpt6x384.

  .venv/bin/python scripts/peers/peer-phases.py [--config nanogpt|gpt6x384]
"""
import os
import statistics
import sys
import time

import torch

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
args = sys.argv[1:]
config = "nanogpt"
if args[:1] == ["--config"]:
    config, args = args[1], args[2:]
if args:
    sys.exit(f"peer-phases: unexpected arguments {args} (usage: peer-phases.py [--config nanogpt|gpt6x384])")
import torch_gpt as peer  # noqa: E402  (scripts/peers/torch_gpt.py, beside this file)

torch.manual_seed(0)
if config == "nanogpt":
    text = open(os.path.join(root, "fixtures", "tinyshakespeare", "input.txt"), "rb").read()
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    vocab, block, layers, heads, width, batch, steps = 256, 64, 4, 4, 128, 12, 105
elif config == "gpt6x384":
    vocab, block, layers, heads, width, batch, steps = 4096, 256, 6, 6, 384, 8, 20
    data = torch.randint(0, vocab, (1_000_000,))
else:
    sys.exit(f"peer-phases: unknown config {config} (nanogpt, gpt6x384)")
model = peer.GPT(vocab, block, layers, heads, width)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
phases = []
for step in range(steps):
    ix = torch.randint(len(data) - block - 1, (batch,))
    x = torch.stack([data[i : i + block] for i in ix])
    y = torch.stack([data[i + 1 : i + block + 1] for i in ix])
    t0 = time.perf_counter()
    loss = model(x, y)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()
    t3 = time.perf_counter()
    if step >= 5:
        phases.append((t1 - t0, t2 - t1, t3 - t2))
mean = [statistics.mean(p[i] for p in phases) * 1000 for i in range(3)]
print(f"peer phases ms [{config}]: forward %.2f, backward %.2f, clip+optimizer %.2f" % tuple(mean))
