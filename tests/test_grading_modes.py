"""What the final answer of a response is: several boxes as one answer, and the two extraction modes.

"strict" (the default) reads the final box(es) after `</think>`, else an explicit "the answer is X";
"lenient" also reads the math a box-free response ends with. Verdicts on whole responses, row by
row, live in test_grading_table.py (SEVERAL_BOXES, UNBOXED_FINAL_ANSWERS); these are the claims
behind them, at the level of the extracted answer string.
"""
import json
import time

import pytest

import grader
from grader import extract_answer, grade_many, grade_response

THINK = "<think>\nLet me work it out.\n</think>\n\n"


@pytest.mark.parametrize("text,expected", [
    ("$\\boxed{1}, \\boxed{2}$", "1, 2"),
    ("$\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}$.", "(2,2), (6,2)"),
    ("$\\boxed{1}$, $\\boxed{2}$, and $\\boxed{3}$", "1, 2, 3"),
    ("\\[\n\\boxed{-2} \\quad \\text{and} \\quad \\boxed{5}\n\\]", "-2, 5"),
    ("\\boxed 1, \\boxed 2", "1, 2"),
    ("**\\boxed{1}** and **\\boxed{2}**", "1, 2"),
])
def test_boxes_joined_by_separators_are_one_answer(text, expected):
    """Consecutive boxes with only commas, "and", spacing or math delimiters between them are one list."""
    assert extract_answer(THINK + text) == expected


@pytest.mark.parametrize("text,expected", [
    ("\\[ x = \\boxed{3}, \\quad y = \\boxed{4} \\]", "x = 3, y = 4"),
    ("\\begin{aligned} x &= \\boxed{3} \\\\ y_1 &= \\boxed{4} \\end{aligned}", "x = 3, y_1 = 4"),
    ("$x = \\boxed{3}$, $\\boxed{4}$", "x = 3, 4"),
])
def test_each_joined_box_keeps_its_name(text, expected):
    """A joined box right after `x =` is the part `x = 3` (its name kept, spacing made uniform)."""
    assert extract_answer(THINK + text) == expected


def test_swapped_named_values_are_wrong():
    """`x=\\boxed{4}, y=\\boxed{3}` does not match `x=3, y=4`: the names keep the values apart."""
    assert grade_response(THINK + "$x=\\boxed{4}, y=\\boxed{3}$", ["x=3, y=4"])["correct"] is False
    assert grade_response(THINK + "$x=\\boxed{3}, y=\\boxed{4}$", ["x=3, y=4"])["correct"] is True


@pytest.mark.parametrize("text,expected", [
    ("First $\\boxed{12}$. Checking again, the final answer is $\\boxed{13}$.", "13"),
    ("Part one gives $\\boxed{3}$; thus $\\boxed{4}$.", "4"),
    ("$\\boxed{1}$, $a+b = \\boxed{5}$", "5"),  # `a+b =` is no name: prose
    ("$\\boxed{1}$" + " " * 300 + "$\\boxed{2}$", "2"),  # more than MAX_JOIN_GAP apart
])
def test_text_between_boxes_ends_the_final_answer(text, expected):
    """An intermediate box followed by any other text is not part of the final answer: the last box counts."""
    assert extract_answer(THINK + text) == expected


def test_or_between_boxes_keeps_only_the_last():
    """A box after "or" is a second form of the same value (MATH writes `15\\frac{39}{40}`, or `\\frac{639}{40}`)."""
    text = "$d = \\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{639}{40}}$ inches."
    assert extract_answer(THINK + text) == "\\frac{639}{40}"


def test_boxes_in_the_thinking_never_join_the_final_answer():
    """A box before `</think>` is a draft, even when only a comma would separate it from the final box."""
    assert extract_answer("<think>\nmaybe $\\boxed{1}$,\n</think>\n$\\boxed{2}$") == "2"


@pytest.mark.parametrize("text,expected", [
    ("so $x = \\boxed{3}$.", "3"),  # no name added to a lone box
    ("$\\boxed{\\boxed{3}}$", "3"),  # a box inside a box is not a second part
    ("$\\boxed{a \\boxed{b} c}$", "b"),
    ("$\\boxed{1, 2}$", "1, 2"),
])
def test_a_single_box_is_extracted_as_before(text, expected):
    """One box (or nested boxes) gives its content alone, exactly as last-box extraction did."""
    assert extract_answer(THINK + text) == expected


@pytest.mark.parametrize("text,gold", [
    ("$\\boxed{1}, \\boxed{3}$", "1, 2"),
    ("$\\boxed{1}, \\boxed{2}, \\boxed{3}$", "1, 2"),
    ("$\\boxed{1}, \\boxed{2}$", "2"),
])
def test_a_wrong_or_missing_or_extra_part_makes_the_answer_wrong(text, gold):
    """All boxed parts are graded together: none may be wrong, missing or extra (`1, 2` is not `2`)."""
    assert grade_response(THINK + text, [gold])["correct"] is False


