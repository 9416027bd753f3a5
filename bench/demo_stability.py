"""Does the demo tell the same story under seeds and floating-point noise? `python demo.py` under perturbations.

    python bench/demo_stability.py --out runs/demo_stability            # 6 demo runs, ~70 min on 2 idle cores
    python bench/demo_stability.py --out runs/demo_stability --report   # the table from the runs on disk

Runs (each a whole `python demo.py`, one after another; a run whose results.json exists is not run again):
    seed 0, seed 1, seed 2    the demo as shipped (2 processes, OMP_NUM_THREADS=1)
    seed 0, 2 threads         OMP_NUM_THREADS=2 per process (other parallel reductions)
    seed 0, 1 process         --nproc 1 with OMP_NUM_THREADS=2: the same global batches, split into two
                              micro-batches on one rank instead of across two ranks (another summation
                              order), both cores used by one process
    seed 0, AVX2 kernels      ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2:
                              the kernels an AVX2-only CPU runs (bench/numerics_sources.py shows each of the
                              last three changes the trained weights' low-order bits)

For every run: pass@1 +- SEM of stage 1, REDI and the SFT control; guess share, accuracy of guesses and when
working; and three qualitative answers: REDI vs stage 1 and control vs stage 1 ("higher"/"lower" when the
difference exceeds 2 x sqrt(SEM_a^2 + SEM_b^2), else "same"), and whether each stage-2 run cuts the guess
share (to at most half of stage 1's) or keeps it. Then the spread of every figure over the runs (min,
max, mean, sd) and whether all runs agree. Writes report.md and report.json in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
RUNS = {   # name -> (seed, demo.py arguments, environment on top of this one's)
    "seed 0": (0, [], {}),
    "seed 1": (1, [], {}),
    "seed 2": (2, [], {}),
    "seed 0, 2 threads": (0, [], {"OMP_NUM_THREADS": "2"}),
    "seed 0, 1 process": (0, ["--nproc", "1"], {"OMP_NUM_THREADS": "2"}),
    "seed 0, AVX2 kernels": (0, [], AVX2),
}
MODELS = {"stage 1": "stage 1 (SFT)", "REDI": "stage 2: redi", "control": "stage 2: sft_control"}


def run_dir(out, name):
    return os.path.join(out, name.replace(", ", "_").replace(" ", "_"))


def run_all(out):
    for name, (seed, extra, env) in RUNS.items():
        d = run_dir(out, name)
        if os.path.exists(os.path.join(d, "results.json")):
            print(f"[{name}] done before: {d}", flush=True)
            continue
        print(f"[{name}] python demo.py --out {d} --seed {seed} {' '.join(extra)}  env {env}", flush=True)
        with open(d + ".log", "w") as log:
            code = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--out", d, "--seed", str(seed),
                                   *extra], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                                  stdout=log, stderr=subprocess.STDOUT).returncode
        if code:
            sys.exit(f"demo_stability.py: run '{name}' failed (exit {code}); see {d}.log")


def figures(results):
    """The figures of one demo run (percent) and its three qualitative answers."""
    f = {"wall time (s)": results["wall_time_s"]}
    for short, key in MODELS.items():
        bench = next(iter(results["models"][key].values()))
        paths = results["paths"][key]
        f[f"{short} pass@1"] = 100 * bench["pass@1"]
        f[f"{short} SEM"] = 100 * bench["sem"]
        f[f"{short} guess share"] = 100 * paths["guess_share"]
        f[f"{short} acc. of guesses"] = None if paths["guess_accuracy"] is None else 100 * paths["guess_accuracy"]
        f[f"{short} acc. when working"] = None if paths["work_accuracy"] is None else 100 * paths["work_accuracy"]

    def versus(a, b):
        diff = f[f"{a} pass@1"] - f[f"{b} pass@1"]
        bound = 2 * (f[f"{a} SEM"] ** 2 + f[f"{b} SEM"] ** 2) ** 0.5
        return "higher" if diff > bound else "lower" if diff < -bound else "same"

    def guessing(a):
        return "cuts" if f[f"{a} guess share"] <= 0.5 * f["stage 1 guess share"] else "keeps"

    f["REDI - stage 1"] = f["REDI pass@1"] - f["stage 1 pass@1"]
    f["control - stage 1"] = f["control pass@1"] - f["stage 1 pass@1"]
    answers = {"REDI vs stage 1": versus("REDI", "stage 1"), "control vs stage 1": versus("control", "stage 1"),
               "REDI guessing": guessing("REDI"), "control guessing": guessing("control")}
    return f, answers


def report(out):
    rows = {}
    for name in RUNS:
        path = os.path.join(run_dir(out, name), "results.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                rows[name] = figures(json.load(fh))
    if not rows:
        sys.exit(f"demo_stability.py: no finished run under {out}")
    keys = [k for k in next(iter(rows.values()))[0] if not k.endswith("SEM")]
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    lines = ["| figure | " + " | ".join(rows) + " | min | max | mean | sd |", "|---|" + "---|" * (len(rows) + 4)]
    spread = {}
    for k in keys:
        vals = [f[k] for f, _ in rows.values()]
        present = [v for v in vals if v is not None]
        s = spread[k] = ({"min": min(present), "max": max(present), "mean": statistics.mean(present),
                          "sd": statistics.stdev(present) if len(present) > 1 else 0.0} if present else None)
        tail = [fmt(s[x]) if s else "-" for x in ("min", "max", "mean", "sd")]
        lines.append(f"| {k} | " + " | ".join(map(fmt, vals)) + " | " + " | ".join(tail) + " |")
    lines.append("| **answers** | " + " | ".join("; ".join(f"{q}: {a}" for q, a in ans.items())
                                              for _, ans in rows.values()) + " | | | | |")
    agree = {q: sorted({ans[q] for _, ans in rows.values()}) for q in next(iter(rows.values()))[1]}
    verdict = ("every run gives the same qualitative answers" if all(len(v) == 1 for v in agree.values())
               else "the runs DISAGREE on: " + ", ".join(f"{q} ({' / '.join(v)})" for q, v in agree.items()
                                                        if len(v) > 1))
    text = (f"# demo.py under perturbations ({len(rows)} of {len(RUNS)} runs)\n\n" + "\n".join(lines)
            + f"\n\n{verdict}: " + "; ".join(f"{q}: {'/'.join(v)}" for q, v in agree.items()) + "\n")
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump({"runs": {n: {"figures": f, "answers": a} for n, (f, a) in rows.items()}, "spread": spread,
                   "agree": agree}, fh, indent=1)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo_stability", help="one demo run directory per perturbation goes here")
    p.add_argument("--report", action="store_true", help="only write the report from the runs on disk")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        run_all(args.out)
    report(args.out)


if __name__ == "__main__":
    main()
