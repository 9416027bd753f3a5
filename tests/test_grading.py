"""Grading (grader.py): answer extraction, equivalence, time limits, the real benchmark files; and
evaluate.py's pass@k, SEM and table.

The pair-by-pair conventions of `is_equivalent` live in test_grading_table.py; this file checks the
machinery around them and the grader's verdicts on every gold answer we ship.
"""
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import evaluate
import grader
from conftest import EVAL_SETS, ROOT
from evaluate import format_table, pass_at_k, sem_over_samples, summarize
from grader import extract_answer, grade_many, grade_response, is_equivalent, judge

LIMIT_S = 5.0  # one is_equivalent call, extraction included, must return within this


def read_jsonl(name):
    path = EVAL_SETS / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# extract_answer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("so $\\boxed{5}$.", "5"),
    ("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("answer: \\boxed 5.", "5"),
    ("$\\boxed 42$", "42"),
    ("\\fbox{7}", "7"),
    ("or $\\framebox{204}$ minutes", "204"),
    ("\\boxed {12}", "12"),
    ("\\boxed{3} then \\boxed{4", "3"),  # a box cut off by the length limit does not count
    ("\\boxed{", None),
    ("no answer here", None),
    ("", None),
    (None, None),
    ("Therefore, the final answer is: $\\frac{3}{4}$. I hope it is correct", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $28 \\%$. I hope it is correct.", "28 \\%"),
    ("So the answer is 7.", "7"),
    ("The final answer is **12**.", "12"),
    ("The final answer is \\[ x = 2 \\]", "x = 2"),
    ("**Answer:** 42", "42"),
    ("Answer: $\\frac{1}{2}$ dollars", "\\frac{1}{2}"),
    ("I think the answer is 3. Wait, no: the answer is 4.", "4"),
])
def test_extract_answer_cases(text, expected):
    """The last complete box wins (nested braces kept); without a box, the "final answer is" phrase."""
    assert extract_answer(text) == expected


def test_extract_answer_reads_only_after_the_thinking_block():
    """With a `</think>`, only the text after it counts: boxes inside the thinking are drafts."""
    assert extract_answer("<think>\n\\boxed{1}\n</think>\nSo \\boxed{2}.") == "2"
    assert extract_answer("<think>\nmaybe \\boxed{1}\n</think>\nI am not sure.") is None


def test_grade_response_requires_think_close_like_rllm():
    """No `</think>` -> wrong (and nothing extracted) unless require_think_close is off."""
    text = "<think>\nthinking that never ends \\boxed{5}"
    assert grade_response(text, ["5"]) == {"answer": None, "correct": False, "timed_out": False,
                                           "grading_error": None}
    assert grade_response(text, ["5"], require_think_close=False)["correct"] is True
    assert grade_response("<think>\nok\n</think>\n\\boxed{05}", ["5"])["correct"] is True


def test_any_gold_counts():
    """A list of golds (Minerva, OlympiadBench `answers`) matches if any one does."""
    assert is_equivalent("4.4e7", ["0.53", "4.4 \\times 10^7\n"])
    assert not is_equivalent("4.4e7", ["0.53", "0.54"])
    assert not is_equivalent("5", [])


@pytest.mark.parametrize("pred,gold", [(None, "5"), ("5", None), (5, "5"), (["5"], "5"), ("5", 5)])
def test_is_equivalent_never_raises_on_odd_types(pred, gold):
    """Odd inputs give a bool, never an exception (numbers are read as their str())."""
    assert is_equivalent(pred, gold) in (True, False)


# ---------------------------------------------------------------------------------------------
# Time limits: adversarial inputs, killable sympy, threads, worker processes
# ---------------------------------------------------------------------------------------------

def on_the_graders_clock(fn, *args, **kwargs):
    """(result, seconds) of fn(...), less the seconds it waited for a sympy child to boot: booting
    is outside every time limit by design (GRADER_STATS["sympy_boot_seconds"] sums it)."""
    boot = grader.GRADER_STATS["sympy_boot_seconds"]
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start - (grader.GRADER_STATS["sympy_boot_seconds"] - boot)


