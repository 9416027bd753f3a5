"""Stage 1 of REDI: supervised fine-tuning on the teacher's correct traces (paper Eq. 1).

Minimises the token-mean negative log-likelihood of the responses (each whole assistant turn, its
end-of-turn token included) over the GLOBAL batch: L = - sum_i log p(y_i|x_i) / sum_i |y_i|.
The step loop is `train()` below; what both stages share is in training.py. Plain torch.distributed +
FSDP2 (`fully_shard`), no Trainer/accelerate/DeepSpeed. Paper recipe (Qwen2.5-Math-1.5B): lr 5e-5,
global batch 128, 3 or 5 epochs, AdamW, 10% warmup then linear decay, no clipping (the flags' defaults).
Outputs, metrics, exit codes and where this departs from the paper's setup: docs/training.md.

Launch:
    # one GPU / CPU (a process group of one is created for you)
    python train_sft.py --model Qwen2.5-Math-1.5B --data sft.jsonl --output-dir runs/sft
    # 8 GPUs on one node; several nodes take torchrun's usual --nnodes/--node-rank/--rdzv flags
    torchrun --nproc_per_node 8 train_sft.py --model Qwen2.5-Math-1.5B --data sft.jsonl \\
        --output-dir runs/sft --max-position-embeddings 32768 --rope-theta 300000
    # CPU, 2 processes (gloo), as the tests run it
    torchrun --nproc_per_node 2 train_sft.py --model runs/tiny --data sft.jsonl --output-dir runs/sft \\
        --global-batch-size 8 --micro-batch-size 2 --max-steps 3
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

import run_safety
import token_cache
import training
from cli import exit_on_input_error, run_then_exit
from data import collate, describe_first_example
from redi_loss import sft_loss
from training import print0

# Per-rank sums over the step's micro-batches, all-reduced once per step (then a stop flag).
SFT_STATS = ("loss", "tokens", "data/response_tokens", "logps/response_sum")


# -----------------------------------------------------------------------------
# the SFT step loop


def train(args, setup: training.Setup, examples, batch_order, state=None):
    """Optimizer steps over the SFT examples until the end of training (Eq. 1 over the global batch)."""
    model, optimizer, device, pad_id = setup.model, setup.optimizer, setup.device, setup.tokenizer.pad_token_id
    total_steps = training.total_training_steps(args, batch_order.steps_per_epoch)
    step = state["step"] if state else 0
    metrics = training.Metrics(args, setup, total_steps, step, state)   # repairs metrics.jsonl first
    checkpoints = training.Checkpoints(args, setup, total_steps, metrics.elapsed)
    stop_signals = run_safety.StopSignals()
    response_lengths = examples.supervised                                 # [N] |y|: supervised tokens per example
    print0(f"training: {total_steps} steps ({batch_order.steps_per_epoch} per epoch), global batch "
           f"{args.global_batch_size} = {dist.get_world_size()} ranks x {batch_order.per_rank} examples; "
           f"micro-batches per step: {len(batch_order.micro_batches(0, 0))}")
    try:
        while step < total_steps:
            metrics.start_step()
            epoch, step_in_epoch = divmod(step, batch_order.steps_per_epoch)
            lr = training.lr_at(step, total_steps, args.lr, args.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Eq. (1) over the GLOBAL batch: each micro-batch's summed NLL is divided by the response
            # tokens of the whole step on all ranks, and FSDP SUMS gradients over ranks (load_model),
            # so the step is the same for any world size and accumulation.
            global_length = batch_order.global_count(epoch, step_in_epoch, response_lengths)
            local_stats = torch.zeros(len(SFT_STATS) + 1, dtype=torch.float64, device=device)
            micro_batches = batch_order.micro_batches(epoch, step_in_epoch)
            for k, items in enumerate(micro_batches):
                training.sync_gradients(model, last=k == len(micro_batches) - 1)   # one rank: copy once
                batch = collate([examples[i] for i, _ in items], pad_id, setup.kernels.packed, device)
                weights = torch.tensor([w for _, w in items], device=device)      # [B]; 0 = padding item
                logps, lengths = model(**batch)                           # [B] summed log-probs, response lengths
                loss = sft_loss(logps * weights, lengths, total_length=global_length)
                loss.backward()
                tokens = sum(int(examples.lengths[i]) for i, w in items if w > 0)     # all, prompts included
                local_stats[:-1] += torch.stack([loss.detach().double(), torch.tensor(tokens, device=device).double(),
                                                 (lengths * weights).sum().double(),
                                                 (logps.detach() * weights).sum().double()])
            # Clip, then ONE all-reduce of the step's sums: every rank gets the same numbers, so a NaN/inf on
            # any rank (loss or global grad norm) and a stop signal on any rank (last slot) are agreed at once.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            local_stats[-1] = float(stop_signals.received is not None)
            dist.all_reduce(local_stats)
            values = torch.cat([local_stats, grad_norm.reshape(1).to(local_stats)]).tolist()
            stats = dict(zip([*SFT_STATS, "stop_requests", "grad_norm"], values))
            if math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"]):
                before = [p.clone() for p in training.local_shards(model)]     # for the update's norm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                fields = {"optim/update_norm": training.update_norm(before, model),
                          "data/response_tokens": int(stats["data/response_tokens"]),
                          "logps/response": stats["logps/response_sum"] / max(stats["data/response_tokens"], 1.0)}
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
    print0(f"done: {step} steps in {metrics.elapsed():.1f}s; model in {os.path.join(args.output_dir, 'final')}")


# -----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    parser = training.build_parser(__doc__, lr=5e-5, global_batch=128, epochs=3)
    args = parser.parse_args(argv)
    training.validate_args(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        with exit_on_input_error(f"train_sft.py [rank {os.environ.get('RANK', 0)}]"):
            setup = training.prepare(args)
            tokenizer = setup.tokenizer
            examples = token_cache.load(args.data, tokenizer, "sft", setup.max_seq_len, args.system_prompt)
            print0(describe_first_example(tokenizer, args.data, examples[0], args.system_prompt))  # what the model sees
            print0(f"{len(examples)} SFT examples from {args.data} ({examples.directory})")
            batch_order = training.build_batch_order(args, examples.lengths.tolist(), setup.world_size, setup.rank)
            state = training.resume(args, setup.model, setup.optimizer)
        train(args, setup, examples, batch_order, state)
    except run_safety.STOPS as e:
        run_safety.exit_stopped(e)
    finally:
        training.cleanup()


if __name__ == "__main__":
    run_then_exit(main)
