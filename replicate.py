"""The paper's comparisons on the built-in task, both variants, several seeds, on a 2-core CPU.

    python replicate.py                          # full: 2 variants x 3 seeds (see RESULTS.md for its wall time)
    python replicate.py --smoke                  # tiny sizes, every job once (tests/test_replicate.py)
    python replicate.py --variants guess --seeds 0 1 --out runs/rep_guess

Variants (toy_task.py --variant): `slips`, the default task, where every negative is a slip in the
work (the null case); `guess`, where the teacher often guesses without working, a lucky guess is a
positive, and the failed guesses dominate the negatives (the paper's premise: negatives carry a
signal the positives lack). Per (variant, seed) -- the seed sets data, initialisation and order:

    a. stage 1 (`train_sft.py`) for STAGE1_EPOCHS, a checkpoint every --curve-every epochs, each one
       evaluated on the VALIDATION split: held-out accuracy vs epochs (paper Figure 2); stage 2
       starts from the final stage-1 model
    b. from that one checkpoint, one epoch over the pairs (`train_redi.py`): REDI alpha 0.8; the
       symmetric alpha 1.0; DPO over a beta x lr grid; SimPO over an lr grid; the SFT control
       (`--loss sft`, chosen traces only). Each method's setting is picked by validation pass@1
       (never the test set); only the picked checkpoint is evaluated on the test split
       (pass@1 +- SEM, pass@k, and the share and accuracy of each path, `toy_task.path_stats`)
    Seeds: stage 1, REDI alpha 0.8 and the SFT control (the headline rows) run on every seed;
    alpha 1.0, DPO and SimPO on the first seed only (the 2-core budget).
    c. (first seed only) stability at a high learning rate: alpha 1, low-beta DPO and alpha 0.8,
       a checkpoint every few steps, each evaluated on validation; chosen/rejected LogPS, update
       size and accuracy vs step (paper Figures 3 and 6, drawn by plot.py)
    d. (first seed only) an alpha sweep 0.2 / 0.5 / 0.8 / 1.0 (paper Appendix D.1)

Every stage is the project's own CLI as a plain single-process `python` job (no torchrun), at most
--jobs at a time (2 on 2 cores), scheduled as a dependency graph so stage-1 checkpoints are reused
by every stage-2 run of their seed. Outputs in --out: <variant>/seed<S>/... (data, init, sft,
stage-2 runs with their evals), results.json (every number), report.md (the tables), and
fig_stage1.png, fig_dynamics_<variant>.png, fig_alpha.png.

Reporting: per seed, a method's test pass@1 is the mean over problems and samples; a row gives
the mean over seeds +- the SEM over seeds (std / sqrt(S), S in the row), or, for a single-seed
row, evaluate.py's SEM over the samples; a difference row is the per-seed difference's mean +-
its SEM over seeds. No seed is dropped; a failed job stops the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

from cli import exit_on_input_error, make_output_dir, read_jsonl
from demo import paths_of, python

ROOT = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PROMPT = "Box the answer."

# Sizes. "full" is RESULTS.md's run: the informative-negatives probe's recipe (../shared/notes, Probe E:
# hidden 128 x 4, 4,000 problems, stage 1 20 epochs at lr 2e-3, batch 32), which brought stage 1 near its
# plateau, for both variants; the guess variant's `ab-c` problems number only ~4,450, so it trains on 3,800
# (at 4,000 the 450 held-out problems, disjoint from training, could not be drawn for seed 1); "smoke"
# only proves every job runs (seconds per job).
CONFIGS = {
    "full": {"num_problems": 4000, "num_problems_guess": 3800, "num_val": 150, "num_test": 300, "hidden": 128, "layers": 4, "heads": 4,
             "kv_heads": 2, "vocab": 512, "sft_epochs": 20, "sft_lr": 2e-3, "sft_batch": 32, "curve_every": 4,
             "stage2_batch": 32, "val_n": 2, "test_n": 4, "max_new_tokens": 64, "eval_batch": 300,
             "stability_lr": 3e-4, "stability_saves": 2},
    "smoke": {"num_problems": 120, "num_val": 8, "num_test": 8, "hidden": 32, "layers": 1, "heads": 2,
              "kv_heads": 1, "vocab": 400, "sft_epochs": 2, "sft_lr": 1e-3, "sft_batch": 16, "curve_every": 1,
              "stage2_batch": 8, "val_n": 1, "test_n": 2, "max_new_tokens": 24, "eval_batch": 64,
              "stability_lr": 3e-4, "stability_saves": 2, "max_stage2_steps": 2, "one_setting": True},
}
# Stage-2 methods: name -> [(setting label, train_redi.py arguments), ...]; one setting is picked per
# seed by validation pass@1. REDI's and the control's settings are fixed a priori (lr 3e-5, the
# informative-negatives probe's rate); DPO and SimPO get small grids, in the spirit of Appendix C.4.
HEADLINE = {   # every seed
    "redi_0.8": [("lr 3e-5", ["--loss", "redi", "--alpha", "0.8", "--lr", "3e-5"])],
    "sft_control": [("lr 3e-5", ["--loss", "sft", "--lr", "3e-5"])],
}
METHODS = {   # first seed only (the compute budget: see RESULTS.md)
    "redi_1.0": [("lr 3e-5", ["--loss", "redi", "--alpha", "1.0", "--lr", "3e-5"])],
    "dpo": [(f"beta {b} lr {lr}", ["--loss", "dpo", "--beta", b, "--lr", lr, "--precompute-ref"])
            for b in ("0.1",) for lr in ("1e-5", "3e-5")],
    "simpo": [(f"lr {lr}", ["--loss", "simpo", "--beta", "2", "--gamma", "1", "--lr", lr]) for lr in ("1e-5",)],
}
ALPHA_SWEEP = {f"redi_{a}": [("lr 3e-5", ["--loss", "redi", "--alpha", a, "--lr", "3e-5"])] for a in ("0.2", "0.5")}
STABILITY = {"hi_redi_1.0": ["--loss", "redi", "--alpha", "1.0"], "hi_dpo_0.01": ["--loss", "dpo", "--beta", "0.01",
             "--precompute-ref"], "hi_redi_0.8": ["--loss", "redi", "--alpha", "0.8"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/replicate", help="run directory (everything goes here)")
    p.add_argument("--variants", nargs="+", default=["slips", "guess"], choices=["slips", "guess"],
                   help="toy_task.py variants to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds (data, initialisation, order, sampling); the first also runs (c) and (d)")
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (one core each)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: every job once, for the tests")
    p.add_argument("--report-only", action="store_true",
                   help="run no job: read a finished --out back and write the tables and figures again")
    args = p.parse_args(argv)
    if args.jobs < 1 or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--jobs must be >= 1 and --seeds distinct and >= 0, got {args.jobs} and {args.seeds}")
    return args


# -----------------------------------------------------------------------------
# jobs: a small dependency-graph scheduler over the project's CLIs


class Job:
    """A command (or a function returning one, called once its deps are done) and a log file.
    `after` runs in this process when the command succeeds."""

    def __init__(self, name, cmd, log, deps=(), priority=9, after=None, done_if=None):
        self.name, self.cmd, self.log, self.deps, self.priority, self.after = name, cmd, log, list(deps), priority, after
        self.done_if = done_if   # a path that exists only once the job has finished: a rerun reuses it
        self.start = self.end = None


def run_jobs(jobs, workers, t0):
    """Run every job, `workers` at a time, ready jobs by (priority, order); stop all on a failure."""
    pending, running, done = list(jobs), {}, set()
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    try:
        _run(pending, running, done, jobs, workers, t0, env)
    finally:   # an error or a kill of this script: leave no job running
        for _, proc in running.values():
            proc.kill()


def _run(pending, running, done, jobs, workers, t0, env):
    while pending or running:
        reusable = [j for j in pending if j.done_if and os.path.exists(j.done_if)
                    and all(d.name in done for d in j.deps)]
        for job in reusable:   # finished by an earlier invocation: mark done before starting anything
            pending.remove(job)
            done.add(job.name)
            print(f"[{time.time() - t0:6.0f}s] reused {job.name}", flush=True)
        if reusable:
            continue
        ready = sorted((j for j in pending if all(d.name in done for d in j.deps)),
                       key=lambda j: j.priority)
        while ready and len(running) < workers:
            job = ready.pop(0)
            pending.remove(job)
            if job.done_if and os.path.exists(job.done_if):   # finished by an earlier invocation
                done.add(job.name)
                print(f"[{time.time() - t0:6.0f}s] reused {job.name}", flush=True)
                continue
            cmd = job.cmd() if callable(job.cmd) else job.cmd
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
            job.start = time.time()
            running[job.name] = (job, subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env,
                                                       stdout=open(job.log, "w"), stderr=subprocess.STDOUT))
        time.sleep(0.2)
        for name, (job, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode:
                raise RuntimeError(f"job '{name}' failed (exit status {proc.returncode}); see {job.log}")
            job.end = time.time()
            if job.after:
                job.after()
            if job.done_if and not os.path.exists(job.done_if):   # a marker: the job finished
                open(job.done_if, "w").close()
            done.add(name)
            print(f"[{time.time() - t0:6.0f}s] done {name} ({job.end - job.start:.0f}s; "
                  f"{len(done)}/{len(jobs)})", flush=True)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def count_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# -----------------------------------------------------------------------------
# the jobs of one (variant, seed)


def split_heldout(data, num_val):
    """toy_task's held-out problems -> val.jsonl (the first num_val) and test.jsonl (the rest)."""
    rows = [r for _, r in read_jsonl(os.path.join(data, "heldout", "test.jsonl"))]
    for name, part in (("val", rows[:num_val]), ("test", rows[num_val:])):
        with open(os.path.join(data, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


def evaluate_job(name, cfg, seed, model, bench, n, out_dir, deps, priority):
    cmd = python("evaluate.py", "--model", model, "--data", bench, "--num-samples", n, "--temperature", "0.6",
                 "--top-p", "0.95", "--max-new-tokens", cfg["max_new_tokens"], "--prompt-template", "raw",
                 "--batch-size", cfg["eval_batch"], "--seed", seed, "--grading-workers", "1", "--output-dir", out_dir)
    return Job(name, cmd, os.path.join(out_dir + ".log"), deps, priority, done_if=os.path.join(out_dir, "summary.json"))


def stage2_job(name, cfg, seed, base, data, run_dir, loss_args, deps, save_every=0, lr=None, priority=3):
    extra = ["--max-steps", cfg["max_stage2_steps"]] if "max_stage2_steps" in cfg else []
    cmd = python("train_redi.py", "--model", os.path.join(base, "sft", "final"), "--data",
                 os.path.join(data, "pairs.jsonl"), "--output-dir", run_dir, *loss_args,
                 *(["--lr", lr] if lr else []), "--epochs", "1", "--global-batch-size", cfg["stage2_batch"],
                 "--micro-batch-size", cfg["stage2_batch"], "--layout", "padded", "--save-every", save_every, "--keep-last", "0",
                 "--seed", seed, "--no-progress", *extra)
    return Job(name, cmd, os.path.join(run_dir, "train.log"), deps, priority, done_if=os.path.join(run_dir, "job.done"))


def seed_jobs(out, variant, seed, cfg, extras, rank=None):
    """Every job of one (variant, seed), and a plan of what to read back: {"curve", "methods"}.

    Priorities (lower runs first among ready jobs): the first seed's headline rows, its alpha 1.0 row,
    curve and stability runs; then the second seed's headline rows; then the first seed's DPO/SimPO
    grids; then the third seed; the alpha sweep last. A run cut short thus has complete rows.
    """
    rank = 0 if extras else (1 if rank is None else rank)
    base_priority = {0: 0, 1: 10, 2: 20}.get(rank, 10 * rank + 20)
    base = os.path.join(out, variant, f"seed{seed}")
    data, init, sft = (os.path.join(base, d) for d in ("data", "init", "sft"))
    tag = f"{variant}/s{seed}"
    val, test = os.path.join(data, "val.jsonl"), os.path.join(data, "test.jsonl")
    gen = Job(f"{tag} data", python("toy_task.py", "--variant", variant, "--out-dir", os.path.join(data, "heldout"),
                                    "--num-problems", cfg.get(f"num_problems_{variant}", cfg["num_problems"]),
                                    "--num-test", cfg["num_val"] + cfg["num_test"],
                                    "--seed", seed), os.path.join(data, "toy_task.log"), priority=base_priority,
              after=lambda: split_heldout(data, cfg["num_val"]), done_if=test)
    model = Job(f"{tag} init", python("tiny_model.py", "--out", init, "--corpus", os.path.join(data, "heldout", "raw.jsonl"),
                                      "--vocab-size", cfg["vocab"], "--hidden-size", cfg["hidden"], "--num-layers",
                                      cfg["layers"], "--num-heads", cfg["heads"], "--num-kv-heads", cfg["kv_heads"],
                                      "--seed", seed, "--system-prompt", SYSTEM_PROMPT),
                os.path.join(data, "init.log"), [gen], priority=base_priority + 1, done_if=os.path.join(init, "model.safetensors"))
    curate = Job(f"{tag} curate", python("curate.py", "--raw", os.path.join(data, "heldout", "raw.jsonl"),
                                         "--sft-out", os.path.join(data, "sft.jsonl"), "--pairs-out",
                                         os.path.join(data, "pairs.jsonl"), "--tokenizer", init, "--seed", seed),
                 os.path.join(data, "curate.log"), [model], priority=base_priority + 1,
                 done_if=os.path.join(data, "sft.summary.json"))

    def stage1_cmd():
        steps_per_epoch = math.ceil(count_lines(os.path.join(data, "sft.jsonl")) / cfg["sft_batch"])
        return python("train_sft.py", "--model", init, "--data", os.path.join(data, "sft.jsonl"), "--output-dir", sft,
                      "--epochs", cfg["sft_epochs"], "--lr", cfg["sft_lr"], "--global-batch-size", cfg["sft_batch"],
                      "--micro-batch-size", cfg["sft_batch"], "--layout", "padded", "--save-every", steps_per_epoch * cfg["curve_every"],
                      "--keep-last", "0", "--seed", seed, "--no-progress",
                      *(["--resume"] if os.path.exists(os.path.join(sft, "checkpoints", "latest")) else []))
    stage1 = Job(f"{tag} stage 1", stage1_cmd, os.path.join(sft, "train.log"), [curate], priority=base_priority + 2,
                 done_if=os.path.join(sft, "job.done"))
    jobs = [gen, model, curate, stage1]
    plan = {"base": base, "curve": [], "methods": {}, "stability": {}}
    # The stage-1 checkpoints' steps follow from the SFT count, known after curation: each curve
    # job builds its command when it starts.
    n_curve = cfg["sft_epochs"] // cfg["curve_every"] if extras else 0   # the curve: first seed only
    for i in range(1, n_curve + 1):
        out_dir = os.path.join(sft, "evals", f"epoch-{i * cfg['curve_every']:03d}")

        def cmd(i=i, out_dir=out_dir):
            steps_per_epoch = math.ceil(count_lines(os.path.join(data, "sft.jsonl")) / cfg["sft_batch"])
            step = min(i * cfg["curve_every"] * steps_per_epoch,
                       int(open(os.path.join(sft, "checkpoints", "latest")).read().strip().split("-")[-1]))
            ckpt = os.path.join(sft, "checkpoints", f"step-{step:07d}")
            return evaluate_job("", cfg, seed, ckpt, val, cfg["val_n"], out_dir, [], 0).cmd
        job = Job(f"{tag} stage-1 curve epoch {i * cfg['curve_every']}", cmd, out_dir + ".log", [stage1], priority=4.5,
                  done_if=os.path.join(out_dir, "summary.json"))
        jobs.append(job)
        last_curve = job
        plan["curve"].append((i * cfg["curve_every"], out_dir))
    stage1_test = evaluate_job(f"{tag} stage 1 test", cfg, seed, os.path.join(sft, "final"), test, cfg["test_n"],
                               os.path.join(sft, "evals", "test"), [stage1], base_priority + 4)
    jobs.append(stage1_test)
    plan["stage1_test"] = os.path.join(sft, "evals", "test")

    methods = dict(HEADLINE, **(dict(METHODS, **ALPHA_SWEEP) if extras else {}))
    if cfg.get("one_setting"):   # smoke: every kind of job once, not every grid point
        methods = {m: settings[:1] for m, settings in methods.items() if m != "redi_0.5"}
    for method, settings in methods.items():
        # the headline rows first, then alpha 1.0, then the grids; the sweep last
        prio = (base_priority + 3 if method in HEADLINE else 5 if method == "redi_1.0"
                else 25 if method in ALPHA_SWEEP else 15)
        val_jobs, entries = [], []
        for k, (label, loss_args) in enumerate(settings):
            run_dir = os.path.join(base, "stage2", f"{method}-{k}")
            train = stage2_job(f"{tag} {method} [{label}]", cfg, seed, base, data, run_dir, loss_args, [stage1],
                               priority=prio)
            jobs.append(train)
            val_jobs.append(train)
            if len(settings) > 1:   # a validation eval only where there is something to pick
                ev = evaluate_job(f"{tag} {method} [{label}] val", cfg, seed, os.path.join(run_dir, "final"), val,
                                  cfg["val_n"], os.path.join(run_dir, "evals", "val"), [train], prio + 0.5)
                jobs.append(ev)
                val_jobs.append(ev)
            entries.append({"label": label, "run": run_dir})
        test_dir = os.path.join(base, "stage2", f"{method}-test")

        def test_cmd(entries=entries, test_dir=test_dir):
            best = pick_by_validation(entries)
            return evaluate_job("", cfg, seed, os.path.join(best["run"], "final"), test, cfg["test_n"], test_dir,
                                [], 0).cmd
        jobs.append(Job(f"{tag} {method} test", test_cmd, test_dir + ".log", val_jobs, priority=prio + 0.8,
                        done_if=os.path.join(test_dir, "summary.json")))
        plan["methods"][method] = {"settings": entries, "test": test_dir}

    if extras:   # (c): high learning rate, a checkpoint every few steps, each evaluated on validation
        for name, loss_args in list(STABILITY.items())[:1 if cfg.get("one_setting") else None]:
            run_dir = os.path.join(base, "stage2", name)

            def save_every():
                pairs = count_lines(os.path.join(data, "pairs.jsonl"))
                steps = min(math.ceil(pairs / cfg["stage2_batch"]), cfg.get("max_stage2_steps", 10 ** 9))
                return max(1, steps // cfg["stability_saves"])
            train = Job(f"{tag} {name}", lambda run_dir=run_dir, loss_args=loss_args, se=save_every: stage2_job(
                "", cfg, seed, base, data, run_dir, loss_args, [], save_every=se(), lr=cfg["stability_lr"]).cmd,
                os.path.join(run_dir, "train.log"), [stage1], priority=6, done_if=os.path.join(run_dir, "job.done"))
            jobs.append(train)
            jobs.append(Job(f"{tag} {name} evals", python(os.path.join("replicate.py"), "--eval-checkpoints", run_dir,
                                                          val, str(cfg["val_n"]), str(seed), json.dumps(cfg)),
                            os.path.join(run_dir, "evals.log"), [train, last_curve], priority=6.5,
                            done_if=os.path.join(run_dir, "evals", "done")))
            plan["stability"][name] = run_dir
    return jobs, plan


def pick_by_validation(entries):
    """The setting with the highest validation pass@1 (first one on a tie); the only one if one."""
    if len(entries) == 1:
        return entries[0]

    def val(e):
        return read_json(os.path.join(e["run"], "evals", "val", "summary.json"))["benchmarks"]["val"]["pass@1"]
    return max(entries, key=val)


def eval_checkpoints_main(run_dir, bench, n, seed, cfg):
    """(c)'s evaluations: every checkpoint of a stage-2 run, one after another, into <run>/evals/step-N
    (plot.py's layout), step 0 being the stage-1 model's validation eval (copied)."""
    import shutil
    cfg = json.loads(cfg)
    base = os.path.dirname(os.path.dirname(run_dir))
    stage1_val = sorted(d for d in os.listdir(os.path.join(base, "sft", "evals"))
                        if d.startswith("epoch-") and not d.endswith(".log"))[-1]
    shutil.copytree(os.path.join(base, "sft", "evals", stage1_val), os.path.join(run_dir, "evals", "step-0000000"),
                    dirs_exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for ckpt in sorted(d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("step-")):
        cmd = evaluate_job("", cfg, int(seed), os.path.join(run_dir, "checkpoints", ckpt), bench, int(n),
                           os.path.join(run_dir, "evals", ckpt), [], 0).cmd
        subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=True)
    open(os.path.join(run_dir, "evals", "done"), "w").close()
    return 0


# -----------------------------------------------------------------------------
# reading the results back


def eval_metrics(eval_dir, bench_file):
    """pass@1, its SEM over samples, pass@k and the path statistics of one evaluate.py output dir."""
    summary = read_json(os.path.join(eval_dir, "summary.json"))
    name = os.path.splitext(os.path.basename(bench_file))[0]
    m = summary["benchmarks"][name]
    paths = paths_of(eval_dir, bench_file)
    return {"pass@1": m["pass@1"], "sem": m["sem"], "pass@k": m["pass@k"], "n_problems": m["n_problems"],
            "n_samples": m["n_samples"], **{k: paths[k] for k in ("guess_share", "guess_accuracy", "work_accuracy")},
            "labels": paths["labels"]}


def collect(plan):
    """Everything one (variant, seed) measured, as plain numbers."""
    data = os.path.join(plan["base"], "data")
    val, test = os.path.join(data, "val.jsonl"), os.path.join(data, "test.jsonl")
    task = read_json(os.path.join(data, "heldout", "task.json"))["counts"]
    res = {"task": {k: task.get(k, 0) for k in ("positives", "negatives", "guesses", "lucky_guesses",
                                                 "expected_sft_examples", "expected_pairs")},
           "curve": [(epoch, eval_metrics(d, val)["pass@1"]) for epoch, d in plan["curve"]
                     if os.path.exists(os.path.join(d, "summary.json"))],
           "stage1": eval_metrics(plan["stage1_test"], test), "methods": {}}
    for method, info in plan["methods"].items():
        if not os.path.exists(os.path.join(info["test"], "summary.json")):
            print(f"not finished, left out of the tables: {plan['base']} {method}")
            continue
        settings = [{"label": e["label"], "val": eval_metrics(os.path.join(e["run"], "evals", "val"), val)["pass@1"]
                     if len(info["settings"]) > 1 else None} for e in info["settings"]]
        best = pick_by_validation(info["settings"])
        res["methods"][method] = {"settings": settings, "picked": best["label"],
                                  "test": eval_metrics(info["test"], test)}
    return res


def mean_sem(values):
    """Mean and SEM over seeds (std with ddof 1 / sqrt(S)); SEM None for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def fmt(mean, sem, scale=100.0):
    if mean is None:
        return "-"
    return f"{scale * mean:.1f}" + (f" +- {scale * sem:.1f}" if sem is not None else "")


ROW_NAMES = {"stage1": "stage 1 (SFT)", "redi_0.8": "REDI alpha 0.8", "redi_1.0": "REDI alpha 1.0 (symmetric)",
             "dpo": "DPO (grid, picked on val)", "simpo": "SimPO (grid, picked on val)",
             "sft_control": "SFT control (chosen only)", "redi_0.2": "REDI alpha 0.2", "redi_0.5": "REDI alpha 0.5"}


def headline_table(per_seed):
    """Rows over seeds: pass@1 and pass@k (mean +- SEM over seeds), path shares and accuracies."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]["stage1"]
    ks = [k for k in first["pass@k"] if k != "1"]
    head = (["model", "seeds", "pass@1 (%)"] + [f"pass@{k} (%)" for k in ks]
            + ["guess share (%)", "acc. of guesses (%)", "acc. when working (%)", "setting picked on val"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = ["stage1"] + [m for m in ROW_NAMES if m != "stage1" and m in per_seed[seeds[0]]["methods"]]
    for row in rows:
        got = [(per_seed[s]["stage1"] if row == "stage1" else per_seed[s]["methods"][row]["test"]) for s in seeds
               if row == "stage1" or row in per_seed[s]["methods"]]
        picked = "" if row == "stage1" else "; ".join(
            per_seed[s]["methods"][row]["picked"] for s in seeds if row in per_seed[s]["methods"])
        if len(got) == 1:   # one seed: the SEM over samples
            p1 = fmt(got[0]["pass@1"], got[0]["sem"]) + " (over samples)"
        else:
            p1 = fmt(*mean_sem([g["pass@1"] for g in got]))
        cells = [ROW_NAMES[row], str(len(got)), p1]
        cells += [fmt(*mean_sem([g["pass@k"][k] for g in got])) for k in ks]
        cells += [fmt(*mean_sem([g[key] for g in got])) for key in ("guess_share", "guess_accuracy", "work_accuracy")]
        cells.append(picked)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(per_seed):
    """Per-seed test pass@1 differences, mean +- SEM over seeds."""
    seeds = sorted(per_seed)

    def p1(s, row):
        return per_seed[s]["stage1"]["pass@1"] if row == "stage1" else per_seed[s]["methods"][row]["test"]["pass@1"]
    pairs = [("redi_0.8", "stage1"), ("redi_0.8", "sft_control"), ("sft_control", "stage1"), ("redi_0.8", "redi_1.0"),
             ("redi_0.8", "dpo"), ("redi_0.8", "simpo")]
    lines = ["| difference (pass@1, points) | seeds | mean +- SEM over seeds | per seed |", "|---|---|---|---|"]
    for a, b in pairs:
        both = [s for s in seeds if all(r == "stage1" or r in per_seed[s]["methods"] for r in (a, b))]
        diffs = [p1(s, a) - p1(s, b) for s in both]
        if not diffs:
            continue
        mean, sem = mean_sem(diffs)
        if sem is None:   # one seed: the two models' SEMs over samples, combined
            sem = math.hypot(*(per_seed[both[0]]["stage1"]["sem"] if r == "stage1"
                               else per_seed[both[0]]["methods"][r]["test"]["sem"] for r in (a, b)))
        lines.append(f"| {ROW_NAMES[a]} - {ROW_NAMES[b]} | {len(both)}{' (SEM over samples)' if len(both) == 1 else ''} | {fmt(mean, sem)} | "
                     + ", ".join(f"{100 * d:+.1f}" for d in diffs) + " |")
    return "\n".join(lines)


def grid_table(per_seed):
    """Validation pass@1 of every stage-2 setting, per seed (what the selection saw)."""
    seeds = sorted(per_seed)
    lines = ["| method | setting | " + " | ".join(f"val pass@1 seed {s} (%)" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for method in per_seed[seeds[0]]["methods"]:
        if len(per_seed[seeds[0]]["methods"][method]["settings"]) < 2:
            continue
        for k, setting in enumerate(per_seed[seeds[0]]["methods"][method]["settings"]):
            vals = [per_seed[s]["methods"][method]["settings"][k]["val"] if method in per_seed[s]["methods"] else None
                    for s in seeds]
            lines.append(f"| {method} | {setting['label']} | "
                         + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def stability_table(plan):
    """(c): per high-lr run, LogPS and update size at start / end, and validation pass@1 per checkpoint."""
    lines = ["| run (lr {lr}) | chosen LogPS first -> last step | rejected LogPS first -> last | max update norm "
             "| val pass@1 (%) by checkpoint (step 0 = stage 1) |", "|---|---|---|---|---|"]
    for name, run_dir in plan["stability"].items():
        if not os.path.exists(os.path.join(run_dir, "evals", "done")):
            continue
        steps = [r for _, r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "step" in r and "logps/chosen" in r]
        evals = sorted(d for d in os.listdir(os.path.join(run_dir, "evals")) if d.startswith("step-"))
        acc = [f"{int(d[5:])}: {100 * read_json(os.path.join(run_dir, 'evals', d, 'summary.json'))['benchmarks']['val']['pass@1']:.1f}"
               for d in evals]
        lines.append(f"| {name} | {steps[0]['logps/chosen']:.3f} -> {steps[-1]['logps/chosen']:.3f} | "
                     f"{steps[0]['logps/rejected']:.3f} -> {steps[-1]['logps/rejected']:.3f} | "
                     f"{max(r['optim/update_norm'] for r in steps):.3g} | {', '.join(acc)} |")
    return "\n".join(lines)


def curve_table(results):
    lines = ["| variant | epoch: validation pass@1 (%), mean over seeds (seeds) |", "|---|---|"]
    for variant, per_seed in results.items():
        seeds = sorted(s for s in per_seed if per_seed[s]["curve"])
        if not seeds:
            continue
        epochs = [e for e, _ in per_seed[seeds[0]]["curve"]]
        cells = [f"{e}: {fmt(*mean_sem([dict(per_seed[s]['curve'])[e] for s in seeds]))}" for e in epochs]
        lines.append(f"| {variant} | {'; '.join(cells)} ({len(seeds)}) |")
    return "\n".join(lines)


def draw_figures(out, results, plans):
    """fig_stage1.png (Figure 2), fig_alpha.png (Appendix D.1); plot.py draws fig_dynamics_<variant>."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: figures skipped")
        return
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    for variant, per_seed in results.items():
        for s, r in sorted(per_seed.items()):
            if not r["curve"]:
                continue
            ax.plot(*zip(*[(e, 100 * a) for e, a in r["curve"]]), marker="o", ms=3,
                    label=f"{variant} seed {s}", alpha=0.8)
    ax.set(xlabel="stage-1 epoch", ylabel="validation pass@1 (%)", title="Stage 1 to its plateau")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig_stage1.png"))
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    for variant, per_seed in results.items():
        first = per_seed[min(per_seed)]
        alphas = [a for a in ("0.2", "0.5", "0.8", "1.0") if f"redi_{a}" in first["methods"]]
        if len(alphas) < 2:
            continue
        acc = [first["methods"][f"redi_{a}"]["test"] for a in alphas]
        ax.errorbar([float(a) for a in alphas], [100 * m["pass@1"] for m in acc], [100 * m["sem"] for m in acc],
                    marker="o", capsize=3, label=f"{variant} (seed {min(per_seed)})")
        ax.axhline(100 * first["stage1"]["pass@1"], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set(xlabel="alpha", ylabel="test pass@1 (%)", title="REDI alpha sweep (dotted: stage 1)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig_alpha.png"))
    plt.close("all")


def report(out, results, plans, args, wall):
    parts = [f"# Replication ({'smoke' if args.smoke else 'full'}): variants {args.variants}, seeds {args.seeds}, "
             f"{args.jobs} jobs at a time\n\nwall time: {wall:.0f}s\n",
             "## Stage 1 to its plateau (validation)\n\n" + curve_table(results)]
    for variant, per_seed in results.items():
        t = per_seed[min(per_seed)]["task"]
        parts.append(f"## Variant `{variant}`\n\nseed {min(per_seed)} data: {t}\n\n### Test split (picked on validation)\n\n"
                     + headline_table(per_seed) + "\n\n### Differences\n\n" + differences_table(per_seed)
                     + "\n\n### Validation pass@1 of every setting\n\n" + grid_table(per_seed))
        if plans[variant][min(per_seed)]["stability"]:
            parts.append(f"### Stability at a high learning rate (seed {min(per_seed)})\n\n"
                         + stability_table(plans[variant][min(per_seed)]).replace("{lr}", str(CONFIGS["smoke" if args.smoke else "full"]["stability_lr"])))
    text = "\n\n".join(parts) + "\n"
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


# -----------------------------------------------------------------------------
# main


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--eval-checkpoints":
        return eval_checkpoints_main(*sys.argv[2:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so run_jobs' finally stops the jobs
    cfg = CONFIGS["smoke" if args.smoke else "full"]
    with exit_on_input_error("replicate.py"):
        out = os.path.abspath(make_output_dir(args.out, f"--out {args.out}"))
    t0 = time.time()
    jobs, plans = [], {}
    for variant in args.variants:
        for i, seed in enumerate(args.seeds):
            js, plan = seed_jobs(out, variant, seed, cfg, extras=(i == 0), rank=i)
            jobs += js
            plans.setdefault(variant, {})[seed] = plan
    print(f"replicate.py: {len(jobs)} jobs, {args.jobs} at a time, into {out}", flush=True)
    try:
        if not args.report_only:
            run_jobs(jobs, args.jobs, t0)
    except RuntimeError as e:
        print(f"replicate.py: error: {e}", file=sys.stderr, flush=True)
        return 1
    finished = {v: {s: p for s, p in per.items() if os.path.exists(os.path.join(p["stage1_test"], "summary.json"))}
                for v, per in plans.items()}
    for v, per in plans.items():
        for s in sorted(set(per) - set(finished[v])):
            print(f"not finished, left out of the tables: {v} seed {s} (no stage-1 test evaluation)")
    results = {v: {s: collect(p) for s, p in per.items()} for v, per in finished.items() if per}
    for variant, per in plans.items():
        if variant not in results:
            continue
        stab = {k: v for k, v in per[args.seeds[0]]["stability"].items()
                if os.path.exists(os.path.join(v, "evals", "done"))}
        if stab:
            subprocess.run(python("plot.py", *stab.values(), "--benchmark", "val",
                                  "--out", os.path.join(out, f"dynamics_{variant}")), cwd=ROOT, check=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    draw_figures(out, results, plans)
    wall = time.time() - t0
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "config": cfg, "wall_time_s": wall,
                   "job_times_s": {j.name: round(j.end - j.start, 1) for j in jobs if j.end},
                   "results": results}, f, indent=1)
    report(out, results, plans, args, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
