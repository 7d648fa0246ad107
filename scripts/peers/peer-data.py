#!/usr/bin/env python3
"""datatrove's web cleaning chain on a JSONL corpus: the docs/s peer of `forja-data clean --set preset=web`.

datatrove 0.10.1 with LocalPipelineExecutor (tasks = workers = --tasks, multiprocess start method "fork"
so that the workers are this process's children), in eight executor runs under --workdir:
  1. filter      JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter
                 -> JsonlWriter  (all defaults, English; the order of datatrove's examples/fineweb.py,
                 which also sets C4QualityFilter(filter_no_terminal_punct=False): here the default True)
  2-4. exact     datatrove's exact-hash de-duplication: ExactDedupSignature (xxhash64 of the whole
                 text) -> ExactFindDedups (1 task) -> ExactDedupFilter -> JsonlWriter; the first copy stays
  5-8. minhash   MinhashConfig() defaults (5-gram word shingles, 14 buckets x 8 hashes, 64-bit xxhash):
                 MinhashDedupSignature -> MinhashDedupBuckets (14 tasks) -> MinhashDedupCluster (1 task)
                 -> MinhashDedupFilter -> JsonlWriter (the kept documents, workdir/output/*.jsonl)
Every writer is uncompressed (datatrove's default is gzip; forja writes uncompressed Arrow).
The English word tokenizer of datatrove 0.10.1 is spaCy's blank "en" pipeline plus its rule-based
sentencizer (datatrove/assets/tokenizer_assignment.csv): nothing is downloaded, no NLTK data is used.

datatrove shards by file, so the input is first split into --tasks files of about equal size in
workdir/input (one task: a symbolic link); that takes well under a second per 100 MB and is
left out of the wall time (reported as shard_s). Wall time runs from before `import datatrove` to
the last output written. Peak RSS: resource.getrusage, this process's max RSS + its children's
(the largest reaped child: with several tasks that is one worker, not their sum), and tree_rss_mb,
the largest sum of RSS over this process and all its descendants, sampled every 0.1 s.

Prints a few lines, the last one a JSON object:
  {"docs_read", "docs_kept", "wall_s", "docs_per_s", "mb_per_s", "peak_rss_mb", "tree_rss_mb",
   "tasks", "input_mb", "shard_s", "after_filters", "after_exact", "stage_s": {...}}
(MB = 10^6 bytes; docs/s = documents read / wall_s; MB/s = input bytes / wall_s).

Usage:
    .venv-bench/bin/python scripts/peers/peer-data.py --input CORPUS.jsonl --tasks N --workdir DIR
(DIR must not exist or be empty.)
"""
import argparse
import json
import os
import resource
import sys
import threading
import time


def count_lines(path):
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


def shard(path, tasks, folder):
    """Splits the input into `tasks` files of about equal bytes, at line boundaries."""
    os.makedirs(folder)
    if tasks == 1:
        os.symlink(os.path.abspath(path), os.path.join(folder, "00000.jsonl"))
        return
    total = os.path.getsize(path)
    i, done = 0, 0
    out = open(os.path.join(folder, f"{i:05d}.jsonl"), "wb")
    with open(path, "rb") as f:
        for line in f:
            if done >= total * (i + 1) / tasks and i < tasks - 1:
                out.close()
                i += 1
                out = open(os.path.join(folder, f"{i:05d}.jsonl"), "wb")
            out.write(line)
            done += len(line)
    out.close()


