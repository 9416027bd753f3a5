"""Memory per rank of the tokenized training data: the int32 cache (token_cache.py) vs Python lists.

    python bench/bench_data_memory.py [--pairs 20000] [--tokens 2000]

A synthetic corpus of PAIRS pairs whose chosen and rejected sequences have TOKENS tokens each is
written straight into token_cache's on-disk format (no tokenizer needed), then held as training
holds it: the cache memory-mapped through token_cache.TokenizedExamples, with every sequence read
once (as an epoch does). Reported from /proc/self/status: RssAnon (private to this process) and
RssFile (file pages: the page cache, shared by every rank on the node), against the int32 size of
ids + labels (8 bytes per token), the issue's yardstick. For comparison, the same data as the lists
data.tokenize_pairs returns (what every rank held before the cache), measured in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def write_cache(directory, pairs, tokens, prompt=64):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    sequences = 2 * pairs
    with open(os.path.join(directory, "tokens.bin"), "wb") as f:
        for _ in range(0, sequences, 1000):
            f.write(rng.integers(0, 151_936, size=1000 * tokens, dtype=np.int32).tobytes())
    offsets = np.arange(sequences, dtype=np.int64) * tokens
    index = np.stack([offsets, np.full(sequences, tokens), np.full(sequences, prompt)], 1)
    np.save(os.path.join(directory, "index.npy"), index)
    with open(os.path.join(directory, "ids.json"), "w") as f:
        json.dump([f"pair/{i}" for i in range(pairs)], f)


def hold_cache(directory) -> dict:
    import token_cache

    before = rss()
    examples = token_cache.TokenizedExamples(directory, "pairs")
    total = sum(int(examples.tokens[o:o + n].sum() > -1) for o, n, _ in examples.index)   # touch every page once
    after = rss()
    return {k: after[k] - before[k] for k in before} | {"touched_sequences": total}


def hold_lists(pairs, tokens, prompt=64) -> dict:
    before = rss()
    data = []
    for i in range(pairs):
        ids = list(range(i, i + tokens))
        seq = {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}
        data.append({"id": f"pair/{i}", "chosen": seq, "rejected": {"input_ids": list(ids), "labels": list(seq["labels"])}})
    after = rss()
    return {k: after[k] - before[k] for k in before}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=20_000)
    p.add_argument("--tokens", type=int, default=2_000, help="tokens per sequence (chosen and rejected each)")
    p.add_argument("--mode", choices=["all", "cache", "lists"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode != "all":
        result = hold_cache(args.dir) if args.mode == "cache" else hold_lists(args.pairs, args.tokens)
        print(json.dumps(result))
        return
    int32_size = 8 * 2 * args.pairs * args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        write_cache(tmp, args.pairs, args.tokens)
        runs = {}
        for mode in ("cache", "lists"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--dir", tmp, "--pairs", str(args.pairs),
                                  "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
            runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.pairs} pairs x 2 x {args.tokens} tokens = {2 * args.pairs * args.tokens:,} tokens; "
          f"int32 ids + labels = {int32_size / 2**20:,.0f} MiB")
    print("| held as | private (RssAnon) MiB | shared page cache (RssFile) MiB | total / int32 size |")
    print("|---|---:|---:|---:|")
    for mode, r in runs.items():
        print(f"| {mode} | {r['RssAnon'] / 2**20:,.0f} | {r['RssFile'] / 2**20:,.0f} | "
              f"{(r['RssAnon'] + r['RssFile']) / int32_size:.2f} |")


if __name__ == "__main__":
    main()
