"""Stage 2 of REDI: learn from the teacher's correct AND incorrect traces (paper Eq. 5).

On (problem x, correct trace y_w, incorrect trace y_l) pairs, starting from the stage-1 SFT model:

    L_REDI = - log p(y_w|x) / |y_w|  +  alpha * log p(y_l|x) / |y_l|          averaged over pairs

with no reference model. The same script trains the paper's baselines on the same pairs:
    --loss dpo     Eq. (2), against a frozen reference (the starting model, or --ref-model)
    --loss simpo   Eq. (3), length-normalised, margin gamma, no reference
    --loss sft     the "just more SFT" control: token-mean NLL of the chosen traces only
The losses themselves live in redi_loss.py; the training machinery (FSDP2, schedule,
checkpoints, metrics, step loop) is imported from train_sft.py.

Launch:
    # REDI from the stage-1 checkpoint, 8 GPUs (paper: lr 1e-6, alpha 0.8, 32 pairs/step, 1 epoch)
    torchrun --nproc_per_node 8 train_redi.py --model runs/sft/final --data pairs.jsonl \\
        --output-dir runs/redi --loss redi
    # DPO baseline with reference log-probs computed once and cached next to the data
    torchrun --nproc_per_node 8 train_redi.py --model runs/sft/final --data pairs.jsonl \\
        --output-dir runs/dpo --loss dpo --precompute-ref
    # CPU, 2 processes, as the tests run it
    torchrun --nproc_per_node 2 train_redi.py --model runs/sft/final --data pairs.jsonl \\
        --output-dir runs/redi --global-batch-size 4 --max-steps 3

Per-loss defaults (the paper's tuned values for Qwen2.5-Math-1.5B; override with the flags):
    redi  lr 1e-6, alpha 0.8          dpo  lr 2e-7, beta 0.001
    simpo lr 5e-7, beta 2, gamma 1    sft  lr 1e-6

Extra metrics per step (means over the step's pairs, all ranks): chosen_logps and
rejected_logps = log p(y|x)/|y|, the paper's "LogPS"; margin = chosen_logps - rejected_logps;
pair_accuracy = fraction of pairs with chosen_logps > rejected_logps; for DPO also the implicit
rewards beta*(log p - log p_ref) and their accuracy.

Collapse warning: the paper shows that at high learning rates (or alpha near 1) the
log-likelihoods of BOTH chosen and rejected traces fall together and accuracy collapses. Each step
we compare the mean LogPS of the last --collapse-window steps with the first step's; when both
chosen and rejected have fallen by more than --collapse-threshold nats per token (default 0.5:
the LogPS of a trained model's own data sits near 0 to -0.5, so a 0.5 drop means the model has
moved far from the traces it was trained on), the step is flagged (`collapse_warning: true` in
metrics.jsonl) and a warning is printed once.

Where this departs from the paper's code (TRL DPOTrainer-based):
  1. Chosen and rejected go through ONE forward (concatenated), as TRL does; with --loss sft the
     rejected traces are still forwarded, so that their LogPS is logged for the control too.
  2. Log-probs come from hidden states in chunks (redi_loss.token_logps_from_hidden), never full
     logits; numerically the same as TRL's log-softmax gather.
  3. The last, smaller batch of the epoch is trained on, not dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import train_sft
from train_sft import print0

PAPER_DEFAULTS = {
    "redi": {"lr": 1e-6, "alpha": 0.8},
    "dpo": {"lr": 2e-7, "beta": 0.001},
    "simpo": {"lr": 5e-7, "beta": 2.0, "gamma": 1.0},
    "sft": {"lr": 1e-6},
}

# -----------------------------------------------------------------------------
# arguments


def parse_args(argv=None):
    parser = train_sft.build_parser(__doc__, lr=None, global_batch=32, epochs=1)
    g = parser.add_argument_group("stage-2 loss")
    g.add_argument("--loss", default="redi", choices=sorted(PAPER_DEFAULTS), help="objective (default redi)")
    g.add_argument("--alpha", type=float, default=None, help="REDI weight on the rejected term (default 0.8)")
    g.add_argument("--beta", type=float, default=None, help="DPO/SimPO inverse temperature (default 0.001 / 2)")
    g.add_argument("--gamma", type=float, default=None, help="SimPO target margin (default 1)")
    g.add_argument("--ref-model", default=None, help="DPO reference model dir (default: --model)")
    g.add_argument("--precompute-ref", action="store_true",
                   help="DPO: compute reference log-probs once, cache them next to --data, free the reference")
    g.add_argument("--collapse-threshold", type=float, default=0.5,
                   help="warn when chosen AND rejected LogPS fall this many nats/token below their start")
    g.add_argument("--collapse-window", type=int, default=5, help="steps averaged for the collapse check")
    args = parser.parse_args(argv)
    for key, value in PAPER_DEFAULTS[args.loss].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.loss != "dpo" and (args.ref_model or args.precompute_ref):
        parser.error(f"--ref-model/--precompute-ref only apply to --loss dpo, not {args.loss}")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    train_sft.validate_args(args)
    return args


def loss_hyperparameters(args) -> dict:
    return {"redi": {"alpha": args.alpha}, "dpo": {"beta": args.beta},
            "simpo": {"beta": args.beta, "gamma": args.gamma}, "sft": {}}[args.loss]


# -----------------------------------------------------------------------------
# reference log-probs (DPO only)


def reference_cache_path(args) -> str:
    """Cache file beside the data, keyed by the reference model's identity and numerics."""
    ref = os.path.abspath(args.ref_model or args.model)
    h = hashlib.sha256()
    for name in sorted(os.listdir(ref)) if os.path.isdir(ref) else []:
        if name.endswith((".json", ".safetensors", ".bin")):
            st = os.stat(os.path.join(ref, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"{ref}|{args.mixed_precision}|{args.max_position_embeddings}|{args.rope_theta}|"
             f"{args.attn_implementation}".encode())
    return f"{args.data}.ref-logps.{h.hexdigest()[:16]}.jsonl"


def compute_reference_logps(ref_model, pairs, pad_id, args, device) -> dict:
    """{pair id: (chosen, rejected) summed logps} for every pair, each rank doing a shard.

    FSDP forwards are collective, so every rank runs the same number of micro-batches (the last
    ones padded with repeats that are discarded).
    """
    import torch
    import torch.distributed as dist
    from data import collate_pairs

    rank, world = dist.get_rank(), dist.get_world_size()
    mb = args.micro_batch_size
    per_rank = -(-len(pairs) // world)
    mine = [(rank + k * world) % len(pairs) for k in range(per_rank)]
    real = [rank + k * world < len(pairs) for k in range(per_rank)]
    found = {}
    with torch.no_grad():
        for start in range(0, per_rank, mb):
            idx = mine[start:start + mb]
            batch = train_sft.to_device(collate_pairs([pairs[i] for i in idx], pad_id, args.packed), device)
            sums, _ = ref_model(**batch)
            for j, i in enumerate(idx):
                if real[start + j]:
                    found[pairs[i]["id"]] = (sums[j].item(), sums[len(idx) + j].item())
    gathered = [None] * world
    dist.all_gather_object(gathered, found)
    return {k: v for part in gathered for k, v in part.items()}


def load_or_compute_reference(args, pairs, pad_id, device) -> dict:
    """--precompute-ref: read the cache if it covers every pair, else compute, write, and read it."""
    import gc

    import torch
    import torch.distributed as dist

    path = reference_cache_path(args)
    if os.path.exists(path):
        with open(path) as f:
            cache = {r["id"]: (r["chosen"], r["rejected"]) for r in map(json.loads, f)}
        if all(p["id"] in cache for p in pairs):
            print0(f"reference log-probs: read {len(cache)} from {path}")
            return cache
    print0(f"reference log-probs: computing for {len(pairs)} pairs with {args.ref_model or args.model}")
    ref_model, _ = train_sft.load_model(args.ref_model or args.model, args, device, trainable=False)
    cache = compute_reference_logps(ref_model, pairs, pad_id, args, device)
    del ref_model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if train_sft.is_main():
        with open(path + ".tmp", "w") as f:
            for pid, (c, r) in cache.items():
                f.write(json.dumps({"id": pid, "chosen": c, "rejected": r}) + "\n")
        os.replace(path + ".tmp", path)
        print0(f"reference log-probs: wrote {path}")
    dist.barrier()
    return cache


# -----------------------------------------------------------------------------
# loss on a micro-batch of pairs


class PairTask:
    """Per-micro-batch pair loss; pair losses are averaged over the step's GLOBAL pair count."""

    def __init__(self, args, pairs, sampler, pad_id, device, ref_model=None, ref_cache=None):
        from redi_loss import LOSSES

        self.args, self.pairs, self.sampler, self.pad_id, self.device = args, pairs, sampler, pad_id, device
        self.ref_model, self.ref_cache = ref_model, ref_cache
        self.loss_fn = LOSSES.get(args.loss)
        self.hparams = loss_hyperparameters(args)
        self.chosen_tokens = [sum(t != -100 for t in p["chosen"]["labels"][1:]) for p in pairs]
        self.history, self.start, self.warned = [], None, False

    def normaliser(self, epoch, step_in_epoch):
        """Real pairs in the step (or chosen tokens, for the SFT control), over all ranks."""
        items = [it for r in range(self.sampler.world_size) for it in self.sampler.rank_slice(epoch, step_in_epoch, r)]
        if self.args.loss == "sft":
            return float(sum(self.chosen_tokens[i] * w for i, w in items))
        return float(sum(w for _, w in items))

    def reference(self, batch, ids, n):
        import torch

        if self.ref_cache is not None:
            ref = torch.tensor([self.ref_cache[i] for i in ids], dtype=torch.float32, device=self.device)
            return ref[:, 0], ref[:, 1]
        with torch.no_grad():
            sums, _ = self.ref_model(**batch)
        return sums[:n], sums[n:]

    def micro_batch(self, model, items, normaliser):
        import torch
        from data import collate_pairs
        from redi_loss import sft_loss

        pairs = [self.pairs[i] for i, _ in items]
        n = len(pairs)
        batch = train_sft.to_device(collate_pairs(pairs, self.pad_id, self.args.packed), self.device)
        weights = torch.tensor([w for _, w in items], device=self.device)
        sums, counts = model(**batch)                                       # [2n]: chosen then rejected
        inputs = {"chosen_logps": sums[:n], "chosen_lengths": counts[:n],
                  "rejected_logps": sums[n:], "rejected_lengths": counts[n:]}
        if self.args.loss == "dpo":
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = self.reference(batch, [p["id"] for p in pairs], n)
        if self.args.loss == "sft":
            loss = sft_loss(inputs["chosen_logps"] * weights, inputs["chosen_lengths"], total_tokens=normaliser)
        else:
            per_pair = self.loss_fn(**{k: inputs[k] for k in _parameters(self.loss_fn) if k in inputs}, **self.hparams)
            loss = (per_pair * weights).sum() / normaliser
        stats = pair_stats(inputs, weights, self.args.beta if self.args.loss == "dpo" else None)
        stats["_tokens"] = float(sum(len(p["chosen"]["input_ids"]) + len(p["rejected"]["input_ids"])
                                     for p, (_, w) in zip(pairs, items) if w > 0))
        return loss, stats

    def metrics(self, sums):
        pairs = max(sums["_pairs"], 1.0)
        out = {k.lstrip("_"): v / pairs for k, v in sums.items() if k.startswith("_") and k not in ("_pairs", "_tokens")}
        out["pairs"] = int(sums["_pairs"])
        return out

    def after_step(self, record):
        """The collapse check (see the module docstring); returns extra fields for the record."""
        if self.start is None:
            self.start = (record["chosen_logps"], record["rejected_logps"])
        self.history = (self.history + [(record["chosen_logps"], record["rejected_logps"])])[-self.args.collapse_window:]
        chosen = sum(c for c, _ in self.history) / len(self.history)
        rejected = sum(r for _, r in self.history) / len(self.history)
        collapsed = (chosen < self.start[0] - self.args.collapse_threshold
                     and rejected < self.start[1] - self.args.collapse_threshold)
        if collapsed and not self.warned:
            self.warned = True
            print0(f"WARNING step {record['step']}: chosen and rejected LogPS both fell more than "
                   f"{self.args.collapse_threshold} nats/token below their start ({self.start[0]:.3f} -> {chosen:.3f}, "
                   f"{self.start[1]:.3f} -> {rejected:.3f}): likely collapse; lower --lr or --alpha")
        return {"collapse_warning": collapsed}


def _parameters(fn):
    import inspect

    return inspect.signature(fn).parameters


def pair_stats(inputs, weights, dpo_beta=None) -> dict:
    """Weighted sums (detached floats) behind the LogPS, margin, accuracy and reward metrics."""
    c = (inputs["chosen_logps"] / inputs["chosen_lengths"]).detach()
    r = (inputs["rejected_logps"] / inputs["rejected_lengths"]).detach()
    stats = {"_pairs": weights.sum(), "_chosen_logps": (c * weights).sum(), "_rejected_logps": (r * weights).sum(),
             "_margin": ((c - r) * weights).sum(), "_pair_accuracy": ((c > r).float() * weights).sum()}
    if dpo_beta is not None:
        chosen_reward = dpo_beta * (inputs["chosen_logps"] - inputs["ref_chosen_logps"]).detach()
        rejected_reward = dpo_beta * (inputs["rejected_logps"] - inputs["ref_rejected_logps"]).detach()
        stats.update({"_chosen_reward": (chosen_reward * weights).sum(),
                      "_rejected_reward": (rejected_reward * weights).sum(),
                      "_reward_accuracy": ((chosen_reward > rejected_reward).float() * weights).sum()})
    return {k: float(v) for k, v in stats.items()}


# -----------------------------------------------------------------------------
# main


def first_logged_logps(args):
    """On resume, the collapse check's starting LogPS come from the first step in metrics.jsonl."""
    path = os.path.join(args.output_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for record in map(json.loads, filter(str.strip, f)):
                if "chosen_logps" in record:
                    return record["chosen_logps"], record["rejected_logps"]
    return None


def main(argv=None):
    args = parse_args(argv)
    try:
        rank, world_size, device, tokenizer, model, lm, optimizer = train_sft.prepare(args)
        from data import load_pairs, num_tokens, tokenize_pairs

        pairs = tokenize_pairs(tokenizer, load_pairs(args.data), args.max_seq_len)
        print0(f"{len(pairs)} pairs from {args.data}; loss {args.loss} {loss_hyperparameters(args)}, lr {args.lr:g}")
        sampler = train_sft.build_sampler(args, [num_tokens(p) for p in pairs], world_size, rank)
        ref_model = ref_cache = None
        if args.loss == "dpo" and args.precompute_ref:
            if len({p["id"] for p in pairs}) != len(pairs):
                raise ValueError(f"{args.data}: pair ids are not unique; --precompute-ref keys its cache by id")
            ref_cache = load_or_compute_reference(args, pairs, tokenizer.pad_token_id, device)
        elif args.loss == "dpo":
            ref_model, _ = train_sft.load_model(args.ref_model or args.model, args, device, trainable=False)
        resume_from = train_sft.resolve_resume(args)
        state = train_sft.load_checkpoint(resume_from, model, optimizer) if resume_from else None
        task = PairTask(args, pairs, sampler, tokenizer.pad_token_id, device, ref_model, ref_cache)
        if state:
            print0(f"resumed from {resume_from} at step {state['step']}")
            task.start = first_logged_logps(args)
        train_sft.train(args, model, lm, tokenizer, optimizer, sampler, task, device, state)
    except train_sft.NonFiniteError as e:
        print(f"[rank {os.environ.get('RANK', 0)}] stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    finally:
        train_sft.cleanup()


if __name__ == "__main__":
    main()
