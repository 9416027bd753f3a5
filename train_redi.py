"""Stage 2 of REDI: learn from the teacher's correct AND incorrect traces (paper Eq. 5).

On (problem x, correct trace y_w, incorrect trace y_l) pairs, starting from the stage-1 SFT model:

    L_REDI = - log p(y_w|x) / |y_w|  +  alpha * log p(y_l|x) / |y_l|          averaged over pairs

with no reference model. The same script trains the paper's baselines on the same pairs:
    --loss dpo     Eq. (2), against a frozen reference (the starting model, or --ref-model)
    --loss simpo   Eq. (3), length-normalised, margin gamma, no reference
    --loss sft     the "just more SFT" control: token-mean NLL (Eq. 1) of the chosen traces only
The losses live in redi_loss.py (copy it into your project); the shared machinery (distributed
setup, FSDP2 model loading, schedule, checkpoints, metrics) is imported from train_sft.py. The
whole optimizer step is `train()` below: read it top to bottom.

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

Per-loss defaults: the paper's tuned values for Qwen2.5-Math-1.5B (PAPER_DEFAULTS below; `--help`
prints them); override with the flags.

Names: `chosen_logps` / `rejected_logps` are SUMMED log-probs log p(y|x) of each trace [B], as in
redi_loss.py; `chosen_lengths` / `rejected_lengths` their token counts [B]. The paper's "LogPS" is
the per-token mean, logps / lengths; the metrics below always log that mean.

Per-step metrics in metrics.jsonl, beyond train_sft's (means over the step's real pairs, all ranks):
    logps/chosen, logps/rejected   LogPS = log p(y|x) / |y| of the chosen and rejected traces
    logps/margin                   logps/chosen - logps/rejected
    logps/accuracy                 fraction of pairs with logps/chosen > logps/rejected
    rewards/chosen, rewards/rejected, rewards/accuracy   (DPO only) implicit rewards
                                   beta * (log p - log p_ref) and how often chosen's is larger
    data/pairs                     real pairs in the step
    logps/collapse_warning         the collapse check below fired at this step

Collapse warning: the paper shows that at high learning rates (or alpha near 1) the
log-likelihoods of BOTH chosen and rejected traces fall together and accuracy collapses. Each step
we compare the mean LogPS of the last --collapse-window steps with the first step's; when both
chosen and rejected have fallen by more than --collapse-threshold nats per token (default 0.5:
the LogPS of a trained model's own data sits near 0 to -0.5, so a 0.5 drop means the model has
moved far from the traces it was trained on), the step is flagged and a warning is printed once.

Where this departs from the paper's code (TRL DPOTrainer-based):
  1. Chosen and rejected go through ONE forward (concatenated), as TRL does; with --loss sft the
     rejected traces are still forwarded, so that their LogPS is logged for the control too.
  2. Log-probs come from hidden states in chunks (redi_loss.token_logps_from_hidden), never full
     logits; numerically the same as TRL's log-softmax gather.
  3. The last, smaller batch of the epoch is trained on, not dropped.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os

import torch
import torch.distributed as dist

import token_cache
import train_sft
from data import collate_pairs, exit_on_input_error, num_tokens, read_jsonl, run_then_exit
from redi_loss import LOSSES
from train_sft import print0, to_device

# The paper's tuned settings for Qwen2.5-Math-1.5B, per --loss; a flag left unset takes these.
PAPER_DEFAULTS = {
    "redi": {"lr": 1e-6, "alpha": 0.8},
    "dpo": {"lr": 2e-7, "beta": 0.001},
    "simpo": {"lr": 5e-7, "beta": 2.0, "gamma": 1.0},
    "sft": {"lr": 1e-6},
}

# -----------------------------------------------------------------------------
# arguments


def _paper_default(key: str) -> str:
    """'default per --loss: redi 0.8, ...' for the help text, from PAPER_DEFAULTS."""
    values = [f"{loss} {d[key]:g}" for loss, d in PAPER_DEFAULTS.items() if key in d]
    return "default per --loss (paper): " + ", ".join(values)


def parse_args(argv=None):
    parser = train_sft.build_parser(__doc__, lr=None, global_batch=32, epochs=1,
                                    lr_help=f"peak learning rate; {_paper_default('lr')}")
    g = parser.add_argument_group("stage-2 loss")
    g.add_argument("--loss", default="redi", choices=list(OBJECTIVES), help="objective (default redi)")
    g.add_argument("--alpha", type=float, default=None, help=f"REDI weight on the rejected term; {_paper_default('alpha')}")
    g.add_argument("--beta", type=float, default=None, help=f"DPO/SimPO inverse temperature; {_paper_default('beta')}")
    g.add_argument("--gamma", type=float, default=None, help=f"SimPO target margin; {_paper_default('gamma')}")
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
    """The hyperparameters the chosen objective uses (for the log line)."""
    return {k: getattr(args, k) for k in PAPER_DEFAULTS[args.loss] if k != "lr"}


# -----------------------------------------------------------------------------
# the stage-2 objectives: per-pair losses [B] from one micro-batch's log-probs


def _redi(lp, args):
    return LOSSES["redi"](chosen_logps=lp["chosen_logps"], chosen_lengths=lp["chosen_lengths"],
                          rejected_logps=lp["rejected_logps"], rejected_lengths=lp["rejected_lengths"],
                          alpha=args.alpha)


def _dpo(lp, args):
    return LOSSES["dpo"](chosen_logps=lp["chosen_logps"], rejected_logps=lp["rejected_logps"],
                         ref_chosen_logps=lp["ref_chosen_logps"], ref_rejected_logps=lp["ref_rejected_logps"],
                         beta=args.beta)


def _simpo(lp, args):
    return LOSSES["simpo"](chosen_logps=lp["chosen_logps"], chosen_lengths=lp["chosen_lengths"],
                           rejected_logps=lp["rejected_logps"], rejected_lengths=lp["rejected_lengths"],
                           beta=args.beta, gamma=args.gamma)


def _more_sft(lp, args):
    # Eq. (1) on the chosen traces: the summed NLL; the step divides by its chosen-token count.
    return -lp["chosen_logps"]


# name: (per-pair loss, what the step's summed loss is divided by: "pairs" or "chosen_tokens")
OBJECTIVES = {
    "redi": (_redi, "pairs"),
    "dpo": (_dpo, "pairs"),
    "simpo": (_simpo, "pairs"),
    "sft": (_more_sft, "chosen_tokens"),
}


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
    rank, world = dist.get_rank(), dist.get_world_size()
    mb = args.micro_batch_size
    per_rank = -(-len(pairs) // world)
    mine = [(rank + k * world) % len(pairs) for k in range(per_rank)]
    real = [rank + k * world < len(pairs) for k in range(per_rank)]
    found = {}
    with torch.no_grad():
        for start in range(0, per_rank, mb):
            idx = mine[start:start + mb]
            batch = to_device(collate_pairs([pairs[i] for i in idx], pad_id, args.packed), device)
            sums, _ = ref_model(**batch)                                     # [2n]: chosen, then rejected
            for j, i in enumerate(idx):
                if real[start + j]:
                    found[pairs[i]["id"]] = (sums[j].item(), sums[len(idx) + j].item())
    gathered = [None] * world
    dist.all_gather_object(gathered, found)
    return {k: v for part in gathered for k, v in part.items()}


def load_or_compute_reference(args, pairs, pad_id, device) -> dict:
    """--precompute-ref: read the cache if it covers every pair, else compute, write, and read it."""
    # The cache is keyed by pair id; data.load_pairs has already refused a file with a repeated id.
    path = reference_cache_path(args)
    if os.path.exists(path):
        cache = {r["id"]: (r["chosen"], r["rejected"]) for _, r in read_jsonl(path)}
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


def build_reference(args, pairs, pad_id, device):
    """DPO's reference log-probs as a function (batch, batch_pairs) -> (ref_chosen [B], ref_rejected [B]).

    From the --precompute-ref cache, or a frozen copy of the model forwarded on the same batch."""
    if args.precompute_ref:
        cache = load_or_compute_reference(args, pairs, pad_id, device)

        def cached(batch, batch_pairs):
            ref = torch.tensor([cache[p["id"]] for p in batch_pairs], dtype=torch.float32, device=device)
            return ref[:, 0], ref[:, 1]
        return cached
    ref_model, _ = train_sft.load_model(args.ref_model or args.model, args, device, trainable=False)

    def live(batch, batch_pairs):
        with torch.no_grad():
            sums, _ = ref_model(**batch)
        return sums[:len(batch_pairs)], sums[len(batch_pairs):]
    return live


# -----------------------------------------------------------------------------
# metrics of a step of pairs

# Per-rank sums accumulated over the micro-batches, all-reduced once per step.
PAIR_STATS = ("loss", "tokens", "pairs", "chosen", "rejected", "margin", "accuracy",
              "reward_chosen", "reward_rejected", "reward_accuracy")


def pair_stats(loss, lp, weights, batch_pairs, args):
    """[len(PAIR_STATS)] float64: this micro-batch's weighted sums behind the step's metrics."""
    chosen = (lp["chosen_logps"] / lp["chosen_lengths"]).detach()               # LogPS [B]
    rejected = (lp["rejected_logps"] / lp["rejected_lengths"]).detach()
    if "ref_chosen_logps" in lp:
        reward_chosen = args.beta * (lp["chosen_logps"] - lp["ref_chosen_logps"]).detach()
        reward_rejected = args.beta * (lp["rejected_logps"] - lp["ref_rejected_logps"]).detach()
    else:
        reward_chosen = reward_rejected = torch.zeros_like(chosen)
    tokens = sum(num_tokens(p) for p, w in zip(batch_pairs, weights.tolist()) if w > 0)
    columns = [loss.detach().reshape(1), torch.tensor([tokens], device=weights.device), weights.sum().reshape(1)]
    for per_pair in (chosen, rejected, chosen - rejected, (chosen > rejected).float(),
                     reward_chosen, reward_rejected, (reward_chosen > reward_rejected).float()):
        columns.append((per_pair * weights).sum().reshape(1))
    return torch.cat([c.double() for c in columns])


def pair_metrics(sums: dict, args) -> dict:
    """The step's logged pair metrics (module docstring) from the all-reduced sums."""
    pairs = max(sums["pairs"], 1.0)
    out = {"logps/chosen": sums["chosen"] / pairs, "logps/rejected": sums["rejected"] / pairs,
           "logps/margin": sums["margin"] / pairs, "logps/accuracy": sums["accuracy"] / pairs,
           "data/pairs": int(sums["pairs"])}
    if args.loss == "dpo":
        out.update({"rewards/chosen": sums["reward_chosen"] / pairs, "rewards/rejected": sums["reward_rejected"] / pairs,
                    "rewards/accuracy": sums["reward_accuracy"] / pairs})
    return out


