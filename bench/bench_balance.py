"""How evenly a step's tokens are spread over ranks: contiguous slices vs cost-balanced assignment.

    python bench/bench_balance.py [--pairs 53175] [--world 8] [--global-batch 32] [--seed 0]

Pair lengths (chosen + rejected tokens) are drawn from a long-tailed log-normal shaped like
OpenR1-Math-Raw's curated pairs (median ~11k, a tail to the 2 x 19k length cap). For every step of
one epoch, each rank's load is the tokens it forwards (zero-weight padding repeats included);
a step lasts as long as its most loaded rank, so the figure of merit is max / mean rank load
(1.0 = no rank waits). Printed: mean and 95th percentile over steps, and the share of rank-time
spent waiting, 1 - mean/max, for both assignments. The assignment is data.BatchOrder's.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import BatchOrder  # noqa: E402


def openr1_like_lengths(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=np.log(11_000), sigma=0.55, size=n)
    return np.clip(lengths, 800, 38_000).astype(int).tolist()


def imbalance(lengths, world, global_batch, balance: bool, seed: int) -> np.ndarray:
    orders = [BatchOrder(lengths, global_batch, world, r, seed, micro_batch_size=1, balance=balance)
                for r in range(world)]
    ratios = []
    for step in range(orders[0].steps_per_epoch):
        loads = [sum(lengths[i] for i, _ in s.rank_slice(0, step, r)) for r, s in enumerate(orders)]
        ratios.append(max(loads) / np.mean(loads))
    return np.asarray(ratios)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=53_175, help="pairs in the epoch (paper: 53,175)")
    p.add_argument("--world", type=int, default=8, help="ranks")
    p.add_argument("--global-batch", type=int, default=32, help="pairs per step (paper: 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lengths = openr1_like_lengths(args.pairs, args.seed)
    print(f"{args.pairs} pairs, tokens per pair: median {int(np.median(lengths))}, p95 "
          f"{int(np.percentile(lengths, 95))}, max {max(lengths)}; {args.world} ranks, {args.global_batch} pairs/step")
    print("| assignment | max/mean rank load (mean over steps) | p95 | rank-time waiting |")
    print("|---|---|---|---|")
    for name, balance in (("contiguous slices (before)", False), ("cost-balanced (after)", True)):
        r = imbalance(lengths, args.world, args.global_batch, balance, args.seed)
        print(f"| {name} | {r.mean():.3f} | {np.percentile(r, 95):.3f} | {100 * (1 - 1 / r).mean():.1f}% |")


if __name__ == "__main__":
    main()
