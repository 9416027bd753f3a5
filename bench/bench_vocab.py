"""Benchmark: the real vocabulary on CPU, the logits memory of a REDI step.

    python bench/bench_vocab.py [--tokens 8192] [--chunks 1024 256]

(The whole tokenized data's memory per rank is bench/bench_data_memory.py.)

One REDI optimizer step (forward + backward + update) through the real
`train_redi.main` (--loss redi, --layout padded, --max-steps 1, fp32) of a random Qwen2 with
Qwen2.5's vocabulary V = 151,936, hidden 64, 2 layers (bench/gpu.py --tiny's model), on one pair
whose chosen and rejected responses have --tokens tokens each (2 x 8k), for each --logps-chunk-size.
Each case runs in its own process, twice:
    probe  a TorchDispatchMode records every tensor any op creates whose shape holds V and that is
           not the [V, H] embedding/its gradient ("logits-like"): the largest one, and the most bytes
           (and distinct storages) of such tensors alive at once (liveness: weakref finalizers on the
           op outputs, storages counted once however many views or autograd's saved aliases point at
           them); saved-tensor hooks record any logits-like tensor autograd saves for backward.
    rss    the same step without the probe, in-process: RSS when the first step starts (model,
           data, libraries loaded) and the process's peak RSS after the step (ru_maxrss); their
           difference is what the step adds (activations, logits blocks, gradients, and AdamW's
           state, created at the first update: 3 x 4 bytes x 9.8M parameters = 113 MiB), against one
           [chunk, V] fp32 block and the full [T, V] fp32 logits of the step's T tokens.
Children run with OMP_NUM_THREADS=1 (the box is shared; see bench/bench_trl.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import weakref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

VOCAB, HIDDEN, IGNORE_INDEX, PROMPT_TOKENS = 151_936, 64, -100, 64
MIB = 2**20

# -----------------------------------------------------------------------------
# part 1: the probe


def logits_like(t) -> bool:
    """A tensor with a V-sized dimension that is not [V, H] (the tied embedding and its gradient)."""
    return VOCAB in t.shape and t.numel() != VOCAB * HIDDEN


class LogitsProbe:
    """Creation, liveness and saving of logits-like tensors over every op run inside it."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        self.largest = (0, None, None)             # (bytes, shape, op) of the largest logits-like tensor
        self.live = {}                              # storage data_ptr -> [aliases alive, storage bytes]
        self.live_bytes = self.peak_live_bytes = self.peak_live_storages = 0
        self.at_peak = []                           # "op [shape]" that made each storage alive at the peak
        self.saved_logits_like = []                 # shapes autograd saved for backward
        self.largest_any = (0, None, None)         # the largest tensor of any shape
        probe = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor):
                        probe.created(t, str(func))
                return out

        def pack(t):
            if logits_like(t):
                self.saved_logits_like.append(tuple(t.shape))
            return t
        self.mode, self.hooks = Mode(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def created(self, t, op):
        nbytes = t.numel() * t.element_size()
        if nbytes > self.largest_any[0]:
            self.largest_any = (nbytes, tuple(t.shape), op)
        if not logits_like(t):
            return
        if nbytes > self.largest[0]:
            self.largest = (nbytes, tuple(t.shape), op)
        key = t.untyped_storage().data_ptr()
        entry = self.live.setdefault(key, [0, t.untyped_storage().nbytes(), f"{op.removeprefix('aten.')} {list(t.shape)}"])
        if entry[0] == 0:
            self.live_bytes += entry[1]
        entry[0] += 1
        if self.live_bytes > self.peak_live_bytes:
            self.peak_live_bytes, self.peak_live_storages = self.live_bytes, len(self.live)
            self.at_peak = sorted(e[2] for e in self.live.values())
        weakref.finalize(t, self.released, key)

    def released(self, key):
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self.live[key]

    def __enter__(self):
        self.hooks.__enter__()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.hooks.__exit__(*exc)


def step_argv(model_dir, data, out, chunk) -> list[str]:
    return ["--model", model_dir, "--data", data, "--output-dir", out, "--loss", "redi", "--layout", "padded",
            "--max-steps", "1", "--epochs", "1", "--global-batch-size", "1", "--lr", "1e-6", "--no-save",
            "--no-progress", "--mixed-precision", "fp32", "--logps-chunk-size", str(chunk)]


def run_probe(args) -> dict:
    """In this process: one REDI step under the probe; its findings as a dict."""
    import train_redi

    probe = LogitsProbe()
    started = time.time()
    with probe:
        train_redi.main(step_argv(args.model_dir, args.data, args.out, args.chunk))
    return {"largest_logits_like": {"mib": probe.largest[0] / MIB, "shape": probe.largest[1], "op": probe.largest[2]},
            "peak_live_logits_like_mib": probe.peak_live_bytes / MIB,
            "peak_live_logits_like_storages": probe.peak_live_storages, "alive_at_peak": probe.at_peak,
            "saved_for_backward_logits_like": sorted(set(probe.saved_logits_like)),
            "largest_tensor": {"mib": probe.largest_any[0] / MIB, "shape": probe.largest_any[1], "op": probe.largest_any[2]},
            "seconds": time.time() - started}


def run_rss(args) -> dict:
    """In this process, no probe: RSS when the first step starts and the process's peak RSS after it."""
    from bench_data_memory import rss

    import train_redi
    import training

    at_start = {}
    start_step = training.StepClock.start_step

    def recording_start_step(clock):
        at_start.setdefault("rss", rss()["VmRSS"])
        return start_step(clock)
    training.StepClock.start_step = recording_start_step
    started = time.time()
    train_redi.main(step_argv(args.model_dir, args.data, args.out, args.chunk))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        record = [json.loads(line) for line in f][-1]
    return {"rss_at_step_start_mib": at_start["rss"] / MIB, "peak_rss_mib": peak / MIB,
            "step_extra_mib": (peak - at_start["rss"]) / MIB, "tokens": record["data/tokens"],
            "step_s": record["perf/step_time_s"], "seconds": time.time() - started}


def child(argv: list[str]) -> tuple[dict | None, float, float]:
    """Run `python this_file argv`; (its last JSON line or None, peak RSS MiB, seconds)."""
    from bench_memory import run_child

    output, peak_mib, seconds = run_child(argv)
    last = [line for line in output.splitlines() if line.startswith("{")]
    return (json.loads(last[-1]) if last else None), peak_mib, seconds


def part_logits(args) -> None:
    import gpu

    work = tempfile.mkdtemp(prefix="redi-bench-vocab-")
    try:
        model_dir, info = gpu.build_model_dir(work, tiny=True)
        pairs, _ = gpu.write_pairs(work, model_dir, args.tokens)
        print(f"model {info}; one pair, 2 x ~{args.tokens} tokens", flush=True)
        rows = []
        for chunk in args.chunks:
            me = [sys.executable, os.path.abspath(__file__), "--chunk", str(chunk), "--model-dir", model_dir,
                  "--data", pairs]
            found, _, _ = child(me + ["--probe", "--out", os.path.join(work, f"p{chunk}")])
            measured, _, _ = child(me + ["--rss", "--out", os.path.join(work, f"r{chunk}")])
            block, full = chunk * VOCAB * 4 / MIB, measured["tokens"] * VOCAB * 4 / MIB
            rows.append({"chunk": chunk, "block_mib": block, "full_logits_mib": full, **measured, **found})
            print(json.dumps(rows[-1]), flush=True)
        print("\n| chunk | tokens | one [chunk, V] fp32 block MiB | full [T, V] fp32 MiB | largest logits-like tensor | "
              "peak live logits-like MiB (storages) | saved for backward | step's peak RSS over its start MiB | "
              "(in blocks) |")
        print("|---:|---:|---:|---:|---|---:|---|---:|---:|")
        for r in rows:
            big = r["largest_logits_like"]
            print(f"| {r['chunk']} | {r['tokens']:,} | {r['block_mib']:,.0f} | {r['full_logits_mib']:,.0f} | "
                  f"{list(big['shape'])} {big['mib']:,.0f} MiB ({big['op']}) | {r['peak_live_logits_like_mib']:,.0f} "
                  f"({r['peak_live_logits_like_storages']}) | {r['saved_for_backward_logits_like'] or 'none'} | "
                  f"{r['step_extra_mib']:,.0f} | {r['step_extra_mib'] / r['block_mib']:.1f} |")
        for r in rows:
            print(f"chunk {r['chunk']}: logits-like storages alive at the peak: {r['alive_at_peak']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": info, "rows": rows}, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192, help="tokens per response in part 1 (2 x this per step)")
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 256], help="--logps-chunk-size values")
    p.add_argument("--json", default=None, help="write the rows here")
    # internal: one child's job
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    for name in ("--chunk", "--model-dir", "--data", "--out"):
        p.add_argument(name, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe or args.rss:
        args.chunk = int(args.chunk)
        print(json.dumps(run_probe(args) if args.probe else run_rss(args)), flush=True)
    else:
        part_logits(args)


if __name__ == "__main__":
    main()
