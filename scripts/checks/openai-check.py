#!/usr/bin/env python3
"""Checks an OpenAI-compatible server (forja-serve) with the official `openai`
Python package, used unchanged (openai==3.51.0).

  .venv/bin/python scripts/checks/openai-check.py --base-url http://127.0.0.1:PORT/v1 \
      --api-key KEY [--embeddings-base-url http://127.0.0.1:PORT2/v1] [--prompt TEXT]

Prints `ok: <what>` for each check that passes and ends with a one-line JSON
summary; stops at the first failure with `fail: <what>: <reason>` (and the
summary, "ok": false) and exit status 1. The generation checks need a causal
model (GPT-2 style, with a chat template for the chat checks); the embeddings
checks need an encoder model served at --embeddings-base-url (same API key).
"""
import argparse
import json
import math
import sys

import openai

PASSED = []
STATE = {"model": None, "embeddings_model": None}


def summary(ok, failed=None, reason=None):
    out = {"ok": ok, "checks_passed": len(PASSED), "model": STATE["model"],
           "openai": openai.__version__}
    if STATE["embeddings_model"]:
        out["embeddings_model"] = STATE["embeddings_model"]
    if failed:
        out["failed"] = failed
        out["reason"] = reason
    print(json.dumps(out))


class CheckFailed(Exception):
    pass


def expect(cond, reason):
    if not cond:
        raise CheckFailed(reason)