class CollapseMonitor:
    """The collapse check (module docstring): both windowed LogPS far below the first step's."""

    def __init__(self, threshold: float, window: int, start=None):
        self.threshold, self.window, self.start = threshold, window, start
        self.history, self.warned = [], False

    def check(self, step: int, chosen: float, rejected: float) -> bool:
        if self.start is None:
            self.start = (chosen, rejected)
        self.history = (self.history + [(chosen, rejected)])[-self.window:]
        mean_chosen = sum(c for c, _ in self.history) / len(self.history)
        mean_rejected = sum(r for _, r in self.history) / len(self.history)
        collapsed = (mean_chosen < self.start[0] - self.threshold and mean_rejected < self.start[1] - self.threshold)
        if collapsed and not self.warned:
            self.warned = True
            print0(f"WARNING step {step}: chosen and rejected LogPS both fell more than {self.threshold} "
                   f"nats/token below their start ({self.start[0]:.3f} -> {mean_chosen:.3f}, {self.start[1]:.3f} -> "
                   f"{mean_rejected:.3f}): likely collapse; lower --lr or --alpha")
        return collapsed


def first_logged_logps(args):
    """On resume, the collapse check's starting LogPS come from the first step in metrics.jsonl."""
    path = os.path.join(args.output_dir, "metrics.jsonl")
    for _, record in read_jsonl(path) if os.path.exists(path) else []:
        if "logps/chosen" in record:
            return record["logps/chosen"], record["logps/rejected"]
    return None


