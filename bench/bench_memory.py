"""Benchmark: stage-2 peak memory against trace length, padded and packed layouts (CPU).

    python bench/bench_memory.py [--lengths 2048 4096 8192 16384] [--base 256] [--repeats 2]

One pair whose chosen and rejected responses have L tokens each (bench/gpu.py's write_pairs), a
random tiny Qwen2 (hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 256, a small BPE vocabulary,
max_position_embeddings 40,000), trained by the real `train_redi.py --loss redi --max-steps 2
--global-batch-size 1`, fp32, one process, for each --layout. Peak memory is the child's peak RSS
(os.wait4), median over --repeats runs. The fixed cost (libraries, weights, optimizer) is the peak
of the same run at L = --base; the growth is peak(L) - peak(base). Reported: growth per L, growth
per token, and the issue's check from 2k to 8k: growth(8k) / growth(2k) against 4 (linear), target
<= 1.3 x 4 = 5.2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

MODEL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
             max_position_embeddings=40_000)


def build_model_dir(work: str) -> str:
    from toy import tiny_model

    path = os.path.join(work, "model")
    tiny_model.save_tiny(path, ["0 1 2 3 4 5 6 7 8 9 think answer boxed"] * 8, vocab_size=300, **MODEL)
    return path


def run_child(argv: list[str]) -> tuple[str, float, float]:
    """Run argv in its own process (offline, one thread): (its output, its peak RSS MiB, seconds);
    RuntimeError with the output's tail if it fails. bench_vocab.py uses it too."""
    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                                     MKL_NUM_THREADS="1"))
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ...: exit {os.waitstatus_to_exitcode(status)}\n{output[-3000:]}")
    return output, usage.ru_maxrss / 1024, time.time() - started


def run(model_dir: str, data: str, layout: str, work: str) -> dict:
    """One training run in its own process: peak RSS and the step times from metrics.jsonl."""
    out = tempfile.mkdtemp(dir=work)
    argv = [sys.executable, os.path.join(ROOT, "train_redi.py"), "--model", model_dir, "--data", data,
            "--output-dir", out, "--loss", "redi", "--layout", layout, "--max-steps", "2", "--epochs", "2",
            "--global-batch-size", "1", "--lr", "1e-6", "--no-save", "--no-progress", "--mixed-precision", "fp32"]
    _, peak_mib, seconds = run_child(argv)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "perf/step_time_s" in r]
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_mb": peak_mib, "wall_s": seconds,
            "step_s": [r["perf/step_time_s"] for r in records], "tokens": records[-1]["data/tokens"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384], help="tokens per response")
    p.add_argument("--base", type=int, default=256, help="tokens per response of the fixed-cost run")
    p.add_argument("--layouts", nargs="+", default=["padded", "packed"], help="--layout values")
    p.add_argument("--repeats", type=int, default=2, help="runs per case (median)")
    p.add_argument("--json", default=None, help="write every run here")
    args = p.parse_args(argv)
    import gpu

    work = tempfile.mkdtemp(prefix="redi-bench-memory-")
    try:
        model_dir = build_model_dir(work)
        lengths = [args.base] + args.lengths
        data = {n: gpu.write_pairs(work, model_dir, n)[0] for n in lengths}
        runs = []
        for rep in range(args.repeats):                 # interleaved: every case once per round
            for n in lengths:
                for layout in args.layouts:
                    runs.append({"layout": layout, "length": n, "round": rep, **run(model_dir, data[n], layout, work)})
                    print(json.dumps(runs[-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f, indent=1)
        peak = {(layout, n): statistics.median(r["peak_rss_mb"] for r in runs if r["layout"] == layout and r["length"] == n)
                for layout in args.layouts for n in lengths}
        spread = {(layout, n): max(r["peak_rss_mb"] for r in runs if r["layout"] == layout and r["length"] == n)
                  - min(r["peak_rss_mb"] for r in runs if r["layout"] == layout and r["length"] == n)
                  for layout in args.layouts for n in lengths}
        tokens = {n: next(r["tokens"] for r in runs if r["length"] == n) for n in lengths}
        print("\n| layout | tokens per response | tokens per step | peak RSS MB (spread) | growth over base MB | "
              "growth KB per token |")
        print("|---|---:|---:|---:|---:|---:|")
        for layout in args.layouts:
            for n in lengths:
                growth = peak[(layout, n)] - peak[(layout, args.base)]
                per_token = 1024 * growth / (tokens[n] - tokens[args.base]) if n != args.base else float("nan")
                print(f"| {layout} | {n:,} | {tokens[n]:,} | {peak[(layout, n)]:,.0f} ({spread[(layout, n)]:.0f}) | "
                      f"{growth:,.0f} | {per_token:.1f} |")
        if 2048 in lengths and 8192 in lengths:
            linear = (tokens[8192] - tokens[args.base]) / (tokens[2048] - tokens[args.base])
            print("\n| layout | growth(8k) / growth(2k) | linear (token ratio) | x linear | target <= 5.2 (1.3 x 4) |")
            print("|---|---:|---:|---:|---|")
            for layout in args.layouts:
                ratio = ((peak[(layout, 8192)] - peak[(layout, args.base)])
                         / (peak[(layout, 2048)] - peak[(layout, args.base)]))
                print(f"| {layout} | {ratio:.2f} | {linear:.2f} | {ratio / linear:.2f} | "
                      f"{'met' if ratio <= 5.2 else 'NOT met'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
