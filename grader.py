"""The grader of evaluate.py: a response's final answer, and whether it equals a gold answer.

Standard library only (sympy runs in a child process): no torch, no transformers, and the file can be
copied into another project alone. evaluate.py re-exports its public names. The rules, with their
examples, and where they depart from the paper's grader (rllm) and why: docs/grading.md; every
convention is a row of tests/test_grading_table.py.

Python API
    extract_answer(text, extraction) -> str | None; judge(pred, gold, timeout) -> (equivalent,
    timed_out); is_equivalent(pred, gold, timeout) -> bool; grade_response(text, golds,
    require_think_close, timeout, extraction) -> {"answer", "correct", "timed_out", "grading_error"};
    grade_many([(text, golds), ...], require_think_close, timeout, workers, extraction) -> (results,
    seconds); EXTRACTION_MODES = ("strict", "lenient"), DEFAULT_EXTRACTION = "strict";
    normalize_answer, parse_answer, to_number, latex_to_sympy_text; GradingError; GRADER_STATS =
    {"calls", "timeouts", "errors", "sympy_boot_seconds"} (this process only).

Command line
    python grader.py '\\dfrac{2}{4}' 0.5        # prints {"equivalent": true, "timed_out": false}
    python grader.py '(2,1)' '(1,2)' '[1,2]'   # several golds: any match counts; exit 1 if none
                                               # (exit 2: the grader could not decide, a GradingError)
    python grader.py --answer-extraction lenient 'So $x = 7$.' 7   # a whole response: prints its answer too
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
import traceback
from fractions import Fraction
from functools import lru_cache, partial

# ------------------------------------------------------------------------------------------------
# Answer extraction
# ------------------------------------------------------------------------------------------------

THINK_CLOSE = "</think>"
_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_FINAL_RE = re.compile(r"\banswer\b\**\s*(?:is|:)\s*:?\**\s*", re.IGNORECASE)
_HOPE_RE = re.compile(r"\.?\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)
# What may stand between two boxes of one final answer: spacing, commas, "and", math delimiters,
# alignment (`&`, `\\`), bold markers. Not "or": it also offers a second form of the same value
# (MATH's `$\boxed{15\frac{39}{40}}$, or $\boxed{\frac{639}{40}}$ inches`), so the last box alone counts.
# Each alternative starts differently, so a failing gap is rejected in linear time (no backtracking
# over the ways to split a run of spaces).
_JOIN_RE = re.compile(r"(?:\s|[,;&$~*]|\\[()\[\],;:! ]|\\\\|\\q?quad(?![A-Za-z])|\band\b"
                      r"|\\(?:text|textrm|mbox|mathrm|textbf)\s*\{\s*(?:,|and)?\s*\})*")
MAX_JOIN_GAP = 200  # characters between two boxes of one answer; longer gaps are prose
# `x = ` / `y_1 &= ` / `(a, b) = ` right before a box: the name the boxed value belongs to.
_LABEL_RE = re.compile(r"(?:^|(?<=[\s$(\[{,;&]))(?P<lhs>\([A-Za-z,\s]+\)|\\?[A-Za-z]+(?:_\{?[\w\\ ]+\}?)?"
                       r"(?:\([^()]*\))?)\s*&?\s*=\s*&?\s*$")
_FINAL_NUMBER_RE = re.compile(r"(?:=|\bis)\s*([+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)\Z")


def _boxes(text):
    """(start, end, content) of every complete box, one linear pass (no rescans: 200k chars stay fast).

    `\\boxed{...}` is brace-balanced (escaped `\\{`, `\\}` do not count); `\\boxed 5` takes the next
    run of non-space characters. An unclosed box (truncated response) yields nothing.
    """
    starts = {m.end(): m.start() for m in _BOX_RE.finditer(text)}
    found, stack, i, n = [], [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}\\":
            i += 2
            continue
        if i in starts:
            j = i
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "{":
                stack.append((j, starts[i]))  # this brace opens a box
                i = j + 1
                continue
            m = re.match(r"\s*([^\s$]+)", text[j:j + 200])
            if m and j > i:
                found.append((starts[i], j + m.end(), m.group(1).rstrip(".,")))
        if ch == "{":
            stack.append((i, None))
        elif ch == "}" and stack:
            pos, box_start = stack.pop()
            if box_start is not None:
                found.append((box_start, i + 1, text[pos + 1:i]))
        i += 1
    return found


def _label(text, start, end):
    """The `x = ` written right before text[end:] (searched from `start`), as a match, or None."""
    m = _LABEL_RE.search(text, max(start, end - 100), end)
    return m if m and _SIMPLE_LHS.fullmatch(m.group("lhs").strip()) else None


def _final_boxes(text):
    """The final answer's boxes as one answer string, or None when nothing is boxed.

    The last box, plus the boxes before it that are joined to it by separators only (`\\boxed{1},
    \\boxed{2}`, `\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}`, `x=\\boxed{3}, \\quad y=\\boxed{4}`): a
    reasoning model boxes each part of a multi-part answer. Any other text between two boxes (an early
    intermediate box, then "so the answer is" and the final box) ends the answer. Several parts are
    joined with ", " into a list, which the grader compares like any list (`_structure`: any order);
    each part keeps its `x =` label, so that `x=\\boxed{4}, y=\\boxed{3}` is not `x=3, y=4`. A single
    box is its content alone, without its label, as before.
    """
    boxes = sorted(_boxes(text))
    if not boxes:
        return None
    run, labels = [boxes[-1]], []  # last box first; labels[i]: the `x =` before run[i], in its gap only
    for box in reversed(boxes[:-1]):
        nxt = run[-1]
        if box[1] > nxt[0] or nxt[0] - box[1] > MAX_JOIN_GAP:
            break  # the box encloses the next one (nested), or prose lies between them
        label = _label(text, box[1], nxt[0])
        if not _JOIN_RE.fullmatch(text, box[1], label.start() if label else nxt[0]):
            break
        run.append(box)
        labels.append(label)
    if len(run) == 1:
        return run[0][2].strip()
    labels.append(_label(text, 0, run[-1][0]))
    return ", ".join((f"{m.group('lhs').strip()} = " if m else "") + content.strip()
                     for m, (_, _, content) in zip(reversed(labels), reversed(run)))


def _final_answer_phrase(text):
    """Fallback without a box: what follows the last "answer is" / "answer:" ("The final answer is
    $42$. I hope it is correct", "**Answer:** 42")."""
    matches = list(_FINAL_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    tail = text[last.end():last.end() + 1000].lstrip("*").lstrip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if tail.startswith(left):
            end = tail.find(right, len(left))
            if end > 0:
                return tail[len(left):end].strip() or None
    tail = _HOPE_RE.sub("", tail.split("\n")[0])
    return re.sub(r"[\s.*]+$", "", tail).strip() or None


def _final_math(text):
    """Lenient fallback: the math the response ENDS with, closing `.`, `!`, `*` and spacing aside.

    The last `$...$` / `$$...$$` / `\\(...\\)` / `\\[...\\]` span when it is the last thing written
    ("Therefore $x = 7$." -> `x = 7`), else a plain number ending the response after `=` or "is"
    ("... 6 times 7 = 42." -> `42`). A span is graded whole (`$6 \\cdot 7 = 42$` is an equation, not
    42; `x = 42` is 42, the grader's plain-name rule). Math followed by any other text is reasoning,
    not an answer: nothing is taken from the middle of a response, nor from one that stops inside an
    open `$`.
    """
    if text.replace("\\$", "").count("$") % 2:
        return None  # an odd count of `$`: the response stops inside math it never closed (cut off)
    tail = text[-2 * MAX_ANSWER_CHARS:].rstrip().rstrip(".!*").rstrip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if not tail.endswith(right) or (right == "$" and tail.endswith("\\$")):  # `\$` is a dollar sign
            continue
        opening = tail.rfind(left, 0, len(tail) - len(right))
        return (tail[opening + len(left):len(tail) - len(right)].strip() or None) if opening >= 0 else None
    m = _FINAL_NUMBER_RE.search(tail)
    return m.group(1) if m else None


# What each extraction mode tries, in order, when the final answer holds no box. "strict": the box rule
# the paper graded with, plus the explicit "the answer is X" this grader has always read (MATH-style
# solutions end with it); "lenient" also takes unboxed final math (small or non-reasoning models often
# never box, and would score 0 for their format, not their maths).
_FALLBACKS = {"strict": (_final_answer_phrase,), "lenient": (_final_answer_phrase, _final_math)}
EXTRACTION_MODES = tuple(_FALLBACKS)
DEFAULT_EXTRACTION = "strict"


def _check_extraction(extraction):
    if extraction not in _FALLBACKS:
        raise ValueError(f"extraction must be one of {', '.join(EXTRACTION_MODES)}; got {extraction!r}")


def extract_answer(text, extraction=DEFAULT_EXTRACTION):
    """The model's final answer in `text`, or None.

    Only the text after the last `</think>` is searched when a thinking block is present. The answer
    is the last complete `\\boxed{}` / `\\fbox{}` / `\\framebox{}` (nested braces kept), or `\\boxed x`,
    together with the boxes joined to it by separators only (`\\boxed{1}, \\boxed{2}` -> `1, 2`; see
    _final_boxes). Without any box, in both modes: the phrase after the last "final answer is" / "The
    answer is" (`Therefore, the final answer is: $42$. I hope it is correct`); "lenient" then also
    takes the math the response ends with (see _final_math). An unknown mode raises ValueError.
    """
    _check_extraction(extraction)
    if not text:
        return None
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    answer = _final_boxes(text)
    if answer is not None:
        return answer
    for fallback in _FALLBACKS[extraction]:
        answer = fallback(text)
        if answer:
            return answer
    return None


# ------------------------------------------------------------------------------------------------
# Normalisation: LaTeX answer -> canonical string (gold and prediction alike)
# ------------------------------------------------------------------------------------------------

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as plain strings only
MAX_NESTING = 100  # brackets nested deeper than this are never sent to sympy (real answers nest < 10)
MAX_SYMPY_QUESTIONS = 256  # per judge call (a 64-item list against another asks up to 4096); the rest: "no"
REL_TOL = 1e-6  # numeric answers within this relative distance are equal

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u00f7": "\\div ",
            "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u221e": "\\infty ", "\u2264": "\\leq ", "\u2265": "\\geq ",
            "\u2260": "\\neq ", "\u00b0": "^\\circ", "\u222a": "\\cup ", "\u2208": "\\in ", "\u00a0": " ",
            "\u2009": " ", "\u202f": " "}
_TEXT_CMDS = r"(?:text|textrm|textnormal|textbf|textit|textsf|texttt|mbox|mathrm|mathbf|mathit|mathsf|rm|bf)"
_UNIT_GROUP = re.compile(r"^(?P<body>.*?\S)\s*\\" + _TEXT_CMDS
                         + r"\s*\{(?P<unit>[A-Za-z~\s./\\,]*)\}\s*(?:\^\s*\{?\s*-?\d+\s*\}?)?\s*$", re.DOTALL)
_NUMERIC_BODY = re.compile(r"[\d\s.,+\-*/^{}()]*(?:\\(?:times|cdot|frac|dfrac|sqrt|pi)[\d\s.,+\-*/^{}()]*)*")
_PLAIN_UNIT = re.compile(r"^(?P<body>.*?\d[\d}]*)\s+(?P<unit>[A-Za-z]{2,}(?:[\s/^\-]+[A-Za-z\d{}\-^]+)*)\s*$")
_RELATIONS = {"\\leqslant": "\\leq", "\\geqslant": "\\geq", "\\le": "\\leq", "\\ge": "\\geq", "\\ne": "\\neq",
              "\\lt": "<", "\\gt": ">", "<=": "\\leq", ">=": "\\geq", "!=": "\\neq", "\\approx": "="}


def _strip_units(s):
    """Drop trailing unit words: `15\\mbox{ cm}^2`, `5.4 \\text{ cents}`, `125 miles`, `3 \\times 10^8 Hz`."""
    while True:
        m = _UNIT_GROUP.match(s)
        if not m or not m.group("body").strip():
            break
        s = m.group("body")
    if re.fullmatch(r"[\d.]+\s*'{1,2}", s):  # arcminutes / arcseconds
        s = s.rstrip("' ")
    m = _PLAIN_UNIT.match(s)
    if m and _NUMERIC_BODY.fullmatch(m.group("body")):
        s = m.group("body")
    return s.strip()


def _unwrap_text(s):
    """`\\text{(C)}` -> `(C)`; repeated so `\\textbf{\\text{x}}` unwraps fully (no nested braces)."""
    for _ in range(5):
        new = re.sub(r"\\" + _TEXT_CMDS + r"\s*\{([^{}]*)\}", r"\1", s)
        if new == s:
            return s
        s = new
    return s


def _unwrap_box(s):
    """`\\boxed{x}` (the whole answer) -> `x`."""
    m = re.fullmatch(r"\\(?:boxed|fbox|framebox)\s*\{(.*)\}", s, re.DOTALL)
    return m.group(1) if m else s


@lru_cache(maxsize=8192)
def normalize_answer(s):
    """Canonical LaTeX for one answer string: spacing, delimiters and decoration removed.

    Keeps the mathematical content and `%` (percent is decided later, when comparing numbers).
    """
    s = str(s).strip()
    if len(s) > MAX_ANSWER_CHARS:
        return s
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.replace("\\$", "").replace("$", "").replace("\n", " ")
    s = re.sub(r"\\[\[\]()]", " ", s)  # \[ \] \( \) math delimiters
    s = _unwrap_box(s.strip())
    s = re.sub(r",\\!\s*", ",", s)  # `11,\! 111`: MATH's thousands separator
    s = re.sub(r"\\(?:displaystyle|limits|mathrm\{\s*\}|!)", "", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![A-Za-z])\.?", "", s)
    s = s.replace("\\langle", "(").replace("\\rangle", ")").replace("\\lvert", "|").replace("\\rvert", "|")
    s = re.sub(r"(?<!\\)\\[,;: ]|\\q?quad(?![A-Za-z])|~", " ", s)  # not the `\\` row break
    s = s.replace("{,}", ",")
    s = re.sub(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z]))(?:\s*[CF]$)?", "", s)
    s = re.sub(r"\^\s*\{\s*((?:\\prime\s*)+)\}|\^\s*\\prime(?![A-Za-z])",
               lambda m: "'" * max(1, (m.group(1) or "").count("prime")), s)
    s = re.sub(r"\\" + _TEXT_CMDS + r"\s*\{\s*(?:and|or)\s*\}|\s+(?:and|or)\s+", ",", s)
    s = re.sub(r"\\%|\s*\\?percent(?:age)?\b|\s*\bpct\b", "%", s)
    s = re.sub(r"\s*(?:degrees?|radians?)\s*$|\s*\\" + _TEXT_CMDS + r"\s*\{\s*degrees?\s*\}", "", s)
    s = _strip_units(s.strip())
    s = _unwrap_text(s)
    for k, v in _RELATIONS.items():
        s = re.sub(re.escape(k) + (r"(?![A-Za-z])" if k[0] == "\\" else ""), lambda _m, v=v: v, s)
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s.strip())  # "x \in [-2, 7]"
    s = re.sub(r"\s+", " ", s).strip().rstrip(".,;:").strip()
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?", s):  # thousands separators, whole number only
        s = s.replace(",", "")
    return s


