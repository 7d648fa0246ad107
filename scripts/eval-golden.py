#!/usr/bin/env python3
"""Writes golden values for forja's classification and regression metrics, computed with
scikit-learn, to fixtures/eval/golden.json. forja's Rust tests read the file and compare
against it (tolerance 1e-9).

  .venv/bin/python scripts/eval-golden.py [--out fixtures/eval/golden.json]

Inputs are drawn from numpy.random.default_rng with a fixed seed per case (or written as
literal lists), everything is float64, and the JSON is pretty-printed with sorted keys, so
re-running the script reproduces the file byte for byte (for the same numpy/sklearn).

Output: {"sklearn_version", "classification": [case...], "regression": [case...]}.

Classification case (classes are 0..n_classes-1):
  name, n_classes, y_true, y_pred, probs (n rows of n_classes floats, each row sums to 1 up
  to rounding; y_pred == argmax(probs), first max on ties, in every case), labels (sorted
  union of y_true and y_pred: what sklearn uses with labels=None),
  accuracy                            accuracy_score(y_true, y_pred)
  precision/recall/f1 {macro, micro, weighted}
                                      precision_score / recall_score / f1_score with
                                      labels=None, zero_division=0
  per_class {precision, recall, f1, support}
                                      precision_recall_fscore_support(average=None,
                                      labels=None, zero_division=0), in the order of "labels"
  confusion                           confusion_matrix(y_true, y_pred, labels=range(K)),
                                      K x K, rows = true class, columns = predicted class
  ece                                 expected calibration error, 15 equal-width bins (numpy
                                      here, sklearn has none):
                                        conf_i = max_k probs[i][k],
                                        correct_i = (argmax_k probs[i][k] == y_true[i]),
                                        bin_i = max(min(ceil(conf_i * 15), 15) - 1, 0)
                                          (conf in (b/15, (b+1)/15] -> bin b; conf 0 -> bin 0),
                                        ECE = sum over non-empty bins B of
                                          |B|/n * |mean(correct in B) - mean(conf in B)|
                                      No conf in the file lies within 1e-6 of a bin edge, so
                                      the bin assignment does not depend on rounding.
  log_loss                            log_loss(y_true, probs, labels=range(K)); sklearn
                                      neither renormalises rows nor (here) clips: every
                                      probability is in [1e-9, 1 - 1e-9], so it equals
                                      -mean_i ln probs[i][y_true[i]].

Regression case: name, y_true, y_pred, mse (mean_squared_error), mae (mean_absolute_error),
r2 (r2_score; y_true is never constant).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, log_loss,
                             mean_absolute_error, mean_squared_error,
                             precision_recall_fscore_support, precision_score, r2_score,
                             recall_score)

ECE_BINS = 15
AVERAGES = ("macro", "micro", "weighted")


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probs_with_argmax(rng, y_pred, k, spread=1.0):
    """Softmax of random logits, with y_pred[i]'s logit raised above the others by a random
    margin in [0.2, 2.0], so argmax(probs[i]) == y_pred[i] strictly."""
    n = len(y_pred)
    logits = rng.normal(0.0, spread, size=(n, k))
    margin = rng.uniform(0.2, 2.0, size=n)
    rows = np.arange(n)
    others = logits.copy()
    others[rows, y_pred] = -np.inf
    logits[rows, y_pred] = others.max(axis=1) + margin
    return softmax(logits)


def ece(probs, y_true, bins=ECE_BINS):
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    idx = np.maximum(np.minimum(np.ceil(conf * bins), bins) - 1, 0).astype(np.int64)
    n = len(y_true)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        nb = int(mask.sum())
        if nb:
            total += nb / n * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def ece_loop(probs, y_true, bins=ECE_BINS):
    """Same as ece(), written as a plain loop, as a cross-check of the numpy version."""
    sums = [[0, 0.0, 0.0] for _ in range(bins)]  # count, sum correct, sum conf
    for row, t in zip(probs.tolist(), y_true.tolist()):
        conf = max(row)
        pred = row.index(conf)
        b = max(min(math.ceil(conf * bins), bins) - 1, 0)
        sums[b][0] += 1
        sums[b][1] += float(pred == t)
        sums[b][2] += conf
    n = len(y_true)
    return sum(c / n * abs(sc / c - sf / c) for c, sc, sf in sums if c)


def classification_case(name, k, y_true, y_pred, probs):
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(y_true)
    assert probs.shape == (n, k) and len(y_pred) == n, name
    assert y_true.min() >= 0 and y_true.max() < k and y_pred.min() >= 0 and y_pred.max() < k, name
    assert np.array_equal(probs.argmax(axis=1), y_pred), f"{name}: y_pred != argmax(probs)"
    assert np.allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12), f"{name}: rows do not sum to 1"
    assert probs.min() >= 1e-9 and probs.max() <= 1 - 1e-9, f"{name}: probabilities too close to 0 or 1"
    edges = probs.max(axis=1) * ECE_BINS
    assert np.all(np.abs(edges - np.round(edges)) > 1e-6), f"{name}: a confidence lies on an ECE bin edge"

    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    case = {
        "name": name,
        "n_classes": k,
        "y_true": y_true.tolist(),
        "y_pred": y_pred.tolist(),
        "probs": probs.tolist(),
        "labels": labels,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": {a: float(precision_score(y_true, y_pred, average=a, zero_division=0))
                      for a in AVERAGES},
        "recall": {a: float(recall_score(y_true, y_pred, average=a, zero_division=0))
                   for a in AVERAGES},
        "f1": {a: float(f1_score(y_true, y_pred, average=a, zero_division=0)) for a in AVERAGES},
        "per_class": {"precision": [float(x) for x in p], "recall": [float(x) for x in r],
                      "f1": [float(x) for x in f], "support": [int(x) for x in s]},
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
        "ece": ece(probs, y_true),
        "log_loss": float(log_loss(y_true, y_proba=probs, labels=list(range(k)))),
    }
    assert len(p) == len(labels), name
    assert abs(case["ece"] - ece_loop(probs, y_true)) < 1e-12, f"{name}: ECE cross-check"
    hand_ll = -np.mean(np.log(probs[np.arange(n), y_true]))
    assert abs(case["log_loss"] - hand_ll) < 1e-12, f"{name}: log_loss cross-check"
    return case


def classification_cases():
    cases = []

    # binary: 60 examples, ~25% of predictions flipped; the last row is a tie [0.5, 0.5]
    # (argmax takes the first max, so it predicts 0).
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, size=60)
    flip = rng.random(60) < 0.25
    y_pred = np.where(flip, 1 - y_true, y_true)
    y_pred[-1] = 0
    probs = probs_with_argmax(rng, y_pred, 2)
    probs[-1] = [0.5, 0.5]
    cases.append(classification_case("binary", 2, y_true, y_pred, probs))

    # multiclass_random: softmax of N(0,1) logits plus a bias of 1.4 on the true class (accuracy 0.6).
    rng = np.random.default_rng(2)
    k, n = 5, 200
    y_true = rng.integers(0, k, size=n)
    logits = rng.normal(0.0, 1.0, size=(n, k))
    logits[np.arange(n), y_true] += 1.4
    probs = softmax(logits)
    y_pred = probs.argmax(axis=1)
    cases.append(classification_case("multiclass_random", k, y_true, y_pred, probs))

    # class_never_predicted: class 3 occurs in y_true (12 times) but is never predicted.
    rng = np.random.default_rng(3)
    k, n = 4, 40
    y_true = rng.integers(0, k, size=n)
    y_true[:7] = 3
    rng.shuffle(y_true)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, k, size=n))
    y_pred = np.where(y_pred == 3, rng.integers(0, 3, size=n), y_pred)
    probs = probs_with_argmax(rng, y_pred, k)
    cases.append(classification_case("class_never_predicted", k, y_true, y_pred, probs))

    # class_never_true: y_true has classes 0, 1, 3; class 2 is predicted (5 times) but never true.
    rng = np.random.default_rng(4)
    k, n = 4, 40
    y_true = rng.choice([0, 1, 3], size=n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.choice([0, 1, 3], size=n))
    y_pred[rng.choice(n, size=5, replace=False)] = 2
    probs = probs_with_argmax(rng, y_pred, k)
    cases.append(classification_case("class_never_true", k, y_true, y_pred, probs))

    # perfect: every prediction right.
    rng = np.random.default_rng(5)
    y_true = np.array([0, 1, 2] * 10)
    rng.shuffle(y_true)
    probs = probs_with_argmax(rng, y_true, 3)
    cases.append(classification_case("perfect", 3, y_true, y_true.copy(), probs))

    # single_example: one example, wrong (true 2, predicted 0): labels [0, 2], all per-class 0.
    cases.append(classification_case("single_example", 3, [2], [0], [[0.62, 0.08, 0.3]]))
    # single_example_correct: one example, right.
    cases.append(classification_case("single_example_correct", 3, [1], [1], [[0.25, 0.7, 0.05]]))
    return cases


def regression_case(name, y_true, y_pred):
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    assert y_true.std() > 0, name
    return {
        "name": name,
        "y_true": y_true.tolist(),
        "y_pred": y_pred.tolist(),
        "mse": float(mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def regression_cases():
    rng = np.random.default_rng(10)
    y_true = rng.normal(2.0, 3.0, size=100)
    y_pred = y_true + rng.normal(0.0, 1.0, size=100)
    random = regression_case("random", y_true, y_pred)

    rng = np.random.default_rng(11)
    y_true = rng.normal(0.0, 1.0, size=20)
    constant = regression_case("constant_pred", y_true, np.full(20, 0.5))
    return [random, constant]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="fixtures/eval/golden.json",
                        help="output JSON (default fixtures/eval/golden.json)")
    args = parser.parse_args()

    golden = {
        "sklearn_version": sklearn.__version__,
        "classification": classification_cases(),
        "regression": regression_cases(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    for c in golden["classification"]:
        print(f"{c['name']}: K={c['n_classes']} n={len(c['y_true'])} labels={c['labels']} "
              f"accuracy={c['accuracy']:.4f} ece={c['ece']:.4f} log_loss={c['log_loss']:.4f}")
    for c in golden["regression"]:
        print(f"{c['name']}: n={len(c['y_true'])} mse={c['mse']:.4f} r2={c['r2']:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