@pytest.mark.parametrize("pred,gold", [
    ("10^{10^{10^{10}}}", "10^{10^{10^{10}}}+1"),
    ("10^{10^{10^{10}}}", "1"),
    ("2^{2^{2^{2^{2}}}}", "3"),
    ("1000000!", "5"),
    ("(x+1)^{100000}", "x"),
    ("{" * 5000 + "1" + "}" * 5000, "1"),
    ("\\frac{" * 400, "1"),
    ("\\sqrt{" * 300 + "2" + "}" * 300, "2"),
    ("x^{x^{x^{x^{x^{x}}}}}", "x^{x^{x^{x^{x}}}}"),
])
def test_adversarial_answers_return_within_the_limit(pred, gold):
    """Power towers, huge factorials, deep nesting: a verdict of "not equivalent" well within 5 s."""
    result, seconds = on_the_graders_clock(is_equivalent, pred, gold)
    assert result is False and seconds < LIMIT_S


@pytest.mark.parametrize("pred,gold,expected", [
    ("9^{9^{9}}", "2", False),  # a base under 10 used to count as a zero-digit number, and was evaluated
    ("1e999999", "1", False),  # sympy takes a minute just to parse it
    ("(\\frac{1}{2})^{10^{10}}", "0", False),  # tiny, but its exact denominator has 3e9 digits
    ("1^{10^{10}}", "1", True),  # cheap after all: 1 and 0 to any power are still evaluated
    ("0^{10^{10}}", "0", True),
])
def test_enormous_numbers_are_refused_not_timed_out(pred, gold, expected):
    """Numbers of more than 10,000 digits are never evaluated: a verdict without a sympy time-out."""
    assert judge(pred, gold) == (expected, False)


def test_huge_response_with_unbalanced_braces_is_graded_quickly():
    """A 200k-character response full of unbalanced braces: extraction + grading within the limit."""
    junk = "Let me think. " * 14000 + "\\boxed{" * 1000 + "}{" * 3000
    text = "<think>\n" + junk + "\n</think>\n" + junk + "\\boxed{42}" + "{" * 2000
    assert len(text) > 200_000
    result, seconds = on_the_graders_clock(grade_response, text, ["42"])
    assert result["correct"] is True and seconds < LIMIT_S
    result, seconds = on_the_graders_clock(grade_response, "<think></think>" + "\\boxed{" * 70000, ["42"])
    assert result["correct"] is False and seconds < LIMIT_S


# A request that sleeps 30 s, given 0.5 s: returning in under SLEEP_BOUND_S shows it was abandoned at
# its deadline, not served to the end; the bound is loose so that a busy 2-core box cannot fail it.
SLEEP_BOUND_S = 10.0
SLEEP_30_S = [["sleep", "30", ""]]
# Put before the sympy child's boot script: the child (and only it) answers one more kind of question,
# ["sleep", SECONDS, ""], by sleeping; a request that outlives any time limit, which grader.py lacks.
SLEEP_QUESTION = (
    "import sys, time; sys.path.insert(0, sys.argv[1]); import grader; answer = grader._sympy_check; "
    "grader._sympy_check = lambda kind, a, b: time.sleep(float(a)) or True if kind == 'sleep' else answer(kind, a, b); ")