def _key(s):
    """Spacing-free, brace-canonical form for exact comparison (`\\frac43` == `\\frac{4}{3}`)."""
    s = s.replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+|[A-Za-z])", r"\\sqrt{\1}", s)
    s = re.sub(r"([_^])\{(\w+)\}", r"\1\2", s)
    return s


# ------------------------------------------------------------------------------------------------
# Structure: tuples, intervals, sets, lists, equations, matrices, scalars
# ------------------------------------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"
_SIMPLE_LHS = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[\w\\ ]+\}?)?(?:\([^()]*\))?|\([A-Za-z,\s]+\)")
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)


def _split_top(s, sep):
    """Split `s` at `sep` where no bracket of any kind is open ( `[0,1)` counts as balanced )."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            if sep[0] == "\\" and s[i + len(sep):i + len(sep) + 1].isalpha():
                i += 1
                continue  # `\cup` must not match `\cupcake`
            parts.append(s[start:i].strip())
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:].strip())
    return parts


def _closes_at_end(s):
    """True when the bracket opening `s` (after an optional backslash) is closed by its last
    character: `(1,2)` and `\\{1,2\\}`, not `(1)+(2)`."""
    depth = 0
    for i, ch in enumerate(s):
        depth += ch in _OPEN
        depth -= ch in _CLOSE
        if depth == 0 and i > (s[0] == "\\"):
            return i == len(s) - 1
    return False


@lru_cache(maxsize=8192)
def parse_answer(s):
    """Normalised answer -> tree of tuples: ("scalar", str), ("tuple", brackets, items),
    ("list", items) (unordered: bare comma lists and `\\{...\\}` sets), ("union", items),
    ("matrix", rows), ("eq", lhs_key, rhs, rhs_node, simple_lhs, lhs), ("rel", key)."""
    return _structure(normalize_answer(s))


def _flat_list(parts):
    """An unordered list; a `\\pm` element contributes both of its values."""
    items = []
    for p in filter(None, parts):
        node = _structure(p)
        items.extend(node[1] if node[0] == "list" else [node])
    return ("list", tuple(items))


def _structure(s):
    s = s.strip()
    if len(s) > MAX_ANSWER_CHARS or not s:
        return ("scalar", s)
    m = _MATRIX.fullmatch(s) or (s[:1] in "([" and _MATRIX.fullmatch(s[1:-1].strip()))
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return ("matrix", tuple(tuple(_structure(c) for c in r.split("&")) for r in rows))
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    parts = _split_top(s, ",")
    if len(parts) > 1:
        return _flat_list(parts)
    if s.startswith("\\{") and s.endswith("\\}") and _closes_at_end(s):
        return _flat_list(_split_top(s[2:-2], ","))
    if s[0] in "([" and s[-1] in ")]" and _closes_at_end(s):
        inner = _split_top(s[1:-1], ",")
        if len(inner) > 1:
            return ("tuple", s[0] + s[-1], tuple(_structure(p) for p in inner))
        if s[0] == "(" and s[-1] == ")":
            return _structure(s[1:-1])  # redundant parentheses
    sides = _split_top(s, "=")  # relations were rewritten to \\leq etc., so `=` is an equation
    if len(sides) > 1 and all(sides):
        lhs, rhs = sides[0], sides[-1]  # "x = 5+5+1 = 11": the last value counts
        return ("eq", _key(lhs), rhs, _structure(rhs), bool(_SIMPLE_LHS.fullmatch(lhs)), lhs)
    if re.search(r"<|>|\\leq|\\geq|\\neq", s):
        return ("rel", _key(s))
    pm = _split_top(s, "\\pm")
    if len(pm) == 2 and "\\mp" not in s:
        return ("list", (("scalar", f"{pm[0]}+{pm[1]}"), ("scalar", f"{pm[0]}-{pm[1]}")))
    return ("scalar", s)


def _perfect_matching(ok):
    """Is there a one-to-one pairing with ok[i][j] True for all pairs? (Kuhn's augmenting paths)."""
    n = len(ok)
    owner = [-1] * n

    def augment(i, seen):
        for j in range(n):
            if ok[i][j] and j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, set()) for i in range(n))


