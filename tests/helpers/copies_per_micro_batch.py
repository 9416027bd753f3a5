"""Test helper: the training scripts as they were before training.sync_gradients, for comparison.

    torchrun --nproc_per_node 1 tests/helpers/copies_per_micro_batch.py {train_sft|train_redi} TRAIN_ARGS...

Runs train_sft.main / train_redi.main unchanged except that training.sync_gradients does nothing and
load_model leaves FSDP2's reshard-after-forward on: every micro-batch gathers the parameters and
reduce-scatters its gradients, as on two or more ranks.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import train_redi  # noqa: E402
import train_sft  # noqa: E402
import training  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402


def main():
    script, argv = sys.argv[1], sys.argv[2:]
    training.sync_gradients = lambda model, last: None
    FSDPModule.set_reshard_after_forward = lambda self, *a, **k: None
    (train_sft if script == "train_sft" else train_redi).main(argv)


if __name__ == "__main__":
    main()
