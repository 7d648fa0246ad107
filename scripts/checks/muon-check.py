#!/usr/bin/env python3
"""Muon's reference update (KellerJordan/Muon: `zeropower_via_newtonschulz5` and
`muon_update`, then `p.mul_(1 - lr * wd); p.add_(update, alpha=-lr)`), run on given
matrices and gradients so forja's optimizer can be compared with it.

  python scripts/checks/muon-check.py IN_JSON OUT_JSON

IN_JSON   {"params": [matrix, ...], "grads": [[matrix per param], ... one list per step],
           "lr": float, "weight_decay": float, "momentum": float, "ns_steps": int}
OUT_JSON  {"params": [matrix, ...]} after the steps

Matrices are `nn.Linear` weights ([out, in]). The iteration runs in float32 here
(the reference casts to bfloat16, which is what forja does on CUDA; on the CPU
forja computes in float32), so the comparison can be tight.
"""
import json
import sys

import torch


def zeropower_via_newtonschulz5(G, steps):
    assert G.ndim >= 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    update = zeropower_via_newtonschulz5(update, steps=ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    params = [torch.tensor(p, dtype=torch.float32) for p in spec["params"]]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in spec["grads"]:
        for p, buf, g in zip(params, bufs, grads):
            g = torch.tensor(g, dtype=torch.float32)
            update = muon_update(g, buf, beta=spec["momentum"], ns_steps=spec["ns_steps"])
            p.mul_(1 - spec["lr"] * spec["weight_decay"])
            p.add_(update.reshape(p.shape), alpha=-spec["lr"])
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"params": [p.tolist() for p in params]}, f)


if __name__ == "__main__":
    main()