def _match_all(ps, gs, ask, ordered):
    """Element-wise (ordered) or as multisets; every pair is asked (no short-circuit) so the set of
    sympy questions is the same whatever the answers are."""
    if len(ps) != len(gs) or len(ps) > 64:
        return False
    if ordered:
        return all([_match(p, g, ask) for p, g in zip(ps, gs)])
    ok = [[_match(p, g, ask) for g in gs] for p in ps]
    return _perfect_matching(ok)


def _vector(node):
    """A matrix with one row or column, or a parenthesised tuple, as a flat tuple of entries."""
    if node[0] == "matrix" and node[1] and (len(node[1]) == 1 or all(len(r) == 1 for r in node[1])):
        return tuple(c for r in node[1] for c in r)
    if node[0] == "tuple" and node[1] == "()":
        return node[2]
    return None


def _match(p, g, ask):
    """Does prediction tree `p` match gold tree `g`? `ask(kind, a, b)` decides leaf pairs."""
    kp, kg = p[0], g[0]
    if kg == "eq" or kp == "eq":
        return _match_equation(p, g, ask)
    if kg == "list":
        if kp == "list":
            return _match_all(p[1], g[1], ask, ordered=False)
        return len(g[1]) == 1 and _match(p, g[1][0], ask)
    if kp == "list":
        return len(p[1]) == 1 and _match(p[1][0], g, ask)
    if kg == "union" and kp == "union":
        return _match_all(p[1], g[1], ask, ordered=False)
    if kg == "tuple" and kp == "tuple":
        return p[1] == g[1] and _match_all(p[2], g[2], ask, ordered=True)
    if kg == "matrix" and kp == "matrix":
        return (len(p[1]) == len(g[1]) and all(len(a) == len(b) for a, b in zip(p[1], g[1]))
                and _match_all(sum(p[1], ()), sum(g[1], ()), ask, ordered=True))
    if {kp, kg} == {"matrix", "tuple"}:
        pv, gv = _vector(p), _vector(g)
        return pv is not None and gv is not None and _match_all(pv, gv, ask, ordered=True)
    if kg == "rel" and kp == "rel":
        return p[1] == g[1]
    if kg == "scalar" and kp == "scalar":
        return ask("expr", p[1], g[1])
    return False


