#!/usr/bin/env python3
"""Writes fixtures/near-dups: real web texts plus edited copies planted at known
word-5-gram Jaccard similarities, to measure forja's MinHash-LSH near-duplicate
detection (crates/data/src/minhash.rs reads it in a test).

  python3 scripts/make-near-dups.py [--seed 0] [--n 280] [--out fixtures/near-dups]

Python 3 standard library only. Source: the `text` fields of
fixtures/c4-sample/c4_sample.jsonl (C4 `en`, AllenAI, ODC-BY 1.0).

1. Originals: documents with 100-500 simplified words, visited in an order shuffled
   with random.Random(seed), kept only if their Jaccard similarity to every original
   kept before is below 0.1 (so any two originals are unrelated).
2. Copies: one per original, the targets TARGETS taken in turn. Starting from the
   original, random word edits (replace 60 %, insert 20 %, delete 20 %; new words
   drawn from the sample's vocabulary) are applied one at a time until the exact
   Jaccard falls to a goal drawn uniformly from target +- 0.02; an edit that would
   take it below target - 0.02 is undone and another one drawn. An original
   whose copy cannot get there (500 undone edits in a row) is dropped.
3. The exact Jaccard is computed on shingle sets built as minhash.rs builds them:
   datatrove's simplify_text (lowercase; numbers -> "0"; datatrove's punctuation ->
   space; whitespace runs -> one space; NFD without nonspacing marks), words split
   on whitespace, sets of 5 consecutive words (a document with fewer than 5 words is
   one shingle of all of them).

Output (in --out):
  docs.jsonl   {"id", "text"}: originals "c4-LLLL" (LLLL: 0-based line of the
               source file) and copies "c4-LLLL-edit", in a seeded shuffled order
  pairs.jsonl  {"a", "b", "jaccard", "target"}: a = original, b = its copy,
               jaccard = exact similarity (4 decimals), target = the band aimed at
  README.md    how the files were made, with their counts and sizes

Re-running with the same arguments reproduces the files byte for byte.
"""

import argparse
import json
import random
import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "fixtures" / "c4-sample" / "c4_sample.jsonl"
LICENSE_LINE = (
    "C4 itself is released by AllenAI under ODC-BY 1.0 (+ Common Crawl terms of use); "
    "the sample's origin repository states nothing for the file (see fixtures/c4-sample/SOURCE.md)"
)

SHINGLE = 5
TARGETS = [0.95, 0.9, 0.85, 0.8, 0.5, 0.3, 0.1]
TOL = 0.02
MIN_WORDS, MAX_WORDS = 100, 500
UNRELATED = 0.1
MAX_UNDONE = 500

# datatrove/utils/text.py: PUNCTUATION and NUMBERS_PATTERN (Python's \d on str is \p{Nd}).
PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)
PUNCTUATION_TRANS = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
NUMBERS = re.compile(r"\d+([.,،٫⎖⎗⎘]{1}\d+)?")


def simplify_words(text):
    text = text.lower()
    text = NUMBERS.sub("0", text)
    text = text.translate(PUNCTUATION_TRANS)
    text = " ".join(text.split())
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text.split()