@contextlib.contextmanager
def sympy_child_that_can_sleep():
    """Grading, in this process, goes to a fresh sympy child booted with SLEEP_QUESTION (restored after)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grader, "_BOOT", SLEEP_QUESTION + grader._BOOT)
        worker = grader.SympyWorker()
        mp.setattr(grader, "_SYMPY", worker)
        try:
            yield worker
        finally:
            worker.kill()


def test_sympy_overrun_is_killed_and_counted():
    """A sympy request past its deadline is abandoned at the deadline, the child killed, the time-out
    counted, and the next request gets a fresh child."""
    with sympy_child_that_can_sleep() as worker:
        answers, seconds = on_the_graders_clock(worker.ask, SLEEP_30_S, 0.5)
        assert answers is None and 0.5 <= seconds < SLEEP_BOUND_S
        before = grader.GRADER_STATS["timeouts"]
        # a zero limit has passed before the request is read back (1e-4 s raced a 2 ms sympy answer on a busy box)
        assert judge("\\sqrt{4}", "2", timeout=0.0) == (False, True)
        assert grader.GRADER_STATS["timeouts"] == before + 1
        assert judge("\\sqrt{4}", "2", timeout=LIMIT_S) == (True, False)


def test_grading_works_off_the_main_thread():
    """No SIGALRM tricks: the time limit holds in a non-main thread."""
    out = {}

    def work():
        out["kill"] = on_the_graders_clock(grader._SYMPY.ask, SLEEP_30_S, 0.5)
        out["ok"] = judge("2\\sqrt{2}", "\\sqrt{8}", timeout=LIMIT_S)

    with sympy_child_that_can_sleep():
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(30)
    assert out["kill"][0] is None and out["kill"][1] < SLEEP_BOUND_S
    assert out["ok"] == (True, False)


def test_boot_time_does_not_count_against_the_first_question(monkeypatch):
    """A fresh child that takes 3 s to boot still answers a question given 1 s: the clock starts
    once sympy is imported (the first question of a process used to pay the boot and time out)."""
    monkeypatch.setattr(grader, "_BOOT", "import time; time.sleep(3); " + grader._BOOT)
    worker, boot = grader.SympyWorker(), grader.GRADER_STATS["sympy_boot_seconds"]
    try:
        assert worker.ask([["expr", "2*sqrt(2)", "sqrt(8)"]], 1.0) == [True]
        assert grader.GRADER_STATS["sympy_boot_seconds"] - boot >= 3.0
    finally:
        worker.kill()


def test_a_sympy_child_that_cannot_start_is_an_error_not_a_timeout(monkeypatch):
    """A child that exits while booting (sympy missing, say) raises GradingError with its exit code;
    it is not reported as a time-out."""
    monkeypatch.setattr(grader, "_BOOT", "import sys; sys.exit(3)")
    worker = grader.SympyWorker()
    with pytest.raises(grader.GradingError, match="exited with code 3 while starting.*import sympy"):
        worker.ask([["expr", "1", "1"]], 1.0)


def test_a_sympy_child_that_dies_mid_question_is_an_error():
    """A child killed while it answers raises GradingError (not a silent "no", not a time-out), and
    the next request gets a fresh child."""
    with sympy_child_that_can_sleep() as worker:
        worker.start()
        threading.Timer(0.3, worker._proc.kill).start()
        with pytest.raises(grader.GradingError, match=r"exited with code -9 while answering \[\[\"sleep\""):
            worker.ask(SLEEP_30_S, 20.0)
        assert judge("\\sqrt{4}", "2", timeout=LIMIT_S) == (True, False)


def test_sympy_answers_no_for_unreadable_text_and_reports_its_own_errors():
    """Text sympy cannot read (`1/()` raises TypeError in parse_expr) is a plain "no"; our own
    sympy code raising is sent back as an error string."""
    assert grader._SYMPY.ask([["expr", "1/()", "2"], ["expr", "x**", "x"]], LIMIT_S) == [False, False]
    [answer] = grader._SYMPY.ask([["eq", "x", "y"]], LIMIT_S)  # an "eq" question without "="
    assert answer.startswith("ValueError: not enough values to unpack")


def test_judge_raises_what_is_equivalent_and_grade_response_count(monkeypatch, capsys):
    """A grader bug raises out of judge; is_equivalent says False and counts it; grade_response and
    grade_many return it as "grading_error" (one result per item still); the first prints its traceback."""
    def broken(p, g):
        raise RuntimeError("grader bug")

    monkeypatch.setattr(grader, "_decide_scalars", broken)
    monkeypatch.setitem(grader.GRADER_STATS, "errors", 0)
    with pytest.raises(RuntimeError, match="grader bug"):
        judge("3", "4")
    assert is_equivalent("3", "4") is False and grader.GRADER_STATS["errors"] == 1
    assert "Traceback" in capsys.readouterr().err
    assert grade_response("</think>\\boxed{3}", ["4"]) == {"answer": "3", "correct": False, "timed_out": False,
                                                           "grading_error": "RuntimeError: grader bug"}
    results, _ = grade_many([("</think>\\boxed{3}", ["4"]), ("</think>\\boxed{4}", ["4"])], workers=1)
    assert [r["grading_error"] for r in results] == ["RuntimeError: grader bug", None]
    assert [r["correct"] for r in results] == [False, True] and grader.GRADER_STATS["errors"] == 3


def test_a_sympy_error_on_an_open_question_makes_judge_raise(monkeypatch):
    """When sympy raised on a question and nothing else matched, judge raises GradingError naming it
    (the verdict is unknown, not "no"); when another gold matched, the answer is simply right."""
    real = grader._decide_scalars
    monkeypatch.setattr(grader, "_decide_scalars", lambda p, g: ("eq", "x", "y") if g == "y" else real(p, g))
    with pytest.raises(grader.GradingError, match=r"sympy raised on eq question 'x' vs 'y': ValueError"):
        judge("x", "y")
    assert judge("x", ["y", "x"]) == (True, False)


def _grade_in_worker(_):
    with sympy_child_that_can_sleep() as worker:
        killed = worker.ask(SLEEP_30_S, 0.5)
        return killed, judge("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", timeout=LIMIT_S)


def test_grading_works_inside_daemonic_pool_workers():
    """multiprocessing.Pool workers are daemonic (no multiprocessing children allowed): the sympy
    child is a plain subprocess, so the limit and the restart still work there."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_grade_in_worker, range(2))
    assert results == [(None, (True, False))] * 2


