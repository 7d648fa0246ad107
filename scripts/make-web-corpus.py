#!/usr/bin/env python3
"""Builds a crawl-like JSONL web corpus of a given size from the real web texts in fixtures/.

Sources (read from fixtures/ only, so a fresh clone needs nothing else): 1,000 C4 documents
(fixtures/c4-sample/c4_sample.jsonl, field "text"), 63 raw Common Crawl WET pages in 6 languages with
their menus (fixtures/oscar-sample/data.jsonl, field "content") and 499 DCLM-Pool pages, good and bad
(fixtures/dclm-quality-labels/majority_data.jsonl, field "text"): 1,562 documents, about 5 MB of text.

The corpus repeats them the way a crawl does. Each output document is, drawn with a seeded RNG:
  - 25%  a remix: contiguous runs of lines from 2-4 random source documents joined (new text, survives
         de-duplication unless the filters drop it);
  - 75%  a random source document: the first time it is drawn, unchanged; afterwards an exact copy
         (35%) or a near duplicate (65%) with 1-4 light edits: swap two adjacent words, drop a word,
         insert a common word, change a number, or change the case of a line.
Every line is {"id": "NNNNNNN-KIND-SOURCE.INDEX", "text": ...} (KIND: orig, exact, near, remix),
UTF-8, not ASCII-escaped. Output is streamed and stops at the first line that reaches --mb million
bytes; for a seed the stream is fixed, so a smaller --mb gives exactly a prefix of a larger one.
Written to PATH.tmp and renamed at the end; prints a summary line on stderr.

Usage: python3 scripts/make-web-corpus.py --out PATH [--mb 200] [--seed 0]
"""
import argparse
import itertools
import json
import os
import random
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [  # (name, path under the repository root, text field)
    ("c4", "fixtures/c4-sample/c4_sample.jsonl", "text"),
    ("oscar", "fixtures/oscar-sample/data.jsonl", "content"),
    ("dclm", "fixtures/dclm-quality-labels/majority_data.jsonl", "text"),
]
REMIX, EXACT = 0.25, 0.35  # share of remixes; share of exact copies among repeats
INSERT_WORDS = ["the", "also", "very", "just", "really", "new", "more", "and", "here", "now", "all", "only"]
NUMBER = re.compile(r"\d+")


def load_sources():
    docs = []  # (source tag, text)
    for name, rel, field in SOURCES:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            sys.exit(f"make-web-corpus: {rel} is missing (fixtures/ ships it)")
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    text = json.loads(line)[field]
                    if text.strip():
                        docs.append((f"{name}.{i}", text))
    return docs


def word_lines(lines):
    return [i for i, l in enumerate(lines) if l.strip()]


def edit(text, rng):
    """1-4 light edits; the result differs from `text` in a few words only."""
    lines = text.split("\n")
    candidates = word_lines(lines)
    if not candidates:
        return text + " " + rng.choice(INSERT_WORDS)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("swap", "drop", "insert", "number", "case"))
        li = rng.choice(candidates)
        words = lines[li].split(" ")
        if op == "number":
            spans = list(itertools.islice(((li2, m) for li2 in candidates for m in NUMBER.finditer(lines[li2])), 200))
            if spans:
                li2, m = rng.choice(spans)
                old = m.group()
                new = old
                while new == old:
                    new = str(rng.randint(1 if len(old) > 1 else 0, 9)) + "".join(str(rng.randint(0, 9)) for _ in old[1:])
                lines[li2] = lines[li2][: m.start()] + new + lines[li2][m.end():]
                continue
            op = "insert"
        if op == "case":
            line = lines[li]
            for variant in rng.sample((line.upper(), line.lower(), line.title()), 3):
                if variant != line:
                    lines[li] = variant
                    break
            else:
                op = "insert"
            if op == "case":
                continue
        if op in ("swap", "drop") and len(words) < 2:
            op = "insert"
        if op == "swap":
            j = rng.randrange(len(words) - 1)
            words[j], words[j + 1] = words[j + 1], words[j]
        elif op == "drop":
            del words[rng.randrange(len(words))]
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(INSERT_WORDS))
        lines[li] = " ".join(words)
    return "\n".join(lines)


def remix(docs, rng):
    parts, tags = [], []
    for _ in range(rng.randint(2, 4)):
        tag, text = docs[rng.randrange(len(docs))]
        lines = text.split("\n")
        take = max(1, min(len(lines), rng.randint(3, 12)))
        start = rng.randrange(len(lines) - take + 1)
        parts.append("\n".join(lines[start:start + take]))
        tags.append(tag)
    return "+".join(tags), "\n".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--mb", type=float, default=200.0, help="size in millions of bytes (default 200)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.mb <= 0:
        p.error("--mb must be > 0")
    target = int(a.mb * 1_000_000)
    docs = load_sources()
    rng = random.Random(a.seed)
    seen = bytearray(len(docs))
    counts = {"orig": 0, "exact": 0, "near": 0, "remix": 0}
    written = n = 0
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            if rng.random() < REMIX:
                kind = "remix"
                tag, text = remix(docs, rng)
            else:
                i = rng.randrange(len(docs))
                tag, text = docs[i]
                if not seen[i]:
                    seen[i] = 1
                    kind = "orig"
                elif rng.random() < EXACT:
                    kind = "exact"
                else:
                    kind = "near"
                    text = edit(text, rng)
            line = json.dumps({"id": f"{n:07d}-{kind}-{tag}", "text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            counts[kind] += 1
            n += 1
    os.replace(tmp, a.out)
    print(f"make-web-corpus: {a.out}: {n} documents, {written} bytes (seed {a.seed}; "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; {sum(seen)} of {len(docs)} sources used)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
