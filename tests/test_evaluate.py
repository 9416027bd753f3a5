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
from conftest import EVAL_SETS, ROOT, run_script, torchrun
from cli import InputError

SAMPLE20 = EVAL_SETS / "math500_sample20.jsonl"
GEN_ARGS = ["--num-samples", "2", "--max-new-tokens", "16", "--batch-size", "16", "--seed", "3"]
RECORD_FIELDS = {"benchmark", "id", "index", "sample", "seed", "text", "answer", "gold", "correct", "timed_out",
                 "grading_error", "finish_reason", "num_tokens"}


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


def _no_cache_reference(model, ids, seed, max_new, stops):
    """The plainest sampler: the whole sequence through the model at every step, batch 1."""
    import torch

    gen, out = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for _ in range(max_new):
            out.append(evaluate.sample_next(model(torch.tensor([ids + out])).logits[:, -1], 0.6, 0.95, [gen]).item())
            if out[-1] in stops:
                return out, "stop"
    return out, "length"


def test_every_pooled_sample_equals_the_sample_generated_alone(tiny_model_dir):
    """Continuous batching (3 rows refilled from 7 jobs of uneven prompts, sync every 4 tokens): each
    record equals that job sampled alone in the pool, and the no-cache reference (CPU, fp32)."""
    import torch

    model, tokenizer = evaluate.load_model(str(tiny_model_dir), torch.device("cpu"), "float32")
    stops = evaluate.stop_token_ids(model, tokenizer)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in ("What is 2+2?", "Compute the sum of the first ten odd numbers, please.", "hi")]
    jobs = [(i, prompts[i % 3], 100 + i) for i in range(7)]
    pooled = {k: (ids, reason) for k, ids, reason in evaluate.sample_pool(model, jobs, 40, 0.6, 0.95, stops, 3,
                                                                          sync_every=4)}
    assert sorted(pooled) == list(range(7))
    for key, ids, seed in jobs:
        alone = next(evaluate.sample_pool(model, [(key, ids, seed)], 40, 0.6, 0.95, stops, 1))
        assert pooled[key] == alone[1:] == _no_cache_reference(model, ids, seed, 40, stops)
    assert pooled[1] != pooled[4]  # the same prompt, another seed: another sample


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
            "wait_per_response", "grading_timeouts", "grading_errors", "unscored_samples",
            "answers_per_second"} <= set(metrics)
    assert metrics["grading_errors"] == 0 and metrics["unscored_samples"] == 0
    assert metrics["n_problems"] == 20 and metrics["n_samples"] == 2 and set(metrics["pass@k"]) == {"1", "2"}
    assert metrics["mean_length"] == pytest.approx(sum(r["num_tokens"] for r in records) / 40)
    assert metrics["truncation_rate"] == pytest.approx(sum(r["finish_reason"] == "length" for r in records) / 40)
    assert summary["args"]["n"] == 2 and summary["args"]["prompt_template"] == "raw"
    assert summary["versions"]["torch"] and summary["versions"]["sympy"]
    assert "math500_sample20" in stdout and "pass@1 +- SEM" in stdout


@pytest.mark.slow
def test_redi_template_run(tiny_model_dir, tmp_path):
    """The default (paper) template runs end to end and is recorded in the summary."""
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
    """SIGKILL a run in the middle of sampling (some but not all 24 samples written, no summary yet),
    restart it: it generates exactly the missing ones, ending with n per problem and no duplicate."""
    cmd = evaluate_cmd(tiny_model_dir, tmp_path, "--prompt-template", "raw", "--limit", "8", "--batch-size", "2",
                       "--num-samples", "3", "--max-new-tokens", "24", "--grading-workers", "1")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, deadline = tmp_path / "generations.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    written = path.read_bytes().count(b"\n")  # complete lines; a half-written one is dropped on resume
    assert 4 <= written < 24 and not (tmp_path / "summary.json").exists(), f"the kill did not land mid-run: {written}"
    resumed = run_script(cmd)
    assert f"{written}/24 samples already in {tmp_path}/generations.jsonl; generating {24 - written} on 1" \
        in resumed.stdout
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
    return path


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


