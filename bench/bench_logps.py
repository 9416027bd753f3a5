"""Benchmark: sequence log-probs, naive full log-softmax vs redi_loss's chunked variants.

    python bench/bench_logps.py [--tokens 4096] [--vocab 32768] [--hidden 512] [--chunk 1024] [--repeats 3]

Each variant runs forward + backward of sum(log p(labels)) in its OWN subprocess, so that the
process's peak resident memory (ru_maxrss) belongs to that variant alone; the figure reported is
the peak minus the resident memory just after the inputs were built (the memory the variant
added). On a GPU the same script reports torch.cuda.max_memory_allocated instead. Variants:
    naive          logits = h @ W.T, then log_softmax(logits.float()).gather(...)   (TRL-style)
    logits-chunked logits = h @ W.T, then redi_loss.token_logps (chunks + recompute)
    hidden-chunked redi_loss.token_logps_from_hidden: [T, V] logits never exist
Prints one line per variant (ms per fwd+bwd, extra peak MiB) and the ratios to naive.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["naive", "logits-chunked", "hidden-chunked"]


def run_variant(args) -> dict:
    import torch

    sys.path.insert(0, ROOT)
    from redi_loss import token_logps, token_logps_from_hidden

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, args.tokens, args.hidden, generator=g).to(device).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * 0.02).to(device).requires_grad_()
    labels = torch.randint(0, args.vocab, (1, args.tokens), generator=g).to(device)
    labels[:, : args.tokens // 8] = -100                        # a prompt

    def step():
        if args.variant == "naive":
            logits = hidden @ weight.t()
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            target = labels[:, 1:]
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total = (picked * (target != -100)).sum()
        elif args.variant == "logits-chunked":
            total = token_logps(hidden @ weight.t(), labels, chunk_size=args.chunk).sum()
        else:
            total = token_logps_from_hidden(hidden, weight, labels, chunk_size=args.chunk).sum()
        total.backward()
        hidden.grad = weight.grad = None
        return total.item()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    value = step()                                              # warm-up, also the memory peak
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        extra_mib = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"variant": args.variant, "ms": 1000 * min(times), "extra_peak_mib": extra_mib, "value": value,
            "device": device.type}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="sequence length T")
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary size V (Qwen2.5: 151,936)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size H (Qwen2.5-1.5B: 1536)")
    p.add_argument("--chunk", type=int, default=1024, help="chunk size of the chunked variants")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the minimum is reported)")
    p.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(f"T={args.tokens} V={args.vocab} H={args.hidden} chunk={args.chunk}; fwd+bwd of sum log p(labels)")
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens), "--vocab",
               str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    naive = results["naive"]
    for variant, r in results.items():
        print(f"{variant:15s} {r['ms']:9.1f} ms  {r['extra_peak_mib']:9.1f} MiB extra peak  "
              f"time x{r['ms'] / naive['ms']:.2f}  memory x{r['extra_peak_mib'] / max(naive['extra_peak_mib'], 1e-9):.3f}  "
              f"value {r['value']:.4f} ({r['device']})")


if __name__ == "__main__":
    main()