def _match_equation(p, g, ask):
    """`x = 3` vs `3` (either side), `y = 2x+3` vs `y = 3+2x`, planes/lines up to a factor."""
    if p[0] == "eq" and g[0] == "eq":
        if p[4] and g[4] and p[1] == g[1]:
            return _match(p[3], g[3], ask)
        return ask("eq", f"{p[5]}={p[2]}", f"{g[5]}={g[2]}")
    if g[0] == "eq":
        return g[4] and _match(p, g[3], ask)
    return p[4] and _match(p[3], g, ask)


# ------------------------------------------------------------------------------------------------
# Numbers (decided in-process, exactly, with Fractions)
# ------------------------------------------------------------------------------------------------

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_UNUM = r"(?:\d+\.?\d*|\.\d+)"


def _fraction(text):
    return Fraction(text.lstrip("+")) if text not in ("+", "-", "") else None


def to_number(s):
    """Exact value of a plain numeric answer (`025`, `-3.5`, `1.2e-3`, `4.4 \\times 10^{7}`, `\\frac{3}{4}`,
    `-3/4`, mixed `1\\frac{4}{5}`), or None for anything else. Exponents beyond +-1000 are refused."""
    k = _key(s)
    try:
        if re.fullmatch(_NUM, k):
            return _fraction(k)
        m = (re.fullmatch(rf"({_NUM})[eE]([+-]?\d+)", k)
             or re.fullmatch(rf"({_NUM})(?:\\times|\\cdot|\*)10\^\{{?([+-]?\d+)\}}?", k))
        if m:
            exp = int(m.group(2))
            return _fraction(m.group(1)) * Fraction(10) ** exp if abs(exp) <= 1000 else None
        m = re.fullmatch(r"([+-]?)10\^\{?([+-]?\d+)\}?", k)
        if m and abs(int(m.group(2))) <= 1000:
            return (-1 if m.group(1) == "-" else 1) * Fraction(10) ** int(m.group(2))
        m = (re.fullmatch(rf"([+-]?)\\frac\{{({_UNUM})\}}\{{({_UNUM})\}}", k)
             or re.fullmatch(rf"([+-]?)({_UNUM})/({_UNUM})", k))
        if m:
            value = _fraction(m.group(2)) / _fraction(m.group(3))
            return -value if m.group(1) == "-" else value
        m = re.fullmatch(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", k)  # MATH writes mixed numbers so
        if m:
            value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _numbers_equal(a, b, approximate):
    """Exact for exact numbers (343943886 != 343943885); within REL_TOL when a decimal is involved."""
    return a == b or (approximate and abs(a - b) <= REL_TOL * max(abs(a), abs(b)))


# ------------------------------------------------------------------------------------------------
# LaTeX -> sympy-parsable text (in-process, pure string work; sympy only sees the result)
# ------------------------------------------------------------------------------------------------

_FUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "sec": "sec", "csc": "csc", "cot": "cot",
          "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh",
          "tanh": "tanh", "ln": "log", "log": "log", "exp": "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"}
_SYMBOL_NAMES = {"pi": "pi", "infty": "oo", "infinity": "oo", "cdot": "*", "times": "*", "ast": "*", "div": "/",
                 "lfloor": "floor(", "rfloor": ")", "lceil": "ceiling(", "rceil": ")"}
_AT_NUMBER = re.compile(r"\(\s*[-+]?\d+(?:\.\d+)?\s*\)")
_SKIP_CMDS = {"displaystyle", "left", "right", "quad", "qquad", "limits", "mathrm", "mathit", "mathbf"}