def test_grading_works_inside_process_pool_executor():
    """Same under concurrent.futures (the pool grade_many uses)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(_grade_in_worker, range(1))) == [(None, (True, False))]


def test_grade_many_matches_serial_grading_and_reports_speed():
    """The parallel grader returns grade_response's results in input order, with its timing."""
    golds = ["\\frac{1}{2}", "025", "(1,2)", "\\sqrt{8}", "x=3"]
    preds = ["0.5", "25", "(2,1)", "2\\sqrt{2}", "3", "7", "\\frac24", "(1, 2)"]
    items = [(f"<think>t</think> \\boxed{{{p}}}", [g]) for p, g in itertools.product(preds, golds)] * 4
    results, seconds = grade_many(items, workers=2)
    assert seconds > 0 and len(results) == len(items) >= 64
    expected = [grade_response(t, g) for t, g in items]
    assert results == expected
    assert sum(r["correct"] for r in results) == 4 * 6  # 0.5, 25, 2sqrt2, 3, 2/4, (1, 2)


# ---------------------------------------------------------------------------------------------
# pass@k, SEM, summarize, format_table
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pass_at_k_closed_forms(n):
    """k=1 gives c/n; c=n gives 1; c=0 gives 0."""
    for c in range(n + 1):
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    for k in range(1, n + 1):
        assert pass_at_k(n, n, k) == 1.0
        assert pass_at_k(n, 0, k) == 0.0


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_pass_at_k_equals_brute_force_count(n):
    """pass@k = fraction of the k-subsets of the n samples that contain a correct one."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    """c > n or k > n is a caller's bug, reported with the numbers."""
    with pytest.raises(ValueError, match="n=4 c=5 k=1"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="n=4 c=2 k=5"):
        pass_at_k(4, 2, 5)


def test_sem_hand_computed_example():
    """Two problems, three samples: per-sample scores 0.5, 0, 1 -> stdev 0.5 -> SEM 0.5/sqrt(3)."""
    correct = [[1, 0, 1],
               [0, 0, 1]]
    assert sem_over_samples(correct) == pytest.approx(0.5 / math.sqrt(3))
    assert sem_over_samples([[1, 1], [0, 0]]) == 0.0  # every sample index scores the same
    assert sem_over_samples([[1], [0]]) is None


def _record(problem, sample, correct, **extra):
    return {"benchmark": "toy", "id": problem, "sample": sample, "correct": correct, **extra}


def test_summarize_hand_computed():
    """pass@1, SEM, pass@k, length, truncation and "Wait" rate of a 3-problem, 4-sample table."""
    table = {"p1": [1, 0, 0, 1], "p2": [1, 1, 1, 1], "p3": [0, 0, 0, 0]}
    records = [_record(p, j, bool(c), num_tokens=10 * (j + 1),
                       finish_reason="length" if (p, j) == ("p3", 3) else "stop",
                       text="Wait, Wait. wait" if (p, j) == ("p1", 0) else "ok")
               for p, row in table.items() for j, c in enumerate(row)]
    records.append(_record("p1", 4, True))  # beyond n: ignored
    m = summarize(records, 4, {"toy": 6.5})["toy"]
    assert m["n_problems"] == 3 and m["n_samples"] == 4
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@k"]["2"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert m["pass@k"]["4"] == pytest.approx(2 / 3)
    assert m["sem"] == pytest.approx(math.sqrt(1 / 27) / 2)  # scores 2/3, 1/3, 1/3, 2/3
    assert m["mean_length"] == pytest.approx(25.0)
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert m["wait_per_response"] == pytest.approx(2 / 12)  # "Wait" as a word, case-sensitive
    assert m["answers_per_second"] == 6.5
    assert set(m["pass@k"]) == {"1", "2", "4"}


