"""Stage 2 of REDI: learn from the teacher's correct AND incorrect traces (paper Eq. 5).

On (problem x, correct trace y_w, incorrect trace y_l) pairs, starting from the stage-1 SFT model:
    L_REDI = - log p(y_w|x) / |y_w|  +  alpha * log p(y_l|x) / |y_l|          averaged over pairs
with no reference model. The same script trains the paper's baselines on the same pairs: --loss dpo
(Eq. 2, against a frozen reference), --loss simpo (Eq. 3), --loss sft (Eq. 1 on the chosen traces: the
"just more SFT" control). The losses are redi_loss.py's; one optimizer step is `train()` below, read top to
bottom; what both stages share is in training.py, DPO's reference model in dpo_reference.py. A flag left
unset takes the paper's value for the chosen loss (PAPER_DEFAULTS). Metrics, the collapse warning and
where this departs from the paper's code: docs/training.md.

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
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

import run_safety
import token_cache
import training
from cli import exit_on_input_error, read_jsonl, run_then_exit
from data import collate_pairs, describe_first_example
from dpo_reference import build_reference
from redi_loss import LOSSES, dpo_loss, redi_loss, sft_loss, simpo_loss
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
    g.add_argument("--loss", default="redi", choices=list(LOSSES), help="objective (default redi)")
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
    # Part of parsing: an unset flag takes the chosen loss's paper value, so vars(args) holds what runs.
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
# the loss of a micro-batch


def micro_batch_loss(args, per_pair: dict, weights, denominator: float):
    """This micro-batch's share of the step's --loss: its pairs' losses (padding weighs 0) divided by the
    step's global count (pairs; the SFT control: chosen tokens), so the step's sum is the step's mean."""
    chosen, chosen_len = per_pair["chosen_logps"], per_pair["chosen_lengths"]            # [n] each
    rejected, rejected_len = per_pair["rejected_logps"], per_pair["rejected_lengths"]
    if args.loss == "sft":      # the control: Eq. (1) on the chosen traces, a token mean over the step
        return sft_loss(chosen * weights, chosen_len, total_length=denominator)
    if args.loss == "redi":
        losses = redi_loss(chosen, chosen_len, rejected, rejected_len, alpha=args.alpha)
    elif args.loss == "dpo":
        ref_chosen, ref_rejected = per_pair["ref_chosen_logps"], per_pair["ref_rejected_logps"]
        losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=args.beta)
    else:
        losses = simpo_loss(chosen, chosen_len, rejected, rejected_len, beta=args.beta, gamma=args.gamma)
    return (losses * weights).sum() / denominator                                        # [n] -> scalar


# -----------------------------------------------------------------------------
# metrics of a step of pairs: per-pair values, summed over the step's pairs on all ranks, logged as means

LOGPS_METRICS = ("logps/chosen", "logps/rejected", "logps/margin", "logps/accuracy")
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy")     # DPO's implicit rewards


def pair_values(per_pair: dict, beta: float) -> dict:
    """{metric: [n]}: each pair's LogPS (log p(y|x) / |y|) of both traces, their margin and whether chosen is
    ahead; with a reference (DPO) also the implicit rewards beta * (log p - log p_ref) and their ordering."""
    chosen = (per_pair["chosen_logps"] / per_pair["chosen_lengths"]).detach()
    rejected = (per_pair["rejected_logps"] / per_pair["rejected_lengths"]).detach()
    values = dict(zip(LOGPS_METRICS, (chosen, rejected, chosen - rejected, (chosen > rejected).float())))
    if "ref_chosen_logps" in per_pair:
        reward_chosen = beta * (per_pair["chosen_logps"] - per_pair["ref_chosen_logps"]).detach()
        reward_rejected = beta * (per_pair["rejected_logps"] - per_pair["ref_rejected_logps"]).detach()
        values.update(zip(REWARD_METRICS, (reward_chosen, reward_rejected, (reward_chosen > reward_rejected).float())))
    return values


