#!/usr/bin/env python3
"""Splits a training step of the PyTorch eager peer (../shared/bench/torch_gpt_ref.py,
imported as is) into forward / backward / clip+optimizer, as
`forja-bench-pretrain --phases` does for forja. Same configuration as scripts/bench.

  .venv/bin/python scripts/peer-phases.py [PEER_DIR]
"""
import os
import statistics
import sys
import time

import torch

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "shared", "bench"))
import torch_gpt_ref as peer  # noqa: E402

torch.manual_seed(0)
text = open(os.path.join(root, "fixtures", "tinyshakespeare", "input.txt"), "rb").read()
data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
model = peer.GPT(256, 64, 4, 4, 128)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
phases = []
for step in range(105):
    ix = torch.randint(len(data) - 65, (12,))
    x = torch.stack([data[i : i + 64] for i in ix])
    y = torch.stack([data[i + 1 : i + 65] for i in ix])
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
print("peer phases ms: forward %.2f, backward %.2f, clip+optimizer %.2f" % tuple(mean))