def test_summarize_counts_grading_errors_and_unscored_samples():
    """A response the grader could not decide is wrong and counted in "grading_errors"; samples
    beyond n, or beyond the smallest count of any problem, are counted in "unscored_samples"."""
    records = [_record("p1", 0, True), _record("p1", 1, False, grading_error="GradingError: sympy died"),
               _record("p2", 0, True), _record("p2", 1, True), _record("p1", 2, True)]  # the last: beyond n = 2
    m = summarize(records, 2)["toy"]
    assert m["grading_errors"] == 1 and m["unscored_samples"] == 1 and m["pass@1"] == pytest.approx(0.75)
    m = summarize(records[:3], 2)["toy"]  # p2 has one sample: only the first of each problem is scored
    assert m["n_samples"] == 1 and m["unscored_samples"] == 1 and m["grading_errors"] == 0


def test_k_values_are_powers_of_two_then_n():
    """pass@k is reported for k = 1, 2, 4, ..., and n itself."""
    assert evaluate.k_values(16) == [1, 2, 4, 8, 16]
    assert evaluate.k_values(6) == [1, 2, 4, 6]
    assert evaluate.k_values(1) == [1]


def test_format_table_shows_percentages():
    """One row per benchmark; pass@1 +- SEM in percent; accepts summary.json as a whole too."""
    records = [_record("p1", j, c, num_tokens=5, finish_reason="stop", text="") for j, c in enumerate([1, 0])]
    metrics = summarize(records, 2)
    table = format_table(metrics)
    assert "toy" in table and "50.0 +- 50.0" in table and "pass@2" in table
    assert format_table({"args": {}, "benchmarks": metrics}) == table


# ---------------------------------------------------------------------------------------------
# The real benchmark files
# ---------------------------------------------------------------------------------------------

def test_math500_every_solution_box_is_equivalent_to_its_answer():
    """All 500: the last box of each reference solution is judged equivalent to the gold answer."""
    rows = read_jsonl("math500.jsonl")
    failures = [(r["id"], extract_answer(r["solution"]), r["answer"]) for r in rows
                if not is_equivalent(extract_answer(r["solution"]), r["answer"])]
    assert len(rows) == 500 and failures == []


# Reference solutions that genuinely end without a final answer (their last line is a pointer to
# another solution or a remark), so there is nothing to extract.
AIME_NO_FINAL_ANSWER = {"aime24/2024-I-2", "aime24/2024-I-12", "aime24/2024-I-14", "aime24/2024-I-15"}


def test_aime_solutions_boxes_match_zero_padded_answers():
    """AIME golds are zero-padded ("025"); the solutions' boxes (`\\boxed`, `\\framebox`) are not."""
    rows = read_jsonl("aime24.jsonl")
    failures = {r["id"] for r in rows if not is_equivalent(extract_answer(r["solution"]), r["answer"])}
    assert failures == AIME_NO_FINAL_ANSWER
    assert is_equivalent("25", "025") and is_equivalent("73", "073")


# Minerva rows whose reference solution box is not a usable answer.
MINERVA_SOLUTION_BOX_UNUSABLE = {
    "minerva/5": "the solution's box holds Python code, `np.arcsin(10/13)`",
    "minerva/72": "the solution's box spans two math spans (`+$ $`) and uses `\\dot{x}_0`",
}


def test_minerva_consistent_rows_match_their_solution_box():
    """Rows the README marks consistent: rllm's gold and the solution's last box are equivalent,
    across notations such as `4.4e7` vs `4.4 \\times 10^7` and `41.8^\\circ`."""
    rows = [r for r in read_jsonl("minerva.jsonl") if r["meta"]["gold_check"] == "consistent"]
    failures = {r["id"] for r in rows if not is_equivalent(r["meta"]["solution_last_boxed"], r["answers"])}
    assert len(rows) == 232 and failures == set(MINERVA_SOLUTION_BOX_UNUSABLE)