@pytest.mark.parametrize("mode, expected", [("strict", 0.5), ("lenient", 1.0)])
def test_answer_extraction_reaches_the_grader(tmp_path, mode, expected):
    """--answer-extraction: several final boxes are one answer in both modes; unboxed final math only in lenient."""
    responses = tmp_path / "gens.jsonl"
    write_jsonl(responses, [
        {"benchmark": "b", "id": "q", "sample": 0, "gold": "1, 2", "text": "<think></think>$\\boxed{1}, \\boxed{2}$"},
        {"benchmark": "b", "id": "q", "sample": 1, "gold": "1, 2", "text": "<think></think>So the roots are $1, 2$."},
    ])
    proc = evaluate_responses(responses, tmp_path / "out", "--answer-extraction", mode)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"]["b"]["pass@1"] == expected


def evaluate_responses(path, out, *extra):
    """`evaluate.py --responses PATH` as a user runs it; returns the CompletedProcess (any exit code)."""
    return run_script([sys.executable, str(ROOT / "evaluate.py"), "--responses", str(path), "--output-dir", str(out),
                       "--grading-workers", "1", *extra], check=False)


def assert_input_error(proc, message):
    """Exit 2 with one `evaluate.py: error: MESSAGE...` line on stderr, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"evaluate.py: error: {message}" in proc.stderr, proc.stderr


def main_input_error(argv, capsys, message):
    """evaluate.main(argv) in this process (the CLI's own error handling, without a second torch
    import per case): exit 2 and `evaluate.py: error: MESSAGE...` on stderr."""
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert f"evaluate.py: error: {message}" in err and "Traceback" not in err, err


GOOD = {"id": "q", "gold": "1", "text": "</think> \\boxed{1}"}
BAD_RESPONSE_LINES = {  # name: (second line of the file, bytes; the error after "FILE:2: ")
    "not_utf8": (b'{"id": "q", "text": "\xff\xfe"}', "not valid UTF-8 (invalid start byte at byte 21)"),
    "not_json": (b'{"id": "q" "text": "t"}', "invalid JSON: Expecting ',' delimiter at column 12"),
    "a_list": (b'["q", "text"]', 'expected a JSON object {"id", "text", ...}, found list ["q", "text"]'),
    "string_sample": (b'{"id": "q", "text": "t", "gold": "1", "sample": "1"}',
                      "field 'sample': expected an integer >= 0, found string \"1\""),
    "negative_sample": (b'{"id": "q", "text": "t", "gold": "1", "sample": -1}',
                        "field 'sample': expected an integer >= 0, found number -1"),
    "boolean_sample": (b'{"id": "q", "text": "t", "gold": "1", "sample": true}',
                       "field 'sample': expected an integer >= 0, found boolean true"),
    "null_id": (b'{"id": null, "text": "t", "gold": "1"}',
                "field 'id': expected a non-empty string or an integer, found null"),
    "no_id": (b'{"text": "t", "gold": "1"}', "field 'id': expected a non-empty string or an integer, found no such"),
    "number_text": (b'{"id": "q", "text": 5, "gold": "1"}', "field 'text': expected a string (the response), found"),
    "dict_gold": (b'{"id": "q", "text": "t", "gold": {"a": 1}}', "field 'gold': expected a string, a number, or a"),
    "bad_finish": (b'{"id": "q", "text": "t", "gold": "1", "finish_reason": "eos"}',
                   "field 'finish_reason': expected \"stop\" or \"length\", found string \"eos\""),
    "no_gold": (b'{"id": "nope", "text": "t"}', "field 'gold': expected a gold answer: a 'gold' field, or id 'nope'"),
}


def bad_responses_file(tmp_path, name):
    """(a responses file whose line 2 is BAD_RESPONSE_LINES[name], the expected message)."""
    line, message = BAD_RESPONSE_LINES[name]
    responses = tmp_path / "gens.jsonl"
    responses.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    return responses, f"{responses}:2: {message}"


@pytest.mark.parametrize("name", sorted(BAD_RESPONSE_LINES))
def test_a_bad_responses_line_is_one_clear_error(tmp_path, name, capsys):
    """Each malformed row stops the run before grading: exit 2, FILE:LINE and the field, what was
    expected and what was found, no summary written."""
    responses, message = bad_responses_file(tmp_path, name)
    main_input_error(["--responses", responses, "--output-dir", tmp_path / "out"], capsys, message)
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("name", ["not_utf8", "a_list", "string_sample", "negative_sample", "null_id", "empty"])
def test_bad_responses_files_as_a_user_meets_them(tmp_path, name):
    """Run as a user runs it (a subprocess): non-UTF-8 bytes, a list for a row, "sample": "1", a
    negative sample, a null id, an empty file: exit 2, one line naming file, line and field, no traceback."""
    if name == "empty":
        responses, message = tmp_path / "gens.jsonl", f"{tmp_path / 'gens.jsonl'}: no responses (the file is empty)"
        responses.write_text("\n  \n", encoding="utf-8")
    else:
        responses, message = bad_responses_file(tmp_path, name)
    assert_input_error(evaluate_responses(responses, tmp_path / "out"), message)


def test_duplicate_responses_are_skipped_and_counted(tmp_path):
    """A repeated (benchmark, id, sample) is not graded twice: the first row counts, the later ones
    are counted by name in summary.json and in the printed report, with their lines."""
    responses = tmp_path / "gens.jsonl"
    write_jsonl(responses, [{"id": "q", "gold": "1", "text": "</think>\\boxed{1}"},             # sample 0
                            {"id": "q", "gold": "1", "sample": 0, "text": "</think>\\boxed{2}"},  # duplicate
                            {"id": "q", "gold": "1", "sample": 1, "text": "</think>\\boxed{3}"},
                            {"id": "q", "gold": "1", "sample": 1, "text": "</think>\\boxed{1}"}])  # duplicate
    proc = evaluate_responses(responses, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["responses"] == {"file": str(responses), "rows": 4, "graded": 2, "problems_without_response": 0,
                                    "skipped": [{"name": "duplicate_response", "reason": evaluate.RESPONSE_SKIPS[
                                        "duplicate_response"], "count": 2, "lines": [2, 4]}]}
    assert summary["benchmarks"]["responses"]["pass@1"] == 0.5  # samples 0 and 1 as first written
    assert f"{responses}: skipped 2 row(s), duplicate_response (" in proc.stdout and "lines 2, 4" in proc.stdout
    assert [r["answer"] for r in read_lines(tmp_path / "out" / "generations.jsonl")] == ["1", "3"]


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
    with pytest.raises(InputError, match=r"g.jsonl:2: expected a generation record .*, found a line that is not "
                                         r"JSON: b'\{oops'"):
        evaluate.read_generations(str(path))


def test_read_benchmark_validates_fields(tmp_path):
    """Golds: `answers` (list) when present, else `answer`; AMC floats become integers; errors name the line."""
    path = tmp_path / "b.jsonl"
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": 142.0},
                       {"id": "b", "problem": "q", "answer": "x", "answers": ["1", "2"]}])
    problems = evaluate.read_benchmark(str(path), "b")
    assert [p["golds"] for p in problems] == [["142"], ["1", "2"]] and problems[1]["index"] == 1
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": "1"}, {"id": "b", "problem": "", "answer": "1"}])
    with pytest.raises(InputError, match=r"b.jsonl:2: field 'problem': expected a non-empty string, found string"):
        evaluate.read_benchmark(str(path), "b")
    write_jsonl(path, [{"id": "a", "problem": "p", "answer": "1"}, {"id": "a", "problem": "q", "answer": "2"}])
    with pytest.raises(InputError, match="b.jsonl:2: field 'id': expected an id not used by an earlier row, "
                                         "found duplicate id 'a'"):
        evaluate.read_benchmark(str(path), "b")


def test_benchmark_files_match_the_checksums_in_their_readme():
    """Every file in eval_sets/ is listed in eval_sets/README.md with its row count and sha256, and matches."""
    import hashlib
    import re

    table = dict(re.findall(r"^\| `(\w+\.jsonl)` \| .*\| `([0-9a-f]{64})` \|$",
                            (EVAL_SETS / "README.md").read_text(), re.M))
    files = sorted(p.name for p in EVAL_SETS.glob("*.jsonl"))
    assert files == sorted(table) and {f"{n}.jsonl" for n in evaluate.BENCHMARK_NAMES} <= set(files)
    for name in files:
        assert hashlib.sha256((EVAL_SETS / name).read_bytes()).hexdigest() == table[name], name


def test_benchmark_by_name_reads_the_repos_copy_offline(tmp_path, monkeypatch):
    """--benchmark NAME loads eval_sets/NAME.jsonl (the paper's file), the same problems as --data; no network."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("--benchmark must not touch the network")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name, rows in [("aime24", 30), ("minerva", 272)]:
        by_name = evaluate.load_benchmarks(evaluate.parse_args(
            ["--model", "m", "--benchmark", name, "--output-dir", str(tmp_path)]))
        by_file = evaluate.load_benchmarks(evaluate.parse_args(
            ["--model", "m", "--data", str(EVAL_SETS / f"{name}.jsonl"), "--output-dir", str(tmp_path)]))
        assert by_name == by_file and len(by_name[0][1]) == rows


BAD_OPTIONS = [  # (options after --responses FILE --output-dir o, the message argparse prints)
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--n", "0"], "--n, --batch-size and --max-new-tokens must be >= 1, got 0, auto, 32768"),
    (["--batch-size", "-1"], "--n, --batch-size and --max-new-tokens must be >= 1, got 16, -1, 32768"),
    (["--temperature", "nan"], "need --temperature >= 0 and 0 < --top-p <= 1, got nan, 0.95"),
    (["--top-p", "1.5"], "need --temperature >= 0 and 0 < --top-p <= 1, got 0.6, 1.5"),
    (["--grading-timeout", "0"], "--grading-timeout must be > 0 seconds, got 0.0"),
    (["--grading-workers", "0"], "--grading-workers must be >= 1, got 0"),
    (["--dist-timeout-min", "-5"], "--dist-timeout-min must be > 0, got -5.0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[o[0] for o, _ in BAD_OPTIONS])
def test_bad_option_values_are_rejected_with_the_values(options, message, capsys):
    """Validation right after parsing names the option and the value it got (argparse: exit 2)."""
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--responses", __file__, "--output-dir", "o", *options])
    assert f"evaluate.py: error: {message}" in capsys.readouterr().err


def test_missing_inputs_are_rejected_before_any_work(tmp_path, capsys):
    """No data at all, a --data file that does not exist; valid options parse to their defaults."""
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--output-dir", str(tmp_path)])
    assert "give --data BENCH.jsonl or --benchmark NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--data", str(tmp_path / "missing.jsonl"), "--model", "m", "--output-dir", "o"])
    assert f"evaluate.py: error: no such file: {tmp_path / 'missing.jsonl'}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--data", __file__, "--output-dir", "o"])
    assert "--model is required unless --responses is given" in capsys.readouterr().err
    args = evaluate.parse_args(["--responses", __file__, "--output-dir", "o", "--n", "4"])
    assert args.n == 4 and args.require_think_close is True and args.prompt_template == "redi"


