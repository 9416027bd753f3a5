"""Evaluate a model the way the REDI paper (arXiv 2505.24850) did: sample, grade, report.

What it does
    1. Builds each problem's prompt (`--prompt-template`, see PROMPT_TEMPLATES) and renders it with
       the tokenizer's chat template, generation prompt included. REDI's template opens the
       assistant turn with `<think>\\n`, so sampling starts inside the thinking block, as the paper's
       evaluation forced it.
    2. Samples `--n` responses per problem (T=0.6, top-p 0.95, up to 32,768 new tokens in the paper)
       in batches with a KV cache, data-parallel over torchrun ranks (rank r takes problems
       r, r+W, ...). Every response is appended to OUT/generations.jsonl as soon as its batch is done,
       so a killed run resumes where it stopped, without losing or duplicating samples.
    3. Grades each response: the last `\\boxed{}` after `</think>` (a response without `</think>` is
       wrong, as in rllm, unless `--no-require-think-close`), compared with every gold answer by
       `is_equivalent` (string, numeric and sympy checks; sympy runs in a killable subprocess under a
       hard time limit). Grading runs in a process pool across the cores.
    4. Writes OUT/summary.json and prints a table per benchmark: pass@1 (mean over the n samples)
       +- the paper's SEM, pass@k (unbiased estimator) for k = 1, 2, 4, ..., n, mean response length,
       truncation rate, and the reflection statistic (occurrences of "Wait" per response).

Launch
    # one GPU or CPU, a local benchmark file (schema: ../shared/benchmarks/README.md)
    # (under torchrun spell --n as --num-samples: torchrun's own parser rejects --n as ambiguous)
    python evaluate.py --model runs/redi --data ../shared/benchmarks/math500.jsonl --n 16 \\
        --temperature 0.6 --top-p 0.95 --max-new-tokens 32768 --output-dir out/redi_math500
    # 8 GPUs, all five benchmarks of the paper (rank r takes problems r, r+8, ...)
    torchrun --standalone --nproc_per_node 8 evaluate.py --model runs/redi --num-samples 16 \\
        --data ../shared/benchmarks/{math500,aime24,amc23,minerva,olympiadbench}.jsonl --output-dir out/redi
    # tiny CPU smoke run (the toy task's model was trained on bare problems)
    python evaluate.py --model runs/tiny --data ../shared/benchmarks/math500_sample20.jsonl --n 2 \\
        --max-new-tokens 16 --prompt-template raw --output-dir out/smoke
    # grade responses produced by another engine (vLLM, ...), no model loaded
    python evaluate.py --responses gens.jsonl --data ../shared/benchmarks/aime24.jsonl --output-dir out/vllm

Outputs (stable: the demo and the plotting script read them)
    OUT/generations.jsonl, one line per (benchmark, problem id, sample index), fields:
        benchmark, id, index (problem's row in its file), sample, seed (this sample's own seed),
        text (the response; starts with the `<think>\\n` that the generation prompt already held, so the
        `</think>` boundary is visible to the grader), answer (extracted, or null), gold (list of
        gold strings), correct, timed_out (sympy hit the time limit: counted as wrong),
        finish_reason ("stop" | "length"), num_tokens (generated tokens, stop token included).
        Lines are appended ungraded (answer/correct/timed_out null) while sampling, so grading never
        stalls the accelerator; rank 0 grades them all in parallel at the end and rewrites the file.
    OUT/summary.json = {"args": {...}, "versions": {...}, "benchmarks": {NAME: {
        "n_problems", "n_samples", "pass@1", "sem", "pass@k": {"1": .., "2": .., ..., "n": ..},
        "mean_length", "truncation_rate", "wait_per_response", "grading_timeouts",
        "answers_per_second"}}}; NAME is the --data file's stem or the --benchmark name. Rates are
        fractions in [0, 1]; the printed table shows percentages.
    Python API: extract_answer, is_equivalent, pass_at_k, sem_over_samples, grade_response,
        grade_many, summarize(records, n) -> {NAME: metrics} (the "benchmarks" part above) and
        format_table(summary) -> str (takes that mapping or the whole summary.json). Importing this
        module does not import torch.

`--responses FILE` format (JSON Lines, one response per line)
    {"id": "aime24/2024-I-1", "text": "<think>...</think> ... \\boxed{204}"} plus optional fields:
    "benchmark" (needed when several benchmarks are loaded), "sample" (int; default: order of
    appearance per problem), "gold" (str or list; default: looked up by id in --data/--benchmark),
    "finish_reason" ("stop"/"length"), "num_tokens" (int). n is taken from the file, per benchmark
    (the smallest count per problem); `--n` is ignored in this mode. Golds from --data/--benchmark
    are matched on "id" (and "benchmark" = the file stem when several are loaded).

Where this departs from the paper's pipeline (rllm + vLLM), and why
    1. Sampling is our own loop over `model(...)` with a KV cache (not vLLM, not `generate`): every
       sample has its own torch.Generator seeded from (--seed, benchmark, problem id, sample index),
       so a sample does not depend on which rank or batch it lands in, and a resumed run regenerates
       exactly the samples a complete run would have produced. Residual non-determinism: batches
       are left-padded, and a different padding/batch composition changes floating-point summation
       order in the last bits; that flips a sampled token only at a near-tie (rare; never seen in
       the tests, fp32 on CPU). Different hardware or dtype gives different samples.
    2. The grader is ours (rllm's is MATH's normaliser + sympy, Math-Verify is a LaTeX parser). It
       accepts what both accept for the common cases and adds: tuples/intervals compared element-
       wise with their brackets, unordered answer lists and sets, `x=3` vs `3`, `\\pm` expanded,
       matrices/vectors, multiple-choice letters, units and percent signs dropped. Exact numbers
       compare exactly; a decimal or an irrational is equal within relative 1e-6 (0.3333333 ==
       1/3, 3.14 != pi). Unreduced fractions count as equal (rllm rejects "2/4" for "1/2").
    3. SEM: s / sqrt(n), s the sample standard deviation (ddof=1) of the n benchmark-wide scores
       obtained with only the j-th sample of every problem (paper, Appendix C.5).
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import math
import os
import re
import select
import statistics
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import lru_cache, partial

# ------------------------------------------------------------------------------------------------
# Answer extraction
# ------------------------------------------------------------------------------------------------

THINK_CLOSE = "</think>"
_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_FINAL_RE = re.compile(r"\banswer\b\**\s*(?:is|:)\s*:?\**\s*", re.IGNORECASE)
_HOPE_RE = re.compile(r"\.?\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)


def _boxes(text):
    """(start, content) of every complete box, one linear pass (no rescans: 200k chars stay fast).

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
                found.append((starts[i], m.group(1).rstrip(".,")))
        if ch == "{":
            stack.append((i, None))
        elif ch == "}" and stack:
            pos, box_start = stack.pop()
            if box_start is not None:
                found.append((box_start, text[pos + 1:i]))
        i += 1
    return found


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


