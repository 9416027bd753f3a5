"""Test helper: one of several train_redi.py jobs racing to publish the same DPO reference log-prob cache.

    tests/helpers/dpo_reference_race.py BARRIER JOBS TRAIN_REDI_ARGS...

Runs train_redi.main(TRAIN_REDI_ARGS) with os.replace held, for a destination that is a reference
cache (`*.ref-logps.*`), until JOBS processes have reached that publish: each writes
BARRIER.arrived-PID, then waits for JOBS such files (at most WAIT_S). So every job has computed and
written its temp file before any job publishes, whatever the machine's timing. The hold is
monkeypatched in here, never flagged in dpo_reference.py; other renames (token cache, checkpoints)
pass straight through.
"""
import glob
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

WAIT_S = 120


def hold_reference_publish(barrier, jobs):
    """Patch os.replace (before the project is imported) to wait at `barrier` for `jobs` processes."""
    replace = os.replace

    def held_replace(src, dst, *args, **kwargs):
        if ".ref-logps." in os.path.basename(os.fspath(dst)):
            open(f"{barrier}.arrived-{os.getpid()}", "w").close()
            deadline = time.monotonic() + WAIT_S
            while len(glob.glob(f"{glob.escape(barrier)}.arrived-*")) < jobs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dpo_reference_race: fewer than {jobs} jobs reached the publish in {WAIT_S} s")
                time.sleep(0.01)
        return replace(src, dst, *args, **kwargs)

    os.replace = held_replace


def main():
    barrier, jobs, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    hold_reference_publish(barrier, jobs)
    import train_redi

    train_redi.main(argv)


if __name__ == "__main__":
    import cli

    cli.run_then_exit(main)
