"""Test helper: one job of several racing to build the same tokenized cache.

    [torchrun --nproc_per_node N] tests/helpers/token_cache_race.py DATA KIND MODEL OUT GO [--no-lock] [--delay S]

Each rank writes GO.ready-HOST-PID once imported, then waits for the file GO, so the test can start
every job's `token_cache.load` at the same moment. Test-only behaviour is monkeypatched in here,
never flagged in token_cache.py: --delay S makes each part write sleep S seconds first (the builds
overlap, as slow tokenization would make them), --no-lock makes the flock unavailable (as on an NFS
mount without locks: every job builds and the publish race decides). Writes OUT.rankR.json.
"""
import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import token_cache  # noqa: E402
import cli  # noqa: E402
import training  # noqa: E402
from cli import exit_on_input_error  # noqa: E402
from data import load_tokenizer  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    for name in ("data", "kind", "model", "out", "go"):
        p.add_argument(name)
    p.add_argument("--no-lock", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    write_part = token_cache.write_part

    def slow_write_part(*a, **k):
        time.sleep(args.delay)
        return write_part(*a, **k)

    token_cache.write_part = slow_write_part
    token_cache.POLL_S = 0.2
    if args.no_lock:
        token_cache._try_lock = lambda directory: None
    rank, world, _ = training.setup_distributed("cpu")
    try:
        tokenizer = load_tokenizer(args.model)
        open(f"{args.go}.ready-{socket.gethostname()}-{os.getpid()}", "w").close()
        while not os.path.exists(args.go):
            time.sleep(0.01)
        with exit_on_input_error(f"token_cache_race [rank {rank}]"):
            examples = token_cache.load(args.data, tokenizer, args.kind, None)
        with open(f"{args.out}.rank{rank}.json", "w") as f:
            json.dump({"directory": examples.directory, "items": [examples[i] for i in range(len(examples))]}, f)
    finally:
        training.cleanup()


if __name__ == "__main__":
    cli.run_then_exit(main)
