"""toy/replicate.py's jobs as fresh interpreters vs forks of a preloaded process (toy/prefork.py), side by side.

    python bench/bench_prefork.py [--rounds 3] [--out /tmp/bench_prefork]

Builds toy/replicate.py's full-size setting once (toy_task `guess` variant, the tiny Qwen2 at hidden 128
x 4 layers, curate), then for each round runs its two commonest jobs both ways, alternating which
goes first, one at a time on one thread: a validation eval (evaluate.py, 150 problems x 2 samples,
64 new tokens) and a stage-2 run (train_redi.py --loss redi, 10 steps of 32 pairs). Printed: the
median seconds per job each way, the saving and the ratio; and whether the forked outputs equal the
fresh ones byte for byte (weights, generations).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

from demo import python  # noqa: E402
from toy import prefork, replicate  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of (eval, stage 2) each way")
    p.add_argument("--out", default="/tmp/bench_prefork", help="scratch directory (emptied first)")
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(os.path.join(args.out, "runs"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    py = sys.executable

    def out(*parts):
        return os.path.join(args.out, *parts)

    for cmd in (python("toy.toy_task", "--variant", "guess", "--out-dir", out("data"), "--num-problems", "1000",
                       "--num-test", "150", "--seed", "0"),
                python("toy.tiny_model", "--out", out("model"), "--corpus", out("data", "raw.jsonl"), "--vocab-size",
                       "512", "--hidden-size", "128", "--num-layers", "4", "--num-heads", "4", "--num-kv-heads", "2",
                       "--seed", "0", "--system-prompt", "Box the answer."),
                python("curate.py", "--raw", out("data", "raw.jsonl"), "--sft-out", out("sft.jsonl"), "--pairs-out",
                       out("pairs.jsonl"), "--tokenizer", out("model"), "--seed", "0")):
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    val_n = replicate.CONFIGS["full"]["val_n"]   # toy/replicate.py's own validation command
    jobs = {"val eval": lambda d: replicate.evaluate_cmd(replicate.CONFIGS["full"], 0, out("model"),
                                                         out("data", "test.jsonl"), val_n, d)[1:],
            "stage 2 (10 steps)": lambda d: ["train_redi.py", "--model", out("model"), "--data", out("pairs.jsonl"),
                                             "--output-dir", d, "--loss", "redi", "--lr", "1e-5",
                                             "--global-batch-size", "32", "--micro-batch-size", "32",
                                             "--layout", "padded", "--max-steps", "10", "--save-every", "0",
                                             "--keep-last", "0", "--seed", "0", "--no-progress"]}
    print(f"preloaded in {prefork.preload():.1f}s (once per replicate.py invocation)")
    times = {(job, how): [] for job in jobs for how in ("fresh", "fork")}
    for r in range(args.rounds):
        for job, argv in jobs.items():
            for how in (("fresh", "fork") if r % 2 == 0 else ("fork", "fresh")):
                d = out("runs", f"{job.split()[0]}-{how}-{r}")
                script, *rest = [str(a) for a in argv(d)]
                cmd = [py, os.path.join(ROOT, script), *rest]
                t = time.perf_counter()
                if how == "fork":
                    code = prefork.ForkedScript(cmd, ROOT, env, d + ".log").wait()
                else:
                    with open(d + ".log", "w") as log:
                        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                if code:
                    sys.exit(f"{job} ({how}) failed with status {code}: see {d}.log")
                times[job, how].append(time.perf_counter() - t)
    print(f"{'job':22s} {'fresh s':>8s} {'fork s':>8s} {'saved s':>8s} {'fork/fresh':>10s}  (medians of {args.rounds})")
    for job in jobs:
        fresh, fork = statistics.median(times[job, "fresh"]), statistics.median(times[job, "fork"])
        print(f"{job:22s} {fresh:8.2f} {fork:8.2f} {fresh - fork:8.2f} {fork / fresh:10.2f}")
    same = [open(out("runs", f"{a}-fresh-0", f), "rb").read() == open(out("runs", f"{a}-fork-0", f), "rb").read()
            for a, f in (("val", "generations.jsonl"), ("stage", os.path.join("final", "model.safetensors")))]
    print(f"outputs byte-identical (generations, weights): {same}")


if __name__ == "__main__":
    main()
