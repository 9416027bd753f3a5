"""evaluate.py end to end: sampling with a tiny model, outputs, resume, torchrun, --responses.

The tiny model is random, so its answers are wrong; these tests check the pipeline (what is written,
that resuming and sharding reproduce the same samples), while `--responses` checks the scores on a
hand-made file whose pass@1 and pass@k are derived by hand below.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import evaluate
from conftest import BENCHMARKS, ROOT, run_script, torchrun

SAMPLE20 = BENCHMARKS / "math500_sample20.jsonl"
GEN_ARGS = ["--num-samples", "2", "--max-new-tokens", "16", "--batch-size", "16", "--seed", "3"]
RECORD_FIELDS = {"benchmark", "id", "index", "sample", "seed", "text", "answer", "gold", "correct", "timed_out",
                 "finish_reason", "num_tokens"}


def needs_sample20():
    if not SAMPLE20.is_file():
        pytest.skip(f"{SAMPLE20} not present")


def evaluate_cmd(model_dir, out_dir, *extra):
    return [sys.executable, str(ROOT / "evaluate.py"), "--model", str(model_dir), "--data", str(SAMPLE20),
            "--output-dir", str(out_dir), *GEN_ARGS, *extra]


def read_lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def per_problem_counts(records):
    counts = {}
    for r in records:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    return counts


@pytest.fixture(scope="module")
def raw_run(tiny_model_dir, tmp_path_factory):
    """One complete run: tiny model, the 20-problem MATH-500 sample, 2 samples, 16 new tokens."""
    needs_sample20()
    out = tmp_path_factory.mktemp("raw_run")
    proc = run_script(evaluate_cmd(tiny_model_dir, out, "--prompt-template", "raw"))
    return out, read_lines(out / "generations.jsonl"), json.loads((out / "summary.json").read_text()), proc.stdout


# ---------------------------------------------------------------------------------------------
# Prompts and sampling, in-process
# ---------------------------------------------------------------------------------------------

def test_prompt_templates_wrap_the_problem(tiny_tokenizer):
    """redi puts the paper's instruction before the problem, rllm appends its sentence, raw is bare;
    all go through the chat template, whose generation prompt opens `<think>`."""
    problem = "What is $1+1$?"
    redi = evaluate.build_prompt(tiny_tokenizer, problem, "redi")
    assert ("Solve the following math problem efficiently and clearly.  The last line of your response should be "
            "of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' "
            "(without quotes) where ANSWER is just the final number or expression that solves the problem. "
            "Think step by step before answering.\n\nWhat is $1+1$?<|im_end|>") in redi
    rllm = evaluate.build_prompt(tiny_tokenizer, problem, "rllm")
    assert ("What is $1+1$? Let's think step by step and output the final answer within \\boxed{}.<|im_end|>"
            in rllm)
    raw = evaluate.build_prompt(tiny_tokenizer, problem, "raw")
    assert "<|im_start|>user\nWhat is $1+1$?<|im_end|>" in raw
    for prompt in (redi, rllm, raw):
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")
        assert evaluate.opened_think(prompt) == "<think>\n"
    assert evaluate.opened_think("<|im_start|>assistant\n") == ""


def test_sample_next_respects_temperature_and_top_p():
    """T=0 is argmax; top-p 0.95 never leaves a token holding 96% of the mass; draws follow p."""
    import torch

    logits = torch.log(torch.tensor([[0.96, 0.02, 0.02], [0.2, 0.5, 0.3]]))
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    assert evaluate.sample_next(logits, 0.0, 1.0, gens).tolist() == [0, 1]
    draws = torch.stack([evaluate.sample_next(logits, 1.0, 0.95, gens) for _ in range(1000)])
    assert (draws[:, 0] == 0).all()  # tokens 1 and 2 are outside the nucleus
    freq = torch.bincount(draws[:, 1], minlength=3).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.05)


def test_a_sample_does_not_depend_on_its_batch(tiny_model_dir):
    """The same (prompt, seed) gives the same tokens alone or next to a longer, padded prompt."""
    import torch

    model, tokenizer = evaluate.load_model(str(tiny_model_dir), torch.device("cpu"), "float32")
    short = tokenizer("What is 2+2?", add_special_tokens=False)["input_ids"]
    long = tokenizer("Compute the sum of the first ten odd numbers, please.", add_special_tokens=False)["input_ids"]
    args = (12, 0.6, 0.95, evaluate.stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
    alone = evaluate.sample_batch(model, [short], [11], *args)
    together = evaluate.sample_batch(model, [long, short, short], [5, 11, 12], *args)
    assert together[1] == alone[0]
    assert together[2] != together[1]  # another seed, another sample


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_writes_every_output(raw_run):
    """generations.jsonl has exactly n lines per problem with every field; summary.json the metrics."""
    out, records, summary, stdout = raw_run
    assert len(records) == 40 and set(per_problem_counts(records).values()) == {2}
    assert {(r["id"], r["sample"]) for r in records} == {(r["id"], j) for r in records for j in (0, 1)}
    for r in records:
        assert RECORD_FIELDS <= set(r)
        assert r["benchmark"] == "math500_sample20" and r["text"].startswith("<think>\n")
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["num_tokens"] <= 16
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == 16)
        assert isinstance(r["gold"], list) and r["correct"] in (True, False)
    assert len({r["seed"] for r in records}) == 40
    metrics = summary["benchmarks"]["math500_sample20"]
    assert {"n_problems", "n_samples", "pass@1", "sem", "pass@k", "mean_length", "truncation_rate",
            "wait_per_response", "grading_timeouts", "answers_per_second"} <= set(metrics)
    assert metrics["n_problems"] == 20 and metrics["n_samples"] == 2 and set(metrics["pass@k"]) == {"1", "2"}
    assert metrics["mean_length"] == pytest.approx(sum(r["num_tokens"] for r in records) / 40)
    assert metrics["truncation_rate"] == pytest.approx(sum(r["finish_reason"] == "length" for r in records) / 40)
    assert summary["args"]["n"] == 2 and summary["args"]["prompt_template"] == "raw"
    assert summary["versions"]["torch"] and summary["versions"]["sympy"]
    assert "math500_sample20" in stdout and "pass@1 +- SEM" in stdout


@pytest.mark.slow
def test_redi_template_run(tiny_model_dir, tmp_path):
    """The default (paper) template runs end to end and is recorded in the summary."""
    needs_sample20()
    run_script(evaluate_cmd(tiny_model_dir, tmp_path, "--limit", "3", "--num-samples", "1"))
    records = read_lines(tmp_path / "generations.jsonl")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(records) == 3 and summary["args"]["prompt_template"] == "redi"
    assert summary["benchmarks"]["math500_sample20"]["n_samples"] == 1


@pytest.mark.slow
def test_resume_after_truncation_regenerates_exactly_the_missing_samples(raw_run, tiny_model_dir, tmp_path):
    """Keep a partial set plus a half-written line, rerun: n per problem, no duplicates, and the
    regenerated samples are the ones the uninterrupted run produced (same seeds)."""
    out, records, _, _ = raw_run
    lines = (out / "generations.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:7] + lines[10:25:2]
    (tmp_path / "generations.jsonl").write_text("".join(kept) + lines[30][:57], encoding="utf-8")
    proc = run_script(evaluate_cmd(tiny_model_dir, tmp_path, "--prompt-template", "raw"))
    assert "dropped a truncated last line" in proc.stderr
    assert f"{len(kept)}/40 samples already" in proc.stdout
    resumed = read_lines(tmp_path / "generations.jsonl")
    assert len(resumed) == 40 and set(per_problem_counts(resumed).values()) == {2}
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted((key(r), r["text"], r["seed"]) for r in resumed) == sorted((key(r), r["text"], r["seed"])
                                                                             for r in records)


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_n_samples(tiny_model_dir, tmp_path):
    """SIGKILL a run after its first batches, restart it: exactly n samples per problem, no duplicate."""
    needs_sample20()
    cmd = evaluate_cmd(tiny_model_dir, tmp_path, "--prompt-template", "raw", "--limit", "8", "--batch-size", "2",
                       "--num-samples", "3", "--max-new-tokens", "24")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, deadline = tmp_path / "generations.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_text(encoding="utf-8").count("\n") >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_script(cmd)
    records = read_lines(path)
    assert len(records) == 24 and set(per_problem_counts(records).values()) == {3}
    assert len({(r["id"], r["sample"]) for r in records}) == 24


@pytest.mark.slow
def test_two_ranks_generate_the_same_samples_as_one(raw_run, tiny_model_dir, tmp_path):
    """torchrun with 2 ranks (gloo): each rank a shard of the problems, gathered into the same
    generations.jsonl as the single-process run, summary computed once."""
    _, records, summary, _ = raw_run
    proc = torchrun(2, "evaluate.py", "--model", tiny_model_dir, "--data", SAMPLE20, "--output-dir", tmp_path,
                    *GEN_ARGS, "--prompt-template", "raw", env={"OMP_NUM_THREADS": "1"})
    assert read_lines(tmp_path / "generations.jsonl") == records
    assert not list(tmp_path.glob("generations.rank*.jsonl"))
    assert proc.stdout.count("pass@1 +- SEM") == 1
    two = json.loads((tmp_path / "summary.json").read_text())["benchmarks"]
    assert two["math500_sample20"]["pass@1"] == summary["benchmarks"]["math500_sample20"]["pass@1"]


# ---------------------------------------------------------------------------------------------
# --responses: grading another engine's output
# ---------------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


RESPONSES = [  # (id, text); three problems, four samples each
    ("toy/1", "<think>\nadd\n</think>\nSo \\boxed{25}."),                     # right ("025")
    ("toy/1", "no thinking block \\boxed{25}"),                              # no </think>: wrong
    ("toy/1", "<think>\nWait, Wait.\n</think>\n\\boxed{24}"),                # wrong
    ("toy/1", "<think>\nx\n</think>\nThe final answer is 25."),               # right
    ("toy/2", "<think></think>\\boxed{0.5}"),
    ("toy/2", "<think></think>\\boxed{\\dfrac12}"),
    ("toy/2", "<think></think>\\boxed{1/2}"),
    ("toy/2", "<think></think>\\boxed{\\frac{2}{4}}"),                      # all four right
    ("toy/3", "<think></think>\\boxed{(2,1)}"),
    ("toy/3", "<think></think>\\boxed{[1,2]}"),
    ("toy/3", "<think></think>"),
    ("toy/3", "<think></think>\\boxed{1,2}"),                               # none right
]


def test_responses_mode_scores_a_hand_made_file(tmp_path):
    """c = 2, 4, 0 of n = 4: pass@1 = 1/2, pass@2 = (5/6 + 1 + 0)/3, pass@4 = 2/3; per-sample
    scores 2/3, 1/3, 1/3, 2/3 give SEM = sqrt(1/27)/2; no model loaded."""
    bench = tmp_path / "toy.jsonl"
    write_jsonl(bench, [{"id": "toy/1", "problem": "p1", "answer": "025"},
                        {"id": "toy/2", "problem": "p2", "answer": "\\frac{1}{2}"},
                        {"id": "toy/3", "problem": "p3", "answer": "(1, 2)", "answers": ["(1, 2)", "(1,2)"]}])
    responses = tmp_path / "gens.jsonl"
    write_jsonl(responses, [{"id": pid, "text": text, "num_tokens": 10 * (i % 4 + 1),
                             **({"finish_reason": "length"} if i == 11 else {})}
                            for i, (pid, text) in enumerate(RESPONSES)])
    out = tmp_path / "out"
    proc = run_script([sys.executable, str(ROOT / "evaluate.py"), "--responses", str(responses), "--data", str(bench),
                       "--output-dir", str(out), "--grading-workers", "1"])
    metrics = json.loads((out / "summary.json").read_text())["benchmarks"]["toy"]
    assert metrics["n_problems"] == 3 and metrics["n_samples"] == 4
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@k"] == pytest.approx({"1": 0.5, "2": (5 / 6 + 1) / 3, "4": 2 / 3})
    assert metrics["sem"] == pytest.approx(math.sqrt(1 / 27) / 2)
    assert metrics["mean_length"] == pytest.approx(25.0)
    assert metrics["truncation_rate"] == pytest.approx(1 / 12)
    assert metrics["wait_per_response"] == pytest.approx(2 / 12)
    graded = read_lines(out / "generations.jsonl")
    assert [r["correct"] for r in graded] == [True, False, False, True] + [True] * 4 + [False] * 4
    assert [r["sample"] for r in graded] == [0, 1, 2, 3] * 3
    assert graded[0]["answer"] == "25" and graded[1]["answer"] is None and graded[0]["gold"] == ["025"]
    assert "toy" in proc.stdout and "50.0 +- 9.6" in proc.stdout


def test_responses_mode_with_inline_golds_and_explicit_fields(tmp_path):
    """Without --data: "gold" and "benchmark" on each line, explicit sample indices."""
    responses = tmp_path / "gens.jsonl"
    write_jsonl(responses, [
        {"benchmark": "b", "id": "q", "sample": 1, "gold": "7", "text": "<think></think>\\boxed{7}"},
        {"benchmark": "b", "id": "q", "sample": 0, "gold": "7", "text": "<think></think>\\boxed{8}"},
        {"benchmark": "c", "id": "r", "gold": ["x=1", "1"], "text": "\\boxed{1}"},
    ])
    out = tmp_path / "out"
    run_script([sys.executable, str(ROOT / "evaluate.py"), "--responses", str(responses), "--output-dir", str(out),
                "--no-require-think-close"])
    benchmarks = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert benchmarks["b"]["pass@1"] == 0.5 and benchmarks["b"]["pass@k"]["2"] == 1.0
    assert benchmarks["c"]["pass@1"] == 1.0  # accepted: --no-require-think-close
    assert benchmarks["b"]["n_samples"] == 2 and benchmarks["c"]["n_samples"] == 1  # n per benchmark


def test_responses_without_gold_is_an_error_naming_the_line(tmp_path):
    """A response whose gold cannot be found says which file, line and id."""
    responses = tmp_path / "gens.jsonl"
    write_jsonl(responses, [{"id": "q", "gold": "1", "text": "x"}, {"id": "nope", "text": "y"}])
    proc = run_script([sys.executable, str(ROOT / "evaluate.py"), "--responses", str(responses),
                       "--output-dir", str(tmp_path / "out")], check=False)
    assert proc.returncode != 0 and f"{responses}:2: no gold" in proc.stderr and "'nope'" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Files, data, hub
# ---------------------------------------------------------------------------------------------

def test_read_generations_drops_only_a_truncated_last_line(tmp_path, capsys):
    """A cut-off last line is dropped with a message; a bad line elsewhere names file and line."""
    good = json.dumps({"benchmark": "b", "id": "1", "sample": 0, "text": "t"})
    path = tmp_path / "g.jsonl"
    path.write_text(good + "\n" + good[:20], encoding="utf-8")
    assert len(evaluate.read_generations(str(path))) == 1
    assert "g.jsonl:2: dropped a truncated last line" in capsys.readouterr().err
    path.write_text(good + "\n{oops\n" + good + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="g.jsonl:2: bad generation record"):
        evaluate.read_generations(str(path))


def test_read_benchmark_validates_fields(tmp_path):
    """Golds: `answers` (list) when present, else `answer`; AMC floats become integers; errors name the line."""
    path = tmp_path / "b.jsonl"
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": 142.0},
                       {"id": "b", "problem": "q", "answer": "x", "answers": ["1", "2"]}])
    problems = evaluate.read_benchmark(str(path), "b")
    assert [p["golds"] for p in problems] == [["142"], ["1", "2"]] and problems[1]["index"] == 1
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": "1"}, {"id": "b", "problem": "", "answer": "1"}])
    with pytest.raises(ValueError, match=r"b.jsonl:2: field 'problem'"):
        evaluate.read_benchmark(str(path), "b")
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": "1"}, {"id": "a", "problem": "q", "answer": "2"}])
    with pytest.raises(ValueError, match="b.jsonl:2: duplicate id 'a'"):
        evaluate.read_benchmark(str(path), "b")


def test_fetch_benchmark_converts_hub_rows(tmp_path, monkeypatch):
    """Hub rows (datasets-server JSON) become our schema; list golds are kept; cached afterwards."""
    pages = {"splits": {"splits": [{"config": "OE_TO_maths_en_COMP", "split": "train"}]},
             "rows": {"rows": [{"row": {"id": 7, "question": "Q?", "final_answer": ["$1$", "$2$"]}}],
                      "num_rows_total": 1}}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(evaluate, "_get_json", lambda url: pages["splits" if "/splits?" in url else "rows"])
    path = evaluate.fetch_benchmark("olympiadbench", str(tmp_path))
    [problem] = evaluate.read_benchmark(path, "olympiadbench")
    assert problem["id"] == "olympiadbench/7" and problem["golds"] == ["$1$", "$2$"] and problem["problem"] == "Q?"
    monkeypatch.setattr(evaluate, "_get_json", None)  # a second call must not download again
    assert evaluate.fetch_benchmark("olympiadbench", str(tmp_path)) == path


def test_benchmark_download_offline_fails_clearly(tmp_path):
    """--benchmark without network (HF_HUB_OFFLINE) exits with a message pointing to --data."""
    proc = run_script([sys.executable, str(ROOT / "evaluate.py"), "--model", "unused", "--benchmark", "aime24",
                       "--output-dir", str(tmp_path)], env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode != 0 and "HF_HUB_OFFLINE" in proc.stderr and "--data" in proc.stderr


def test_bad_arguments_are_rejected_with_the_values(tmp_path):
    """Validation right after parsing names what was wrong."""
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--output-dir", str(tmp_path)])  # no data
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--data", str(tmp_path / "missing.jsonl"), "--model", "m", "--output-dir", "o"])
    args = evaluate.parse_args(["--responses", __file__, "--output-dir", "o", "--n", "4"])
    assert args.n == 4 and args.require_think_close is True and args.prompt_template == "redi"


def test_missing_work_shards_problems_round_robin():
    """Rank r of W owns problems r, r+W, ... counted across benchmarks; done samples are skipped."""
    benchmarks = [("a", [{"benchmark": "a", "id": str(i)} for i in range(3)]),
                  ("b", [{"benchmark": "b", "id": str(i)} for i in range(2)])]
    done = {("a", "0", 1)}
    rank0 = evaluate.missing_work(benchmarks, done, 2, 0, 2)
    rank1 = evaluate.missing_work(benchmarks, done, 2, 1, 2)
    assert [(p["benchmark"], p["id"], j) for p, j in rank0] == [("a", "0", 0), ("a", "2", 0), ("a", "2", 1),
                                                                ("b", "1", 0), ("b", "1", 1)]
    assert [(p["benchmark"], p["id"], j) for p, j in rank1] == [("a", "1", 0), ("a", "1", 1), ("b", "0", 0),
                                                                ("b", "0", 1)]
    assert evaluate.sample_seed(0, "a", "1", 0) != evaluate.sample_seed(0, "a", "1", 1)
    assert evaluate.sample_seed(0, "a", "1", 0) == evaluate.sample_seed(0, "a", "1", 0)


def test_consolidate_merges_rank_parts_without_duplicates(tmp_path):
    """Rank part files and the main file merge into one ordered file; the parts are removed."""
    rec = lambda i, j: {"benchmark": "a", "id": str(i), "index": i, "sample": j, "text": f"{i}-{j}"}  # noqa: E731
    write_jsonl(tmp_path / "generations.jsonl", [rec(1, 0)])
    write_jsonl(tmp_path / "generations.rank0.jsonl", [rec(0, 1), rec(1, 0)])
    write_jsonl(tmp_path / "generations.rank1.jsonl", [rec(0, 0)])
    records = evaluate.consolidate(str(tmp_path), [("a", [])])
    assert [(r["id"], r["sample"]) for r in records] == [("0", 0), ("0", 1), ("1", 0)]
    assert [p.name for p in tmp_path.iterdir()] == ["generations.jsonl"]
