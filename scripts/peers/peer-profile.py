#!/usr/bin/env python3
"""Op-level profile of the PyTorch eager peer (scripts/peers/torch_gpt.py) on
nanoGPT's CPU configuration: which libtorch kernels a training step spends its
time in. forja calls the same kernels (same shapes), so the table also says where
forja's milliseconds go, apart from the optimizer.

  .venv/bin/python scripts/peers/peer-profile.py
"""
import os

import torch

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_gpt as peer  # noqa: E402  (scripts/peers/torch_gpt.py, beside this file)
torch.manual_seed(0)
text = open(os.path.join(root, 'fixtures', 'tinyshakespeare', 'input.txt'), 'rb').read()
data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
model = peer.GPT(256, 64, 4, 4, 128)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
def step():
    ix = torch.randint(len(data) - 65, (12,))
    x = torch.stack([data[i:i+64] for i in ix]); y = torch.stack([data[i+1:i+65] for i in ix])
    loss = model(x, y); opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
for _ in range(10): step()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(20): step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