def _read_arg(s, i):
    """One macro argument at s[i:]: a `{...}` group, a command, or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += (s[j] == "{") - (s[j] == "}")
            if depth == 0:
                return s[i + 1:j], j + 1
        raise ValueError("unbalanced braces")
    if s[i] == "\\":
        m = re.match(r"\\([A-Za-z]+|.)", s[i:])
        return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def _function_call(name, s, i):
    """`\\sin^2 x`, `\\log_2 8`, `\\ln(x+1)` -> sympy call text; returns (text, next index)."""
    power = base = None
    for _ in range(2):
        j = i
        while j < len(s) and s[j] == " ":
            j += 1
        if s.startswith("^", j):
            power, i = _read_arg(s, j + 1)
        elif s.startswith("_", j):
            base, i = _read_arg(s, j + 1)
    j = i
    while j < len(s) and s[j] == " ":
        j += 1
    if s.startswith("(", j):
        depth, k = 0, j
        for k in range(j, len(s)):
            depth += (s[k] == "(") - (s[k] == ")")
            if depth == 0:
                break
        arg, i = s[j + 1:k], k + 1
    else:
        arg, i = _read_arg(s, i)
    text = f"{name}({latex_to_sympy_text(arg, strict=True)})"
    if base is not None:
        text = f"({text}/log({latex_to_sympy_text(base, strict=True)}))"
    if power is not None:
        text = f"({text})**({latex_to_sympy_text(power, strict=True)})"
    return text, i


def _command(name, s, i, out):
    """Translate one `\\name` at s[i:] (i just past the name) into `out`; returns the next index."""
    conv = partial(latex_to_sympy_text, strict=True)
    if name == "frac":
        a, i = _read_arg(s, i)
        b, i = _read_arg(s, i)
        out.append(f"(({conv(a)})/({conv(b)}))")
    elif name in ("binom", "dbinom", "tbinom"):
        a, i = _read_arg(s, i)
        b, i = _read_arg(s, i)
        out.append(f" binomial({conv(a)},{conv(b)})")
    elif name == "sqrt":
        index = None
        if s.startswith("[", i):
            end = s.index("]", i)
            index, i = s[i + 1:end], end + 1
        a, i = _read_arg(s, i)
        out.append(f" sqrt({conv(a)})" if index is None else f"(({conv(a)})**(1/({conv(index)})))")
    elif name in _FUNCS:
        text, i = _function_call(_FUNCS[name], s, i)
        out.append(" " + text)
    elif name == "operatorname":
        a, i = _read_arg(s, i)
        if a not in _FUNCS:
            raise ValueError(f"unknown operator {a}")
        text, i = _function_call(_FUNCS[a], s, i)
        out.append(" " + text)
    elif name in _GREEK:
        out.append(" " + ("lamda" if name == "lambda" else name) + " ")
    elif name in _SYMBOL_NAMES:
        out.append(" " + _SYMBOL_NAMES[name] + " ")
    elif name in ("text", "textrm", "mbox", "textnormal"):
        a, i = _read_arg(s, i)
        if not re.fullmatch(r"\s*[A-Za-z]?\s*", a):
            raise ValueError("text inside an expression")
        out.append(a.strip())
    elif name not in _SKIP_CMDS:
        raise ValueError(f"unsupported command \\{name}")
    return i


def _nesting(s):
    """How deep brackets of any kind nest in s (unbalanced closers ignored)."""
    depth = deepest = 0
    for ch in s:
        if ch in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
    return deepest


def latex_to_sympy_text(s, strict=False):
    """`\\frac{a}{b}` -> `((a)/(b))`, `x^{2}` -> `x**(2)`, `\\sqrt[3]{x}`, `\\pi`, `\\log_2 8`, ... for sympy's
    `parse_expr` (implicit multiplication is left to it). None (or ValueError when strict) for what it
    does not understand: `\\prime`, `&`, `=`, base subscripts like `52_8`, unknown commands, and
    brackets nested deeper than MAX_NESTING (sympy spends a second parsing 200 levels, then gives up)."""
    if not strict and _nesting(s) > MAX_NESTING:
        return None
    try:
        out, i, abs_open = [], 0, False
        while i < len(s):
            ch = s[i]
            if ch == "\\":
                m = re.match(r"\\([A-Za-z]+|.)", s[i:])
                i = _command(m.group(1), s, i + len(m.group(0)), out)
                continue
            if ch == "{":
                a, i = _read_arg(s, i)
                out.append(f"({latex_to_sympy_text(a, strict=True)})")
                continue
            if ch in "^_":
                a, i = _read_arg(s, i + 1)
                a = latex_to_sympy_text(a, strict=True)
                if ch == "^":
                    out.append(f"**({a})")
                    continue
                prev = "".join(out).rstrip()
                if not prev or not (prev[-1].isalpha() or prev[-1] == "_") or not re.fullmatch(r"\w+", a.strip()):
                    raise ValueError("subscript not on a name")  # `52_8` is base 8, not 52 times 8
                out[:] = [prev, "_" + a.strip()]
                continue
            if ch == "|":
                out.append(")" if abs_open else " Abs(")
                abs_open = not abs_open
            elif ch in "[]":
                out.append("(" if ch == "[" else ")")
            elif ch.isalpha() and not (i and (s[i - 1].isalpha() or s[i - 1] == "\\")) and _AT_NUMBER.match(s, i + 1):
                out.append(f" fn_{ch}")  # `I(0)`, `f(2)`: a function's value, not I times 0
            elif ch.isalnum() or ch in "+-*/(). !":
                out.append(ch)
            else:
                raise ValueError(f"unsupported character {ch!r}")
            i += 1
        text = "".join(out).strip()
        # 1000000! would run for minutes, and sympy parses 1e999999 for one (numbers over _MAX_DIGITS)
        if abs_open or not text or re.search(r"\d{4,}\s*!|\d[eE][+-]?\d{5,}", text):
            raise ValueError("unbalanced |" if abs_open else "empty, huge factorial or huge exponent")
        return text
    except (ValueError, IndexError, AttributeError, RecursionError):
        if strict:
            raise ValueError(s) from None
        return None


# ------------------------------------------------------------------------------------------------
# Sympy, in a killable subprocess (works from any thread and inside pool workers, even daemonic ones)
# ------------------------------------------------------------------------------------------------
# The functions that `import sympy` run only in the child: the grading process never loads sympy.

DEFAULT_TIMEOUT = 3.0  # seconds of sympy per is_equivalent call; the whole call stays under 5 s
BOOT_TIMEOUT = 120.0  # seconds a fresh sympy child may take to import sympy (outside every question's limit)
_MAX_DIGITS = 10_000  # numeric subexpressions with more digits are never evaluated
# The child imports this file by name from its folder (argv[1]); it never re-runs the caller's script.
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import grader; grader._sympy_server_main()"
_READY = b"ready"  # the child's first line: sympy is imported, the next request's clock may start
# This process only (grade_many's pool workers keep their own): judge calls, sympy time-outs, grader
# errors (see GradingError), and seconds spent waiting for sympy children to boot (outside all limits).
GRADER_STATS = {"calls": 0, "timeouts": 0, "errors": 0, "sympy_boot_seconds": 0.0}


class GradingError(RuntimeError):
    """The grader could not decide: sympy raised on a question, or its worker died or never started.
    The answer counts as wrong and is reported (GRADER_STATS["errors"], grade_response's
    "grading_error"), never silently folded into "not equivalent"."""


class _Unreadable(Exception):
    """sympy could not read a text (parse_expr evaluates as it parses: junk raises anything)."""


@lru_cache(maxsize=1)
def _sympy_globals():
    """parse_expr's global namespace: sympy's expressions (its Basic classes and constants), sqrt, cbrt,
    and abs/max/min as Abs/Max/Min; nothing of Python's builtins.

    parse_expr evaluates its text as Python. Its default namespace holds every builtin function (a boxed
    `exec(chr(49))` ran in the child, `input()` read the request pipe) and all of `from sympy import *`,
    where `test()` runs sympy's test suite, `doctest()` writes into the answer pipe and `sympify`
    evaluates any string. An empty `__builtins__` keeps eval from adding the real ones.
    """
    import sympy

    names = {name: getattr(sympy, name) for name in sympy.__all__}
    names = {name: obj for name, obj in names.items()
             if isinstance(obj, sympy.Basic) or (isinstance(obj, type) and issubclass(obj, sympy.Basic))}
    names.update(sqrt=sympy.sqrt, cbrt=sympy.cbrt, abs=sympy.Abs, max=sympy.Max, min=sympy.Min)
    names["__builtins__"] = {}
    return names


def _only_mathematics(tokens, local_dict, global_dict):
    """parse_expr transformation, run first: refuse attribute access (`x.name` is a str, and from an
    object its methods reach anything) and Python keywords (`lambda`, `for`, `if`, `None`)."""
    import keyword
    from tokenize import NAME, OP

    for kind, value in tokens:
        if (kind == OP and value == ".") or (kind == NAME and keyword.iskeyword(value)):
            raise ValueError(f"{value!r} is Python, not mathematics")
    return tokens


def _sympy_locals():
    import sympy

    names = {c: sympy.Symbol(c) for c in "abcdfghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names.update({g: sympy.Symbol(g) for g in _GREEK | {"lamda"}})
    names.update({f"fn_{c}": sympy.Function(c) for c in names if len(c) == 1})  # `I(0)`, see latex_to_sympy_text
    names.update(e=sympy.E, i=sympy.I)  # Euler's number and the imaginary unit, as MATH uses them
    return names


def _log10_size(node):
    """Estimate of the digits a numeric subtree needs, without evaluating it (inf: enormous): log10 of
    its magnitude, or of its denominator for a small rational ((1/2)^(10^10) is as big as 2^(10^10))."""
    import sympy

    if node.is_Integer or node.is_Rational:
        return math.log10(abs(node.p)) - math.log10(node.q) if node.p else 0.0
    if node.is_Float:
        return math.log10(abs(float(node))) if node != 0 else 0.0
    sizes = [_log10_size(a) for a in node.args] or [0.0]
    if node.is_Pow and not node.exp.free_symbols:
        if sizes[1] > 6:
            return math.inf if sizes[0] != 0 else 0.0  # 1^(10^10) and 0^(10^10) are cheap; 9^(9^9) is not
        return abs(float(node.exp)) * abs(sizes[0])
    if isinstance(node, sympy.factorial):
        return math.inf if sizes[0] > 6 else float(node.args[0]) * max(sizes[0], 0.0)
    return sum(max(x, 0.0) for x in sizes) if node.is_Mul else max(sizes) + 1


def _sympy_parse(text):
    """(evaluated expression, or None when it holds a number too large to ever evaluate)."""
    from sympy import Basic, preorder_traversal
    from sympy.parsing.sympy_parser import (implicit_multiplication, parse_expr, split_symbols,
                                            standard_transformations)

    transformations = (_only_mathematics,) + standard_transformations + (split_symbols, implicit_multiplication)

    def parse(evaluate):
        try:
            expr = parse_expr(text, local_dict=_sympy_locals(), global_dict=dict(_sympy_globals()),
                              transformations=transformations, evaluate=evaluate)
        except Exception as e:  # `1/()` raises TypeError, `x**` SyntaxError: text sympy cannot read
            raise _Unreadable(f"{type(e).__name__}: {e}") from None
        if not isinstance(expr, Basic):  # a Python tuple or bool is no expression
            raise _Unreadable(f"not an expression: {type(expr).__name__}")
        return expr

    for node in preorder_traversal(parse(False)):
        if not node.free_symbols and (node.is_Pow or node.is_Function) and _log10_size(node) > _MAX_DIGITS:
            return None
    return parse(True)


def _numerically_equal(diff, scale_terms, symbols):
    """diff == 0 at random points (all symbols positive, to stay off branch cuts), relative REL_TOL.
    Sympy numbers throughout, so 1.5**100000 is a number, not a float overflow."""
    import sympy
    from sympy.core.function import AppliedUndef

    rng, checked = random.Random(0), 0
    for _ in range(8):
        point = {s: sympy.Float(rng.uniform(0.3, 1.7)) for s in symbols}
        try:
            d = sympy.N(diff.subs(point), 30)
            scale = max([abs(sympy.N(t.subs(point), 30)) for t in scale_terms], key=lambda v: (v.is_number, v))
        except (ValueError, TypeError, ArithmeticError):  # `x!!` at x = 0.7 raises: not evaluable here
            continue
        if not (d.is_number and d.is_finite and scale.is_number and scale.is_finite):
            continue
        if bool(abs(d) > REL_TOL * scale):
            return False
        checked += 1
        if checked == 3 or not symbols:
            return True
    # never evaluable: only undefined functions (`f(3)`) deserve a symbolic try
    return bool(diff.atoms(AppliedUndef)) and bool(sympy.simplify(diff) == 0)


def _sympy_check(kind, a, b):
    """One question for the sympy worker: kind "expr" (a == b?) or "eq" (same equation?)."""
    import sympy

    if kind == "eq":
        (la, ra), (lb, rb) = a.split("=", 1), b.split("=", 1)
        fa, fb = _sympy_parse(f"({la})-({ra})"), _sympy_parse(f"({lb})-({rb})")
        if fa is None or fb is None or fa == 0 or fb == 0:
            return False
        ratio = sympy.cancel(fa / fb)  # same solution set if one side is a nonzero multiple of the other
        return bool(not ratio.free_symbols and ratio.is_number and ratio != 0 and ratio.is_finite)
    x, y = _sympy_parse(a), _sympy_parse(b)
    if x is None or y is None:
        return x is None and y is None and a.replace(" ", "") == b.replace(" ", "")
    if x == y:
        return True
    if x.is_Rational and y.is_Rational:
        return False  # exact numbers are equal exactly or not at all
    if x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or y.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return False
    symbols = sorted(x.free_symbols | y.free_symbols, key=str)
    return _numerically_equal(x - y, (x, y), symbols)


def _sympy_answer(kind, a, b):
    """One question's answer on the wire: true / false, or "Type: message" when our sympy code raised."""
    try:
        return bool(_sympy_check(kind, a, b))
    except _Unreadable:
        return False  # not an expression sympy can read: not equivalent
    except Exception as e:  # reported to the parent, which counts it as an error, not a plain "no"
        return f"{type(e).__name__}: {e}"[:500]


