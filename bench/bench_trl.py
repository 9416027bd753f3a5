"""Benchmark: the project's training scripts against Hugging Face TRL on one fixed tiny setup (CPU).

    python bench/bench_trl.py --trl-python /work/trl-venv/bin/python [--repeats 5] [--json out.json]

The setup (built here, offline): a random Qwen2 (hidden 256, 4 layers, MLP 1024, 4 heads, 2 KV heads,
tied embeddings, 3.94M non-embedding parameters) with a byte-level BPE (toy/tiny_model.py, asked for 512
tokens, 478 learnt from this corpus), and
64 synthetic pairs whose chosen and rejected responses have 131-514 tokens each (drawn independently).
Every run: fp32, one process, 16 optimizer steps of 4 pairs (micro-batch 1 x accumulation 4; our flags
--global-batch-size 4 --micro-batch-size 1), i.e. one epoch, the same lr, warmup, AdamW and beta, no
saving, max length 1024 (no sequence is longer, so nothing is truncated). Cases:
    ours  train_redi.py --loss redi | --loss dpo (live reference) | --loss dpo --precompute-ref,
          train_sft.py on the chosen traces; each with --layout padded and --layout packed
    trl   DPOTrainer (sigmoid, live reference), DPOTrainer(precompute_ref_log_probs=True),
          SFTTrainer (prompt/completion, completion-only loss, no packing): bench/trl_baseline.py,
          run by --trl-python (the project itself never imports TRL)
The reference log-probs of the two "cached" cases are computed in every run, in-process, before the
training loop (our cache file is deleted before each run; TRL computes them in the trainer's __init__),
so they count in whole-process time and not in loop time, for both.

Every child runs with OMP_NUM_THREADS=MKL_NUM_THREADS=--threads (default 1): on this shared 2-core box
other jobs keep the load above 2, and there 2 intra-op threads made a fwd+bwd of this model 3.7x
SLOWER than 1 (2026-12-01, load 9: 13.4 s vs 3.6 s median; OpenMP threads wait at every op's barrier
for a descheduled sibling), which would measure the neighbours rather than the code.

Each case runs in its own process; the cases are interleaved (one round = every case once, in a
rotated order) --repeats times, and the figures are medians over rounds. Per run:
    process wall / CPU   interpreter start to exit: wall time; user + system CPU time (os.wait4)
    loop wall            ours: sum of perf/step_time_s in metrics.jsonl; TRL: trainer.train()
    loop CPU             process CPU time of train() (ours: train_redi.train / train_sft.train, timed
                         by this file's --run-script wrapper, which runs the script's main() in the
                         child exactly as `python train_redi.py ...` would; TRL: trainer.train())
    peak                 peak RSS of the process (os.wait4's ru_maxrss for that child)
With one thread per process, CPU time is the work done and barely moves with the neighbours' load,
while wall time moved up to 3.5x between two runs of the same work here; read CPU time first.
Ratios in the table are TRL / ours for time (> 1: ours faster, = our throughput over TRL's, since both
train the same pairs for the same steps) and ours / TRL for peak RSS (< 1: ours smaller), paired within
a round. TRL's sequences have one token more than ours (the "\\n" the chat template puts after
<|im_end|>, which TRL keeps and we drop), 0.3% of the tokens. Targets from
the "Training at the paper's scale" issue: REDI >= 2x TRL DPOTrainer's throughput and <= 0.6x its peak
RSS; DPO with a cached reference >= 1.5x; SFT >= 1.5x SFTTrainer.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024,
             max_position_embeddings=2048)
PAIRS, MIN_TOKENS, MAX_TOKENS = 64, 131, 514
STEPS, GLOBAL_BATCH, MICRO_BATCH = 16, 4, 1
LR, BETA, MAX_LENGTH = 1e-5, 0.1, 1024
# (case, what it is compared with in the ratio table)
OURS = ["redi", "dpo", "dpo-cached", "sft"]
TRL = {"redi": "trl-dpo", "dpo": "trl-dpo", "dpo-cached": "trl-dpo-precompute", "sft": "trl-sft"}

# -----------------------------------------------------------------------------
# the setup: model, tokenizer, data


def sentence(rng: random.Random) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    return rng.choice([f"Let me compute {a}+{b}={a + b}.", f"Then {a}*{b}={a * b}, so we carry on.",
                       f"Wait, check again: {a}-{b}={a - b}.", f"So x = {a}, and y = {b}.",
                       f"We try the case n = {a} next.", "Hmm, that does not look right.",
                       f"Therefore the sum so far is {a + b}."])


def response(tokenizer, prompt, words: list[str], target: int, answer: int) -> tuple[str, int]:
    """A prefix of `words` whose response has `target` supervised tokens or the nearest count to it in
    [MIN_TOKENS, MAX_TOKENS] (a word is several tokens)."""
    from data import tokenize_example

    def build(n):
        text = "<think>\n" + " ".join(words[:n]) + f"\n</think>\n\nThe answer is $\\boxed{{{answer}}}$."
        labels = tokenize_example(tokenizer, prompt, text, "bench")["labels"]
        return text, sum(t != -100 for t in labels[1:])
    lo, hi = 1, len(words)
    while lo < hi:                                  # binary search: fewest words with >= target tokens
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if build(mid)[1] >= target else (mid + 1, hi)
    text, n = build(lo)
    return (text, n) if n <= MAX_TOKENS else build(lo - 1)


def build_setup(work: str, seed: int = 0) -> dict:
    """Model dir + our pairs/SFT files + TRL's SFT file; returns their paths and the data's lengths."""
    from toy import tiny_model

    rng = random.Random(seed)
    corpus = [" ".join(sentence(rng) for _ in range(40)) for _ in range(200)]
    tokenizer = tiny_model.build_tokenizer(corpus, vocab_size=512)
    model = tiny_model.build_model(tokenizer, seed=seed, **MODEL)
    model_dir = os.path.join(work, "model")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    numel = sum(p.numel() for p in model.parameters())
    info = {"params": numel, "params_non_embedding": numel - model.config.vocab_size * model.config.hidden_size,
            "vocab": model.config.vocab_size, **MODEL}
    targets = [MIN_TOKENS, MAX_TOKENS] + [rng.randint(MIN_TOKENS, MAX_TOKENS) for _ in range(2 * PAIRS - 2)]
    rng.shuffle(targets)
    pairs, lengths = [], []
    for i in range(PAIRS):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompt = [{"role": "user", "content": f"What is {a}*{b}? Show your work."}]
        words = " ".join(sentence(rng) for _ in range(120)).split()
        chosen, n_chosen = response(tokenizer, prompt, words, targets[2 * i], a * b)
        rejected, n_rejected = response(tokenizer, prompt, words[::-1], targets[2 * i + 1], a * b + 1)
        lengths += [n_chosen, n_rejected]
        pairs.append({"id": f"p{i}", "prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
    paths = {k: os.path.join(work, f"{k}.jsonl") for k in ("pairs", "sft", "sft_trl")}
    write_jsonl(paths["pairs"], pairs)
    write_jsonl(paths["sft"], [{"id": p["id"], "messages": p["prompt"] + p["chosen"]} for p in pairs])
    write_jsonl(paths["sft_trl"], [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    return {"model": model_dir, **paths, "model_info": info,
            "response_tokens": {"min": min(lengths), "max": max(lengths), "mean": statistics.mean(lengths)}}


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# -----------------------------------------------------------------------------
# one run: a child process, timed, with its own peak RSS


def command(case: str, layout: str | None, setup: dict, out: str, trl_python: str, steps: int) -> list[str]:
    if case.startswith("trl-"):
        mode = case[len("trl-"):]
        data = setup["sft_trl"] if mode == "sft" else setup["pairs"]
        return [trl_python, os.path.join(ROOT, "bench", "trl_baseline.py"), "--mode", mode, "--model", setup["model"],
                "--data", data, "--out", os.path.join(out, "result.json"), "--steps", str(steps),
                "--micro-batch-size", str(MICRO_BATCH), "--grad-accum", str(GLOBAL_BATCH // MICRO_BATCH),
                "--lr", str(LR), "--beta", str(BETA), "--max-length", str(MAX_LENGTH)]
    script = "train_sft" if case == "sft" else "train_redi"
    argv = [sys.executable, os.path.abspath(__file__), "--run-script", script, os.path.join(out, "result.json"),
            "--model", setup["model"],
            "--data", setup["sft"] if case == "sft" else setup["pairs"], "--output-dir", out,
            "--global-batch-size", str(GLOBAL_BATCH), "--micro-batch-size", str(MICRO_BATCH),
            "--max-steps", str(steps), "--epochs", "1", "--lr", str(LR), "--max-seq-len", str(MAX_LENGTH),
            "--no-progress", "--no-save", "--layout", layout, "--mixed-precision", "fp32"]
    if case == "redi":
        argv += ["--loss", "redi"]
    elif case in ("dpo", "dpo-cached"):
        argv += ["--loss", "dpo", "--beta", str(BETA)] + (["--precompute-ref"] if case == "dpo-cached" else [])
    return argv


def run_script(script: str, result_path: str, argv: list[str]) -> None:
    """A child's job for our cases: `script`.main(argv) in this process, exactly as `python script.py argv`
    runs it, with the wall and CPU time of its train() (the step loop) written to result_path."""
    module = importlib.import_module(script)
    loop, train = {}, module.train

    def timed_train(*args, **kwargs):
        wall, cpu = time.time(), time.process_time()
        try:
            return train(*args, **kwargs)
        finally:
            loop.update(train_s=time.time() - wall, train_cpu_s=time.process_time() - cpu)
    module.train = timed_train                   # main() looks train() up in its module at call time
    module.main(argv)
    with open(result_path, "w") as f:
        json.dump(loop, f)


def run_case(case: str, layout: str | None, setup: dict, work: str, trl_python: str, steps: int, threads: int) -> dict:
    out = tempfile.mkdtemp(dir=work, prefix=f"{case}-{layout or 'trl'}-")
    for stale in glob.glob(setup["pairs"] + ".ref-logps.*"):     # our reference cache: computed in every run
        os.remove(stale)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
               HF_DATASETS_CACHE=os.path.join(out, "hf-datasets"), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    with open(os.path.join(out, "log.txt"), "w") as log:
        started = time.time()
        proc = subprocess.Popen(command(case, layout, setup, out, trl_python, steps), stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(os.path.join(out, "log.txt")) as f:
            raise RuntimeError(f"{case} {layout}: exit {proc.returncode}\n{f.read()[-3000:]}")
    row = {"case": case, "layout": layout, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
           "peak_rss_mb": usage.ru_maxrss / 1024}
    with open(os.path.join(out, "result.json")) as f:
        r = json.load(f)
    row.update(train_s=r["train_s"], loop_cpu_s=r["train_cpu_s"])
    if case.startswith("trl-"):
        row.update(loop_s=r["train_s"], steps=r["steps"], tokens=r["tokens"])
    else:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [r for r in map(json.loads, f) if "perf/step_time_s" in r]
        row.update(loop_s=sum(r["perf/step_time_s"] for r in records), steps=len(records),
                   tokens=sum(r["data/tokens"] for r in records))
    shutil.rmtree(out, ignore_errors=True)
    return row


# -----------------------------------------------------------------------------
# the table


def medians(rows: list[dict]) -> dict:
    """{(case, layout): {field: median}} over the repeats."""
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["layout"]), []).append(r)
    return {k: {f: statistics.median(r[f] for r in rs) for f in ("wall_s", "cpu_s", "loop_s", "loop_cpu_s", "peak_rss_mb", "tokens")}
            | {"n": len(rs)} for k, rs in groups.items()}


def paired_ratios(rows: list[dict], ours: tuple, trl: tuple, field: str, invert: bool) -> list[float]:
    """Per round: TRL's field / ours (invert: ours / TRL), pairing the two runs of the same round."""
    by_round = {(r["round"], r["case"], r["layout"]): r[field] for r in rows}
    out = []
    for rnd in sorted({r["round"] for r in rows}):
        o, t = by_round.get((rnd, *ours)), by_round.get((rnd, *trl))
        if o is not None and t is not None:
            out.append(o / t if invert else t / o)
    return out


