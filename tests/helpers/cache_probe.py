"""Test helper: build/read the tokenized cache under torchrun and save what rank 0 and rank 1 see.

    torchrun --nproc_per_node N tests/helpers/cache_probe.py DATA KIND MODEL OUT.json
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import token_cache  # noqa: E402
import cli  # noqa: E402
import training  # noqa: E402
from cli import exit_on_input_error  # noqa: E402
from data import load_tokenizer  # noqa: E402


def main():
    data, kind, model, out = sys.argv[1:5]
    rank, world, _ = training.setup_distributed("cpu")
    try:
        with exit_on_input_error(f"cache_probe [rank {rank}]"):
            examples = token_cache.load(data, load_tokenizer(model), kind, None)
        with open(f"{out}.rank{rank}", "w") as f:
            json.dump({"directory": examples.directory, "items": [examples[i] for i in range(len(examples))],
                       "lengths": examples.lengths.tolist(), "supervised": examples.supervised.tolist()}, f)
    finally:
        training.cleanup()


if __name__ == "__main__":
    cli.run_then_exit(main)   # as the training scripts exit
