"""What moves the low-order bits of a training run between two runs of the same code (CPU).

    python bench/numerics_sources.py [--steps 40] [--json out.json]

Builds the demo's stage-1 setup at a small size (toy/toy_task.py --variant guess, 600 problems; toy/tiny_model.py
hidden 128 x 4 layers; curate.py), then runs the same `train_sft.py` for --steps optimizer steps under
each setting below and compares the final model with the baseline's, byte for byte and as the largest
absolute parameter difference, and the loss of the last step:

    baseline        torchrun --nproc_per_node 2, OMP_NUM_THREADS=1 (what demo.py runs)
    again           the baseline once more: the same bits?
    under load      the baseline while two busy processes compete for both cores
    2 threads       OMP_NUM_THREADS=2 per rank
    1 process       --nproc_per_node 1: the same global batch of 32, split into micro-batches on one rank
                    instead of across two (another summation order)
    AVX2 kernels    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2: the
                    kernels an AVX2-only CPU would run (this box has AVX-512)

Prints one row per setting; --json writes them. Run on an otherwise idle box for meaningful times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS = {   # name -> (processes, extra environment, busy neighbours)
    "baseline": (2, {}, 0),
    "again": (2, {}, 0),
    "under load": (2, {}, 2),
    "2 threads": (2, {"OMP_NUM_THREADS": "2"}, 0),
    "1 process": (1, {}, 0),
    "AVX2 kernels": (2, AVX2, 0),
}


def run(cmd, env=None):
    subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def prepare(work):
    py = sys.executable
    data, init = os.path.join(work, "data"), os.path.join(work, "init")
    run([py, "-m", "toy.toy_task", "--variant", "guess", "--out-dir", data, "--num-problems", 600, "--num-test", 10])
    run([py, "-m", "toy.tiny_model", "--out", init, "--corpus", os.path.join(data, "raw.jsonl"), "--vocab-size", 512,
         "--hidden-size", 128, "--num-layers", 4, "--num-heads", 4, "--num-kv-heads", 2,
         "--system-prompt", "Box the answer."])
    run([py, "curate.py", "--raw", os.path.join(data, "raw.jsonl"), "--sft-out", os.path.join(data, "sft.jsonl"),
         "--pairs-out", os.path.join(data, "pairs.jsonl"), "--tokenizer", init])
    return os.path.join(data, "sft.jsonl"), init


def train(work, name, nproc, extra_env, busy, sft, init, steps):
    out = os.path.join(work, name.replace(" ", "_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra_env}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t = time.time()
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
             "train_sft.py", "--model", init, "--data", sft, "--output-dir", out, "--max-steps", steps,
             "--lr", 2e-3, "--global-batch-size", 32, "--micro-batch-size", 16, "--seed", 0, "--no-progress"],
            env)
        wall = time.time() - t
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    last = [r for r in rows if "loss" in r][-1]
    return os.path.join(out, "final"), last["loss"], wall


def compare(a_dir, b_dir):
    """(byte-identical weights file?, largest |difference| of any parameter)."""
    from safetensors.torch import load_file
    a_path, b_path = (os.path.join(d, "model.safetensors") for d in (a_dir, b_dir))
    with open(a_path, "rb") as fa, open(b_path, "rb") as fb:
        same = fa.read() == fb.read()
    a, b = load_file(a_path), load_file(b_path)
    return same, max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="numerics_") as work:
        sft, init = prepare(work)
        base = None
        for name, (nproc, extra_env, busy) in SETTINGS.items():
            final, loss, wall = train(work, name, nproc, extra_env, busy, sft, init, args.steps)
            base = base or (final, loss)
            same, diff = compare(base[0], final)
            rows.append({"setting": name, "identical_weights": same, "max_abs_param_diff": diff,
                         "last_loss": loss, "last_loss_diff": loss - base[1], "wall_s": wall})
            print(f"{name:13s} weights {'identical' if same else 'differ   '}  max |dW| {diff:.3e}  "
                  f"last loss {loss:.6f} ({loss - base[1]:+.2e})  {wall:5.1f} s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"steps": args.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
