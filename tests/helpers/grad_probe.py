"""Test helper: run ONE optimizer step of the real training script, save its loss and gradients.

    torchrun --nproc_per_node N tests/helpers/grad_probe.py OUT.pt {sft|redi|dpo|simpo} TRAIN_ARGS...

Runs train_sft.main / train_redi.main unchanged with --max-steps 1; the only hook is on the
optimizer: just before its step, the full (all-ranks, FSDP reduce-scattered) gradients are
gathered. The step's all-reduced loss is read back from metrics.jsonl. Rank 0 saves
{"loss", "grads", "micro_batches"} with torch.save.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

import cli  # noqa: E402
import train_redi  # noqa: E402
import train_sft  # noqa: E402
import training  # noqa: E402

captured = {}


def build_optimizer_with_probe(model, args, build=training.build_optimizer):
    optimizer = build(model, args)
    step = optimizer.step

    def probed_step(*a, **k):
        captured["grads"] = {n: p.grad.full_tensor().clone() for n, p in model.named_parameters()}
        return step(*a, **k)
    optimizer.step = probed_step
    return optimizer


def count_micro_batches(build=training.build_batch_order):
    def build_batch_order(*a, **k):
        batch_order = build(*a, **k)
        captured["micro_batches"] = len(batch_order.micro_batches(0, 0))
        return batch_order
    return build_batch_order


def main():
    out, stage, argv = sys.argv[1], sys.argv[2], sys.argv[3:] + ["--max-steps", "1"]
    training.build_optimizer = build_optimizer_with_probe
    training.build_batch_order = count_micro_batches()
    if stage == "sft":
        train_sft.main(argv)
    else:
        train_redi.main(argv + ["--loss", stage])
    if int(os.environ.get("RANK", "0")) == 0:
        output_dir = argv[argv.index("--output-dir") + 1]
        with open(os.path.join(output_dir, "metrics.jsonl")) as f:
            loss = [json.loads(line) for line in f][1]["loss"]
        torch.save({"loss": loss, **captured}, out)


if __name__ == "__main__":
    cli.run_then_exit(main)   # as the training scripts exit