def _sympy_server_main():
    """Child process loop: after importing sympy, one line "ready"; then one JSON list of [kind, a, b]
    per line in, one JSON list of answers (see _sympy_answer) per line out."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # nothing sympy prints may corrupt the protocol
    _sympy_parse("x + 1")  # import sympy and its parser before "ready": a question's clock starts after

    out.write(_READY.decode() + "\n")
    out.flush()
    for line in sys.stdin:
        out.write(json.dumps([_sympy_answer(kind, a, b) for kind, a, b in json.loads(line)]) + "\n")
        out.flush()


class SympyWorker:
    """A persistent child process for sympy questions. A request that overruns its deadline kills the
    child (a fresh one starts booting at once), so nothing sympy does can hang the caller. The clock
    of a request starts once the child has imported sympy ("ready"): booting, up to BOOT_TIMEOUT,
    never eats into a question's limit. Plain subprocess + select, not multiprocessing: works off
    the main thread, under fork or spawn, and inside daemonic pool workers (which may not start
    multiprocessing children)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc, self._owner, self._buffer, self._ready = None, None, b"", False

    def _start(self):
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.dirname(os.path.abspath(__file__))],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._owner, self._buffer, self._ready = os.getpid(), b"", False

    def kill(self):
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()

    def _read_line(self, deadline):
        """The child's next line; None at the deadline; b"" when the child died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self, what):
        proc = self._proc
        self.kill()
        return GradingError(f"the sympy worker exited with code {proc.returncode} {what}")

    def start(self):
        """Have a child that has imported sympy (first use, after a kill, or after a fork); the wait
        is added to GRADER_STATS["sympy_boot_seconds"]. Raises GradingError if it cannot start."""
        if self._proc is None or self._owner != os.getpid() or self._proc.poll() is not None:
            self._start()
        if self._ready:
            return
        begin = time.monotonic()
        line = self._read_line(begin + BOOT_TIMEOUT)
        GRADER_STATS["sympy_boot_seconds"] += time.monotonic() - begin
        if line == b"":
            raise self._died(f"while starting; does `{sys.executable} -c 'import sympy'` work?")
        if line != _READY:
            self.kill()
            raise GradingError(f"the sympy worker did not start within BOOT_TIMEOUT = {BOOT_TIMEOUT:.0f} s"
                               if line is None else f"the sympy worker's first line was {line[:80]!r}")
        self._ready = True

    def ask(self, questions, timeout):
        """Answers to [(kind, a, b), ...] (a bool, or an error string, per question), or None if
        `timeout` seconds passed, counted from when the child is ready. Raises GradingError if the
        child cannot start or dies while answering."""
        if not self._lock.acquire(timeout=BOOT_TIMEOUT + max(timeout, 0.0)):
            return None  # another thread's request holds the child for longer than it ever may
        try:
            self.start()
            deadline = time.monotonic() + timeout
            try:
                self._proc.stdin.write(json.dumps(questions).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError:
                raise self._died("before reading a request") from None
            line = self._read_line(deadline)
            if line is None:
                self.kill()
                self._start()  # the replacement boots while the caller goes on
                return None
            if line == b"":
                raise self._died(f"while answering {json.dumps(questions)[:200]}")
            return json.loads(line)
        finally:
            self._lock.release()


_SYMPY = SympyWorker()
atexit.register(_SYMPY.kill)
os.register_at_fork(after_in_child=lambda: _SYMPY.__init__())


# ------------------------------------------------------------------------------------------------
# Equivalence
# ------------------------------------------------------------------------------------------------

def _choice_letter(s):
    m = re.fullmatch(r"\(?([A-Ea-e])\)?(?:\s.*)?", s.strip())
    return m.group(1).upper() if m else None


def _decide_scalars(p, g):
    """True / False when decided without sympy, else the sympy question (kind, a, b)."""
    if p == g or _key(p) == _key(g):
        return True
    if max(len(p), len(g)) > MAX_ANSWER_CHARS:
        return False
    pct_p, pct_g = p.endswith("%"), g.endswith("%")
    p, g = p.rstrip("%").strip(), g.rstrip("%").strip()
    if _key(p) == _key(g):
        return True
    gold_letter = re.fullmatch(r"\(?[A-E]\)?", g) and _choice_letter(g)
    if gold_letter:
        return _choice_letter(p) == gold_letter
    words = re.compile(r"[A-Za-z]{3,}(?:\s+[A-Za-z]+)*|[A-Za-z]+(?:\s+[A-Za-z]+)+")
    if words.fullmatch(p) or words.fullmatch(g):  # "Evelyn", "even", "east": text, case-insensitive
        return p.lower().replace(" ", "") == g.lower().replace(" ", "")
    np_, ng = to_number(p), to_number(g)
    if np_ is not None and ng is not None:
        candidates = [np_] + ([np_ / 100] if pct_p and not pct_g else []) + ([np_ * 100] if pct_g and not pct_p else [])
        approximate = "." in p + g
        return any(_numbers_equal(c, ng, approximate) for c in candidates)
    a, b = latex_to_sympy_text(p), latex_to_sympy_text(g)
    if a is None or b is None:
        return False
    return ("expr", a, b)


def _decide_equations(p, g):
    sides = []
    for eq in (p, g):
        lhs, rhs = eq.split("=", 1)
        lhs, rhs = latex_to_sympy_text(lhs), latex_to_sympy_text(rhs)
        if lhs is None or rhs is None:
            return False
        sides.append(f"{lhs}={rhs}")
    return ("eq", sides[0], sides[1])


def judge(pred, gold, timeout=DEFAULT_TIMEOUT):
    """(equivalent, timed_out) for one prediction against one gold or a list of golds (any counts).

    Two passes: first everything that needs no sympy (string, numeric, structure), treating each
    open sympy question as "no"; if nothing matched, the open questions (the first
    MAX_SYMPY_QUESTIONS; any beyond count as "no") go to the sympy worker in one request under
    `timeout`, and the same structural match is replayed with the answers.
    Raises GradingError when it cannot decide (sympy raised on a question and nothing else
    matched, or the sympy worker died); any other exception is a grader bug. Both propagate:
    is_equivalent and grade_response are the layers that catch and count them.
    """
    GRADER_STATS["calls"] += 1
    golds = [str(g) for g in (gold if isinstance(gold, (list, tuple)) else [gold]) if g is not None]
    if pred is None or not str(pred).strip() or not golds:
        return False, False
    p_key = _key(normalize_answer(str(pred)))
    if any(p_key == _key(normalize_answer(g)) for g in golds):
        return True, False
    p_tree, g_trees = parse_answer(str(pred)), [parse_answer(g) for g in golds]
    questions = {}

    def ask_first(kind, a, b):
        decision = (_decide_scalars if kind == "expr" else _decide_equations)(a, b)
        if isinstance(decision, tuple):
            questions.setdefault(decision, None)
            return False
        return decision

    if any(_match(p_tree, g, ask_first) for g in g_trees):
        return True, False
    if not questions:
        return False, False
    answers = _SYMPY.ask(list(questions)[:MAX_SYMPY_QUESTIONS], timeout)
    if answers is None:
        GRADER_STATS["timeouts"] += 1
        return False, True
    known = dict(zip(questions, answers))

    def ask_again(kind, a, b):
        decision = (_decide_scalars if kind == "expr" else _decide_equations)(a, b)
        return known.get(decision) is True if isinstance(decision, tuple) else decision

    if any(_match(p_tree, g, ask_again) for g in g_trees):
        return True, False
    failed = [(q, a) for q, a in known.items() if isinstance(a, str)]
    if failed:
        (kind, a, b), error = failed[0]
        raise GradingError(f"sympy raised on {kind} question {a!r} vs {b!r}: {error}")
    return False, False


def is_equivalent(pred, gold, timeout=DEFAULT_TIMEOUT):
    """Is the predicted answer `pred` equivalent to `gold` (a string, or a list: any match counts)?

    Gold-first: normalise both (LaTeX spacing, `\\frac`/`\\dfrac`, `\\left`/`\\right`, degrees, `\\%`,
    `\\text{}` units, thousands separators, `$...$`, trailing periods/newlines), then compare their
    structure (tuples and intervals in order with matching brackets, lists and sets in any order,
    equations, matrices) and, leaf by leaf, as strings, as numbers (`025` == `25`, `0.5` == `\\frac12`;
    exact unless a decimal is involved, then within relative 1e-6), then with sympy (numerically at
    random points, in a subprocess killed after `timeout` seconds: a time-out counts as not
    equivalent and in GRADER_STATS["timeouts"]). Never raises: an error (GradingError or a grader
    bug) counts as not equivalent and in GRADER_STATS["errors"]; call judge to see it.
    """
    try:
        return judge(pred, gold, timeout)[0]
    except Exception as e:  # a grader bug must not take a 10-hour evaluation down: wrong, and counted
        _count_error(e)
        return False


# ------------------------------------------------------------------------------------------------
# Grading responses, in parallel
# ------------------------------------------------------------------------------------------------

def _count_error(e):
    """Count a grading error; the first one of this process prints its traceback (a bug shows)."""
    GRADER_STATS["errors"] += 1
    if GRADER_STATS["errors"] == 1:
        print("grader: an error while grading (counted as wrong, in GRADER_STATS['errors'] and "
              "grade_response's 'grading_error'; later ones are only counted):", file=sys.stderr)
        traceback.print_exception(e, file=sys.stderr)


def grade_response(text, golds, require_think_close=True, timeout=DEFAULT_TIMEOUT, extraction=DEFAULT_EXTRACTION):
    """{"answer", "correct", "timed_out", "grading_error"} for one response, its answer read by
    extract_answer in mode `extraction` ("strict" or "lenient"). Without `</think>` (and with
    `require_think_close`) the response is wrong and no answer is extracted, as rllm scored it.
    Never raises on a response: an error while grading makes it wrong, with "grading_error" set to
    "Type: message" (None otherwise) and GRADER_STATS["errors"] counted. An unknown `extraction` is
    the caller's bug and raises ValueError."""
    _check_extraction(extraction)
    if require_think_close and THINK_CLOSE not in (text or ""):
        return {"answer": None, "correct": False, "timed_out": False, "grading_error": None}
    answer = None
    try:
        answer = extract_answer(text, extraction)
        correct, timed_out = judge(answer, golds, timeout)
    except Exception as e:
        _count_error(e)
        return {"answer": answer, "correct": False, "timed_out": False,
                "grading_error": f"{type(e).__name__}: {e}"[:500]}
    return {"answer": answer, "correct": correct, "timed_out": timed_out, "grading_error": None}