def _cli_case(case, tmp_path, tiny_model_dir):
    """(evaluate.py arguments, expected message) for one bad-input case of test_cli_input_errors."""
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q", "problem": "p", "answer": "1"}])
    run = ["--data", str(bench), "--output-dir", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    bad = tmp_path / "bad.jsonl"
    if case == "data_row_is_a_list":
        bad.write_text('{"id": "q", "problem": "p", "answer": "1"}\n[1, 2]\n', encoding="utf-8")
        return [*run, "--data", str(bad)], f"{bad}:2: expected a JSON object {{\"id\", \"problem\", \"answer\"}}"
    if case == "data_not_utf8":
        bad.write_bytes(b'{"id": "q", "problem": "\xe9", "answer": "1"}\n')
        return [*run, "--data", str(bad)], f"{bad}:1: not valid UTF-8"
    if case == "data_answers_not_a_list":
        bad.write_text('{"id": "q", "problem": "p", "answers": {"a": 1}}\n', encoding="utf-8")
        return [*run, "--data", str(bad)], f"{bad}:1: field 'answers': expected a non-empty list of strings or numbers"
    if case == "data_empty":
        bad.write_text("", encoding="utf-8")
        return [*run, "--data", str(bad)], f"{bad}: no problems (the file is empty)"
    if case == "model_dir_missing":
        return [*run[:-1], str(tmp_path / "no_model")], f"--model {tmp_path / 'no_model'}: no such directory"
    if case == "model_dir_without_config":
        return [*run[:-1], str(tmp_path)], f"--model {tmp_path}: no config.json; not a Hugging Face model directory"
    if case == "model_hub_id_offline":
        return [*run[:-1], "nobody/no-such-model"], "--model nobody/no-such-model: cannot load a model and tokenizer"
    if case == "output_dir_is_a_file":
        return [*run[:2], "--output-dir", str(bench), *run[4:]], f"--output-dir {bench}: {bench} exists and is not a"
    if case == "output_dir_under_a_file":
        return ([*run[:2], "--output-dir", str(bench / "out"), *run[4:]],
                f"--output-dir {bench / 'out'}: cannot create the directory {bench / 'out'} (Not a directory)")
    assert case == "resumed_generations_corrupt"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "generations.jsonl").write_text('{"oops": 1}\n{"also": 2}\n', encoding="utf-8")
    return run, f"{tmp_path / 'out' / 'generations.jsonl'}:1: expected a generation record"


