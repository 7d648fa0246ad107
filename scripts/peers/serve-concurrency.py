#!/usr/bin/env python3
"""How many sequences forja-serve runs at once on a mixed-length workload
(standard library only; loopback only).

Sends --requests completions at once, each from its own thread (not streamed):
prompts of --min-words to --max-words words and max_tokens of --min-tokens to
--max-tokens, both drawn uniformly with --seed, sampled past the end-of-text
token. Meanwhile it reads /metrics every 50 ms and keeps the largest
`forja_batch_size` (sequences in the running batch) and `forja_kv_blocks_used`.
Prints the peak, the wall time, tokens/s and errors; with --json the last
stdout line is one JSON object. Exit 1 when no request succeeded.

  scripts/peers/serve-concurrency.py --url http://127.0.0.1:PORT --api-key KEY \\
      [--requests 400] [--min-words 10] [--max-words 400] [--min-tokens 8] [--max-tokens 64] [--json]
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time

import serve_target

TIMEOUT_S = 600.0
WORDS = ("clips friends april may sold half many how much money earn hour minutes babysitting "
         "wallet saving parents grandparents spent pages read today tomorrow remaining books week "
         "apples oranges price each total dollars cents store bought gave left more than twice").split()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--min-words", type=int, default=10)
    ap.add_argument("--max-words", type=int, default=400)
    ap.add_argument("--min-tokens", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.requests <= 4096:
        sys.exit("serve-concurrency: --requests must be 1..4096")
    if not 1 <= args.min_words <= args.max_words or not 1 <= args.min_tokens <= args.max_tokens:
        sys.exit("serve-concurrency: each --min-* must be at least 1 and at most its --max-*")
    host, port, base = serve_target.target(args.url, "serve-concurrency")
    headers = serve_target.headers(args.api_key)

    rng = random.Random(args.seed)
    bodies = []
    for i in range(args.requests):
        words = [rng.choice(WORDS) for _ in range(rng.randint(args.min_words, args.max_words))]
        bodies.append(json.dumps({"prompt": " ".join(words), "max_tokens": rng.randint(args.min_tokens, args.max_tokens),
                                  "temperature": 0.8, "seed": i, "ignore_eos": True}).encode())

    lock = threading.Lock()
    totals = {"ok": 0, "errors": 0, "tokens": 0}
    first_errors = []

    def send(body):
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        try:
            conn.request("POST", base + "/v1/completions", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                if resp.status == 200:
                    totals["ok"] += 1
                    totals["tokens"] += json.loads(data)["usage"]["completion_tokens"]
                else:
                    totals["errors"] += 1
                    if len(first_errors) < 5:
                        first_errors.append(f"HTTP {resp.status}: {data[:300]!r}")
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            with lock:
                totals["errors"] += 1
                if len(first_errors) < 5:
                    first_errors.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    peak = {"running": 0.0, "blocks": 0.0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request("GET", base + "/metrics")
                text = conn.getresponse().read().decode()
                for key, name in (("running", "forja_batch_size"), ("blocks", "forja_kv_blocks_used")):
                    v = metric(text, name)
                    if v is not None:
                        peak[key] = max(peak[key], v)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=send, args=(b,), daemon=True) for b in bodies]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    for e in first_errors:
        print(f"serve-concurrency: error: {e}", file=sys.stderr)
    summary = {"requests": args.requests, "ok": totals["ok"], "errors": totals["errors"],
               "peak_running": int(peak["running"]), "peak_blocks_used": int(peak["blocks"]),
               "wall_s": round(wall, 3), "tokens_per_s": round(totals["tokens"] / wall, 1)}
    print(f"requests {args.requests} ({totals['ok']} ok, {totals['errors']} errors), wall {wall:.2f} s, "
          f"tokens/s {summary['tokens_per_s']}; peak running sequences {summary['peak_running']}, "
          f"peak KV blocks used {summary['peak_blocks_used']}")
    if args.json:
        print(json.dumps(summary))
    sys.exit(0 if totals["ok"] else 1)


if __name__ == "__main__":
    main()