class TreeRss:
    """Samples the summed RSS of this process and all its descendants."""

    def __init__(self, interval=0.1):
        self.peak = 0
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.page = os.sysconf("SC_PAGE_SIZE")

    def sample(self):
        parent, rss = {}, {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                parent[int(name)] = int(fields[1])  # ppid
                rss[int(name)] = int(fields[21]) * self.page  # rss in pages
            except (OSError, IndexError, ValueError):
                continue
        me = os.getpid()
        total, todo = 0, [me]
        children = {}
        for pid, pp in parent.items():
            children.setdefault(pp, []).append(pid)
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        self.peak = max(self.peak, total)

    def loop(self):
        while not self.stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sample()


def jsonl_lines(folder):
    if not os.path.isdir(folder):
        return 0
    return sum(count_lines(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".jsonl"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    if a.tasks < 1:
        p.error("--tasks must be >= 1")
    if not os.path.isfile(a.input):
        p.error(f"--input {a.input} is not a file")
    w = os.path.abspath(a.workdir)
    if os.path.exists(w) and os.listdir(w):
        p.error(f"--workdir {w} is not empty")
    os.makedirs(w, exist_ok=True)
    docs_read = count_lines(a.input)
    input_bytes = os.path.getsize(a.input)
    t = time.perf_counter()
    shard(a.input, a.tasks, f"{w}/input")
    shard_s = time.perf_counter() - t
    os.environ.setdefault("TQDM_DISABLE", "1")

    with TreeRss() as tree:
        t0 = time.perf_counter()
        from datatrove.executor.local import LocalPipelineExecutor
        from datatrove.pipeline.dedup import (
            ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
            MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
        )
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.writers.jsonl import JsonlWriter

        stage_s = {}

        def run(name, pipeline, tasks):
            t = time.perf_counter()
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(tasks, a.tasks),
                                  logging_dir=f"{w}/logs/{name}", start_method="fork").run()
            stage_s[name] = round(time.perf_counter() - t, 3)

        reader = lambda folder: JsonlReader(folder, glob_pattern="*.jsonl")
        writer = lambda folder: JsonlWriter(folder, compression=None)
        exact = ExactDedupConfig(content_getter=document_text)
        minhash = MinhashConfig()
        n = a.tasks
        run("filter", [reader(f"{w}/input"), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
                       writer(f"{w}/filtered")], n)
        run("exact_signature", [reader(f"{w}/filtered"), ExactDedupSignature(f"{w}/exact/sigs", exact)], n)
        run("exact_find", [ExactFindDedups(f"{w}/exact/sigs", f"{w}/exact/dups", exact)], 1)
        run("exact_filter", [reader(f"{w}/filtered"), ExactDedupFilter(f"{w}/exact/dups", exact),
                             writer(f"{w}/exact/out")], n)
        run("minhash_signature", [reader(f"{w}/exact/out"), MinhashDedupSignature(f"{w}/minhash/sigs", config=minhash)], n)
        run("minhash_buckets", [MinhashDedupBuckets(f"{w}/minhash/sigs", f"{w}/minhash/buckets", config=minhash)],
            minhash.num_buckets)
        run("minhash_cluster", [MinhashDedupCluster(f"{w}/minhash/buckets", f"{w}/minhash/remove_ids", config=minhash)], 1)
        run("minhash_filter", [reader(f"{w}/exact/out"), MinhashDedupFilter(f"{w}/minhash/remove_ids"),
                               writer(f"{w}/output")], n)
        wall = time.perf_counter() - t0

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss_mb = (me.ru_maxrss + kids.ru_maxrss) * 1024 / 1e6  # ru_maxrss is in KiB on Linux
    result = {
        "docs_read": docs_read,
        "docs_kept": jsonl_lines(f"{w}/output"),
        "wall_s": round(wall, 3),
        "docs_per_s": round(docs_read / wall, 2),
        "mb_per_s": round(input_bytes / 1e6 / wall, 4),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "tree_rss_mb": round(tree.peak / 1e6, 1),
        "tasks": a.tasks,
        "input_mb": round(input_bytes / 1e6, 3),
        "shard_s": round(shard_s, 3),
        "after_filters": jsonl_lines(f"{w}/filtered"),
        "after_exact": jsonl_lines(f"{w}/exact/out"),
        "stage_s": stage_s,
    }
    print(f"datatrove {a.tasks} task(s): documents read {result['docs_read']}, kept {result['docs_kept']} "
          f"(after filters {result['after_filters']}, after exact dedup {result['after_exact']})")
    print(f"datatrove wall {result['wall_s']:.2f} s, {result['docs_per_s']:.1f} docs/s, {result['mb_per_s']:.3f} MB/s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB (process tree {result['tree_rss_mb']:.0f} MB)")
    print(json.dumps(result), flush=True)


def document_text(doc) -> str:
    return doc.text


if __name__ == "__main__":
    main()