def pair_means(sums: dict) -> dict:
    """The step's logged pair metrics: each value's mean over the step's pairs (padding items weigh 0)."""
    pairs = max(sums["pairs"], 1.0)
    logps = {name: sums[name] / pairs for name in LOGPS_METRICS}
    rewards = {name: sums[name] / pairs for name in REWARD_METRICS if name in sums}
    return {**logps, "data/pairs": int(sums["pairs"]), **rewards}


class CollapseMonitor:
    """The collapse check (docs/training.md, "Collapse warning"): both windowed LogPS far below the first step's."""

    def __init__(self, threshold: float, window: int, start=None):
        self.threshold, self.window, self.start = threshold, window, start
        self.history, self.warned = [], False

    def check(self, step: int, chosen: float, rejected: float) -> bool:
        self.start = self.start or (chosen, rejected)
        self.history = (self.history + [(chosen, rejected)])[-self.window:]
        means = [sum(values) / len(self.history) for values in zip(*self.history)]      # chosen, rejected
        collapsed = all(mean < start - self.threshold for mean, start in zip(means, self.start))
        if collapsed and not self.warned:
            self.warned = True
            print0(f"WARNING step {step}: chosen and rejected LogPS both fell more than {self.threshold} nats/token below"
                   f" their start ({self.start[0]:.3f}, {self.start[1]:.3f} -> {means[0]:.3f}, {means[1]:.3f}): likely "
                   f"collapse; lower --lr or --alpha")
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