def test_minerva_flagged_rows_are_judged_different():
    """The 40 rows the README flags (wrong sub-question, genuine disagreement) are NOT equivalent:
    the grader does not paper over real differences such as 0.264 vs 0.265."""
    rows = [r for r in read_jsonl("minerva.jsonl") if r["meta"]["gold_check"] != "consistent"]
    agreeing = {r["id"] for r in rows if is_equivalent(r["meta"]["solution_last_boxed"], r["answers"])}
    assert len(rows) == 40 and agreeing == set()


@pytest.mark.parametrize("name", ["aime24.jsonl", "amc23.jsonl", "minerva.jsonl", "olympiadbench.jsonl"])
def test_every_gold_parses_and_is_self_equivalent(name):
    """Each gold, verbatim (`$...$`, trailing newline, leading zeros), equals itself and its
    normalised form, and reduces to a non-empty answer."""
    for row in read_jsonl(name):
        for gold in row.get("answers") or [row["answer"]]:
            assert grader.normalize_answer(gold), (row["id"], gold)
            assert is_equivalent(gold, gold), (row["id"], gold)
            assert is_equivalent(grader.normalize_answer(gold), gold), (row["id"], gold)


def test_amc_integer_answers_match_rllm_float_strings():
    """rllm compared against str(142.0) == "142.0"; our golds are "142": both forms agree."""
    for row in read_jsonl("amc23.jsonl"):
        assert is_equivalent(str(row["answer_raw"]), row["answer"]), row["id"]
        assert is_equivalent(row["answer"], str(row["answer_raw"])), row["id"]
        assert not is_equivalent(str(int(row["answer_raw"]) + 1), row["answer"]), row["id"]


def test_olympiadbench_multi_answers_any_order():
    """Multi-answer golds (`$69$,$84$`, tuples lists) accept any order, reject a missing value."""
    rows = {r["id"]: r for r in read_jsonl("olympiadbench.jsonl")}
    multi = [r for r in rows.values() if r["meta"]["is_multiple_answer"] and "," in r["answer"]]
    assert len(multi) > 50
    for row in multi:
        parts = grader._split_top(grader.normalize_answer(row["answer"]), ",")
        if len(parts) < 2 or any("=" in p for p in parts):
            continue
        assert is_equivalent(", ".join(reversed(parts)), row["answers"]), row["id"]
        assert not is_equivalent(", ".join(parts[1:]), row["answers"]), row["id"]


# ---------------------------------------------------------------------------------------------
# grader.py stands alone; evaluate re-exports it and stays cheap to import
# ---------------------------------------------------------------------------------------------

def test_grader_alone_imports_no_torch_and_boots_its_own_sympy_worker(tmp_path):
    """grader.py copied alone into an empty folder grades with sympy: its worker boots from
    grader.py (no evaluate.py there to re-run), and the grading process loads no torch,
    transformers or sympy."""
    shutil.copy(ROOT / "grader.py", tmp_path / "grader.py")
    code = ("import sys\nimport grader\n"
            "assert grader.judge('2\\\\sqrt{2}', '\\\\sqrt{8}') == (True, False)\n"
            "assert grader._SYMPY._proc is not None, 'sympy never asked'\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sympy', 'evaluate') if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_evaluate_re_exports_the_grader():
    """Scripts keep importing the grader's API from evaluate: the very same objects."""
    for name in ("extract_answer", "normalize_answer", "judge", "is_equivalent", "grade_response", "grade_many",
                 "GRADER_STATS", "DEFAULT_TIMEOUT"):
        assert getattr(evaluate, name) is getattr(grader, name), name
    assert evaluate.is_equivalent("\\frac{2}{4}", "0.5") and evaluate.extract_answer("</think>\\boxed{7}") == "7"


def test_evaluate_import_and_help_do_not_import_torch():
    """`import evaluate` and `--help` stay cheap: no torch, no transformers (the sampling
    functions import them when called)."""
    code = ("import sys\nimport evaluate\n"
            "try:\n    evaluate.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--responses" in proc.stdout and "--prompt-template" in proc.stdout
