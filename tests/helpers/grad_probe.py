"""Test helper: run ONE optimizer step's forward/backward with the real task code, save loss + grads.

    torchrun --nproc_per_node N tests/helpers/grad_probe.py OUT.pt {sft|redi|dpo|simpo} TRAIN_ARGS...

Builds the model, data, sampler and task exactly as train_sft.py / train_redi.py do, runs the
micro-batches of step 0 and backward, then gathers the full gradients (all ranks, FSDP
reduce-scattered) and the step's all-reduced loss, and rank 0 saves them with torch.save.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

import train_redi  # noqa: E402
import train_sft  # noqa: E402
from data import load_pairs, load_sft_examples, num_tokens, tokenize_pairs, tokenize_sft  # noqa: E402


def main():
    out, stage, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    args = train_sft.parse_args(argv) if stage == "sft" else train_redi.parse_args(argv + ["--loss", stage])
    rank, world, device, tokenizer, model, lm, optimizer = train_sft.prepare(args)
    if stage == "sft":
        data = tokenize_sft(tokenizer, load_sft_examples(args.data))
        sampler = train_sft.build_sampler(args, [num_tokens(e) for e in data], world, rank)
        task = train_sft.SFTTask(data, sampler, tokenizer.pad_token_id, args.packed, device)
    else:
        data = tokenize_pairs(tokenizer, load_pairs(args.data))
        sampler = train_sft.build_sampler(args, [num_tokens(p) for p in data], world, rank)
        ref = train_sft.load_model(args.model, args, device, trainable=False)[0] if stage == "dpo" else None
        task = train_redi.PairTask(args, data, sampler, tokenizer.pad_token_id, device, ref_model=ref)
    normaliser = task.normaliser(0, 0)
    total = 0.0
    micro_batches = sampler.micro_batches(0, 0)
    for items in micro_batches:
        loss, _ = task.micro_batch(model, items, normaliser)
        loss.backward()
        total += loss.item()
    (total,) = train_sft.all_reduce_sum([total], device)
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save({"loss": total, "grads": grads, "micro_batches": len(micro_batches)}, out)
    train_sft.cleanup()


if __name__ == "__main__":
    main()
