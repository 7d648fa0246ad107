#!/usr/bin/env python3
"""Bounded loopback load generator for forja-serve (standard library only).

N client threads each send M streaming completion requests one after another
(`stream: true`, `ignore_eos: true`, temperature 0.8, a distinct seed per request,
`stream_options: {"include_usage": true}`) and read the SSE stream as it arrives:
time to first token is the time to the first chunk with non-empty text, the
completion tokens come from the final usage chunk. Prints requests/s, tokens/s
(completion tokens / wall time), p50/p99 request latency, p50/p99 time to first
token and the error count; with --json the last stdout line is one JSON object.

  scripts/peers/serve-load.py --url http://127.0.0.1:PORT --api-key KEY --clients 8 \
      [--requests-per-client 4] [--max-tokens 64] [--prompt TEXT] [--json]

With --chat-turns N each client instead holds one N-turn chat on
/v1/chat/completions: a system message (--system), then a question per turn
(distinct per client and turn); each answer, streamed, is read in full and
sent back as the assistant's message of the next turn. Time to first token is
then the time to the first chunk with content.

Exit status 0 when at least one request succeeded (errors, 429 included, are
counted and the first few bodies printed to stderr), 1 when none did.
Only loopback addresses are accepted: this is a local load test, never a remote one.
"""
import argparse
import http.client
import json
import sys
import threading
import time

import serve_target

TIMEOUT_S = 120.0
MAX_ERROR_BODIES = 5


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a list; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.ttfts = []
        self.tokens = 0
        self.ok = 0
        self.errors = 0
        self.error_bodies = 0

    def error(self, what):
        with self.lock:
            self.errors += 1
            if self.error_bodies < MAX_ERROR_BODIES:
                self.error_bodies += 1
                print(f"serve-load: error: {what}", file=sys.stderr)


def one_request(host, port, path, headers, body, stats, content=None):
    """Sends one streaming request and records its latency, TTFT and tokens.
    With `content` (a list), the request is a chat: every chunk is parsed and
    the answer's text appended to it."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if not 200 <= resp.status < 300:
            text = resp.read(2000).decode("utf-8", "replace")
            stats.error(f"HTTP {resp.status}: {text}")
            return
        ttft = None
        tokens = None
        done = False
        # http.client undoes chunked transfer encoding; readline() returns as
        # soon as a whole SSE line has arrived, so the timing is incremental.
        while True:
            if time.perf_counter() - t0 > TIMEOUT_S:
                stats.error(f"timeout after {TIMEOUT_S:.0f} s")
                return
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            # Once the first token has come, only the usage and error events
            # need parsing: a cheap byte search keeps the client's CPU (which
            # shares the machine with the server) off the measurement.
            if content is None and ttft is not None and b'"usage"' not in data and b'"error"' not in data:
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                stats.error(f"error event: {chunk['error']}")
                return
            for choice in chunk.get("choices") or []:
                text = choice.get("text") if content is None else (choice.get("delta") or {}).get("content")
                if text and content is not None:
                    content.append(text)
                if ttft is None and text:
                    ttft = time.perf_counter() - t0
            usage = chunk.get("usage")
            if usage:
                tokens = usage.get("completion_tokens")
        latency = time.perf_counter() - t0
        if not done:
            stats.error("stream ended without data: [DONE]")
            return
        if tokens is None:
            stats.error("no usage chunk (stream_options.include_usage ignored?)")
            return
        with stats.lock:
            stats.ok += 1
            stats.latencies.append(latency)
            if ttft is not None:
                stats.ttfts.append(ttft)
            stats.tokens += tokens
    except (OSError, http.client.HTTPException, ValueError) as e:
        stats.error(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--model", default=None, help="model field (default: omitted)")
    ap.add_argument("--chat-turns", type=int, default=0, help="hold one chat of this many turns per client")
    ap.add_argument("--system", default="You are a helpful assistant.", help="the chats' system message")
    ap.add_argument("--run", type=int, default=1, help="chats: named in each question and offsets the seeds, so runs differ")
    ap.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = ap.parse_args()
    if args.clients < 1 or args.clients > 1024:
        sys.exit("serve-load: --clients must be 1..1024")
    if args.requests_per_client < 1 or args.requests_per_client > 10000:
        sys.exit("serve-load: --requests-per-client must be 1..10000")

    host, port, base = serve_target.target(args.url, "serve-load")
    path = base + ("/v1/chat/completions" if args.chat_turns else "/v1/completions")
    headers = serve_target.headers(args.api_key, Accept="text/event-stream")

    stats = Stats()

    def client(ci):
        for ri in range(args.requests_per_client):
            req = {
                "prompt": args.prompt,
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
                "seed": ci * args.requests_per_client + ri + 1,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            if args.model:
                req["model"] = args.model
            one_request(host, port, path, headers, json.dumps(req).encode(), stats)

    def chat(ci):
        messages = [{"role": "system", "content": args.system}]
        for turn in range(args.chat_turns):
            messages.append({"role": "user",
                             "content": f"Question {turn + 1} of client {ci + 1} in run {args.run}: how many clips in all?"})
            req = {
                "messages": messages,
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
                "seed": (args.run * args.clients + ci) * args.chat_turns + turn + 1,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            if args.model:
                req["model"] = args.model
            answer = []
            one_request(host, port, path, headers, json.dumps(req).encode(), stats, answer)
            messages.append({"role": "assistant", "content": "".join(answer)})

    if args.chat_turns:
        if args.chat_turns > 100:
            sys.exit("serve-load: --chat-turns must be 1..100")
        args.requests_per_client = args.chat_turns
    work = chat if args.chat_turns else client
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    total = args.clients * args.requests_per_client

    def r(x, nd=4):
        return None if x is None else round(x, nd)

    summary = {
        "clients": args.clients,
        "requests": total,
        "requests_per_s": r(stats.ok / wall, 3),
        "tokens_per_s": r(stats.tokens / wall, 1),
        "latency_p50_s": r(percentile(stats.latencies, 50)),
        "latency_p99_s": r(percentile(stats.latencies, 99)),
        "ttft_p50_s": r(percentile(stats.ttfts, 50)),
        "ttft_p99_s": r(percentile(stats.ttfts, 99)),
        "errors": stats.errors,
    }

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f} s"

    print(f"clients {args.clients}, requests {total} ({stats.ok} ok, {stats.errors} errors), "
          f"wall {wall:.2f} s")
    print(f"requests/s: {stats.ok / wall:.3f}")
    print(f"tokens/s: {stats.tokens / wall:.1f} ({stats.tokens} completion tokens)")
    print(f"latency p50 {fmt(summary['latency_p50_s'])}, p99 {fmt(summary['latency_p99_s'])}")
    print(f"ttft p50 {fmt(summary['ttft_p50_s'])}, p99 {fmt(summary['ttft_p99_s'])}")
    print(f"errors: {stats.errors}")
    if args.json:
        print(json.dumps(summary))
    # Errors (429 included) are reported, not fatal: an overload run expects
    # some. Exit 1 only when nothing succeeded.
    sys.exit(0 if stats.ok else 1)


if __name__ == "__main__":
    main()