# -----------------------------------------------------------------------------
# the stage-2 step loop (its twin, the SFT loop, is train_sft.train)


def train(args, model, lm, tokenizer, optimizer, pairs, sampler, device, reference=None, state=None):
    """Optimizer steps over the pairs until the end of training."""
    total_steps = train_sft.total_training_steps(args, sampler.steps_per_epoch)
    step = state["step"] if state else 0
    metrics = train_sft.Metrics(args, total_steps, step, dist.get_world_size())   # repairs metrics.jsonl first
    collapse = CollapseMonitor(args.collapse_threshold, args.collapse_window, first_logged_logps(args) if step else None)
    clock = train_sft.StepClock(state)
    pair_loss, normalise_by = OBJECTIVES[args.loss]
    cost = [1.0] * len(pairs) if normalise_by == "pairs" else pairs.supervised      # chosen tokens [N]
    save = train_sft.checkpoint_saver(args, model, lm, optimizer, tokenizer, clock)
    stop_signals = train_sft.StopSignals()
    print0(f"training: {total_steps} steps of {args.global_batch_size} pairs = {dist.get_world_size()} ranks x "
           f"{sampler.per_rank}, {len(sampler.micro_batches(0, 0))} micro-batches per step")
    try:
        while step < total_steps:
            clock.start_step()
            epoch, step_in_epoch = divmod(step, sampler.steps_per_epoch)
            train_sft.set_lr(optimizer, train_sft.lr_at(step, total_steps, args.lr, args.warmup_ratio))
            # The loss is a mean over the step's pairs on ALL ranks (chosen tokens for the SFT control):
            # each rank divides its sum by that global count and FSDP SUMS the gradients (load_model), so
            # a step is the same for any world size and accumulation (tests/test_train.py checks it).
            denominator = train_sft.global_count(sampler, epoch, step_in_epoch, cost)
            local_sums = torch.zeros(len(PAIR_STATS), dtype=torch.float64, device=device)
            for items in sampler.micro_batches(epoch, step_in_epoch):
                batch_pairs = [pairs[i] for i, _ in items]
                n = len(batch_pairs)
                weights = torch.tensor([w for _, w in items], device=device)          # [n]; 0 = padding item
                batch = to_device(collate_pairs(batch_pairs, tokenizer.pad_token_id, args.packed), device)
                sums, lengths = model(**batch)                       # [2n]: chosen rows, then rejected rows
                lp = {"chosen_logps": sums[:n], "chosen_lengths": lengths[:n],
                      "rejected_logps": sums[n:], "rejected_lengths": lengths[n:]}
                if reference is not None:
                    lp["ref_chosen_logps"], lp["ref_rejected_logps"] = reference(batch, batch_pairs)
                loss = (pair_loss(lp, args) * weights).sum() / denominator
                loss = train_sft.maybe_inject_fault(args, step, loss)
                loss.backward()
                local_sums += pair_stats(loss, lp, weights, batch_pairs, args)
            # One all-reduce: every rank sees the same sums, so the finite check is agreed across ranks.
            sums = train_sft.clip_and_reduce(model, args.max_grad_norm, local_sums, PAIR_STATS, stop_signals)
            if train_sft.is_finite(sums):
                fields = {"optim/update_norm": train_sft.apply_update(model, optimizer), **pair_metrics(sums, args)}
                fields["logps/collapse_warning"] = collapse.check(step + 1, fields["logps/chosen"],
                                                                  fields["logps/rejected"])
                epoch_progress = epoch + (step_in_epoch + 1) / sampler.steps_per_epoch
                metrics.log(train_sft.step_record(step + 1, epoch_progress, optimizer, clock, device, sums, **fields))
            else:
                metrics.log(train_sft.skip_or_stop(args, step, epoch, sums, optimizer, save))
            step += 1
            if train_sft.is_save_step(args, step, total_steps):
                save(step, {})
            train_sft.save_and_stop_if_signalled(args, step, total_steps, sums, save)
    finally:
        metrics.close()
    print0(f"done: {step} steps of {args.loss} in {clock.elapsed():.1f}s; final model: {args.output_dir}/final")