def extract_answer(text):
    """The model's final answer in `text`, or None.

    Only the text after the last `</think>` is searched when a thinking block is present. The answer
    is the content of the last complete `\\boxed{}` / `\\fbox{}` / `\\framebox{}` (nested braces
    kept), or `\\boxed x`; without any box, the phrase after the last "final answer is" / "The answer
    is" (e.g. `Therefore, the final answer is: $42$. I hope it is correct`).
    """
    if not text:
        return None
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    boxes = _boxes(text)
    if boxes:
        return max(boxes)[1].strip()
    return _final_answer_phrase(text)


# ------------------------------------------------------------------------------------------------
# Normalisation: LaTeX answer -> canonical string (gold and prediction alike)
# ------------------------------------------------------------------------------------------------

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as plain strings only
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


def latex_to_sympy_text(s, strict=False):
    """`\\frac{a}{b}` -> `((a)/(b))`, `x^{2}` -> `x**(2)`, `\\sqrt[3]{x}`, `\\pi`, `\\log_2 8`, ... for sympy's
    `parse_expr` (implicit multiplication is left to it). None (or ValueError when strict) for what it
    does not understand: `\\prime`, `&`, `=`, base subscripts like `52_8`, unknown commands."""
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
        if abs_open or not text or re.search(r"\d{4,}\s*!", text):  # 1000000! would run for minutes
            raise ValueError("unbalanced |" if abs_open else "empty or huge factorial")
        return text
    except (ValueError, IndexError, AttributeError, RecursionError):
        if strict:
            raise ValueError(s) from None
        return None


# ------------------------------------------------------------------------------------------------
# Sympy, in a killable subprocess (works from any thread and inside pool workers, even daemonic ones)
# ------------------------------------------------------------------------------------------------

DEFAULT_TIMEOUT = 3.0  # seconds of sympy per is_equivalent call; the whole call stays under 5 s
_MAX_DIGITS = 10_000  # numeric subexpressions with more digits are never evaluated
_BOOT = ("import importlib.util, sys\n"
         "spec = importlib.util.spec_from_file_location('_redi_eval_sympy_worker', sys.argv[1])\n"
         "module = importlib.util.module_from_spec(spec)\n"
         "spec.loader.exec_module(module)\n"
         "module._sympy_server_main()\n")