def shingles(text):
    words = simplify_words(text)
    if len(words) < SHINGLE:
        return {tuple(words)}
    return {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a, b):
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def edit_copy(text, target, rng, vocab):
    """Edits `text` word by word until its Jaccard to `text` is at most a goal drawn
    uniformly from target +- TOL, never going below target - TOL."""
    lead = text[: len(text) - len(text.lstrip())]
    tokens = re.findall(r"\S+\s*", text)  # each word with the whitespace after it
    original = shingles(text)
    goal = rng.uniform(target - TOL, target + TOL)  # stop at a random point of the band
    sim, undone = 1.0, 0
    while sim > goal:
        trial = list(tokens)
        i = rng.randrange(len(trial))
        op = rng.random()
        if op < 0.6:
            word = trial[i]
            trial[i] = rng.choice(vocab) + word[len(word.rstrip()) :]
        elif op < 0.8:
            trial.insert(i, rng.choice(vocab) + " ")
        elif len(trial) > SHINGLE * 4:
            del trial[i]
        else:
            continue
        new_sim = jaccard(original, shingles(lead + "".join(trial)))
        if new_sim < target - TOL:
            undone += 1
            if undone > MAX_UNDONE:
                return None
            continue
        tokens, sim, undone = trial, new_sim, 0
    return lead + "".join(tokens), sim


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="random.Random seed (default 0)")
    ap.add_argument("--n", type=int, default=280, help="planted pairs, spread evenly over the targets (default 280)")
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "near-dups", help="output folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    rows = [json.loads(line)["text"] for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    vocab = sorted({w for t in rows for w in simplify_words(t) if w.isascii() and w.isalpha() and 3 <= len(w) <= 12})
    candidates = [i for i, t in enumerate(rows) if MIN_WORDS <= len(simplify_words(t)) <= MAX_WORDS]
    rng.shuffle(candidates)

    kept = []  # (line, shingle set)
    by_shingle = {}  # shingle -> indices into kept
    docs, pairs = [], []
    for line in candidates:
        if len(pairs) >= args.n:
            break
        sh = shingles(rows[line])
        near = {k for s in sh for k in by_shingle.get(s, ())}
        if any(jaccard(sh, kept[k][1]) >= UNRELATED for k in sorted(near)):
            continue
        target = TARGETS[len(pairs) % len(TARGETS)]
        edited = edit_copy(rows[line], target, rng, vocab)
        if edited is None:
            continue
        for s in sh:
            by_shingle.setdefault(s, []).append(len(kept))
        kept.append((line, sh))
        text, sim = edited
        a, b = f"c4-{line:04d}", f"c4-{line:04d}-edit"
        docs += [{"id": a, "text": rows[line]}, {"id": b, "text": text}]
        pairs.append({"a": a, "b": b, "jaccard": round(sim, 4), "target": target})
    if len(pairs) < args.n:
        raise SystemExit(f"only {len(pairs)} pairs could be planted (asked for {args.n})")

    rng.shuffle(docs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "docs.jsonl", docs)
    write_jsonl(args.out / "pairs.jsonl", pairs)
    write_readme(args, docs, pairs)
    sizes = {name: (args.out / name).stat().st_size for name in ("docs.jsonl", "pairs.jsonl")}
    print(f"{len(docs)} docs, {len(pairs)} pairs; " + ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()))


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_readme(args, docs, pairs):
    out = args.out
    per_target = []
    for t in TARGETS:
        js = [p["jaccard"] for p in pairs if p["target"] == t]
        per_target.append(f"| {t:.2f} | {len(js)} | {min(js):.4f} | {max(js):.4f} |")
    rel = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    text = f"""# Near-duplicate fixture: C4 texts with edited copies at known Jaccard similarities

Generated by `scripts/make-near-dups.py --seed {args.seed} --n {args.n} --out {rel}` (Python 3 standard
library only; re-running it reproduces these files byte for byte). Read by the test
`planted_near_duplicates_are_found` in `crates/data/src/minhash.rs`.

Source texts: the `text` fields of `fixtures/c4-sample/c4_sample.jsonl`, the first 1,000 documents of
C4 `en` (`c4-train.00000-of-01024`). License: {LICENSE_LINE}. The edited copies are derived from those
texts; the words they insert come from the same sample.

How: originals are documents with {MIN_WORDS}-{MAX_WORDS} simplified words, visited in seeded random
order and kept only if their word-5-gram Jaccard similarity to every original kept before is below
{UNRELATED}. Each original gets one edited copy, the targets {", ".join(f"{t}" for t in TARGETS)} taken in
turn: random single-word edits (replace 60 %, insert 20 %, delete 20 %) are applied until the exact
Jaccard falls to a goal drawn uniformly from target +- {TOL}; an edit that would fall below
target - {TOL} is undone and another one drawn.
Jaccard is computed on the same shingles as `minhash.rs`: datatrove's `simplify_text` (lowercase,
numbers to "0", punctuation to space, whitespace normalised, NFD without nonspacing marks), words
split on whitespace, sets of 5 consecutive words.

Files:

- `docs.jsonl`: {len(docs)} documents `{{"id", "text"}}`, {(out / "docs.jsonl").stat().st_size:,} bytes;
  originals `c4-LLLL` (LLLL: 0-based line in the source file), copies `c4-LLLL-edit`, shuffled.
- `pairs.jsonl`: {len(pairs)} planted pairs `{{"a", "b", "jaccard", "target"}}` (a: original, b: its
  copy, jaccard: exact, 4 decimals), {(out / "pairs.jsonl").stat().st_size:,} bytes.

| target | pairs | min jaccard | max jaccard |
| --- | --- | --- | --- |
{chr(10).join(per_target)}

With MinHash-LSH at 14 bands x 8 rows a pair of similarity s is found with probability
1 - (1 - s^8)^14: 1.000 at 0.95, 0.9996 at 0.9, 0.989 at 0.85, 0.924 at 0.8, 0.053 at 0.5,
0.0009 at 0.3 and ~0 at 0.1.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