def train(args, setup: training.Setup, pairs, batch_order, reference=None, state=None):
    """Optimizer steps over the pairs until the end of training."""
    model, optimizer, device, pad_id = setup.model, setup.optimizer, setup.device, setup.tokenizer.pad_token_id
    total_steps = training.total_training_steps(args, batch_order.steps_per_epoch)
    step = state["step"] if state else 0
    metrics = training.Metrics(args, setup, total_steps, step, state)   # repairs metrics.jsonl first
    checkpoints = training.Checkpoints(args, setup, total_steps, metrics.elapsed)
    stop_signals = run_safety.StopSignals()
    collapse = CollapseMonitor(args.collapse_threshold, args.collapse_window, first_logged_logps(args) if step else None)
    # what a step's loss is a mean over: its pairs, or for the SFT control its chosen tokens ([N] each)
    per_pair_count = pairs.supervised if args.loss == "sft" else [1.0] * len(pairs)
    # the step's sums, all-reduced once: loss, tokens, pairs, then each pair metric weighted by its pair
    stat_names = ["loss", "tokens", "pairs", *LOGPS_METRICS, *(REWARD_METRICS if reference is not None else ())]
    print0(f"training: {total_steps} steps of {args.global_batch_size} pairs = {dist.get_world_size()} ranks x "
           f"{batch_order.per_rank}, {len(batch_order.micro_batches(0, 0))} micro-batches per step")
    try:
        while step < total_steps:
            metrics.start_step()
            epoch, step_in_epoch = divmod(step, batch_order.steps_per_epoch)
            lr = training.lr_at(step, total_steps, args.lr, args.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # The loss is a mean over the step's pairs on ALL ranks (chosen tokens for the SFT control):
            # each rank divides its sum by that global count and FSDP SUMS the gradients (load_model), so
            # a step is the same for any world size and accumulation (tests/test_train.py checks it).
            denominator = batch_order.global_count(epoch, step_in_epoch, per_pair_count)
            local_stats = torch.zeros(len(stat_names) + 1, dtype=torch.float64, device=device)
            micro_batches = batch_order.micro_batches(epoch, step_in_epoch)
            for k, items in enumerate(micro_batches):
                training.sync_gradients(model, last=k == len(micro_batches) - 1)   # one rank: copy once
                batch_pairs = [pairs[i] for i, _ in items]
                n = len(batch_pairs)
                weights = torch.tensor([w for _, w in items], device=device)          # [n]; 0 = padding item
                batch = collate_pairs(batch_pairs, pad_id, setup.kernels.packed, device)
                sums, lengths = model(**batch)           # [2n] summed log-probs, response lengths: chosen, rejected
                per_pair = {"chosen_logps": sums[:n], "chosen_lengths": lengths[:n],
                            "rejected_logps": sums[n:], "rejected_lengths": lengths[n:]}
                if reference is not None:
                    per_pair["ref_chosen_logps"], per_pair["ref_rejected_logps"] = reference(batch, batch_pairs)
                loss = micro_batch_loss(args, per_pair, weights, denominator)
                loss.backward()
                tokens = sum(int(pairs.lengths[i]) for i, w in items if w > 0)        # all, prompts included
                columns = [loss.detach(), torch.tensor(tokens, device=device), weights.sum(),
                           *[(value * weights).sum() for value in pair_values(per_pair, args.beta).values()]]
                local_stats[:-1] += torch.stack([c.double() for c in columns])       # as stat_names
            # Clip, then ONE all-reduce of the step's sums: every rank gets the same numbers, so a NaN/inf on
            # any rank (loss or global grad norm) and a stop signal on any rank (last slot) are agreed at once.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            local_stats[-1] = float(stop_signals.received is not None)
            dist.all_reduce(local_stats)
            values = torch.cat([local_stats, grad_norm.reshape(1).to(local_stats)]).tolist()
            stats = dict(zip([*stat_names, "stop_requests", "grad_norm"], values))
            if math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"]):
                before = [p.clone() for p in training.local_shards(model)]     # for the update's norm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                fields = {"optim/update_norm": training.update_norm(before, model), **pair_means(stats)}
                fields["logps/collapse_warning"] = collapse.check(step + 1, fields["logps/chosen"],
                                                                  fields["logps/rejected"])
            else:   # a NaN/inf on some rank: every rank agrees (one all-reduce) and none updates
                optimizer.zero_grad(set_to_none=True)
                if args.on_nonfinite == "stop":
                    raise run_safety.NonFiniteError(checkpoints.for_nonfinite(step, stats))
                print0(training.nonfinite_message(step, stats) + "; skipping this step (--on-nonfinite skip)")
                fields = {"optim/skipped": True}
            metrics.log_step(step + 1, epoch + (step_in_epoch + 1) / batch_order.steps_per_epoch, lr, stats, fields)
            step += 1
            if checkpoints.is_save_step(step):
                checkpoints.save(step)
            if stats["stop_requests"] and step < total_steps:     # SIGTERM/SIGUSR1 reached some rank
                raise run_safety.Preempted(checkpoints.for_stop(step))
    finally:
        metrics.close()
    print0(f"done: {step} steps of {args.loss} in {metrics.elapsed():.1f}s; final model: {args.output_dir}/final")


# -----------------------------------------------------------------------------
# main


def main(argv=None):
    args = parse_args(argv)
    try:
        with exit_on_input_error(f"train_redi.py [rank {os.environ.get('RANK', 0)}]"):
            setup = training.prepare(args)
            tokenizer = setup.tokenizer
            pairs = token_cache.load(args.data, tokenizer, "pairs", setup.max_seq_len, args.system_prompt)
            print0(describe_first_example(tokenizer, args.data, pairs[0], args.system_prompt))   # what the model sees
            print0(f"{len(pairs)} pairs from {args.data} ({pairs.directory}); loss {args.loss} "
                   f"{loss_hyperparameters(args)}, lr {args.lr:g}")
            batch_order = training.build_batch_order(args, pairs.lengths.tolist(), setup.world_size, setup.rank)
            reference = build_reference(args, setup, pairs) if args.loss == "dpo" else None
            state = training.resume(args, setup.model, setup.optimizer)
        train(args, setup, pairs, batch_order, reference, state)
    except run_safety.STOPS as e:
        run_safety.exit_stopped(e)
    finally:
        training.cleanup()


if __name__ == "__main__":
    run_then_exit(main)