def _grade_item(item, require_think_close, timeout, extraction):
    return grade_response(item[0], item[1], require_think_close, timeout, extraction)


def _warm_worker():
    _SYMPY.start()  # boot the sympy child now, while the pool starts (never inside a timed request)


def grade_many(items, require_think_close=True, timeout=DEFAULT_TIMEOUT, workers=None,
               extraction=DEFAULT_EXTRACTION):
    """Grade [(text, golds), ...] across `workers` processes (default: all cores), each answer read
    in mode `extraction` (see extract_answer; an unknown mode raises ValueError before any work).

    Returns (results in input order, seconds taken): one result per item, always, each
    grade_response's dict (an error is a result with "grading_error" set, never a missing row).
    Small jobs are graded in-process (starting a pool costs about a second).
    """
    _check_extraction(extraction)
    start = time.perf_counter()
    items = [(t, g) for t, g in items]
    workers = workers or min(os.cpu_count() or 1, 8)
    fn = partial(_grade_item, require_think_close=require_think_close, timeout=timeout, extraction=extraction)
    if workers > 1 and len(items) >= 32 * workers:
        try:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_warm_worker) as pool:
                results = list(pool.map(fn, items, chunksize=max(1, len(items) // (workers * 8))))
            return results, time.perf_counter() - start
        except concurrent.futures.process.BrokenProcessPool:
            print("grading pool broke; grading in-process instead", file=sys.stderr)
    return [fn(it) for it in items], time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# Command line: one prediction against its golds
# ------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", help="the predicted answer (LaTeX, without the \\boxed{}), or with "
                                "--answer-extraction a whole response")
    p.add_argument("gold", nargs="+", help="gold answer(s); any match counts")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds of sympy; a time-out is wrong")
    p.add_argument("--answer-extraction", choices=EXTRACTION_MODES, default=None,
                   help="read PRED as a whole model response and grade the answer extract_answer finds in "
                        "this mode (strict: the final box(es), else 'the answer is X'; lenient: also the math "
                        "the response ends with); the answer is printed too. Default: PRED is the answer")
    args = p.parse_args(argv)
    if not args.timeout > 0:
        p.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    pred = args.pred if args.answer_extraction is None else extract_answer(args.pred, args.answer_extraction)
    try:
        equivalent, timed_out = judge(pred, args.gold, args.timeout)
    except GradingError as e:
        print(f"grader.py: error: could not decide: {e}", file=sys.stderr)
        return 2
    shown = {} if args.answer_extraction is None else {"answer": pred}
    print(json.dumps({**shown, "equivalent": equivalent, "timed_out": timed_out}))
    return 0 if equivalent else 1


if __name__ == "__main__":
    sys.exit(main())
