"""DPO's reference model, out of the way of train_redi.py's step: the reference log-probs of each pair,
from a frozen copy of the starting model run on the same micro-batch, or computed once for every
pair and cached next to the data (--precompute-ref), after which the reference is freed.

    build_reference(args, setup, pairs) -> reference(batch, batch_pairs)
        -> (ref_chosen_logps [n], ref_rejected_logps [n]), summed log-probs as the policy's
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile

import torch
import torch.distributed as dist

import training
from cli import read_jsonl
from data import collate_pairs
from training import print0


def reference_cache_path(args, tokens_key: str, attn_implementation: str) -> str:
    """Cache file beside the data, keyed by the reference model's identity and numerics and by the token
    cache's key (`tokens_key`: data, tokenizer, template, --system-prompt), since log p_ref(y|x) depends on all;
    `attn_implementation`: the kernel the reference runs (training.Kernels)."""
    ref = os.path.abspath(args.ref_model or args.model)
    h = hashlib.sha256()
    for name in sorted(os.listdir(ref)) if os.path.isdir(ref) else []:
        if name.endswith((".json", ".safetensors", ".bin")):
            st = os.stat(os.path.join(ref, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"{ref}|{args.mixed_precision}|{args.max_position_embeddings}|{args.rope_theta}|"
             f"{attn_implementation}|{tokens_key}".encode())
    return f"{args.data}.ref-logps.{h.hexdigest()[:16]}.jsonl"


def compute_reference_logps(ref_model, pairs, args, setup) -> dict:
    """{pair id: (chosen, rejected) summed logps} for every pair, each rank doing a shard.

    FSDP forwards are collective, so every rank runs the same number of micro-batches (the last
    ones padded with repeats that are discarded).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    mb = args.micro_batch_size
    per_rank = -(-len(pairs) // world)
    mine = [(rank + k * world) % len(pairs) for k in range(per_rank)]
    real = [rank + k * world < len(pairs) for k in range(per_rank)]
    found = {}
    with torch.no_grad():
        for start in range(0, per_rank, mb):
            idx = mine[start:start + mb]
            batch = collate_pairs([pairs[i] for i in idx], setup.tokenizer.pad_token_id, setup.kernels.packed,
                                  setup.device)
            sums, _ = ref_model(**batch)                                     # [2n]: chosen, then rejected
            for j, i in enumerate(idx):
                if real[start + j]:
                    found[pairs[i]["id"]] = (sums[j].item(), sums[len(idx) + j].item())
    gathered = [None] * world
    dist.all_gather_object(gathered, found)
    return {k: v for part in gathered for k, v in part.items()}


def load_or_compute_reference(args, setup, pairs) -> dict:
    """--precompute-ref: read the cache if it covers every pair, else compute, write, and read it."""
    # The cache is keyed by pair id; data.load_pairs has already refused a file with a repeated id.
    path = reference_cache_path(args, os.path.basename(pairs.directory), setup.kernels.attn_implementation)
    if os.path.exists(path):
        cache = {r["id"]: (r["chosen"], r["rejected"]) for _, r in read_jsonl(path)}
        if all(p["id"] in cache for p in pairs):
            print0(f"reference log-probs: read {len(cache)} from {path}")
            return cache
    print0(f"reference log-probs: computing for {len(pairs)} pairs with {args.ref_model or args.model}")
    ref_model, _ = load_reference_model(args, setup)
    cache = compute_reference_logps(ref_model, pairs, args, setup)
    del ref_model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if training.is_main():
        # a temp file of this process's own, published atomically: jobs sharing a pairs file (a grid
        # of DPO runs) may compute the same cache at the same time, and each reads a whole file
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            for pid, (c, r) in cache.items():
                f.write(json.dumps({"id": pid, "chosen": c, "rejected": r}) + "\n")
        os.replace(tmp, path)
        print0(f"reference log-probs: wrote {path}")
    dist.barrier()
    return cache


def load_reference_model(args, setup):
    """The frozen reference, sharded like the policy and run with the policy's kernels."""
    return training.load_model(args.ref_model or args.model, args, setup.device, setup.kernels, trainable=False)


def build_reference(args, setup, pairs):
    """DPO's reference log-probs as a function (batch, batch_pairs) -> (ref_chosen [B], ref_rejected [B]).

    From the --precompute-ref cache, or a frozen copy of the model forwarded on the same batch."""
    if args.precompute_ref:
        cache = load_or_compute_reference(args, setup, pairs)

        def cached(batch, batch_pairs):
            ref = torch.tensor([cache[p["id"]] for p in batch_pairs], dtype=torch.float32, device=setup.device)
            return ref[:, 0], ref[:, 1]
        return cached
    ref_model, _ = load_reference_model(args, setup)

    def live(batch, batch_pairs):
        with torch.no_grad():
            sums, _ = ref_model(**batch)
        return sums[:len(batch_pairs)], sums[len(batch_pairs):]
    return live