def check(what):
    """Decorator-free runner: check(what)(fn) runs fn, prints ok/fail."""
    def run(fn):
        try:
            fn()
        except CheckFailed as e:
            fail(what, str(e))
        except openai.APIError as e:
            fail(what, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - any surprise is a failed check
            fail(what, f"{type(e).__name__}: {e}")
        PASSED.append(what)
        print(f"ok: {what}", flush=True)
    return run


def fail(what, reason):
    print(f"fail: {what}: {reason}", flush=True)
    summary(False, what, reason)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--embeddings-base-url", default=None,
                    help="base URL of a server with an encoder model (embeddings checks)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    # max_retries=0: a check must see the server's first answer, not a retried one.
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key,
                           max_retries=0, timeout=args.timeout)
    prompt = args.prompt
    model = None

    # --- models -----------------------------------------------------------
    @check("models.list returns one model")
    def _():
        nonlocal model
        models = list(client.models.list())
        expect(len(models) == 1, f"expected 1 model, got {len(models)}: {[m.id for m in models]}")
        expect(models[0].id, "model id is empty")
        expect(models[0].object == "model", f"object is {models[0].object!r}, not 'model'")
        model = models[0].id
        STATE["model"] = model

    # --- completions --------------------------------------------------------
    plain = {}

    @check("completions.create (non-stream) returns text and usage")
    def _():
        r = client.completions.create(model=model, prompt=prompt, max_tokens=16,
                                      temperature=0, seed=7)
        expect(r.object == "text_completion", f"object is {r.object!r}")
        expect(r.id and r.created > 0, "id/created missing")
        expect(r.model == model, f"model is {r.model!r}, expected {model!r}")
        expect(len(r.choices) == 1, f"{len(r.choices)} choices")
        c = r.choices[0]
        expect(isinstance(c.text, str), "text is not a string")
        expect(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
        u = r.usage
        expect(u is not None, "no usage")
        expect(u.prompt_tokens > 0, f"prompt_tokens {u.prompt_tokens}")
        expect(1 <= u.completion_tokens <= 16 or (c.finish_reason == "stop" and u.completion_tokens == 0),
               f"completion_tokens {u.completion_tokens} for max_tokens 16")
        expect(u.total_tokens == u.prompt_tokens + u.completion_tokens, "total_tokens != prompt + completion")
        fp = r.system_fingerprint
        expect(fp is None or fp.startswith("forja-"), f"system_fingerprint {fp!r}")
        plain["text"], plain["finish"] = c.text, c.finish_reason

    @check("completions max_tokens=8 ignore_eos: 8 tokens, finish_reason length, logprobs")
    def _():
        r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0.8,
                                      seed=11, logprobs=2, extra_body={"ignore_eos": True})
        c = r.choices[0]
        expect(r.usage.completion_tokens == 8, f"completion_tokens {r.usage.completion_tokens}")
        expect(c.finish_reason == "length", f"finish_reason {c.finish_reason!r}")
        lp = c.logprobs
        expect(lp is not None, "logprobs is null with logprobs=2")
        expect(len(lp.tokens) == 8, f"{len(lp.tokens)} logprobs tokens")
        expect(len(lp.token_logprobs) == 8 and all(x <= 1e-6 for x in lp.token_logprobs),
               f"token_logprobs {lp.token_logprobs}")
        expect(len(lp.top_logprobs) == 8 and all(1 <= len(d) <= 3 for d in lp.top_logprobs),
               f"top_logprobs sizes {[len(d) for d in lp.top_logprobs]}")
        expect(len(lp.text_offset) == 8 and lp.text_offset == sorted(lp.text_offset),
               f"text_offset {lp.text_offset}")

    @check("streaming completion concatenates to the non-stream text (temperature 0)")
    def _():
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=16,
                                           temperature=0, seed=7, stream=True,
                                           stream_options={"include_usage": True})
        parts, finish, usage, chunks = [], None, None, 0
        for ch in stream:
            chunks += 1
            expect(ch.object == "text_completion", f"chunk object {ch.object!r}")
            if ch.usage is not None:
                usage = ch.usage
                expect(not ch.choices, "usage chunk has choices")
            for c in ch.choices:
                parts.append(c.text)
                finish = c.finish_reason or finish
        text = "".join(parts)
        expect(text == plain["text"], f"stream {text!r} != non-stream {plain['text']!r}")
        expect(finish == plain["finish"], f"stream finish_reason {finish!r} != {plain['finish']!r}")
        expect(usage is not None and usage.completion_tokens >= 1,
               "no final usage chunk with stream_options.include_usage")
        expect(chunks >= 2, f"only {chunks} chunks")

    @check("completions stop (list of strings) cuts the text, finish_reason stop")
    def _():
        r = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
        text = r.choices[0].text
        expect(len(text) >= 4, f"greedy text too short to test stop: {text!r}")
        mid = len(text) // 2
        stop = text[mid:mid + 2]
        want = text[:text.find(stop)]
        r = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                                      stop=["\u2603never\u2603", stop],
                                      extra_body={"ignore_eos": True})
        c = r.choices[0]
        expect(c.text == want, f"with stop {stop!r}: {c.text!r}, expected {want!r}")
        expect(c.finish_reason == "stop", f"finish_reason {c.finish_reason!r}")

    @check("completions n=2 gives two choices")
    def _():
        r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0.8,
                                      n=2, seed=3)
        expect(len(r.choices) == 2, f"{len(r.choices)} choices")
        expect(sorted(c.index for c in r.choices) == [0, 1], f"indices {[c.index for c in r.choices]}")

    @check("completions list prompt gives one choice per prompt")
    def _():
        r = client.completions.create(model=model, prompt=[prompt, "The"], max_tokens=4,
                                      temperature=0)
        expect(len(r.choices) == 2, f"{len(r.choices)} choices")
        expect(sorted(c.index for c in r.choices) == [0, 1], f"indices {[c.index for c in r.choices]}")

    # --- chat -------------------------------------------------------------
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hello."}]
    chat = {}

    @check("chat.completions.create (non-stream)")
    def _():
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=16,
                                           temperature=0, seed=5)
        expect(r.object == "chat.completion", f"object {r.object!r}")
        expect(len(r.choices) == 1, f"{len(r.choices)} choices")
        c = r.choices[0]
        expect(c.message.role == "assistant", f"role {c.message.role!r}")
        expect(isinstance(c.message.content, str), "content is not a string")
        expect(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
        expect(r.usage.prompt_tokens > 0, f"prompt_tokens {r.usage.prompt_tokens}")
        chat["text"], chat["finish"] = c.message.content, c.finish_reason

    @check("chat streaming: deltas concatenate to the non-stream content, last chunk has finish_reason")
    def _():
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=16,
                                                temperature=0, seed=5, stream=True)
        parts, finishes, roles = [], [], []
        for ch in stream:
            expect(ch.object == "chat.completion.chunk", f"chunk object {ch.object!r}")
            for c in ch.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                if c.delta.content:
                    parts.append(c.delta.content)
                finishes.append(c.finish_reason)
        expect(roles[:1] == ["assistant"], f"first delta role {roles[:1]}")
        expect(finishes and finishes[-1] in ("stop", "length"),
               f"last chunk finish_reason {finishes[-1:] or None}")
        expect(all(f is None for f in finishes[:-1]), "finish_reason set before the last chunk")
        text = "".join(parts)
        expect(text == chat["text"], f"stream {text!r} != non-stream {chat['text']!r}")

    @check("chat logprobs=True top_logprobs=2 gives logprobs.content")
    def _():
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=6,
                                           temperature=0.8, seed=9, logprobs=True, top_logprobs=2,
                                           extra_body={"ignore_eos": True})
        c = r.choices[0]
        expect(c.logprobs is not None and c.logprobs.content, "no logprobs.content")
        content = c.logprobs.content
        expect(len(content) == r.usage.completion_tokens,
               f"{len(content)} entries for {r.usage.completion_tokens} completion tokens")
        for e in content:
            expect(isinstance(e.token, str) and e.logprob <= 1e-6, f"entry {e}")
            expect(len(e.top_logprobs) == 2, f"{len(e.top_logprobs)} top_logprobs, expected 2")

    @check("chat n=2 gives two choices")
    def _():
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=6,
                                           temperature=0.8, seed=4, n=2)
        expect(sorted(c.index for c in r.choices) == [0, 1], f"indices {[c.index for c in r.choices]}")

    # --- errors -------------------------------------------------------------
    @check("a wrong API key raises openai.AuthenticationError")
    def _():
        bad = openai.OpenAI(base_url=args.base_url, api_key=args.api_key + "-wrong",
                            max_retries=0, timeout=args.timeout)
        try:
            bad.completions.create(model=model, prompt=prompt, max_tokens=1)
        except openai.AuthenticationError:
            return
        raise CheckFailed("no error")

    @check("top_p=1.5 raises openai.BadRequestError mentioning top_p")
    def _():
        try:
            client.completions.create(model=model, prompt=prompt, max_tokens=1, top_p=1.5)
        except openai.BadRequestError as e:
            expect("top_p" in str(e), f"message does not mention top_p: {e}")
            return
        raise CheckFailed("no error")

    # --- embeddings --------------------------------------------------------
    if args.embeddings_base_url:
        emb = openai.OpenAI(base_url=args.embeddings_base_url, api_key=args.api_key,
                            max_retries=0, timeout=args.timeout)
        emb_model = None

        @check("embeddings server lists its model")
        def _():
            nonlocal emb_model
            models = list(emb.models.list())
            expect(len(models) == 1, f"{len(models)} models")
            emb_model = models[0].id
            STATE["embeddings_model"] = emb_model

        def unit_vectors(r, n):
            expect(r.object == "list", f"object {r.object!r}")
            expect(len(r.data) == n, f"{len(r.data)} vectors")
            expect([d.index for d in r.data] == list(range(n)), f"indices {[d.index for d in r.data]}")
            dims = {len(d.embedding) for d in r.data}
            expect(len(dims) == 1 and dims.pop() > 0, f"vector lengths {[len(d.embedding) for d in r.data]}")
            for d in r.data:
                norm = math.sqrt(sum(x * x for x in d.embedding))
                expect(abs(norm - 1) <= 1e-3, f"vector {d.index} norm {norm}")
            expect(r.usage.prompt_tokens > 0, f"prompt_tokens {r.usage.prompt_tokens}")
            return [d.embedding for d in r.data]

        vecs = {}

        @check("embeddings.create(input=['a','b']): 2 unit vectors of equal length (client default, base64)")
        def _():
            vecs["default"] = unit_vectors(emb.embeddings.create(model=emb_model, input=["a", "b"]), 2)

        @check("embeddings.create encoding_format=float matches")
        def _():
            v = unit_vectors(emb.embeddings.create(model=emb_model, input=["a", "b"],
                                                   encoding_format="float"), 2)
            diff = max(abs(x - y) for a, b in zip(v, vecs["default"]) for x, y in zip(a, b))
            expect(diff <= 1e-5, f"float and default vectors differ by {diff}")

        @check("embeddings.create(input='a') string input")
        def _():
            v = unit_vectors(emb.embeddings.create(model=emb_model, input="a", encoding_format="float"), 1)
            diff = max(abs(x - y) for x, y in zip(v[0], vecs["default"][0]))
            expect(diff <= 1e-4, f"single and batched 'a' differ by {diff}")

    summary(True)


if __name__ == "__main__":
    main()
