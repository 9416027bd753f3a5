"""Test helper: run a training script with one fault injected, by monkeypatching (no CLI flag).

    torchrun --nproc_per_node N tests/helpers/fault_run.py KIND:STEP:RANK {train_sft|train_redi} ARGS...

KIND at optimizer step STEP (0-based) on rank RANK:
    nan / inf   the policy's log-probs of that step's micro-batches become NaN / +inf (so the loss does)
    nan-grad    log-probs unchanged in value, NaN in their gradient (x + sqrt(0 * x): d sqrt at 0 is inf)
    save-error  writing that step's checkpoint fails on that rank with "No space left on device"
The step is read from the schedule (training.lr_at is called once per step, with the step).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

import cli  # noqa: E402
import train_redi  # noqa: E402
import train_sft  # noqa: E402
import training  # noqa: E402


def main():
    fault, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    kind, at_step, at_rank = fault.split(":")
    at_step, at_rank = int(at_step), int(at_rank)
    now = {"step": None}
    lr_at, forward, save_config = training.lr_at, training.LogpsModel.forward, training.save_config

    def lr_at_recording(step, *args):
        now["step"] = step
        return lr_at(step, *args)

    def due():
        return now["step"] == at_step and int(os.environ.get("RANK", "0")) == at_rank

    def faulty_forward(self, *args, **kwargs):
        logps, lengths = forward(self, *args, **kwargs)
        if self.training and due():
            if kind == "nan":
                logps = logps * float("nan")
            elif kind == "inf":
                logps = logps + float("inf")
            elif kind == "nan-grad":
                logps = logps + torch.sqrt(logps * 0.0)
        return logps, lengths

    def failing_save_config(config, directory):
        if kind == "save-error" and int(os.environ.get("RANK", "0")) == at_rank and \
                directory.endswith(f"step-{at_step:07d}"):
            raise OSError(28, "No space left on device (injected by tests/helpers/fault_run.py)", directory)
        return save_config(config, directory)

    training.lr_at = lr_at_recording
    training.LogpsModel.forward = faulty_forward
    training.save_config = failing_save_config
    {"train_sft": train_sft, "train_redi": train_redi}[script].main(argv)


if __name__ == "__main__":
    cli.run_then_exit(main)