TARGETS = {"redi": (2.0, 0.6), "dpo-cached": (1.5, None), "sft": (1.5, None), "dpo": (None, None)}


MEASURES = [("loop_s", "loop wall"), ("loop_cpu_s", "loop CPU"), ("wall_s", "process wall"), ("cpu_s", "process CPU")]


def report(rows: list[dict]) -> str:
    """Medians per case, then ratios to TRL: median over rounds of the paired per-round ratios [min-max]."""
    m = medians(rows)
    lines = ["| case | layout | runs | process wall s | process CPU s | loop wall s | loop CPU s | peak RSS MB | "
             "tokens | tokens/s (loop CPU) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (case, layout), v in m.items():
        lines.append(f"| {case} | {layout or '-'} | {v['n']} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} | {v['loop_s']:.1f} | "
                     f"{v['loop_cpu_s']:.1f} | {v['peak_rss_mb']:.0f} | {v['tokens']:.0f} | "
                     f"{v['tokens'] / v['loop_cpu_s']:.0f} |")
    lines += ["", "Speed-up = TRL time / ours (our throughput over TRL's), peak RSS = ours / TRL: median over rounds "
              "of the paired ratios [min-max]; met = the target holds on the median.", "",
              "| ours | vs | layout | " + " | ".join(f"speed-up, {name}" for _, name in MEASURES) +
              " | peak RSS ours/TRL | target | met: " + " / ".join(name for _, name in MEASURES) + " |",
              "|---|---|---|" + "---:|" * (len(MEASURES) + 1) + "---|---|"]

    def cell(values):
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
    for case in OURS:
        for trl in [TRL[case]] + (["trl-dpo"] if case == "dpo-cached" else []):
            for layout in ("padded", "packed"):
                speedups = [paired_ratios(rows, (case, layout), (trl, None), f, invert=False) for f, _ in MEASURES]
                rss = paired_ratios(rows, (case, layout), (trl, None), "peak_rss_mb", invert=True)
                if not rss:
                    continue
                speed, rss_cap = TARGETS[case]
                target, met = "-", "-"
                if speed is not None:
                    target = f">= {speed}x" + (f", RSS <= {rss_cap}x" if rss_cap else "")
                    ok_rss = rss_cap is None or statistics.median(rss) <= rss_cap
                    met = " / ".join("yes" if statistics.median(v) >= speed and ok_rss else "no" for v in speedups)
                lines.append(f"| {case} | {trl} | {layout} | " + " | ".join(cell(v) for v in speedups) +
                             f" | {cell(rss)} | {target} | {met} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-script"]:                 # a child: one of our cases
        return run_script(argv[1], argv[2], argv[3:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trl-python", default="/work/trl-venv/bin/python", help="python of an environment with TRL")
    p.add_argument("--repeats", type=int, default=5, help="rounds of every case (medians over them)")
    p.add_argument("--cases", nargs="*", default=None, help="subset, e.g. redi:padded trl-dpo (default: all)")
    p.add_argument("--json", default=None, help="write every run's row and the setup here")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every child (default 1, see above)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps per run (default {STEPS}: one epoch)")
    args = p.parse_args(argv)
    cases = [(c, layout) for c in OURS for layout in ("padded", "packed")] + [(t, None) for t in dict.fromkeys(TRL.values())]
    if args.cases:
        cases = [(c, layout) for c, layout in cases if c in args.cases or f"{c}:{layout}" in args.cases]
    work = tempfile.mkdtemp(prefix="redi-bench-trl-")
    try:
        setup = build_setup(work)
        print(f"model {setup['model_info']}; response tokens {setup['response_tokens']}", flush=True)
        rows = []
        for rnd in range(args.repeats):
            shift = rnd % len(cases)
            for case, layout in cases[shift:] + cases[:shift]:          # rotated: no case always runs first
                rows.append(run_case(case, layout, setup, work, args.trl_python, args.steps, args.threads) | {"round": rnd})
                r = rows[-1]
                print(f"round {rnd} {case:18s} {layout or '-':6s} wall {r['wall_s']:6.1f}s loop {r['loop_s']:6.2f}s "
                      f"peak {r['peak_rss_mb']:6.0f} MB tokens {r['tokens']}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"setup": {k: v for k, v in setup.items() if k in ("model_info", "response_tokens")},
                               "rows": rows}, f, indent=1)
        print(report(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