def _sympy_locals():
    import sympy

    names = {c: sympy.Symbol(c) for c in "abcdfghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names.update({g: sympy.Symbol(g) for g in _GREEK | {"lamda"}})
    names.update({f"fn_{c}": sympy.Function(c) for c in names if len(c) == 1})  # `I(0)`, see latex_to_sympy_text
    names.update(e=sympy.E, i=sympy.I)  # Euler's number and the imaginary unit, as MATH uses them
    return names


def _log10_size(node):
    """Upper estimate of log10 |value| of a numeric subtree, without evaluating it (inf: enormous)."""
    import sympy

    if node.is_Integer or node.is_Rational:
        return len(str(abs(node.p))) - len(str(node.q))
    if node.is_Float:
        return math.log10(abs(float(node))) if node != 0 else -math.inf
    sizes = [_log10_size(a) for a in node.args] or [0.0]
    if node.is_Pow and not node.exp.free_symbols:
        if sizes[1] > 6:
            return math.inf if sizes[0] > 0 else 0.0
        return abs(float(node.exp)) * max(sizes[0], 0.0)
    if isinstance(node, sympy.factorial):
        return math.inf if sizes[0] > 6 else float(node.args[0]) * max(sizes[0], 0.0)
    return sum(max(x, 0.0) for x in sizes) if node.is_Mul else max(sizes) + 1


def _sympy_parse(text):
    """(evaluated expression, or None when it holds a number too large to ever evaluate)."""
    from sympy import preorder_traversal
    from sympy.parsing.sympy_parser import (implicit_multiplication, parse_expr, split_symbols,
                                            standard_transformations)

    transformations = standard_transformations + (split_symbols, implicit_multiplication)
    raw = parse_expr(text, local_dict=_sympy_locals(), transformations=transformations, evaluate=False)
    for node in preorder_traversal(raw):
        if not node.free_symbols and (node.is_Pow or node.is_Function) and _log10_size(node) > _MAX_DIGITS:
            return None
    return parse_expr(text, local_dict=_sympy_locals(), transformations=transformations)


def _numerically_equal(diff, scale_terms, symbols):
    """diff == 0 at random points (all symbols positive, to stay off branch cuts), relative REL_TOL.
    Sympy numbers throughout, so 1.5**100000 is a number, not a float overflow."""
    import random

    import sympy
    from sympy.core.function import AppliedUndef

    rng, checked = random.Random(0), 0
    for _ in range(8):
        point = {s: sympy.Float(rng.uniform(0.3, 1.7)) for s in symbols}
        d = sympy.N(diff.subs(point), 30)
        scale = max([abs(sympy.N(t.subs(point), 30)) for t in scale_terms], key=lambda v: (v.is_number, v))
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

    if kind == "sleep":  # test hook: a request that outlives any time limit
        time.sleep(float(a))
        return True
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


def _sympy_server_main():
    """Child process loop: one JSON list of [kind, a, b] per line in, one JSON list of bools out."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # nothing sympy prints may corrupt the protocol
    import sympy  # noqa: F401  (warm up before the first request arrives)

    for line in sys.stdin:
        results = []
        for kind, a, b in json.loads(line):
            try:
                results.append(bool(_sympy_check(kind, a, b)))
            except Exception:  # sympy raises anything on odd input: not equivalent
                results.append(False)
        out.write(json.dumps(results) + "\n")
        out.flush()


class SympyWorker:
    """A persistent child process for sympy questions. A request that overruns its deadline kills the
    child (a fresh one starts on the next request), so nothing sympy does can hang the caller.
    Plain subprocess + select, not multiprocessing: works off the main thread, under fork or spawn,
    and inside daemonic pool workers (which may not start multiprocessing children)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc, self._owner, self._buffer = None, None, b""

    def _start(self):
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._owner, self._buffer = os.getpid(), b""

    def kill(self):
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()

    def _read_line(self, deadline):
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None  # the child died
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def ask(self, questions, timeout):
        """Answers (list of bools) to [(kind, a, b), ...], or None if `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            return None
        try:
            if self._proc is None or self._owner != os.getpid() or self._proc.poll() is not None:
                self._start()  # first use, after a kill, or inherited through fork from a parent
            try:
                self._proc.stdin.write(json.dumps(questions).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError:
                self.kill()
                return None
            line = self._read_line(deadline)
            if line is None:
                self.kill()
                return None
            return json.loads(line)
        finally:
            self._lock.release()


_SYMPY = SympyWorker()
atexit.register(_SYMPY.kill)
os.register_at_fork(after_in_child=lambda: _SYMPY.__init__())


# ------------------------------------------------------------------------------------------------
# Equivalence
# ------------------------------------------------------------------------------------------------

GRADER_STATS = {"calls": 0, "timeouts": 0}  # per process; grade_many sums its workers' counts


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
    open sympy question as "no"; if nothing matched, all open questions go to the sympy worker in
    one request under `timeout`, and the same structural match is replayed with the answers.
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
    answers = _SYMPY.ask(list(questions)[:256], timeout)
    if answers is None:
        GRADER_STATS["timeouts"] += 1
        return False, True
    known = dict(zip(questions, answers))

    def ask_again(kind, a, b):
        decision = (_decide_scalars if kind == "expr" else _decide_equations)(a, b)
        return known.get(decision, False) if isinstance(decision, tuple) else decision

    return any(_match(p_tree, g, ask_again) for g in g_trees), False


def is_equivalent(pred, gold, timeout=DEFAULT_TIMEOUT):
    """Is the predicted answer `pred` equivalent to `gold` (a string, or a list: any match counts)?

    Gold-first: normalise both (LaTeX spacing, `\\frac`/`\\dfrac`, `\\left`/`\\right`, degrees, `\\%`,
    `\\text{}` units, thousands separators, `$...$`, trailing periods/newlines), then compare their
    structure (tuples and intervals in order with matching brackets, lists and sets in any order,
    equations, matrices) and, leaf by leaf, as strings, as numbers (`025` == `25`, `0.5` == `\\frac12`;
    exact unless a decimal is involved, then within relative 1e-6), then with sympy (numerically at
    random points, in a subprocess killed after `timeout` seconds: a time-out counts as not
    equivalent and in GRADER_STATS["timeouts"]). Never raises.
    """
    try:
        return judge(pred, gold, timeout)[0]
    except Exception:  # a grader bug must not take a 10-hour evaluation down; count it as wrong
        return False


# ------------------------------------------------------------------------------------------------
# Grading responses, in parallel
# ------------------------------------------------------------------------------------------------

def grade_response(text, golds, require_think_close=True, timeout=DEFAULT_TIMEOUT):
    """{"answer", "correct", "timed_out"} for one response. Without `</think>` (and with
    `require_think_close`) the response is wrong and no answer is extracted, as rllm scored it."""
    if require_think_close and THINK_CLOSE not in (text or ""):
        return {"answer": None, "correct": False, "timed_out": False}
    answer = extract_answer(text)
    try:
        correct, timed_out = judge(answer, golds, timeout)
    except Exception:
        correct, timed_out = False, False
    return {"answer": answer, "correct": correct, "timed_out": timed_out}


def _grade_item(item, require_think_close, timeout):
    return grade_response(item[0], item[1], require_think_close, timeout)


def _warm_worker():
    _SYMPY.ask([], 30.0)  # start the sympy child now, not inside the first timed request


def grade_many(items, require_think_close=True, timeout=DEFAULT_TIMEOUT, workers=None):
    """Grade [(text, golds), ...] across `workers` processes (default: all cores).

    Returns (results in input order, seconds taken). Each result is grade_response's dict. Small
    jobs are graded in-process (starting a pool costs about a second).
    """
    import concurrent.futures
    import multiprocessing

    start = time.perf_counter()
    items = [(t, g) for t, g in items]
    workers = workers or min(os.cpu_count() or 1, 8)
    fn = partial(_grade_item, require_think_close=require_think_close, timeout=timeout)
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
        "answers_per_second": answers_per_second,
    }


def summarize(records, n, answers_per_second=None):
    """{benchmark: metrics} from graded records (see the module docstring for the keys).

    records: dicts with benchmark, id, sample, correct (and, if known, num_tokens, finish_reason,
    text, timed_out). n: samples per problem (an int, or {benchmark: int}); samples with index >= n
    are ignored. answers_per_second: optional {benchmark: grading speed}, copied into the metrics.
    """
    groups = {}
    for r in records:
        if r["sample"] < (n[r["benchmark"]] if isinstance(n, dict) else n):
            groups.setdefault(r["benchmark"], []).append(r)
    return {name: _benchmark_metrics(recs, n[name] if isinstance(n, dict) else n, (answers_per_second or {}).get(name))
            for name, recs in groups.items()}


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


def build_prompt(tokenizer, problem, template="redi"):
    """The chat-templated prompt text, generation prompt included (REDI's opens `<think>\\n`)."""
    messages = [{"role": "user", "content": PROMPT_TEMPLATES[template](problem)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def opened_think(prompt):
    """The `<think>` opening that ends the generation prompt (stored in front of each response so
    the grader sees the whole thinking block), or "" when the template does not open one."""
    i = prompt.rfind("<think>")
    return prompt[i:] if i >= 0 and not prompt[i + len("<think>"):].strip() else ""


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------

BENCHMARK_NAMES = ("math500", "aime24", "amc23", "minerva", "olympiadbench")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", default=[], metavar="BENCH.jsonl",
                   help="benchmark file (JSON Lines: id, problem, answer or answers); repeatable; "
                        "the file's stem names the benchmark")
    g.add_argument("--benchmark", action="append", default=[], choices=BENCHMARK_NAMES,
                   help="download a public copy from the Hugging Face hub (cached in OUT/benchmarks/); "
                        "repeatable. For the paper's exact sets use --data ../shared/benchmarks/*.jsonl")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    g = p.add_argument_group("model and sampling")
    g.add_argument("--model", help="model directory (or hub id) loadable by transformers")
    g.add_argument("--prompt-template", choices=sorted(PROMPT_TEMPLATES), default="redi",
                   help="redi: the paper's instruction before the problem; rllm: problem + \"Let's think step "
                        "by step ...\"; raw: the problem alone (the toy task)")
    g.add_argument("--n", "--num-samples", dest="n", type=int, default=16,
                   help="samples per problem (pass@1 averages over them); under torchrun spell it "
                        "--num-samples (torchrun's own parser rejects --n as ambiguous)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    g.add_argument("--max-new-tokens", type=int, default=32768, help="generation budget per response")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass, per rank")
    g.add_argument("--seed", type=int, default=0, help="base seed; each sample's seed derives from it")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: bfloat16 on GPU, float32 on CPU)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model")
    g = p.add_argument_group("grading")
    g.add_argument("--responses", metavar="GENS.jsonl",
                   help="grade these responses (see the format above) instead of generating; no model needed")
    g.add_argument("--require-think-close", action=argparse.BooleanOptionalAction, default=True,
                   help="a response without </think> is wrong (rllm's rule, the paper's setting)")
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
    if args.n < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error(f"--n, --batch-size and --max-new-tokens must be >= 1, got {args.n}, "
                     f"{args.batch_size}, {args.max_new_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error(f"need --temperature >= 0 and 0 < --top-p <= 1, got {args.temperature}, {args.top_p}")
    if args.grading_timeout <= 0:
        parser.error(f"--grading-timeout must be > 0, got {args.grading_timeout}")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

# Public copies on the hub: (dataset, config, problem field, answer field, id field). Not the exact
# files the paper used (those are in ../shared/benchmarks/, see its README): minerva's golds differ.
HUB_SOURCES = {
    "math500": ("HuggingFaceH4/MATH-500", "default", "problem", "answer", "unique_id"),
    "aime24": ("HuggingFaceH4/aime_2024", "default", "problem", "answer", "id"),
    "amc23": ("AI-MO/aimo-validation-amc", "default", "problem", "answer", "id"),
    "minerva": ("math-ai/minervamath", "default", "question", "answer", None),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "question", "final_answer", "id"),
}
_DATASETS_SERVER = "https://datasets-server.huggingface.co"


def _gold_string(value):
    """AMC stores 142.0: compare against "142" (README: answers are integral)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_benchmark(path, name, limit=None):
    """Problems of one benchmark file: [{"benchmark", "id", "index", "problem", "golds"}].
    Golds: `answers` (any match counts) when present, else `answer`."""
    from data import read_jsonl  # the project's one JSON Lines reader (errors name file and line)

    problems, ids = [], set()
    for lineno, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("problem"), str) or not row["problem"].strip():
            found = type(row.get("problem") if isinstance(row, dict) else row).__name__
            raise ValueError(f"{path}:{lineno}: field 'problem' must be a non-empty string, found {found}")
        golds = row.get("answers") or ([row["answer"]] if row.get("answer") is not None else [])
        if not isinstance(golds, list) or not golds:
            raise ValueError(f"{path}:{lineno}: needs 'answer' (string) or 'answers' (non-empty list)")
        pid = str(row.get("id", f"{name}/{len(problems)}"))
        if pid in ids:
            raise ValueError(f"{path}:{lineno}: duplicate id {pid!r}")
        ids.add(pid)
        problems.append({"benchmark": name, "id": pid, "index": len(problems), "problem": row["problem"],
                         "golds": [_gold_string(g) for g in golds]})
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def _get_json(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read().decode())


def fetch_benchmark(name, cache_dir):
    """Download benchmark `name` from the Hugging Face hub (datasets-server JSON API, no extra
    dependencies) into cache_dir/NAME.jsonl, in our schema; reused when already there."""
    import urllib.error
    import urllib.parse

    path = os.path.join(cache_dir, f"{name}.jsonl")
    if os.path.isfile(path):
        return path
    repo, config, problem_field, answer_field, id_field = HUB_SOURCES[name]
    hint = f"pass --data with a local copy instead, e.g. --data ../shared/benchmarks/{name}.jsonl"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise SystemExit(f"--benchmark {name}: HF_HUB_OFFLINE is set, cannot download {repo}; {hint}")
    query = urllib.parse.urlencode({"dataset": repo})
    try:
        splits = [s["split"] for s in _get_json(f"{_DATASETS_SERVER}/splits?{query}")["splits"]
                  if s["config"] == config]
        rows, total = [], None
        while total is None or len(rows) < total:
            page = _get_json(f"{_DATASETS_SERVER}/rows?{query}&config={config}&split={splits[0]}"
                             f"&offset={len(rows)}&length=100")
            rows += [r["row"] for r in page["rows"]]
            total = page["num_rows_total"] if page["rows"] else len(rows)
    except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as e:
        raise SystemExit(f"--benchmark {name}: could not download {repo} ({config}) from the Hugging Face hub: "
                         f"{e}. Offline? {hint}") from None
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            answers = row[answer_field] if isinstance(row[answer_field], list) else [row[answer_field]]
            answers = [_gold_string(a) for a in answers]
            rid = row.get(id_field, i) if id_field else i
            f.write(json.dumps({"id": f"{name}/{rid}", "problem": row[problem_field], "answer": answers[0],
                                "answers": answers, "source": repo}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return path


def load_benchmarks(args, fetch=True):
    """[(name, problems)] in command-line order: --data files, then --benchmark names."""
    named = [(os.path.splitext(os.path.basename(p))[0], p) for p in args.data]
    cache = os.path.join(args.output_dir, "benchmarks")
    named += [(name, fetch_benchmark(name, cache) if fetch else os.path.join(cache, f"{name}.jsonl"))
              for name in args.benchmark]
    return [(name, read_benchmark(path, name, args.limit)) for name, path in named]


# ------------------------------------------------------------------------------------------------
# Generations file: append as we go, resume, consolidate
# ------------------------------------------------------------------------------------------------

GENERATIONS = "generations.jsonl"


def read_generations(path):
    """Records of a generations file. A last line cut short by a kill is dropped (and said so);
    a bad line anywhere else is an error naming the file and line."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record.get("sample"), int) or not isinstance(record.get("text"), str):
                raise ValueError("needs an integer 'sample' and a string 'text'")
            str(record["benchmark"]), str(record["id"])
        except (json.JSONDecodeError, ValueError, KeyError, AttributeError) as e:
            if lineno == len(lines):  # no newline after it: the write was interrupted
                print(f"{path}:{lineno}: dropped a truncated last line (interrupted run): {line[:60]!r}...",
                      file=sys.stderr)
                continue
            raise ValueError(f"{path}:{lineno}: bad generation record ({e})") from None
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
    import glob

    main_path = os.path.join(out_dir, GENERATIONS)
    parts = sorted(glob.glob(os.path.join(out_dir, "generations.rank*.jsonl")))
    order = {name: i for i, (name, _) in enumerate(benchmarks)}
    unique = {}
    for path in [main_path] + parts:
        for r in read_generations(path):
            unique.setdefault(_record_key(r), r)
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
# Distributed (torchrun) helpers
# ------------------------------------------------------------------------------------------------

def setup_distributed(args):
    """(rank, world_size, device). gloo on CPU, nccl on GPU; plain single process without torchrun."""
    from datetime import timedelta

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=args.dist_timeout_min))
    return dist.get_rank(), world, device


