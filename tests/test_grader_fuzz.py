"""Fuzzing the grader: random and adversarial LaTeX never makes it raise, hang or lose a result.

Hypothesis draws (prediction, gold) pairs from a LaTeX-ish alphabet plus shapes known to hurt
graders: nested braces, power towers (`10^{10^{10}}`), `\\frac` without arguments, an unclosed
`\\left(`, `\\boxed` inside `\\boxed`, unicode, and very long strings. Derandomized (no example
database), so CI sees the same ~3,600 examples on every run: about 30 s of CPU, 45-50 s wall on a
shared 2-core box (marked slow). The time limit is checked on the grader's own clock
(`on_the_graders_clock`): waiting for a sympy child to boot after a kill is outside every limit by
design.
"""
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import grader
from test_grading import on_the_graders_clock

TIMEOUT = 1.0  # the sympy limit given to each call
MARGIN = 4.0  # in-process work (normalising, matching) and killing the child, on a busy 2-core box
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = ["0", "1", "2", "7", "10", "x", "y", "n", "e", "i", "\\pi", "+", "-", "*", "/", "^", "_", "=", ",",
          ".", "!", "|", "&", "%", "$", "(", ")", "[", "]", "{", "}", "\\{", "\\}", " ", "\\\\", "\\frac",
          "\\dfrac", "\\sqrt", "\\sqrt[3]", "\\left(", "\\right)", "\\left.", "\\boxed{", "\\text{", "\\mbox{ cm}",
          "\\cdot", "\\times", "\\infty", "\\pm", "\\cup", "\\in", "\\le", "\\sin", "\\log_", "\\ln", "\\binom",
          "\\begin{pmatrix}", "\\end{pmatrix}", "\\circ", "\\%", "\\!", "\\,", "\\", "π", "√", "∞", "≤", "−", "×",
          "²", "é", "中", "\u200b"]

latex_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
power_tower = st.integers(1, 6).map(lambda k: "10^{" * k + "10" + "}" * k)
nested_braces = st.integers(1, 3000).map(lambda k: "{" * k + "1" + "}" * k)
unbalanced = st.sampled_from(["\\frac", "\\frac{", "\\frac{1}", "\\frac{}{}", "\\left(", "\\left( 1, 2", "\\sqrt",
                              "\\sqrt[", "{", "}", "\\boxed{", "^", "_", "x^", "2^{", "|x", "\\begin{pmatrix}1"])
boxed_in_boxed = st.integers(1, 50).map(lambda k: "\\boxed{" * k + "3" + "}" * k)
long_string = st.builds(lambda s, k: s * k, latex_soup, st.integers(1, 2000))
huge_numbers = st.sampled_from(["1000000!", "(10^{100})!", "2^{2^{2^{2^{2}}}}", "9^{9^{9}}", "10^{-10^{10}}",
                                "(x+1)^{100000}", "1.5^{100000}", "\\sqrt{" * 200 + "2" + "}" * 200, "1e999999",
                                "10^{10000}", "x^{x^{x^{x^{x}}}}", "e^{e^{e^{100}}}"])
# Mostly soup (cheap, the widest net); the costly shapes (each can hold sympy for its whole limit) less often.
answers = st.one_of(latex_soup, latex_soup, latex_soup, latex_soup, st.text(max_size=30), unbalanced, boxed_in_boxed,
                    long_string, power_tower, nested_braces, huge_numbers)
golds = st.one_of(answers, st.lists(answers, min_size=1, max_size=3))


@pytest.mark.slow
@settings(FUZZ, max_examples=3000)
@given(pred=answers, gold=golds)
@example(pred="\\mbox{ cm}!!", gold="10^{10}")  # found by this fuzz: sympy raised evaluating c*m!! at a point
def test_judge_never_raises_and_returns_within_its_limit(pred, gold):
    """judge decides every pair (a bool and a time-out flag, never an exception) within TIMEOUT + MARGIN."""
    (equivalent, timed_out), seconds = on_the_graders_clock(grader.judge, pred, gold, TIMEOUT)
    assert equivalent in (True, False) and timed_out in (True, False)
    assert seconds < TIMEOUT + MARGIN, (pred, gold, seconds)


@pytest.mark.slow
@settings(FUZZ, max_examples=500)
@given(text=st.one_of(answers, long_string.map(lambda s: "<think>" + s + "</think>" + s)), gold=golds)
def test_grade_response_never_reports_an_error(text, gold):
    """Whole responses (any text, thinking block or not) grade without error, within the limit."""
    result, seconds = on_the_graders_clock(grader.grade_response, text, gold, False, TIMEOUT)
    assert result["grading_error"] is None, (text, gold, result)
    assert seconds < TIMEOUT + MARGIN, (text, gold, seconds)


@pytest.mark.slow
@settings(FUZZ, max_examples=2)
@given(items=st.lists(st.tuples(answers.map(lambda a: f"</think>\\boxed{{{a}}}"), golds), min_size=70, max_size=120))
def test_grade_many_returns_one_result_per_item(items):
    """A batch of fuzzed responses, graded by a 2-worker pool, comes back whole, in order, error-free."""
    results, seconds = grader.grade_many(items, require_think_close=True, timeout=TIMEOUT, workers=2)
    assert len(results) == len(items) and seconds > 0
    assert [r["answer"] for r in results] == [grader.extract_answer(text) for text, _ in items]  # in order
    assert [r["grading_error"] for r in results] == [None] * len(items)
    assert all(set(r) == {"answer", "correct", "timed_out", "grading_error"} for r in results)