CLI_CASES = ["data_row_is_a_list", "data_not_utf8", "data_answers_not_a_list", "data_empty", "model_dir_missing",
             "model_dir_without_config", "model_hub_id_offline", "output_dir_is_a_file", "output_dir_under_a_file",
             "resumed_generations_corrupt"]


@pytest.mark.parametrize("case", [c for c in CLI_CASES if c != "model_hub_id_offline"])
def test_cli_input_errors_stop_before_any_work(case, tmp_path, tiny_model_dir, capsys):
    """Every kind of bad input to the generation CLI (a benchmark file, --model, --output-dir, a damaged
    OUT/generations.jsonl) ends with exit 2 and one `evaluate.py: error:` line, before any model loads."""
    args, message = _cli_case(case, tmp_path, tiny_model_dir)
    main_input_error([*args, *GEN_ARGS], capsys, message)


@pytest.mark.parametrize("case", ["data_row_is_a_list", "model_dir_missing", "model_hub_id_offline",
                                  "output_dir_under_a_file"])
def test_cli_input_errors_as_a_user_meets_them(case, tmp_path, tiny_model_dir):
    """The same, as a subprocess, including a hub id that cannot load (offline), which fails only once
    transformers tries: exit 2, one line, no traceback."""
    args, message = _cli_case(case, tmp_path, tiny_model_dir)
    proc = run_script([sys.executable, str(ROOT / "evaluate.py"), *args, *GEN_ARGS], check=False)
    assert_input_error(proc, message)


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