# -----------------------------------------------------------------------------
# main


def main(argv=None):
    args = parse_args(argv)
    try:
        with exit_on_input_error(f"train_redi.py [rank {os.environ.get('RANK', 0)}]"):
            rank, world_size, device, tokenizer, model, lm, optimizer = train_sft.prepare(args)
            pairs = token_cache.load(args.data, tokenizer, "pairs", args.max_seq_len)
            print0(f"{len(pairs)} pairs from {args.data} ({pairs.directory}); loss {args.loss} "
                   f"{loss_hyperparameters(args)}, lr {args.lr:g}")
            sampler = train_sft.build_sampler(args, pairs.lengths.tolist(), world_size, rank)
            reference = build_reference(args, pairs, tokenizer.pad_token_id, device) if args.loss == "dpo" else None
            resume_from = train_sft.resolve_resume(args)
            state = train_sft.load_checkpoint(resume_from, model, optimizer) if resume_from else None
            if state:
                print0(f"resumed from {resume_from} at step {state['step']}")
        train(args, model, lm, tokenizer, optimizer, pairs, sampler, device, reference, state)
    except (train_sft.NonFiniteError, train_sft.CheckpointError, train_sft.Preempted) as e:
        train_sft.exit_stopped(e)
    finally:
        train_sft.cleanup()


if __name__ == "__main__":
    run_then_exit(main)