def barrier(world):
    if world > 1:
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup_distributed(world):
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def print0(rank, *args):
    if rank == 0:
        print(*args, flush=True)


# ------------------------------------------------------------------------------------------------
# Model and sampling
# ------------------------------------------------------------------------------------------------

def load_model(path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    torch_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
                   "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    return model, tokenizer


def stop_token_ids(model, tokenizer):
    """The tokenizer's eos plus every eos of the model's generation config (Qwen lists several)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return sorted(i for i in ids if i is not None)


def _forward(model, input_ids, mask, positions, cache):
    """Logits of the last position [B, V] and the updated KV cache (`cache=` in transformers 5,
    `past_key_values=` before)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **({name: cache} if cache is not None else {}))
    new_cache = out.get("cache")
    return out.logits[:, -1, :], new_cache if new_cache is not None else out.get("past_key_values")


def sample_next(logits, temperature, top_p, generators):
    """Next token per row [A] from logits [A, V]: temperature, then top-p (keep the most likely
    tokens until their mass reaches top_p, as transformers' TopPLogitsWarper), then an
    exponential race (argmax p / E, E ~ Exp(1): an exact sample from p) with each row's own
    generator, so a row's draw does not depend on the other rows."""
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.exp()
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # mass before this token already enough
        logp = logp.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    noise = torch.stack([torch.empty(logp.shape[-1], device=logp.device).exponential_(generator=g)
                         for g in generators])
    return (logp - noise.clamp_min(1e-30).log()).argmax(-1)


