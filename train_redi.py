"""Stage 2 of REDI: learn from the teacher's correct AND incorrect traces (paper Eq. 5).

On (problem x, correct trace y_w, incorrect trace y_l) pairs, starting from the stage-1 SFT model:

    L_REDI = - log p(y_w|x) / |y_w|  +  alpha * log p(y_l|x) / |y_l|          averaged over pairs

with no reference model. The same script trains the paper's baselines on the same pairs:
    --loss dpo     Eq. (2), against a frozen reference (the starting model, or --ref-model)
    --loss simpo   Eq. (3), length-normalised, margin gamma, no reference
    --loss sft     the "just more SFT" control: token-mean NLL (Eq. 1) of the chosen traces only
The losses live in redi_loss.py (copy it into your project) and the loop calls them directly
(OBJECTIVES); the shared machinery (distributed setup, FSDP2 model loading, schedule, checkpoints,
metrics, exit codes) is in training.py, DPO's reference model in dpo_reference.py. The whole
optimizer step is `train()` below: read it top to bottom.

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
At start, rank 0 prints the first pair exactly as tokenized (prompt, supervised chosen and rejected
responses, special tokens shown) and the system prompt in use (--system-prompt; docs/data_formats.md).

Names: `chosen_logps` / `rejected_logps` are SUMMED log-probs log p(y|x) of each trace [B], as in
redi_loss.py; `chosen_lengths` / `rejected_lengths` their token counts [B]. The paper's "LogPS" is
the per-token mean, logps / lengths; the metrics below always log that mean.

Per-step metrics in metrics.jsonl, beyond training.py's (means over the step's real pairs, all ranks):
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

import math
import os

import torch
import torch.distributed as dist

import token_cache
import training
from cli import exit_on_input_error, read_jsonl, run_then_exit
from data import collate_pairs, describe_first_example, num_tokens
from dpo_reference import build_reference
from redi_loss import dpo_loss, redi_loss, simpo_loss
from training import print0

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
    parser = training.build_parser(__doc__, lr=None, global_batch=32, epochs=1,
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
    training.validate_args(args)
    return args


def loss_hyperparameters(args) -> dict:
    """The hyperparameters the chosen objective uses (for the log line)."""
    return {k: getattr(args, k) for k in PAPER_DEFAULTS[args.loss] if k != "lr"}


# -----------------------------------------------------------------------------
# the stage-2 objectives: --loss -> (per-pair loss [n] from a micro-batch's log-probs `lp`, and what
# the step's summed loss is divided by: "pairs", or "chosen_tokens" for the SFT control)


OBJECTIVES = {
    "redi": (lambda lp, args: redi_loss(lp["chosen_logps"], lp["chosen_lengths"], lp["rejected_logps"],
                                        lp["rejected_lengths"], alpha=args.alpha), "pairs"),
    "dpo": (lambda lp, args: dpo_loss(lp["chosen_logps"], lp["rejected_logps"], lp["ref_chosen_logps"],
                                      lp["ref_rejected_logps"], beta=args.beta), "pairs"),
    "simpo": (lambda lp, args: simpo_loss(lp["chosen_logps"], lp["chosen_lengths"], lp["rejected_logps"],
                                          lp["rejected_lengths"], beta=args.beta, gamma=args.gamma), "pairs"),
    # Eq. (1) on the chosen traces: the summed NLL; the step divides by its chosen-token count.
    "sft": (lambda lp, args: -lp["chosen_logps"], "chosen_tokens"),
}


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
    total_steps = training.total_training_steps(args, sampler.steps_per_epoch)
    step = state["step"] if state else 0
    clock = training.StepClock(state)
    metrics = training.Metrics(args, total_steps, step, clock, device)   # repairs metrics.jsonl first
    checkpoints = training.Checkpoints(args, model, lm, optimizer, tokenizer, total_steps, clock)
    stop_signals = training.StopSignals()
    collapse = CollapseMonitor(args.collapse_threshold, args.collapse_window, first_logged_logps(args) if step else None)
    pair_loss, normalise_by = OBJECTIVES[args.loss]
    cost = [1.0] * len(pairs) if normalise_by == "pairs" else pairs.supervised      # chosen tokens [N]
    print0(f"training: {total_steps} steps of {args.global_batch_size} pairs = {dist.get_world_size()} ranks x "
           f"{sampler.per_rank}, {len(sampler.micro_batches(0, 0))} micro-batches per step")
    try:
        while step < total_steps:
            clock.start_step()
            epoch, step_in_epoch = divmod(step, sampler.steps_per_epoch)
            lr = training.lr_at(step, total_steps, args.lr, args.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # The loss is a mean over the step's pairs on ALL ranks (chosen tokens for the SFT control):
            # each rank divides its sum by that global count and FSDP SUMS the gradients (load_model), so
            # a step is the same for any world size and accumulation (tests/test_train.py checks it).
            denominator = sampler.global_count(epoch, step_in_epoch, cost)
            local_stats = torch.zeros(len(PAIR_STATS) + 1, dtype=torch.float64, device=device)
            for items in sampler.micro_batches(epoch, step_in_epoch):
                batch_pairs = [pairs[i] for i, _ in items]
                n = len(batch_pairs)
                weights = torch.tensor([w for _, w in items], device=device)          # [n]; 0 = padding item
                batch = collate_pairs(batch_pairs, tokenizer.pad_token_id, args.packed, device)
                logps, lengths = model(**batch)                 # [2n] summed log-probs, tokens: chosen, rejected
                lp = {"chosen_logps": logps[:n], "chosen_lengths": lengths[:n],
                      "rejected_logps": logps[n:], "rejected_lengths": lengths[n:]}
                if reference is not None:
                    lp["ref_chosen_logps"], lp["ref_rejected_logps"] = reference(batch, batch_pairs)
                loss = (pair_loss(lp, args) * weights).sum() / denominator
                loss.backward()
                local_stats[:-1] += pair_stats(loss, lp, weights, batch_pairs, args)
            # Clip, then ONE all-reduce of the step's sums: every rank gets the same numbers, so a NaN/inf
            # on any rank (in the loss or the global grad norm) and a stop signal that reached any rank
            # (the last slot) are agreed without another collective. (Not the only host sync: each
            # micro-batch also waits for its supervised positions (nonzero) and the zero-length check.)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            local_stats[-1] = float(stop_signals.received is not None)
            dist.all_reduce(local_stats)
            values = torch.cat([local_stats, grad_norm.reshape(1).to(local_stats)]).tolist()
            stats = dict(zip([*PAIR_STATS, "stop_requests", "grad_norm"], values))
            if math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"]):
                before = [p.clone() for p in training.local_shards(model)]     # for the update's norm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                fields = {"optim/update_norm": training.update_norm(before, model), **pair_metrics(stats, args)}
                fields["logps/collapse_warning"] = collapse.check(step + 1, fields["logps/chosen"],
                                                                  fields["logps/rejected"])
            else:   # a NaN/inf on some rank: every rank agrees (one all-reduce) and none updates
                optimizer.zero_grad(set_to_none=True)
                if args.on_nonfinite == "stop":
                    raise training.NonFiniteError(checkpoints.for_nonfinite(step, stats))
                print0(training.nonfinite_message(step, stats) + "; skipping this step (--on-nonfinite skip)")
                fields = {"optim/skipped": True}
            metrics.log_step(step + 1, epoch + (step_in_epoch + 1) / sampler.steps_per_epoch, lr, stats, fields)
            step += 1
            checkpoints.save_if_due(step)
            if stats["stop_requests"] and step < total_steps:     # SIGTERM/SIGUSR1 reached some rank
                raise training.Preempted(checkpoints.for_stop(step))
    finally:
        metrics.close()
    print0(f"done: {step} steps of {args.loss} in {clock.elapsed():.1f}s; final model: {args.output_dir}/final")


# -----------------------------------------------------------------------------
# main


def main(argv=None):
    args = parse_args(argv)
    try:
        with exit_on_input_error(f"train_redi.py [rank {os.environ.get('RANK', 0)}]"):
            rank, world_size, device, tokenizer, model, lm, optimizer = training.prepare(args)
            pairs = token_cache.load(args.data, tokenizer, "pairs", args.max_seq_len, args.system_prompt)
            print0(describe_first_example(tokenizer, args.data, pairs[0], args.system_prompt))   # what the model sees
            print0(f"{len(pairs)} pairs from {args.data} ({pairs.directory}); loss {args.loss} "
                   f"{loss_hyperparameters(args)}, lr {args.lr:g}")
            sampler = training.build_sampler(args, pairs.lengths.tolist(), world_size, rank)
            reference = build_reference(args, pairs, tokenizer.pad_token_id, device) if args.loss == "dpo" else None
            state = training.resume(args, model, optimizer)
        train(args, model, lm, tokenizer, optimizer, pairs, sampler, device, reference, state)
    except training.STOPS as e:
        training.exit_stopped(e)
    finally:
        training.cleanup()


if __name__ == "__main__":
    run_then_exit(main)
