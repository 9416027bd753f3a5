"""The grader evaluates mathematics only: an answer's text never runs Python (grader._sympy_globals).

sympy's parse_expr evaluates its text as Python, and its default namespace holds every builtin function
and all of sympy: `\\boxed{exec(chr(49))}`, `\\boxed{input()}` (which waited on the request pipe until the
time-out) and `\\boxed{test()}` (sympy's own test suite) ran inside the sympy child. Here such answers are
graded by a child that a profiler watches (WATCH): it logs every function that code compiled from an
answer calls itself. Each answer must grade "not equivalent", at once and without an error, having
called no Python builtin and not the function it names.
"""
import builtins

import pytest

import grader
from test_grading import on_the_graders_clock

QUICK_S = 1.5  # an answer that runs nothing is graded in milliseconds; `input()` used to wait 3 s
NO = {"correct": False, "timed_out": False, "grading_error": None}

# Put before the sympy child's boot script. Code that parse_expr compiled from an answer has the file
# name "<string>" and globals without `__name__` (a module and `python -c` have one). The profiler logs
# "module qualname" of each function such code calls itself: C functions (builtins) at "c_call", whose
# frame is the caller; Python functions at "call", whose frame is the callee's own. It checks itself on
# `eval("len(())", {})` before logging to the file, and stops the boot if it saw nothing.
WATCH = """
import sys
import sympy
seen = []
record = seen.append
def compiled_from_text(frame):
    return frame is not None and frame.f_code.co_filename == "<string>" and "__name__" not in frame.f_globals
def watch(frame, event, fn):
    if event == "c_call" and compiled_from_text(frame):
        record(f"{fn.__module__} {fn.__qualname__}\\n")
    elif event == "call" and compiled_from_text(frame.f_back):
        record(f"{frame.f_globals.get('__name__')} {frame.f_code.co_qualname}\\n")
sys.setprofile(watch)
eval("len(())", {})
if seen != ["builtins len\\n"]:
    sys.exit(f"the watch does not see compiled code: {seen}")
record = open(LOG_PATH, "a", buffering=1).write
"""


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """Grading goes to a fresh sympy child booted under WATCH; yields calls(): the "module qualname"
    lines logged since the previous calls()."""
    log = tmp_path_factory.mktemp("watch") / "calls.log"
    log.touch()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grader, "_BOOT", WATCH.replace("LOG_PATH", repr(str(log))) + grader._BOOT)
        worker = grader.SympyWorker()
        mp.setattr(grader, "_SYMPY", worker)
        worker.start()  # GradingError here: the watch failed its own check
        read = 0

        def calls():
            nonlocal read
            text = log.read_text()
            new, read = text[read:].splitlines(), len(text)
            return new

        try:
            yield calls
        finally:
            worker.kill()


def ran(calls, name):
    """The logged calls that are a Python builtin, or the function `name` (sympy's `test` and `doctest`
    are loaded lazily, through a LazyFunction)."""
    return [c for c in calls if c.startswith("builtins ") or c.split()[-1].rsplit(".", 1)[-1] == name
            or "LazyFunction" in c]


def grade(answer, calls, gold="7"):
    """(grade_response's result without its answer, seconds on the grader's clock, what ran) for a
    response boxing `answer`; the gold 7 is what `eval(chr(55))` and `hash(7)` give when run."""
    result, seconds = on_the_graders_clock(grader.grade_response, f"</think>\\boxed{{{answer}}}", [gold])
    assert result.pop("answer") == answer
    return result, seconds, calls()


def test_no_builtin_name_runs_from_a_boxed_answer(watched):
    """`\\boxed{NAME(1)}` and `\\boxed{NAME()}`, for every name in Python's builtins, grade "no" at
    once, without an error, and call nothing of Python's builtins."""
    answers = [f"{name}{args}" for name in dir(builtins) for args in ("(1)", "()")]
    reaching_sympy = [a for a in answers if grader.latex_to_sympy_text(a) is not None]
    assert len(reaching_sympy) > 250, "the LaTeX filter lets these through: they must reach the child"
    failures = []
    for answer in answers:
        result, seconds, calls = grade(answer, watched)
        python = ran(calls, answer.split("(")[0])
        if result != NO or seconds > QUICK_S or python:
            failures.append((answer, result, round(seconds, 2), python))
    assert not failures, f"{len(failures)} of {len(answers)}:\n" + "\n".join(map(str, failures))


ESCAPES = [  # (answer, the function it would run[, gold])
    ("exec(chr(49))", "exec"), ("eval(chr(55))", "eval"), ("ord(chr(55))", "ord"), ("len(chr(55))", "len"),
    ("hash(7)", "hash"), ("id(1)", "id"), ("vars()", "vars"), ("globals()", "globals"), ("locals()", "locals"),
    ("dir()", "dir"), ("input()", "input"), ("breakpoint()", "breakpoint"), ("print(7)", "print"),
    ("open(0)", "open"), ("__import__(os)", "__import__"),
    # inside mathematics, and through an equation (the child's "eq" question)
    ("\\frac{eval(chr(55))}{1}", "eval"), ("\\sqrt{hash(49)}", "hash"), ("2^{ord(chr(49))}", "ord"),
    ("x = eval(chr(55))", "eval"), ("x + eval(chr(55)) = 14", "eval", "x = 7"),
    # attribute access reaches any object's methods: `(7).conjugate()` was 7, `x.name` a str
    ("(7).conjugate()", "conjugate"), ("x.name", "name"),
    # sympy's names that are not mathematics: its test runners, a LaTeX previewer, string evaluators
    ("test()", "test"), ("doctest()", "doctest"), ("preview(x)", "preview"), ("sympify(x)", "sympify"),
    ("var(x)", "var"), ("lambdify(x)", "lambdify"), ("interactive_traversal(x)", "interactive_traversal"),
    ("pprint(x)", "pprint"), ("init_printing()", "init_printing"),
]


@pytest.mark.parametrize("answer,function,gold", [e if len(e) == 3 else (*e, "7") for e in ESCAPES])
def test_python_in_a_boxed_answer_grades_no_and_runs_nothing(watched, answer, function, gold):
    """Each shape that ran Python in the child (measured on the old grader) grades "no" at once,
    without an error or a time-out, and calls neither a builtin nor the function it names."""
    result, seconds, calls = grade(answer, watched, gold)
    assert (result, ran(calls, function)) == (NO, [])
    assert seconds < QUICK_S, "it waited: `input()` blocked on the request pipe until the time-out"


def test_mathematics_still_reaches_sympy_under_the_watch(watched):
    """The watched child still grades mathematics (the watch sees sympy being called, not nothing)."""
    result, _, calls = grade("\\sqrt{49} + \\sin^2 x + \\cos^2 x - 1", watched)
    assert result == {**NO, "correct": True}
    assert any(c.endswith(" sqrt") for c in calls) and not ran(calls, "eval")


def test_the_parse_namespace_is_sympy_mathematics_only():
    """parse_expr's globals: an empty `__builtins__`, no builtin function, none of sympy's non-math
    functions, and every function name that latex_to_sympy_text writes."""
    names = grader._sympy_globals()
    assert names["__builtins__"] == {}
    assert [n for n, obj in names.items() if n != "__builtins__" and getattr(builtins, n, None) is obj] == []
    assert {"test", "doctest", "preview", "sympify", "S", "parse_expr", "lambdify", "var", "init_session",
            "exec", "eval", "input", "open", "chr"}.isdisjoint(names)
    written = set(grader._FUNCS.values()) | {"sqrt", "binomial", "Abs", "floor", "ceiling", "oo", "pi"}
    assert written <= set(names)
