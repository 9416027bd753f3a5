"""The whole REDI pipeline on the built-in task, end to end on a laptop CPU, with the real command lines.

    python demo.py                       # the guess variant (informative negatives), about 11 min on 2 idle cores
    python demo.py --variant slips       # the slip task, the null case
    python demo.py --quick               # CI smoke size (a few steps of everything)
    python demo.py --out runs/demo2 --seed 1

Each stage is the project's own script in a subprocess, its output streamed, everything in --out:
toy/toy_task.py (data/) -> toy/tiny_model.py (init/) -> curate.py -> torchrun train_sft.py (sft/) -> torchrun
train_redi.py --loss redi (redi/) and --loss sft, the control (sft_control/) -> evaluate.py on stage 1 and
every stage-2 checkpoint -> results.md/.json (pass@1 +- SEM, pass@k, guess share and accuracy per path,
toy_task.path_stats) and toy/plot.py -> dynamics.png. The guess variant, why it has this shape and what
moves its numbers between machines: docs/toy_task.md and README. The same --seed on the same machine and
thread count gives the same numbers; another CPU, thread count or --nproc changes the low-order bits
(bench/numerics_sources.py) and can change the figures within the range README gives.
A stage that fails stops the demo with one line naming it (exit 1); an --out that cannot be written
is one line and exit 2. Stages whose outputs exist are re-run, not skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from cli import exit_on_input_error, make_output_dir, read_jsonl
from toy.toy_task import path_stats

ROOT = os.path.dirname(os.path.abspath(__file__))

# Sizes and hyperparameters. "full" is the README's demo; "quick" only proves every stage runs.
CONFIGS = {
    # the guess variant (informative negatives): hidden 128 x 4 layers from scratch, stage 1 at lr 2e-3 for
    # 28 epochs (the replication's stage-1 length, checked there on validation: at 16 epochs stage 1 had not
    # settled and its test accuracy swung 53-71% with the machine's low-order numerics), stage 2 one epoch at lr 3e-5
    "full": {"variant": "guess", "num_problems": 4000, "num_test": 300, "hidden": 128, "layers": 4, "heads": 4,
             "kv_heads": 2, "vocab": 512, "sft_epochs": 28, "sft_lr": 2e-3, "sft_batch": 32, "sft_micro": 16,
             "stage2_lr": 3e-5, "stage2_batch": 32, "stage2_micro": 16, "stage2_epochs": 1, "save_every": 28,
             "eval_n": 4, "eval_max_new_tokens": 64, "eval_batch": 300},
    # the default slip task (the null case), the README's earlier demo (measured 2026-11-26)
    "slips": {"variant": "slips", "num_problems": 8000, "num_test": 300, "hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2,
             "vocab": 512, "sft_epochs": 5, "sft_lr": 3e-3, "sft_batch": 32, "sft_micro": 16,
             "stage2_lr": 1e-5, "stage2_batch": 32, "stage2_micro": 16, "stage2_epochs": 1, "save_every": 19,
             "eval_n": 4, "eval_max_new_tokens": 64, "eval_batch": 300},
    "quick": {"variant": "guess", "num_problems": 200, "num_test": 12, "hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1,
              "vocab": 400, "sft_epochs": 1, "sft_lr": 1e-3, "sft_batch": 16, "sft_micro": 8,
              "stage2_lr": 1e-4, "stage2_batch": 8, "stage2_micro": 4, "stage2_epochs": 1, "save_every": 2,
              "max_stage2_steps": 4, "eval_n": 2, "eval_max_new_tokens": 24, "eval_batch": 64},
}
# The tiny model's chat template keeps Qwen2.5-Math's shape but a short default system prompt:
# on this task the system block would otherwise be a third of every sequence's compute.
SYSTEM_PROMPT = "Box the answer."
STAGE2_RUNS = {"redi": ["--loss", "redi", "--alpha", "0.8"], "sft_control": ["--loss", "sft"]}
# The slips recipe kept its own stage-2 learning rate (1e-5); the guess recipe uses 3e-5 (above).


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory (everything goes here)")
    p.add_argument("--seed", type=int, default=0, help="one seed for data, initialisation, order and sampling")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every stage (CI)")
    p.add_argument("--variant", choices=["guess", "slips"], default="guess",
                   help="guess: the teacher sometimes guesses, the negatives are informative (the default); "
                        "slips: the default toy task, the null case (the earlier, 8,000-problem demo)")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes for training (CPU: gloo)")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0 (curate.py's shuffle needs it), got {args.seed}")
    return args


# -----------------------------------------------------------------------------
# running the stages


class StageFailed(Exception):
    """A stage's command exited non-zero; its own output says why."""


