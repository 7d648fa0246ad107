"""PyTorch DDP peer of `scripts/bench ddp`: the GPT of torch_gpt.py trained
data-parallel under torchrun (Gloo backend on CPU, NCCL on CUDA), the same
model, data, AdamW and clipping as forja's side; prints one JSON line from
rank 0 with the tokens/s of all ranks together (per-rank batch × block × ranks
/ median step time), the peak resident memory of rank 0, and the AdamW state
per rank (with --zero: torch's ZeroRedundancyOptimizer, 1/W of it).

    torchrun --nproc-per-node 2 scripts/peers/torch_ddp.py --text fixtures/tinyshakespeare/input.txt --threads 1
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import GPT, load_tokens  # noqa: E402  (the project's own peer model)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", help="train on this file's bytes (vocabulary 256)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12, help="per rank")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--zero", action="store_true", help="ZeroRedundancyOptimizer (sharded AdamW state)")
    return p.parse_args()


def main():
    a = parse_args()
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("FORJA_BENCH_DEVICE") == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data, vocab = load_tokens(a.text, a.vocab, device)
    model = GPT(vocab, a.block, a.n_layer, a.n_head, a.n_embd).to(device)
    ddp = DDP(model)
    if a.zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1000 + rank)
    times = []
    for step in range(a.warmup + a.steps):
        starts = torch.randint(len(data) - a.block - 1, (a.batch,), generator=gen)
        x = torch.stack([data[s : s + a.block] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + a.block] for s in starts])
        t0 = time.perf_counter()  # no barrier: waiting for the other rank counts, as on forja's side
        loss = ddp(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    local = opt.optim if a.zero else opt  # ZeroRedundancyOptimizer keeps this rank's shard in .optim
    state = sum(t.numel() * t.element_size() for s in local.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    median = statistics.median(times)
    if rank == 0:
        print(json.dumps({
            "peer": "pytorch-ddp" + ("+zero" if a.zero else ""),
            "backend": backend,
            "ranks": world,
            "threads": torch.get_num_threads(),
            "tokens_per_s": a.batch * a.block * world / median,
            "step_ms_median": median * 1000,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "adamw_state_mib": state / 1048576,
        }), flush=True)
    # Leave without tearing Gloo down: with ZeroRedundancyOptimizer the
    # teardown sometimes aborts ("terminate called without an active
    # exception") after the work is done and reported.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
