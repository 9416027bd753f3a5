"""Is REDI better than DPO and SimPO when each is tuned as well? The paper's comparison on the
built-in task, both variants, 5 seeds, equal budgets, on a 2-core CPU.

    python -m toy.replicate --plan           # print the jobs and their estimated job-seconds, run nothing
    python -m toy.replicate                  # the full run (RESULTS.md: command, wall time, tables)
    python -m toy.replicate --smoke          # tiny sizes, every kind of job (tests/test_replicate.py)
    python -m toy.replicate --variants guess --seeds 0 1 --out runs/rep_guess

Per variant (`slips`: every negative a slip, the null case; `guess`: failed guesses dominate the
negatives, the paper's premise) and seed: stage 1 (train_sft.py) with a validation curve and a plateau
rule; stage 2 (train_redi.py) for five methods (REDI, REDI alpha 1.0, DPO, SimPO, an SFT control) with
equal budgets: the same number of settings each, learning rates centred by a pilot, the setting picked
on validation and only it evaluated on test. A row is the mean over seeds +- SEM; differences are
paired over seeds (t-test and exact sign-flip test). Every stage is the project's own CLI, --jobs at a
time, each a fork of this process with the libraries imported once (toy/prefork.py; --no-fork: fresh
interpreters); a rerun with the same --out reuses every finished job.
The rules in full, the outputs and the statistics: docs/replication.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

from cli import exit_on_input_error, make_output_dir, read_jsonl
from demo import paths_of, python
from toy import prefork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository: the jobs run there
SYSTEM_PROMPT = "Box the answer."

# Sizes. "full": the informative-negatives probe's recipe (../shared/notes, Probe E: hidden 128 x 4,
# ~4,000 problems, stage 1 at lr 2e-3, batch 32) with stage 1 longer: `guess` 28 epochs (its earlier
# 20-epoch run was still rising on validation: 66.0 -> 79.0 from epoch 16 to 20, seed 0), `slips` 36
# (its 24-epoch stage 1 of 2026-12-05 failed the length check: a 32-epoch run +4.3 +- 1.8). The guess variant's
# (`guess` trained on 3,800 while its form was `ab-c`, ~4,450 problems in all; its `ab+cd-ef` form has ~23,000,
# so both variants train on 4,000.) "smoke" only proves every job runs.
# est: seconds per job kind on the 2-core box, one job per core, forked (the means of the 2026-12-06 run from scratch).
CONFIGS = {
    "full": {"num_problems": 4000, "num_problems_guess": 4000, "num_val": 150, "num_test": 300, "hidden": 128,
             "layers": 4, "heads": 4, "kv_heads": 2, "vocab": 512, "sft_epochs": {"slips": 36, "guess": 28},
             "sft_lr": 2e-3, "sft_batch": 32, "curve_every": 4, "stage2_batch": 32, "val_n": 2, "test_n": 4,
             "max_new_tokens": 64, "eval_batch": 300,
             "pilot_lrs": (1e-5, 3e-5, 1e-4), "settings_per_method": 4,
             "est": {"prepare": 1, "stage1_problem_epoch": {"slips": 0.0069, "guess": 0.009}, "stage2": 21.4,
                     "stage2_dpo": 22.7, "val": 2.1, "test": 5.5}},
    "smoke": {"num_problems": 120, "num_val": 8, "num_test": 8, "hidden": 32, "layers": 1, "heads": 2,
              "kv_heads": 1, "vocab": 400, "sft_epochs": {"slips": 2, "guess": 2}, "sft_lr": 1e-3, "sft_batch": 16,
              "curve_every": 1, "stage2_batch": 8, "val_n": 1, "test_n": 2, "max_new_tokens": 24,
              "eval_batch": 64, "max_stage2_steps": 2, "pilot_lrs": (1e-4,), "settings_per_method": 2,
              "est": {"prepare": 8, "stage1_problem_epoch": {"slips": 0.01, "guess": 0.01}, "stage2": 4, "stage2_dpo": 5,
                      "val": 3, "test": 3}},
}
LR_LATTICE = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
# method -> its knobs other than the learning rate: [(label, train_redi.py arguments)]. The first knob is the
# pilot's. Each method gets settings_per_method settings: len(knobs) x (settings_per_method / len(knobs)) rates.
METHODS = {
    "redi": [("alpha 0.8", ["--loss", "redi", "--alpha", "0.8"]), ("alpha 0.5", ["--loss", "redi", "--alpha", "0.5"])],
    "redi_sym": [("alpha 1.0", ["--loss", "redi", "--alpha", "1.0"])],
    "dpo": [("beta 0.1", ["--loss", "dpo", "--beta", "0.1", "--precompute-ref"]),
            ("beta 0.01", ["--loss", "dpo", "--beta", "0.01", "--precompute-ref"])],
    "simpo": [("beta 2 gamma 1", ["--loss", "simpo", "--beta", "2", "--gamma", "1"]),
              ("beta 2.5 gamma 0.75", ["--loss", "simpo", "--beta", "2.5", "--gamma", "0.75"])],
    "sft_control": [("sft", ["--loss", "sft"])],
}
ROW_NAMES = {"stage1": "stage 1 (SFT, plateau checkpoint)", "redi": "REDI (alpha 0.8 / 0.5)",
             "redi_sym": "REDI alpha 1.0 (symmetric)", "dpo": "DPO", "simpo": "SimPO",
             "sft_control": "SFT control (chosen only)"}
# the differences reported, each as a - b: the paper's orderings (a > b: REDI over DPO, SimPO, the symmetric
# objective and stage 1; DPO and SimPO over stage 1; Table 2, Sections 4-5) and the SFT control (not in the paper)
COMPARISONS = [("redi", "dpo"), ("redi", "simpo"), ("redi", "redi_sym"), ("redi", "sft_control"),
               ("redi", "stage1"), ("dpo", "stage1"), ("simpo", "stage1"), ("redi_sym", "stage1"),
               ("sft_control", "stage1")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/replicate", help="run directory (everything goes here)")
    p.add_argument("--variants", nargs="+", default=["slips", "guess"], choices=["slips", "guess"],
                   help="toy_task.py variants to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds (data, initialisation, order, sampling); the first also runs the pilot")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="stage-2 methods to run (default: all; the tables compare those present)")
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (one core each)")
    p.add_argument("--no-fork", action="store_true",
                   help="run each job as a fresh python (default: a fork of this process with the jobs' "
                        "libraries imported once, ~3 s less per job; toy/prefork.py)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: every kind of job, for the tests")
    p.add_argument("--plan", action="store_true", help="print the jobs and their estimated job-seconds, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="run no job: read a finished --out back and write the tables and figures again")
    args = p.parse_args(argv)
    if args.jobs < 1 or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--jobs must be >= 1 and --seeds distinct and >= 0, got {args.jobs} and {args.seeds}")
    return args


# -----------------------------------------------------------------------------
# jobs: a small dependency-graph scheduler over the project's CLIs


class Job:
    """A command, its log and a marker path that exists once it has finished. Each of the three may be
    a function, called once the job's deps are done (what a job runs can depend on their results); a
    command None means there is nothing to do. `after` runs in this process when the command succeeds."""

    def __init__(self, name, cmd, log, deps=(), priority=9, after=None, done_if=None, kind="other"):
        self.name, self.cmd, self.log, self.deps, self.priority, self.after = name, cmd, log, list(deps), priority, after
        self.done_if, self.kind = done_if, kind   # done_if: a rerun reuses the job if this path exists
        self.start = self.end = None
        self.resolved = False

    def resolve(self):
        if not self.resolved:
            self.cmd, self.log, self.done_if = (v() if callable(v) else v for v in (self.cmd, self.log, self.done_if))
            self.resolved = True


def run_jobs(jobs, workers, t0, fork=True):
    """Run every job, `workers` at a time, ready jobs by (priority, order); stop all on a failure. fork: each
    job is a fork of this process with the jobs' libraries imported once (toy/prefork.py), not a fresh python."""
    pending, running, done = list(jobs), {}, set()
    job_env = {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env = dict(os.environ, **job_env)
    fork = fork and hasattr(os, "fork")
    if fork:
        os.environ.update(job_env)   # libraries read some of these when imported (libgomp, huggingface_hub)
        print(f"[{time.time() - t0:6.0f}s] preloaded the jobs' libraries in {prefork.preload():.1f}s", flush=True)
    try:
        _run(pending, running, done, jobs, workers, t0, env, fork)
    finally:   # an error or a kill of this script: leave no job running
        for _, proc in running.values():
            proc.kill()


def _run(pending, running, done, jobs, workers, t0, env, fork):
    while pending or running:
        ready = sorted((j for j in pending if all(d.name in done for d in j.deps)), key=lambda j: j.priority)
        for job in ready:
            job.resolve()
        finished = [j for j in ready if j.cmd is None or (j.done_if and os.path.exists(j.done_if))]
        for job in finished:   # nothing to do, or finished by an earlier invocation
            pending.remove(job)
            done.add(job.name)
            print(f"[{time.time() - t0:6.0f}s] {'skipped' if job.cmd is None else 'reused'} {job.name}", flush=True)
        if finished:
            continue
        while ready and len(running) < workers:
            job = ready.pop(0)
            pending.remove(job)
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
            job.start = time.time()
            cmd = [str(c) for c in job.cmd]
            if fork:
                proc = prefork.ForkedScript(cmd, ROOT, env, job.log)
            else:
                with open(job.log, "w") as log:
                    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[job.name] = (job, proc)
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
# the rules: stage 1's plateau, the pilot's centre, a method's grid, the pick on validation


def plateau_index(curve):
    """curve: [(epoch, val pass@1, its SEM over samples), ...] in epoch order. The first checkpoint that no
    later checkpoint beats by more than its SEM; the last one if none earlier qualifies."""
    for i, (_, p, sem) in enumerate(curve):
        if all(q <= p + (sem or 0.0) for _, q, _ in curve[i + 1:]):
            return i
    raise ValueError("empty curve")


def next_lattice_rate(tried):
    """The pilot's edge rule: {lr: val pass@1} -> the LR_LATTICE rate beyond the edge the best rate sits
    on (None if the best is inside the tried range, or at the lattice's own end)."""
    lrs = sorted(tried)
    best = max(lrs, key=lambda lr: (tried[lr], -lr))   # a tie goes to the smaller rate
    i = LR_LATTICE.index(best)
    if best == lrs[-1] and i + 1 < len(LR_LATTICE):
        return LR_LATTICE[i + 1]
    if best == lrs[0] and i > 0:
        return LR_LATTICE[i - 1]
    return None


def grid_rates(tried, n):
    """The n LR_LATTICE rates nearest the pilot's best (by lattice steps), ties toward the side whose
    pilot neighbour scored higher (an untried neighbour counts as lowest); sorted."""
    best = max(tried, key=lambda lr: (tried[lr], -lr))
    i = LR_LATTICE.index(best)

    def score(j):
        return tried.get(LR_LATTICE[j], -1.0) if 0 <= j < len(LR_LATTICE) else -2.0
    up = score(i + 1) >= score(i - 1)
    order = sorted(range(len(LR_LATTICE)), key=lambda j: (abs(j - i), (j < i) if up else (j > i)))
    return sorted(LR_LATTICE[j] for j in order[:n])


def test_dir_of(setting):
    """A picked setting's test evaluation, inside its run: a changed pick is a new evaluation."""
    return os.path.join(setting[1], "evals", "test")


def methods_of(cfg):
    """The stage-2 methods this run compares (--methods; all of METHODS by default), in METHODS' order."""
    return cfg.get("methods", list(METHODS))


def pick_setting(settings):
    """The setting with the highest validation pass@1 (first one on a tie: max keeps the first maximum)."""
    return max(settings, key=lambda s: val_pass1(s[1]))


def on_rate_edge(rates, lr):
    """Whether lr is the smallest or the largest of two or more distinct rates."""
    rates = sorted(set(rates))
    return len(rates) > 1 and lr in (rates[0], rates[-1])


def edge_rate(rates, picked_lr):
    """The grid's edge rule: the LR_LATTICE rate one step beyond the grid's rates on the side where the
    picked rate sits on their edge; None if it sits inside, at the lattice's end, or the grid has one rate."""
    rates = sorted(set(rates))
    i = LR_LATTICE.index(picked_lr)
    if not on_rate_edge(rates, picked_lr):
        return None
    if picked_lr == rates[-1] and i + 1 < len(LR_LATTICE):
        return LR_LATTICE[i + 1]
    if picked_lr == rates[0] and i > 0:
        return LR_LATTICE[i - 1]
    return None


def val_pass1(run_dir):
    return read_json(os.path.join(run_dir, "evals", "val", "summary.json"))["benchmarks"]["val"]["pass@1"]


def lr_label(lr):
    return f"{lr:.0e}".replace("e-0", "e-")


# -----------------------------------------------------------------------------
# the jobs of one (variant, seed)


class SeedPlan:
    """Paths and rules of one (variant, seed); `pilot` is the first seed's plan of the same variant."""

    def __init__(self, out, variant, seed, cfg, pilot=None):
        self.variant, self.seed, self.cfg = variant, seed, cfg
        self.base = os.path.join(out, variant, f"seed{seed}")
        self.data, self.init, self.sft = (os.path.join(self.base, d) for d in ("data", "init", "sft"))
        self.val, self.test = os.path.join(self.data, "val.jsonl"), os.path.join(self.data, "test.jsonl")
        self.epochs = cfg["sft_epochs"][variant]
        self.curve_epochs = list(range(cfg["curve_every"], self.epochs + 1, cfg["curve_every"]))
        self.longer_epochs = cfg["curve_every"] * round(self.epochs * 4 / 3 / cfg["curve_every"])
        self.longer = os.path.join(self.base, "sft_longer")
        self.pilot = pilot or self
        self.n_rates = {m: cfg["settings_per_method"] // len(knobs) for m, knobs in METHODS.items()}

    def steps_per_epoch(self):
        return math.ceil(count_lines(os.path.join(self.data, "sft.jsonl")) / self.cfg["sft_batch"])

    def checkpoint(self, epoch):
        return os.path.join(self.sft, "checkpoints", f"step-{epoch * self.steps_per_epoch():07d}")

    def curve_dir(self, epoch):
        return os.path.join(self.sft, "evals", f"epoch-{epoch:03d}")

    def curve(self):
        """[(epoch, val pass@1, SEM)] of the checkpoints evaluated so far."""
        out = []
        for e in self.curve_epochs:
            path = os.path.join(self.curve_dir(e), "summary.json")
            if os.path.exists(path):
                m = read_json(path)["benchmarks"]["val"]
                out.append((e, m["pass@1"], m["sem"]))
        return out

    def stage1_epoch(self):
        return self.curve()[plateau_index(self.curve())][0]

    def stage1_model(self):
        return self.checkpoint(self.stage1_epoch())

    def run_dir(self, method, knob, lr):
        slug = knob.replace(" ", "")
        return os.path.join(self.base, "stage2", f"{method}-{slug}-lr{lr_label(lr)}")

    def pilot_tried(self, method):
        """{lr: first seed's validation pass@1} of the pilot's finished runs of `method` (its first knob): the
        pilot rates, then the pilot's edge extension once they are all in. Only these: the first seed's grid
        and grid extension runs share the pilot's directories, and must not move the grid once they finish."""
        p, knob = self.pilot, METHODS[method][0][0]

        def score(lr):
            path = os.path.join(p.run_dir(method, knob, lr), "evals", "val", "summary.json")
            return read_json(path)["benchmarks"]["val"]["pass@1"] if os.path.exists(path) else None
        tried = {lr: v for lr, v in ((lr, score(lr)) for lr in self.cfg["pilot_lrs"]) if v is not None}
        ext = self.pilot_edge_rate(tried)
        ext_score = None if ext is None else score(ext)
        return tried if ext_score is None else {**tried, ext: ext_score}

    def pilot_edge_rate(self, tried):
        """The pilot's edge rule once every pilot rate has its score: the rate beyond the edge, or None."""
        pilot = {lr: v for lr, v in tried.items() if lr in self.cfg["pilot_lrs"]}
        return next_lattice_rate(pilot) if len(pilot) == len(self.cfg["pilot_lrs"]) else None

    def setting(self, method, knob, lr):
        """(label, run dir, train_redi args, lr, knob) of one stage-2 setting."""
        args = dict(METHODS[method])[knob]
        return (f"{knob} lr {lr_label(lr)}", self.run_dir(method, knob, lr), args, lr, knob)

    def settings(self, method):
        """This seed's grid (needs the pilot's results): [setting(...)], knob by knob."""
        rates = grid_rates(self.pilot_tried(method), self.n_rates[method])
        return [self.setting(method, knob, lr) for knob, _ in METHODS[method] for lr in rates]

    def extension(self, method, grid=None):
        """The per-seed edge rule (every method alike): the setting one LR_LATTICE step beyond the grid's rate
        edge, at the picked knob, when the grid's pick sits on that edge; else None (needs the grid's
        validation results)."""
        grid = grid or self.settings(method)
        best = pick_setting(grid)
        lr = edge_rate([s[3] for s in grid], best[3])
        return None if lr is None else self.setting(method, best[4], lr)

    def all_settings(self, method):
        """The grid and, where the edge rule fired, its extension (last): what the pick on validation chooses
        from."""
        grid = self.settings(method)
        ext = self.extension(method, grid)
        return grid + ([ext] if ext else [])

    def picked(self, method):
        return pick_setting(self.all_settings(method))

    def test_dir(self, method):
        return test_dir_of(self.picked(method))


def evaluate_cmd(cfg, seed, model, bench, n, out_dir):
    return python("evaluate.py", "--model", model, "--data", bench, "--num-samples", n, "--temperature", "0.6",
                  "--top-p", "0.95", "--max-new-tokens", cfg["max_new_tokens"], "--prompt-template", "raw",
                  "--batch-size", cfg["eval_batch"], "--seed", seed, "--grading-workers", "1", "--output-dir", out_dir)


def stage2_cmd(plan, run_dir, loss_args, lr):
    cfg = plan.cfg
    extra = ["--max-steps", cfg["max_stage2_steps"]] if "max_stage2_steps" in cfg else []
    return python("train_redi.py", "--model", plan.stage1_model(), "--data", os.path.join(plan.data, "pairs.jsonl"),
                  "--output-dir", run_dir, *loss_args, "--lr", lr, "--epochs", "1",
                  "--global-batch-size", cfg["stage2_batch"], "--micro-batch-size", cfg["stage2_batch"],
                  "--layout", "padded", "--save-every", "0", "--keep-last", "0", "--seed", plan.seed, "--no-progress",
                  *extra)


def setting_jobs(plan, tag, method, resolve, deps, priority):
    """A train job and its validation eval for one stage-2 setting; resolve() -> (label, run_dir, args, lr) or
    None (nothing to run)."""
    def train_cmd():
        got = resolve()
        return None if got is None else stage2_cmd(plan, got[1], got[2], got[3])

    def where(*parts):
        def f():
            got = resolve()
            return os.path.join(got[1], *parts) if got else os.path.join(plan.base, "stage2", "unused")
        return f
    kind = "stage2_dpo" if method == "dpo" else "stage2"
    train = Job(f"{tag} train", train_cmd, where("train.log"), deps, priority, done_if=where("job.done"), kind=kind)

    def val_cmd():
        got = resolve()
        return None if got is None else evaluate_cmd(plan.cfg, plan.seed, os.path.join(got[1], "final"), plan.val,
                                                     plan.cfg["val_n"], os.path.join(got[1], "evals", "val"))
    val = Job(f"{tag} val", val_cmd, where("evals", "val.log"), [train], priority + 0.5,
              done_if=where("evals", "val", "summary.json"), kind="val")
    return [train, val]


def seed_jobs(out, variant, seed, cfg, rank=0, pilot=None):
    """Every job of one (variant, seed) and its SeedPlan. rank 0 (the first seed) also runs the pilot; later
    seeds pass the first seed's (plan, pilot jobs) as `pilot`.

    Priorities (lower first among ready jobs): the first seed's stage 1, curve and pilot, then seed by seed;
    within a seed stage 1 before stage 2. A run cut short thus has whole seeds."""
    prio = 10 * rank
    plan = SeedPlan(out, variant, seed, cfg, pilot[0] if pilot else None)
    tag = f"{variant}/s{seed}"
    gen = Job(f"{tag} data", python("toy.toy_task", "--variant", variant, "--out-dir", os.path.join(plan.data, "heldout"),
                                    "--num-problems", cfg.get(f"num_problems_{variant}", cfg["num_problems"]),
                                    "--num-test", cfg["num_val"] + cfg["num_test"], "--seed", seed),
              os.path.join(plan.data, "toy_task.log"), priority=prio,
              after=lambda: split_heldout(plan.data, cfg["num_val"]), done_if=plan.test, kind="prepare")
    model = Job(f"{tag} init", python("toy.tiny_model", "--out", plan.init, "--corpus",
                                      os.path.join(plan.data, "heldout", "raw.jsonl"), "--vocab-size", cfg["vocab"],
                                      "--hidden-size", cfg["hidden"], "--num-layers", cfg["layers"], "--num-heads",
                                      cfg["heads"], "--num-kv-heads", cfg["kv_heads"], "--seed", seed,
                                      "--system-prompt", SYSTEM_PROMPT),
                os.path.join(plan.data, "init.log"), [gen], prio, done_if=os.path.join(plan.init, "model.safetensors"))
    curate = Job(f"{tag} curate", python("curate.py", "--raw", os.path.join(plan.data, "heldout", "raw.jsonl"),
                                         "--sft-out", os.path.join(plan.data, "sft.jsonl"), "--pairs-out",
                                         os.path.join(plan.data, "pairs.jsonl"), "--tokenizer", plan.init, "--seed", seed),
                 os.path.join(plan.data, "curate.log"), [model], prio, done_if=os.path.join(plan.data, "sft.summary.json"))

    def stage1_cmd(out_dir, epochs, save_every):
        return python("train_sft.py", "--model", plan.init, "--data", os.path.join(plan.data, "sft.jsonl"),
                      "--output-dir", out_dir, "--epochs", epochs, "--lr", cfg["sft_lr"],
                      "--global-batch-size", cfg["sft_batch"], "--micro-batch-size", cfg["sft_batch"], "--layout",
                      "padded", "--save-every", save_every, "--keep-last", "0", "--seed", seed, "--no-progress",
                      *(["--resume"] if os.path.exists(os.path.join(out_dir, "checkpoints", "latest")) else []))
    stage1 = Job(f"{tag} stage 1", lambda: stage1_cmd(plan.sft, plan.epochs, plan.steps_per_epoch() * cfg["curve_every"]),
                 os.path.join(plan.sft, "train.log"), [curate], prio + 1, done_if=os.path.join(plan.sft, "job.done"),
                 kind="stage1")
    jobs = [gen, model, curate, stage1]
    for e in plan.curve_epochs:
        jobs.append(Job(f"{tag} stage-1 val epoch {e}", lambda e=e: evaluate_cmd(
            cfg, seed, plan.checkpoint(e), plan.val, cfg["val_n"], plan.curve_dir(e)), plan.curve_dir(e) + ".log",
            [stage1], prio + 2, done_if=os.path.join(plan.curve_dir(e), "summary.json"), kind="val"))
    curve_jobs = jobs[4:]
    jobs.append(Job(f"{tag} stage 1 test", lambda: evaluate_cmd(cfg, seed, plan.stage1_model(), plan.test, cfg["test_n"],
                                                                os.path.join(plan.sft, "evals", "test")),
                    os.path.join(plan.sft, "evals", "test.log"), curve_jobs, prio + 3,
                    done_if=os.path.join(plan.sft, "evals", "test", "summary.json"), kind="test"))

    if pilot is None:   # the stage-1 length check (a run a third longer), beside the first seed's stage 1
        longer = Job(f"{tag} stage 1 longer ({plan.longer_epochs} epochs)",
                     lambda: stage1_cmd(plan.longer, plan.longer_epochs, plan.steps_per_epoch() * cfg["curve_every"]),
                     os.path.join(plan.longer, "train.log"), [curate], prio + 1,
                     done_if=os.path.join(plan.longer, "job.done"), kind="stage1_longer")
        jobs += [longer, Job(f"{tag} stage 1 longer val", evaluate_cmd(
            cfg, seed, os.path.join(plan.longer, "final"), plan.val, cfg["val_n"], os.path.join(plan.longer, "evals", "val")),
            os.path.join(plan.longer, "evals", "val.log"), [longer], prio + 2,
            done_if=os.path.join(plan.longer, "evals", "val", "summary.json"), kind="val")]

    if pilot is None:   # (c) the pilot: each method's first knob over the pilot rates, then the edge rule
        pilot_jobs = []
        for method in methods_of(cfg):
            knob = METHODS[method][0][0]
            method_jobs = []
            for lr in cfg["pilot_lrs"]:
                got = plan.setting(method, knob, lr)
                method_jobs += setting_jobs(plan, f"{tag} pilot {method} [{got[0]}]", method, lambda got=got: got,
                                            curve_jobs, prio + 2)

            def extension(method=method, knob=knob):
                lr = plan.pilot_edge_rate(plan.pilot_tried(method))
                return None if lr is None else plan.setting(method, knob, lr)
            method_jobs += setting_jobs(plan, f"{tag} pilot {method} [edge extension]", method, extension,
                                        method_jobs[:], prio + 2)
            pilot_jobs += method_jobs
        jobs += pilot_jobs
    else:
        pilot_jobs = pilot[1]

    for method in methods_of(cfg):   # (b) the grid; the test eval of the setting picked on validation
        vals = []
        for k in range(cfg["settings_per_method"]):
            got = setting_jobs(plan, f"{tag} {method} [setting {k + 1}]", method,
                               lambda method=method, k=k: plan.settings(method)[k], curve_jobs + pilot_jobs, prio + 4)
            jobs += got
            vals += got

        ext = setting_jobs(plan, f"{tag} {method} [edge extension]", method,
                           lambda method=method: plan.extension(method), vals, prio + 4)
        jobs += ext

        def test_cmd(method=method):
            best = plan.picked(method)
            return evaluate_cmd(cfg, seed, os.path.join(best[1], "final"), plan.test, cfg["test_n"], test_dir_of(best))
        jobs.append(Job(f"{tag} {method} test", test_cmd, lambda method=method: plan.test_dir(method) + ".log",
                        vals + ext, prio + 5, done_if=lambda method=method: os.path.join(plan.test_dir(method),
                                                                                        "summary.json"), kind="test"))
    return jobs, plan, pilot_jobs


def split_heldout(data, num_val):
    """toy_task's held-out problems -> val.jsonl (the first num_val) and test.jsonl (the rest)."""
    rows = [r for _, r in read_jsonl(os.path.join(data, "heldout", "test.jsonl"))]
    for name, part in (("val", rows[:num_val]), ("test", rows[num_val:])):
        with open(os.path.join(data, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


def all_jobs(out, variants, seeds, cfg):
    jobs, plans = [], {}
    for variant in variants:
        pilot = None
        for rank, seed in enumerate(seeds):
            js, plan, pilot_jobs = seed_jobs(out, variant, seed, cfg, rank, pilot)
            pilot = pilot or (plan, pilot_jobs)
            jobs += js
            plans.setdefault(variant, {})[seed] = plan
    return jobs, plans


def print_plan(jobs, plans, cfg, workers):
    """The jobs by kind with their estimated seconds (CONFIGS' est), before anything runs."""
    est = cfg["est"]
    rows = {}
    for j in jobs:
        if j.kind in ("stage1", "stage1_longer"):
            plan = next(p for per in plans.values() for p in per.values() if j.name.startswith(f"{p.variant}/s{p.seed} "))
            n = cfg.get(f"num_problems_{plan.variant}", cfg["num_problems"])
            epochs = plan.epochs if j.kind == "stage1" else plan.longer_epochs
            secs = epochs * n * est["stage1_problem_epoch"][plan.variant]
        else:
            secs = est[j.kind if j.kind != "other" else "prepare"]
        count, total = rows.get(j.kind, (0, 0.0))
        rows[j.kind] = (count + 1, total + secs)
    print("plan (at most: the first seed's grid reuses pilot runs and a pilot edge extension may be skipped):")
    for kind, (count, total) in sorted(rows.items()):
        print(f"  {kind:12s} {count:5d} jobs  ~{total:8.0f} job-s")
    total = sum(t for _, t in rows.values())
    print(f"  {'total':12s} {len(jobs):5d} jobs  ~{total:8.0f} job-s = ~{total / workers / 60:.0f} min at {workers} at a time",
          flush=True)
    return total


# -----------------------------------------------------------------------------
# statistics


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


def _betacf(a, b, x):
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def paired_tests(diffs):
    """Per-seed differences -> (t, two-sided paired t-test p with S-1 df, exact two-sided sign-flip p)."""
    s = len(diffs)
    mean, sem = mean_sem(diffs)
    if s < 2:
        return None, None, None
    if sem == 0:
        t, p_t = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / sem
        df = s - 1
        p_t = betainc(df / 2.0, 0.5, df / (df + t * t))
    observed = abs(sum(diffs))
    flips = [abs(sum(sign * d for sign, d in zip(signs, diffs))) for signs in itertools.product((1, -1), repeat=s)]
    p_flip = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    return t, p_t, p_flip


def verdict(mean, p_t, level=0.05):
    if p_t is None:
        return "one seed: no test"
    if p_t >= level:
        return "tie within noise"
    return "a > b" if mean > 0 else "a < b"


# -----------------------------------------------------------------------------
# reading the results back


def eval_metrics(eval_dir, bench_file):
    """pass@1, its SEM over samples, pass@k and the path statistics of one evaluate.py output dir."""
    summary = read_json(os.path.join(eval_dir, "summary.json"))
    name = os.path.splitext(os.path.basename(bench_file))[0]
    m = summary["benchmarks"][name]
    paths = paths_of(eval_dir, bench_file)
    return {"pass@1": m["pass@1"], "sem": m["sem"], "pass@k": m["pass@k"], "n_problems": m["n_problems"],
            "n_samples": m["n_samples"], **{k: paths[k] for k in ("guess_share", "guess_accuracy", "work_accuracy")}}


def logps_dynamics(run_dir):
    """Per step: (step, logps/chosen, logps/rejected) from a stage-2 run's metrics.jsonl."""
    rows = [r for _, r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "step" in r]
    return [(r["step"], r.get("logps/chosen"), r.get("logps/rejected")) for r in rows]


def per_problem(eval_dir):
    """{problem id: mean correctness over its samples} of one evaluate.py output dir."""
    got = {}
    for _, g in read_jsonl(os.path.join(eval_dir, "generations.jsonl")):
        got.setdefault(g["id"], []).append(bool(g["correct"]))
    return {k: sum(v) / len(v) for k, v in got.items()}


def length_check(plan):
    """The stage-1 length rule on the first seed: the longer run's final minus the used run's final on
    validation, its SEM paired over problems, and whether the length is at its plateau (difference <= SEM)."""
    longer = os.path.join(plan.longer, "evals", "val")
    if not os.path.exists(os.path.join(longer, "summary.json")):
        return None
    a, b = per_problem(plan.curve_dir(plan.epochs)), per_problem(longer)
    diffs = [b[k] - a[k] for k in a]
    mean, sem = mean_sem(diffs)
    return {"epochs": plan.epochs, "longer_epochs": plan.longer_epochs, "val": sum(a.values()) / len(a),
            "val_longer": sum(b.values()) / len(b), "diff": mean, "sem": sem, "at_plateau": mean <= sem}


def collect(plan):
    """Everything one (variant, seed) measured, as plain numbers; None if its stage 1 test is missing."""
    if not os.path.exists(os.path.join(plan.sft, "evals", "test", "summary.json")):
        return None
    task = read_json(os.path.join(plan.data, "heldout", "task.json"))["counts"]
    curve = plan.curve()
    i = plateau_index(curve)
    res = {"task": {k: task.get(k, 0) for k in ("positives", "negatives", "guesses", "lucky_guesses",
                                                 "expected_sft_examples", "expected_pairs")},
           "curve": curve, "stage1_epoch": curve[i][0], "plateau_confirmed": i < len(curve) - 1,
           "stage1": eval_metrics(os.path.join(plan.sft, "evals", "test"), plan.test), "methods": {}}
    if plan.pilot is plan:
        res["length_check"] = length_check(plan)
        res["pilot"] = {m: {lr_label(lr): v for lr, v in sorted(plan.pilot_tried(m).items())}
                        for m in methods_of(plan.cfg)}
    for method in methods_of(plan.cfg):
        try:
            settings = plan.all_settings(method)
            best = pick_setting(settings)
        except FileNotFoundError:
            best = None
        if best is None or not os.path.exists(os.path.join(test_dir_of(best), "summary.json")):
            print(f"not finished, left out of the tables: {plan.base} {method}")
            continue
        grid = settings[:len(METHODS[method]) * plan.n_rates[method]]
        knob_rates = [s[3] for s in settings if s[4] == best[4]]
        res["methods"][method] = {
            "settings": [{"label": s[0], "val": val_pass1(s[1])} for s in settings],
            "picked": best[0], "extended": len(settings) > len(grid),
            "grid_pick_on_rate_edge": on_rate_edge([s[3] for s in grid], pick_setting(grid)[3]),
            "picked_on_rate_edge": on_rate_edge(knob_rates, best[3]),
            "test": eval_metrics(test_dir_of(best), plan.test), "logps": logps_dynamics(best[1])}
    return res


def fmt(mean, sem, scale=100.0):
    if mean is None:
        return "-"
    return f"{scale * mean:.1f}" + (f" +- {scale * sem:.1f}" if sem is not None else "")


def p1(res, row):
    if row == "stage1":
        return res["stage1"]["pass@1"]
    return res["methods"][row]["test"]["pass@1"] if row in res["methods"] else None


def rows_of(per_seed, row):
    return [per_seed[s]["stage1"] if row == "stage1" else per_seed[s]["methods"][row]["test"]
            for s in sorted(per_seed) if row == "stage1" or row in per_seed[s]["methods"]]


def headline_table(per_seed):
    """Rows over seeds: pass@1 and pass@k (mean +- SEM over seeds), path shares and accuracies."""
    seeds = sorted(per_seed)
    ks = [k for k in per_seed[seeds[0]]["stage1"]["pass@k"] if k != "1"]
    head = (["model", "seeds", "pass@1 (%)"] + [f"pass@{k} (%)" for k in ks]
            + ["guess share (%)", "acc. of guesses (%)", "acc. when working (%)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROW_NAMES:
        got = rows_of(per_seed, row)
        if not got:
            continue
        cells = [ROW_NAMES[row], str(len(got)), fmt(*mean_sem([g["pass@1"] for g in got]))]
        cells += [fmt(*mean_sem([g["pass@k"][k] for g in got])) for k in ks]
        cells += [fmt(*mean_sem([g[key] for g in got])) for key in ("guess_share", "guess_accuracy", "work_accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(per_seed):
    """[(a, b, seeds, per-seed diffs, mean, sem, t, p_t, p_flip)] for COMPARISONS present on >= 1 seed."""
    out = []
    for a, b in COMPARISONS:
        both = [s for s in sorted(per_seed) if p1(per_seed[s], a) is not None and p1(per_seed[s], b) is not None]
        diffs = [p1(per_seed[s], a) - p1(per_seed[s], b) for s in both]
        if diffs:
            out.append((a, b, both, diffs, *mean_sem(diffs), *paired_tests(diffs)))
    return out


def differences_table(per_seed):
    lines = ["| a - b (test pass@1, points) | seeds | mean +- SEM over seeds | per seed | paired t (p) | sign-flip p "
             "| a vs b (paired t, 5%) |", "|---|---|---|---|---|---|---|"]
    for a, b, seeds, diffs, mean, sem, t, p_t, p_flip in differences(per_seed):
        t_cell = "-" if t is None else f"{t:+.2f} ({p_t:.3f})"
        lines.append(f"| {ROW_NAMES[a]} - {ROW_NAMES[b]} | {len(seeds)} | {fmt(mean, sem)} | "
                     + ", ".join(f"{100 * d:+.1f}" for d in diffs)
                     + f" | {t_cell} | {'-' if p_flip is None else f'{p_flip:.3f}'} | {verdict(mean, p_t)} |")
    return "\n".join(lines)


LOGPS_WINDOW = 10   # steps averaged at each end of a stage-2 run


def mechanism_table(per_seed):
    """Per method and seed, the guess share on the test split; the accuracy on each path (mean +- SEM over
    seeds, then per seed);
    the chosen and rejected LogPS of the picked run, mean of its first and of its last LOGPS_WINDOW steps
    (mean over seeds). Every method of a seed sees the same pairs in the same order (same --seed), so a
    column compares methods on the same batches; first vs last compares different batches."""
    seeds = sorted(per_seed)
    lines = ["| model | guess share per seed (%) | acc. of guesses (%) (per seed) | acc. when working (%) (per seed) "
             f"| chosen LogPS, first -> last {LOGPS_WINDOW} steps | rejected LogPS, first -> last {LOGPS_WINDOW} steps |",
             "|---|---|---|---|---|---|"]
    for row in ROW_NAMES:
        got = {s: (per_seed[s]["stage1"] if row == "stage1" else per_seed[s]["methods"].get(row, {}).get("test"))
               for s in seeds}
        got = {s: g for s, g in got.items() if g}
        if not got:
            continue
        shares = ", ".join(f"{100 * g['guess_share']:.1f}" for g in got.values())
        dyn = "- | -"
        if row != "stage1":
            runs = [d for d in (per_seed[s]["methods"][row]["logps"] for s in got) if d and d[0][1] is not None]

            def window(j, last):
                return mean_sem([mean_sem([x[j] for x in (d[-LOGPS_WINDOW:] if last else d[:LOGPS_WINDOW])])[0]
                                 for d in runs])[0]
            if runs:
                dyn = (f"{window(1, False):.3f} -> {window(1, True):.3f} | "
                       f"{window(2, False):.3f} -> {window(2, True):.3f}")
        def acc(key):
            per = ", ".join("-" if g[key] is None else f"{100 * g[key]:.1f}" for g in got.values())
            return f"{fmt(*mean_sem([g[key] for g in got.values()]))} ({per})"
        lines.append(f"| {ROW_NAMES[row]} | {shares} | {acc('guess_accuracy')} | {acc('work_accuracy')} | {dyn} |")
    return "\n".join(lines)


def picks_table(per_seed):
    """The setting each method picked on validation, per seed (settings it chose from); how often the grid's
    pick sat on the grid's rate edge (and so got the extension), and how often the final pick still does."""
    seeds = sorted(per_seed)
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds)
             + " | grid's pick on its rate edge | extended (not at the lattice's end) | final pick on its rate edge |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for m in METHODS:
        got = [per_seed[s]["methods"].get(m) for s in seeds]
        if not any(got):
            continue
        n = sum(bool(g) for g in got)
        grid_edge, extended, final_edge = (sum(bool(g and g[k]) for g in got)
                                           for k in ("grid_pick_on_rate_edge", "extended", "picked_on_rate_edge"))
        lines.append(f"| {ROW_NAMES[m]} | " + " | ".join(
            f"{g['picked']} ({100 * max(x['val'] for x in g['settings']):.1f}; of {len(g['settings'])})" if g else "-"
            for g in got) + f" | {grid_edge} of {n} | {extended} of {n} | {final_edge} of {n} |")
    return "\n".join(lines)


def grid_table(per_seed):
    """Validation pass@1 of every stage-2 setting, per seed (what the selection saw)."""
    seeds = sorted(per_seed)
    lines = ["| method | " + " | ".join(f"seed {s}: setting (val pass@1 %)" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for m in METHODS:
        if not any(m in per_seed[s]["methods"] for s in seeds):
            continue
        cells = ["<br>".join(f"{x['label']} ({100 * x['val']:.1f})" for x in per_seed[s]["methods"][m]["settings"])
                 if m in per_seed[s]["methods"] else "-" for s in seeds]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pilot_table(results):
    lines = ["| variant | method (first knob) | validation pass@1 (%) by learning rate, first seed |", "|---|---|---|"]
    for variant, per_seed in results.items():
        pilot = per_seed[min(per_seed)].get("pilot")
        for m, tried in (pilot or {}).items():
            lines.append(f"| {variant} | {m} ({METHODS[m][0][0]}) | "
                         + ", ".join(f"{lr}: {100 * v:.1f}" for lr, v in tried.items()) + " |")
    return "\n".join(lines)


def length_table(results):
    lines = ["| variant | stage-1 epochs used: val pass@1 (%) | a third longer: val pass@1 (%) | longer - used "
             "(points, SEM paired over problems) | at its plateau (difference <= SEM) |", "|---|---|---|---|---|"]
    for variant, per_seed in results.items():
        c = per_seed[min(per_seed)].get("length_check")
        if c:
            lines.append(f"| {variant} | {c['epochs']}: {100 * c['val']:.1f} | {c['longer_epochs']}: "
                         f"{100 * c['val_longer']:.1f} | {fmt(c['diff'], c['sem'])} | {'yes' if c['at_plateau'] else 'NO'} |")
    return "\n".join(lines)


def curve_table(results):
    lines = ["| variant | seed | epoch: validation pass@1 +- SEM (%) | stage-1 model (plateau rule) |", "|---|---|---|---|"]
    for variant, per_seed in results.items():
        for s, r in sorted(per_seed.items()):
            cells = "; ".join(f"{e}: {fmt(p, sem)}" for e, p, sem in r["curve"])
            how = "confirmed by later checkpoints" if r["plateau_confirmed"] else "last checkpoint (not confirmed)"
            lines.append(f"| {variant} | {s} | {cells} | epoch {r['stage1_epoch']}, {how} |")
    return "\n".join(lines)


def draw_figures(out, results):
    """fig_stage1.png (validation curves, every seed), fig_differences.png (per-seed differences, mean +- SEM),
    fig_logps_<variant>.png (chosen and rejected LogPS per step at the picked settings, every seed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: figures skipped")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4), dpi=90, squeeze=False)
    for ax, (variant, per_seed) in zip(axes[0], results.items()):
        for s, r in sorted(per_seed.items()):
            line, = ax.plot([e for e, _, _ in r["curve"]], [100 * p for _, p, _ in r["curve"]], marker="o", ms=3,
                            label=f"seed {s}")
            ax.plot([r["stage1_epoch"]], [100 * dict((e, p) for e, p, _ in r["curve"])[r["stage1_epoch"]]], "*",
                    ms=11, color=line.get_color())
        ax.set(xlabel="stage-1 epoch", ylabel="validation pass@1 (%)", title=f"{variant}: stage 1 (star: plateau rule)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig_stage1.png"))
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.8), dpi=90, squeeze=False)
    for ax, (variant, per_seed) in zip(axes[0], results.items()):
        diffs = differences(per_seed)
        for y, (a, b, seeds, d, mean, sem, *_rest) in enumerate(diffs):
            ax.scatter([100 * x for x in d], [y] * len(d), s=14, color="tab:blue", zorder=3)
            ax.errorbar([100 * mean], [y], xerr=[[100 * (sem or 0)], [100 * (sem or 0)]], fmt="s", color="black",
                        ms=5, capsize=3, zorder=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(diffs)), [f"{ROW_NAMES[a].split(' (')[0]} - {ROW_NAMES[b].split(' (')[0]}"
                                          for a, b, *_ in diffs], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="test pass@1 difference (points)", title=f"{variant}: dots = seeds, square = mean +- SEM")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig_differences.png"))
    for variant, per_seed in results.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), dpi=90)
        for k, m in enumerate(METHODS):
            for s, r in sorted(per_seed.items()):
                dyn = r["methods"].get(m, {}).get("logps") or []
                for ax, j in zip(axes, (1, 2)):
                    pts = [(d[0], d[j]) for d in dyn if d[j] is not None]
                    if pts:
                        ax.plot(*zip(*pts), color=f"C{k}", lw=0.8, alpha=0.7, label=ROW_NAMES[m] if s == min(per_seed) else None)
        for ax, what in zip(axes, ("chosen", "rejected")):
            ax.set(xlabel="stage-2 step", ylabel=f"{what} LogPS", title=f"{variant}: {what} LogPS at the picked settings")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"fig_logps_{variant}.png"))
    plt.close("all")


def report(out, results, args, wall):
    parts = [f"# Replication ({'smoke' if args.smoke else 'full'}): variants {args.variants}, seeds {args.seeds}, "
             f"{args.jobs} jobs at a time\n\nwall time: {wall:.0f}s\n",
             "## Stage 1 (validation, every seed)\n\n" + curve_table(results),
             "## Stage 1's length at its plateau? (first seed, validation)\n\n" + length_table(results),
             "## The pilot (first seed, validation)\n\n" + pilot_table(results)]
    for variant, per_seed in results.items():
        t = per_seed[min(per_seed)]["task"]
        parts.append(f"## Variant `{variant}`\n\nfirst seed's data: {t}\n\n### Test split (settings picked on validation)\n\n"
                     + headline_table(per_seed) + "\n\n### Paired differences\n\n" + differences_table(per_seed)
                     + "\n\n### Mechanism: guessing and LogPS at the picked settings\n\n" + mechanism_table(per_seed)
                     + "\n\n### Picked settings (best validation pass@1 %)\n\n" + picks_table(per_seed)
                     + "\n\n### Validation pass@1 of every setting\n\n" + grid_table(per_seed))
    text = "\n\n".join(parts) + "\n"
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


# -----------------------------------------------------------------------------
# main


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so run_jobs' finally stops the jobs
    cfg = dict(CONFIGS["smoke" if args.smoke else "full"], methods=[m for m in METHODS if m in args.methods])
    with exit_on_input_error("replicate.py"):
        out = os.path.abspath(args.out if args.plan else make_output_dir(args.out, f"--out {args.out}"))
    t0 = time.time()
    jobs, plans = all_jobs(out, args.variants, args.seeds, cfg)
    print(f"replicate.py: {len(jobs)} jobs, {args.jobs} at a time, into {out}", flush=True)
    print_plan(jobs, plans, cfg, args.jobs)
    if args.plan:
        return 0
    try:
        if not args.report_only:
            run_jobs(jobs, args.jobs, t0, fork=not args.no_fork)
    except RuntimeError as e:
        print(f"replicate.py: error: {e}", file=sys.stderr, flush=True)
        return 1
    results = {}
    for variant, per in plans.items():
        got = {s: collect(p) for s, p in per.items()}
        for s in sorted(s for s, r in got.items() if r is None):
            print(f"not finished, left out of the tables: {variant} seed {s} (no stage-1 test evaluation)")
        if any(got.values()):
            results[variant] = {s: r for s, r in got.items() if r is not None}
    draw_figures(out, results)
    wall = time.time() - t0
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "config": cfg, "wall_time_s": wall,
                   "job_times_s": {j.name: round(j.end - j.start, 1) for j in jobs if j.end},
                   "results": results}, f, indent=1)
    report(out, results, args, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