class Stages:
    """Runs each stage's command, streams its output, and records the wall time per stage."""

    def __init__(self, out):
        self.out, self.times, self.t0 = out, {}, time.time()

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

    def run(self, name, cmd):
        print(f"\n=== [{time.time() - self.t0:6.0f}s] {name}\n$ {' '.join(map(str, cmd))}", flush=True)
        t = time.time()
        code = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=self.env).returncode
        if code:
            raise StageFailed(f"stage '{name}' failed (exit status {code}); its output is above")
        self.times[name] = time.time() - t

    def run_parallel(self, name, jobs, workers):
        """Run {label: (cmd, log file)} `workers` at a time (one thread each); output goes to the logs."""
        print(f"\n=== [{time.time() - self.t0:6.0f}s] {name}: {len(jobs)} jobs, {workers} at a time", flush=True)
        t, pending, running = time.time(), list(jobs.items()), {}
        while pending or running:
            while pending and len(running) < workers:
                label, (cmd, log) = pending.pop(0)
                print(f"$ {' '.join(map(str, cmd))}  > {log}", flush=True)
                running[label] = (subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=self.env,
                                                   stdout=open(log, "w"), stderr=subprocess.STDOUT), log)
            time.sleep(0.2)
            for label, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    del running[label]
                    if proc.returncode:
                        for other, _ in running.values():   # the stage is lost: do not leave them running
                            other.kill()
                        raise StageFailed(f"stage '{name}': {label} failed (exit status {proc.returncode}); "
                                          f"see {log}")
                    print(f"  [{time.time() - self.t0:6.0f}s] done: {label}", flush=True)
        self.times[name] = time.time() - t


def python(script, *args):
    """The command that runs one of the project's scripts with this interpreter: a root script by its file
    (`curate.py`), a toy/ module by its name (`toy.plot`: `python -m toy.plot`). toy/replicate.py uses it too."""
    where = [os.path.join(ROOT, script)] if script.endswith(".py") else ["-m", script]
    return [sys.executable, *where, *args]


def torchrun(nproc, script, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, script), *args]


def prepare_data_and_model(stages, out, cfg, seed):
    data, init = os.path.join(out, "data"), os.path.join(out, "init")
    stages.run("1. teacher data (built-in task, OpenR1-Math-Raw schema)",
               python("toy.toy_task", "--variant", cfg["variant"], "--out-dir", data,
                      "--num-problems", cfg["num_problems"], "--num-test", cfg["num_test"], "--seed", seed))
    stages.run("2. tokenizer + tiny Qwen2 from scratch",
               python("toy.tiny_model", "--out", init, "--corpus", os.path.join(data, "raw.jsonl"),
                      "--vocab-size", cfg["vocab"], "--hidden-size", cfg["hidden"], "--num-layers", cfg["layers"],
                      "--num-heads", cfg["heads"], "--num-kv-heads", cfg["kv_heads"], "--seed", seed,
                      "--system-prompt", SYSTEM_PROMPT))
    stages.run("3. curation (REDI's rules)",
               python("curate.py", "--raw", os.path.join(data, "raw.jsonl"),
                      "--sft-out", os.path.join(data, "sft.jsonl"), "--pairs-out", os.path.join(data, "pairs.jsonl"),
                      "--tokenizer", init, "--seed", seed))
    return data, init


def train_all(stages, out, cfg, seed, nproc, data, init):
    stages.run("4. stage 1: SFT on correct traces",
               torchrun(nproc, "train_sft.py", "--model", init, "--data", os.path.join(data, "sft.jsonl"),
                        "--output-dir", os.path.join(out, "sft"), "--epochs", cfg["sft_epochs"],
                        "--lr", cfg["sft_lr"], "--global-batch-size", cfg["sft_batch"],
                        "--micro-batch-size", cfg["sft_micro"], "--seed", seed))
    for run, loss_args in STAGE2_RUNS.items():
        extra = ["--max-steps", cfg["max_stage2_steps"]] if "max_stage2_steps" in cfg else []
        stages.run(f"5. stage 2: {run}",
                   torchrun(nproc, "train_redi.py", "--model", os.path.join(out, "sft", "final"),
                            "--data", os.path.join(data, "pairs.jsonl"), "--output-dir", os.path.join(out, run),
                            *loss_args, "--lr", cfg["stage2_lr"], "--epochs", cfg["stage2_epochs"],
                            "--global-batch-size", cfg["stage2_batch"], "--micro-batch-size", cfg["stage2_micro"],
                            "--save-every", cfg["save_every"], "--seed", seed, *extra))


def evaluate_command(cfg, seed, model, test_file, out_dir):
    return python("evaluate.py", "--model", model, "--data", test_file, "--num-samples", cfg["eval_n"],
                  "--temperature", "0.6", "--top-p", "0.95", "--max-new-tokens", cfg["eval_max_new_tokens"],
                  "--prompt-template", "raw", "--batch-size", cfg["eval_batch"], "--seed", seed,
                  "--grading-workers", "1", "--output-dir", out_dir)