def sample_batch(model, prompts, seeds, max_new_tokens, temperature, top_p, stop_ids, pad_id):
    """[(new token ids, "stop" | "length")] per prompt. Left-padded batch with a KV cache; finished
    rows leave the batch (their cache rows are dropped); row b samples with torch.Generator(seeds[b])."""
    import torch

    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for b, ids in enumerate(prompts):
        input_ids[b, width - len(ids):] = torch.tensor(ids, device=device)
        mask[b, width - len(ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padded rows start at position 0, as unpadded ones
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop = torch.tensor(stop_ids, device=device)
    rows = list(range(batch))  # original index of each row still generating
    tokens, reasons = [[] for _ in range(batch)], ["length"] * batch
    with torch.no_grad():
        logits, cache = _forward(model, input_ids, mask, positions, None)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_p, [generators[r] for r in rows])  # [A]
            finished = torch.isin(nxt, stop)
            for r, t in zip(rows, nxt.tolist()):
                tokens[r].append(t)
            for a in finished.nonzero().flatten().tolist():
                reasons[rows[a]] = "stop"
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().flatten()
                rows = [rows[a] for a in keep.tolist()]
                nxt, mask, positions = nxt[keep], mask[keep], positions[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = _forward(model, nxt[:, None], mask, positions, cache)
    return list(zip(tokens, reasons))


# ------------------------------------------------------------------------------------------------
# Generation loop (every rank), grading and reporting (rank 0)
# ------------------------------------------------------------------------------------------------

def generate(args, work, out_path, rank, device):
    """Sample every (problem, sample) in `work`, appending one graded record per sample to out_path
    after each batch (flushed, so a kill loses at most the batch in flight)."""
    model, tokenizer = load_model(args.model, device, args.dtype)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    prompts = {}
    start, new_tokens = time.perf_counter(), 0
    with open(out_path, "a", encoding="utf-8") as f:
        for first in range(0, len(work), args.batch_size):
            batch = work[first:first + args.batch_size]
            for p, _ in batch:
                if (p["benchmark"], p["id"]) not in prompts:
                    text = build_prompt(tokenizer, p["problem"], args.prompt_template)
                    prompts[p["benchmark"], p["id"]] = (tokenizer(text, add_special_tokens=False)["input_ids"],
                                                        opened_think(text))
            seeds = [sample_seed(args.seed, p["benchmark"], p["id"], j) for p, j in batch]
            outputs = sample_batch(model, [prompts[p["benchmark"], p["id"]][0] for p, _ in batch], seeds,
                                   args.max_new_tokens, args.temperature, args.top_p, stops, pad)
            for (p, j), seed, (ids, reason) in zip(batch, seeds, outputs):
                body = ids[:-1] if reason == "stop" else ids
                text = prompts[p["benchmark"], p["id"]][1] + tokenizer.decode(body, skip_special_tokens=True)
                # Grading waits for the end (rank 0, in parallel): sympy here would idle the accelerator.
                f.write(json.dumps({"benchmark": p["benchmark"], "id": p["id"], "index": p["index"], "sample": j,
                                    "seed": seed, "text": text, "answer": None, "gold": p["golds"],
                                    "correct": None, "timed_out": None,
                                    "finish_reason": reason, "num_tokens": len(ids)}, ensure_ascii=False) + "\n")
                new_tokens += len(ids)
            f.flush()
            elapsed = time.perf_counter() - start
            print(f"[rank {rank}] {first + len(batch)}/{len(work)} samples, {new_tokens / elapsed:.1f} tokens/s",
                  flush=True)


def regrade(records, problems, args):
    """Grade every record again, in parallel, with the current golds (the authoritative grades of
    the summary); returns {benchmark: answers graded per second}."""
    rates = {}
    for name in dict.fromkeys(r["benchmark"] for r in records):
        recs = [r for r in records if r["benchmark"] == name]
        golds = [r.get("gold") if (name, r["id"]) not in problems else problems[name, r["id"]]["golds"]
                 for r in recs]
        results, seconds = grade_many([(r["text"], g) for r, g in zip(recs, golds)],
                                      args.require_think_close, args.grading_timeout, args.grading_workers)
        rates[name] = len(recs) / max(seconds, 1e-9)
        for r, g, res in zip(recs, golds, results):
            r.update(res, gold=g)
    return rates


def versions():
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "tokenizers", "sympy", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def report(args, records, graded, n, rates, benchmarks):
    """Write all `records` to OUT/generations.jsonl (samples of other benchmarks, or beyond n, from
    earlier runs into the same OUT are kept), summarise the `graded` ones into OUT/summary.json,
    print the table; returns the summary."""
    order = {name: i for i, (name, _) in enumerate(benchmarks)}
    records.sort(key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"], r.get("index", 0),
                                str(r["id"]), r["sample"]))
    write_generations(os.path.join(args.output_dir, GENERATIONS), records)
    summary = {"args": vars(args), "versions": versions(), "benchmarks": summarize(graded, n, rates)}
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(format_table(summary))
    for name, m in summary["benchmarks"].items():
        rate = m["answers_per_second"]
        print(f"{name}: graded {m['n_problems'] * m['n_samples']} answers"
              + (f" at {rate:.0f} answers/s" if rate else "") + f", {m['grading_timeouts']} sympy time-outs")
    return summary


def read_responses(path, benchmarks):
    """Records from a --responses file (format in the module docstring); golds from the line's
    "gold" or from the loaded benchmarks by id. Errors name the file, line and field."""
    lookup = {(name, p["id"]): p for name, ps in benchmarks for p in ps}
    names = [name for name, _ in benchmarks]
    counts, records = {}, []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(row.get("text"), str) or "id" not in row:
                raise ValueError(f"{where}: needs 'id' and a string 'text'")
            name = row.get("benchmark") or (names[0] if len(names) == 1 else "responses")
            problem = lookup.get((name, str(row["id"])))
            gold = row.get("gold", problem["golds"] if problem else None)
            if gold is None:
                raise ValueError(f"{where}: no gold for benchmark {name!r} id {row['id']!r}: add a 'gold' field "
                                 f"or load its benchmark with --data/--benchmark (loaded: {names})")
            key = (name, str(row["id"]))
            sample = row.get("sample", counts.get(key, 0))
            counts[key] = max(counts.get(key, 0), sample + 1)
            records.append({"benchmark": name, "id": str(row["id"]),
                            "index": problem["index"] if problem else len(counts) - 1, "sample": sample,
                            "seed": row.get("seed"), "text": row["text"],
                            "gold": gold if isinstance(gold, list) else [gold],
                            "finish_reason": row.get("finish_reason", "stop"), "num_tokens": row.get("num_tokens")})
    return records


def grade_responses_file(args):
    """--responses mode: grade another engine's generations, no model or torch needed."""
    benchmarks = load_benchmarks(args)
    records = read_responses(args.responses, benchmarks)
    seen = {}
    for r in records:
        seen.setdefault(_record_key(r), r)  # first copy of a duplicated (benchmark, id, sample) wins
    records = list(seen.values())
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
    return report(args, records, records, n, rates, benchmarks)


def run_generation(args):
    first = int(os.environ.get("RANK", "0")) == 0
    if first:  # before torch is imported, so a missing file or an offline hub fails fast
        benchmarks = load_benchmarks(args)  # rank 0 downloads; the others read its cache
        consolidate(args.output_dir, benchmarks)  # drops a kill's truncated line, merges rank parts
    rank, world, device = setup_distributed(args)
    try:
        barrier(world)
        benchmarks = benchmarks if first else load_benchmarks(args, fetch=False)
        done = {_record_key(r) for r in read_generations(os.path.join(args.output_dir, GENERATIONS))}
        work = missing_work(benchmarks, done, args.n, rank, world)
        missing = len(missing_work(benchmarks, done, args.n, 0, 1))
        total = sum(len(ps) for _, ps in benchmarks) * args.n
        print0(rank, f"{total - missing}/{total} samples already in {args.output_dir}/{GENERATIONS}; "
                     f"generating {missing} on {world} rank(s)")
        if work:
            part = GENERATIONS if world == 1 else f"generations.rank{rank}.jsonl"
            generate(args, work, os.path.join(args.output_dir, part), rank, device)
        barrier(world)
        if rank == 0:
            records = consolidate(args.output_dir, benchmarks)
            problems = {(name, p["id"]): p for name, ps in benchmarks for p in ps}
            current = [r for r in records if (r["benchmark"], r["id"]) in problems]
            rates = regrade(current, problems, args)
            return report(args, records, current, args.n, rates, benchmarks)
    finally:
        cleanup_distributed(world)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.responses:
        return grade_responses_file(args)
    return run_generation(args)


if __name__ == "__main__":
    main()