def test_strict_is_the_default_and_ignores_unboxed_final_math():
    """The default mode is "strict": without a box or an "answer is" phrase it takes no unboxed final math."""
    assert grader.DEFAULT_EXTRACTION == "strict" and grader.EXTRACTION_MODES == ("strict", "lenient")
    assert extract_answer(THINK + "Therefore $x = 7$.") is None
    assert extract_answer(THINK + "Therefore $x = 7$.", "strict") is None
    assert extract_answer(THINK + "So the answer is 42.") == "42"


@pytest.mark.parametrize("text,expected", [
    ("Therefore $x = 7$.", "x = 7"),
    ("Putting it together:\n$$\\frac{3}{4}$$", "\\frac{3}{4}"),
    ("Hence \\[ \\frac{3}{4} \\]", "\\frac{3}{4}"),
    ("Hence \\( 5 \\)!", "5"),
    ("Finally, 6 times 7 = 42.", "42"),
    ("So the total is 1,000.", "1,000"),
])
def test_lenient_takes_the_math_the_response_ends_with(text, expected):
    """Lenient, box-free: the last math span or `= N` / "is N" when only closing punctuation follows it."""
    assert extract_answer(THINK + text, "lenient") == expected


@pytest.mark.parametrize("text", [
    "We get $x = 3$, and then I am not sure how to continue.",
    "First $5$, then $7$, and I give up here.",
    "I need 3 more steps to be sure.",
    "Almost done: $x = 7",  # cut off inside math
    "It costs 5\\$",
])
def test_lenient_takes_nothing_from_the_middle_of_the_reasoning(text):
    """Math followed by more prose, or a response stopping inside an open `$`, gives no answer (wrong)."""
    assert extract_answer(THINK + text, "lenient") is None


def test_lenient_never_overrides_a_box_or_the_answer_phrase():
    """Lenient only adds a last fallback: a box, then an "answer is" phrase, still win over the final math."""
    assert extract_answer(THINK + "$\\boxed{5}$. Therefore $x = 7$.", "lenient") == "5"
    assert extract_answer(THINK + "The answer is $5$, checked in $x = 7$.", "lenient") == "5"


def test_lenient_reads_only_after_the_thinking_block():
    """Lenient reads after `</think>` like strict: math the thinking ends with is a draft."""
    assert extract_answer("<think>\nSo $x = 7$.\n</think>\n", "lenient") is None


def test_unknown_extraction_mode_is_rejected_before_any_grading():
    """A misspelt mode is the caller's bug: ValueError naming the modes, not a wrong answer per response."""
    for call in (lambda: extract_answer("x", "boxed"), lambda: grade_response(THINK, ["1"], extraction="loose"),
                 lambda: grade_many([(THINK, ["1"])], extraction="")):
        with pytest.raises(ValueError, match="extraction must be one of strict, lenient"):
            call()


def test_grade_many_and_grade_response_use_the_mode():
    """The mode reaches every response: the same box-free response is wrong strict, right lenient."""
    items = [(THINK + "Therefore $x = 7$.", ["7"]), (THINK + "$\\boxed{1}, \\boxed{2}$", ["2, 1"])]
    for mode, expected in (("strict", [False, True]), ("lenient", [True, True])):
        results, _ = grade_many(items, workers=1, extraction=mode)
        assert [r["correct"] for r in results] == expected
        assert results == [grade_response(t, g, extraction=mode) for t, g in items]


def test_cli_grades_a_whole_response_with_answer_extraction(capsys):
    """`grader.py --answer-extraction MODE RESPONSE GOLD` prints the extracted answer and the verdict."""
    assert grader.main(["--answer-extraction", "lenient", "So $x = 7$.", "7"]) == 0
    assert json.loads(capsys.readouterr().out) == {"answer": "x = 7", "equivalent": True, "timed_out": False}
    assert grader.main(["--answer-extraction", "strict", "So $x = 7$.", "7"]) == 1
    assert json.loads(capsys.readouterr().out)["answer"] is None
    assert grader.main(["x = 7", "7"]) == 0 and "answer" not in json.loads(capsys.readouterr().out)


def test_many_boxes_and_long_responses_extract_quickly():
    """20,000 joined boxes, or 200k characters of boxes and gaps, extract in well under a second each."""
    for text, mode in ((THINK + "\\boxed{1}, " * 20000, "strict"),
                       (THINK + ("\\boxed{1}" + " " * 199 + "x") * 1000, "lenient"),
                       (THINK + "$" + "x = \\boxed{1}, y &= " * 10000 + "$ 7", "lenient")):
        start = time.monotonic()
        extract_answer(text, mode)
        assert time.monotonic() - start < 1.0