def evaluate_all(stages, out, cfg, seed, data, workers):
    """The stage-1 model (shared as step 0 of both stage-2 runs) and every stage-2 checkpoint."""
    test = os.path.join(data, "test.jsonl")
    jobs = {"stage 1": (os.path.join(out, "sft", "final"), os.path.join(out, "sft", "evals", "final"))}
    for run in STAGE2_RUNS:
        for ckpt in sorted(d for d in os.listdir(os.path.join(out, run, "checkpoints")) if d.startswith("step-")):
            jobs[f"{run} {ckpt}"] = (os.path.join(out, run, "checkpoints", ckpt), os.path.join(out, run, "evals", ckpt))
    for _, out_dir in jobs.values():
        os.makedirs(out_dir, exist_ok=True)
    stages.run_parallel("6. evaluate every checkpoint on the held-out set", {
        label: (evaluate_command(cfg, seed, model, test, out_dir), os.path.join(out_dir, "evaluate.log"))
        for label, (model, out_dir) in jobs.items()}, workers)
    summaries = {}
    for label, (_, out_dir) in jobs.items():
        with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
            summaries[label] = json.load(f)
        summaries[label]["paths"] = paths_of(out_dir, test)
    for run in STAGE2_RUNS:
        shutil.copytree(jobs["stage 1"][1], os.path.join(out, run, "evals", "step-0000000"), dirs_exist_ok=True)
    last = {run: max(label for label in jobs if label.startswith(run + " ")) for run in STAGE2_RUNS}
    return {"stage 1 (SFT)": summaries["stage 1"],
            **{f"stage 2: {run}": summaries[label] for run, label in last.items()}}


def paths_of(eval_dir, test_file):
    """toy_task.path_stats of one evaluation: the share of samples that guess, accuracy per path
    (toy/replicate.py uses it too)."""
    problems = {r["id"]: r["problem"] for _, r in read_jsonl(test_file)}
    gens = [g for _, g in read_jsonl(os.path.join(eval_dir, "generations.jsonl"))]
    return path_stats((problems[g["id"]], g["text"], g["correct"]) for g in gens)


# -----------------------------------------------------------------------------
# the report


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def results_table(summaries: dict) -> str:
    """One row per model, the paper's columns: pass@1 +- SEM, pass@k, mean response length."""
    first = next(iter(summaries.values()))
    bench = sorted(first["benchmarks"])[0]
    ks = list(first["benchmarks"][bench]["pass@k"])
    header = (["model", "pass@1 (%) +- SEM"] + [f"pass@{k} (%)" for k in ks[1:]]
              + ["guess share (%)", "acc. of guesses (%)", "acc. when working (%)", "mean length", "truncated (%)"])
    rows = []
    for name, summary in summaries.items():
        m = summary["benchmarks"][bench]
        rows.append([name, f"{100 * m['pass@1']:.1f} +- {100 * m['sem']:.1f}"]
                    + [f"{100 * m['pass@k'][k]:.1f}" for k in ks[1:]]
                    + [pct(summary["paths"][key]) for key in ("guess_share", "guess_accuracy", "work_accuracy")]
                    + [f"{m['mean_length']:.1f}", f"{100 * m['truncation_rate']:.1f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return f"held-out set: {bench} ({m['n_problems']} problems, n={m['n_samples']} samples each)\n\n" + "\n".join(lines)


def write_report(out, summaries, stages, args, cfg):
    table = results_table(summaries)
    total = time.time() - stages.t0
    timing = "\n".join(f"    {name}: {sec:.0f}s" for name, sec in stages.times.items())
    text = (f"# REDI demo ({'quick' if args.quick else 'full'}, seed {args.seed}, {args.nproc} processes)\n\n"
            f"{table}\n\nwall time: {total:.0f}s\n{timing}\n")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"config": cfg, "args": vars(args), "wall_time_s": total, "stage_times_s": stages.times,
                   "models": {k: v["benchmarks"] for k, v in summaries.items()},
                   "paths": {k: v["paths"] for k, v in summaries.items()}}, f, indent=1)
    print("\n" + text)


def main(argv=None):
    args = parse_args(argv)
    cfg = (dict(CONFIGS["quick"], variant=args.variant) if args.quick
           else CONFIGS["full" if args.variant == "guess" else "slips"])
    with exit_on_input_error("demo.py"):
        out = os.path.abspath(make_output_dir(args.out, f"--out {args.out}"))
    stages = Stages(out)
    try:
        data, init = prepare_data_and_model(stages, out, cfg, args.seed)
        train_all(stages, out, cfg, args.seed, args.nproc, data, init)
        summaries = evaluate_all(stages, out, cfg, args.seed, data, workers=args.nproc)
        stages.run("7. plots", python("toy.plot", *(os.path.join(out, run) for run in STAGE2_RUNS), "--out", out))
    except StageFailed as e:
        print(f"demo.py: error: {e}", file=sys.stderr, flush=True)
        return 1
    write_report(out, summaries, stages, args, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
