"""The built-in task: a synthetic reasoning task in the OpenR1-Math-Raw schema, small enough to learn on
2 CPU cores, so the whole pipeline (curate -> SFT -> REDI -> evaluate) runs end to end on a laptop.

Writes raw.jsonl (one OpenR1-Math-Raw row per problem, which curate.py reads unchanged), test.jsonl
(held-out problems in the benchmark format, none equal to a training problem) and task.json (the
knobs, the counts curation should find, sha256s). A problem is a short integer expression such as
"Compute 7*8-9*8."; a generation is an R1-shaped trace. The teacher's wrong traces are systematic
slips, each a rule misapplied where it does not hold (sign, borrow, extra_borrow, precedence, ones),
one knob each. Variants (`--variant`): `slips`, the default, every negative a slip in the work (the
null case); `guess`, where the teacher often guesses and only the negatives show that guessing fails
(the paper's premise). `classify_trace` and `path_stats` name what a trace did, teacher's or student's.
The task, the slips, the verifiers, why it has this shape, what a tiny student learns: docs/toy_task.md.

    python -m toy.toy_task --out-dir runs/toy                      # 4000 problems, 300 test problems
    python -m toy.toy_task --out-dir runs/toy --num-problems 200 --num-test 20 --seed 1
    python -m toy.toy_task --out-dir runs/guess --variant guess
    python curate.py --raw runs/toy/raw.jsonl --sft-out runs/toy/sft.jsonl --pairs-out runs/toy/pairs.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter

from cli import InputError, exit_on_input_error, make_output_dir

# -----------------------------------------------------------------------------
# problems

DIGIT, PLAIN = (2, 9), (10, 99)   # inclusive ranges: a factor of a product, the plain operand c
# form -> (expression pattern, range of each operand in the order they are written)
FORMS = {"ab-cd": ("{}*{}-{}*{}", (DIGIT, DIGIT, DIGIT, DIGIT)),
         "ab-c": ("{}*{}-{}", (DIGIT, DIGIT, PLAIN)),
         "c-ab": ("{}-{}*{}", (PLAIN, DIGIT, DIGIT)),
         # the guess variant's form: five dependent steps when worked, so that a student cannot
         # compute the answer in one go on the guess path (docs/toy_task.md); no slips are defined for it
         "ab+cd-ef": ("{}*{}+{}*{}-{}*{}", (DIGIT,) * 6)}
SLIP_TYPES = ("sign", "borrow", "extra_borrow", "precedence", "ones")
# Labels `classify_trace` can return: correct, a slip type, a wrong guess (the risky path of the
# `guess` variant), or a mistake no teacher makes.
TRACE_LABELS = ("correct",) + SLIP_TYPES + ("guess", "arithmetic", "other", "malformed")
# The two paths a trace can take (`trace_path`): work it out, or guess without working.
PATHS = ("work", "guess")
GUESS_TEMPLATE = "No need to work it out: it is about {answer}."
GUESS_MAX_OFFSET = 15   # a wrong guess is off by a nonzero offset in [-15, 15]

PROBLEM_TEMPLATE = "Compute {expr}."
ANSWER_TEMPLATE = "The answer is $\\boxed{{{answer}}}$."
OTHER_SOURCES = ("olympiads", "aops_forum", "cn_contest", "amc_aime", "number_theory")
_STEP_RE = re.compile(r"(-?\d+)([-+*])(\d+)=(-?\d+)")


def _problem(form, operands):
    """The problem dict for `form` and its operands (see `make_problem`)."""
    expr = FORMS[form][0].format(*operands)
    problem = {"form": form, "operands": tuple(operands), "expr": expr,
               "text": PROBLEM_TEMPLATE.format(expr=expr)}
    problem["answer"] = trace_steps(problem)[-1][3]
    return problem


def make_problem(rng, form_weights=(1.0, 1.0, 1.0, 0.0)):
    """A random problem: {"form", "operands", "expr", "text", "answer" (int)}.

    `form_weights` are relative weights of the FORMS, in their order.
    """
    form = rng.choices(list(FORMS), weights=form_weights)[0]
    return _problem(form, tuple(rng.randint(lo, hi) for lo, hi in FORMS[form][1]))


def parse_problem(text):
    """Inverse of `make_problem(...)["text"]`; ValueError if `text` is not a toy problem."""
    for form, (pattern, _) in FORMS.items():
        regex = re.escape(PROBLEM_TEMPLATE.format(expr=pattern)).replace(r"\{\}", r"(\d+)")
        m = re.fullmatch(regex, text.strip())
        if m:
            return _problem(form, tuple(int(g) for g in m.groups()))
    raise ValueError(f"not a toy problem: {text!r}; expected e.g. 'Compute 7*8-9*8.'")


def canonical_key(problem):
    """The problem up to swapping the factors of each product: 7*8-2*3 and 8*7-3*2 are the same."""
    ops, form = problem["operands"], problem["form"]
    if form == "ab-cd":
        return form, tuple(sorted(ops[:2])), tuple(sorted(ops[2:]))
    if form == "ab-c":
        return form, tuple(sorted(ops[:2])), ops[2]
    if form == "ab+cd-ef":   # the two added products may also swap
        return form, tuple(sorted((tuple(sorted(ops[:2])), tuple(sorted(ops[2:4]))))), tuple(sorted(ops[4:]))
    return form, ops[0], tuple(sorted(ops[1:]))


# -----------------------------------------------------------------------------
# traces: correct steps, the slips, and a classifier for any trace


def _needs_borrow(x, y):
    """Does |x - y|, done in columns as larger minus smaller, borrow in the ones column?"""
    larger, smaller = max(x, y), min(x, y)
    return larger % 10 < smaller % 10


def _final_step(x, y, slip):
    """The last step x-y=z, with a sign, borrow or extra_borrow slip applied when asked."""
    magnitude = abs(x - y)
    if slip == "borrow":
        magnitude += 10  # the tens were not reduced after borrowing
    elif slip == "extra_borrow":
        magnitude -= 10  # the tens were reduced although no column borrowed
    elif slip == "ones":
        magnitude += 2 if magnitude % 10 <= 7 else -2  # ones digit off by two, tens and parity kept
    negative = x < y and slip != "sign"
    return (x, "-", y, -magnitude if negative else magnitude)


def _products(problem):
    """The (a, b) factor pairs of the problem's products, in written order."""
    ops = problem["operands"]
    return {"ab-cd": [ops[0:2], ops[2:4]], "ab-c": [ops[0:2]], "c-ab": [ops[1:3]],
            "ab+cd-ef": [ops[0:2], ops[2:4], ops[4:6]]}[problem["form"]]


def _final_operands(problem):
    """(x, y) of the last step x-y when products are evaluated first, as they should be."""
    products = [a * b for a, b in _products(problem)]
    if problem["form"] == "ab-cd":
        return products[0], products[1]
    if problem["form"] == "ab-c":
        return products[0], problem["operands"][2]
    return problem["operands"][0], products[0]


def eligible_slips(problem):
    """Slip types whose rule is WRONG for this problem (only there can the teacher slip)."""
    if problem["form"] == "ab+cd-ef":
        return ()
    x, y = _final_operands(problem)
    out = []
    if x < y:
        out.append("sign")
    if _needs_borrow(x, y):
        out.append("borrow")
    elif abs(x - y) >= 10:  # a tens digit to reduce
        out.append("extra_borrow")
    if problem["form"] != "ab-c":  # left to right is right only when the product comes first
        out.append("precedence")
    out.append("ones")  # last, so that p_ones = 0 leaves the random stream of the others unchanged
    return tuple(out)


def trace_steps(problem, slip=None):
    """The steps [(x, op, y, z), ...] the teacher writes, correct or with one `slip`."""
    if slip is not None and slip not in eligible_slips(problem):
        raise ValueError(f"slip {slip!r} is not a mistake for {problem['expr']}; "
                         f"eligible: {eligible_slips(problem)}")
    ops = problem["operands"]
    if problem["form"] == "ab+cd-ef":   # p + q - r, products first, then left to right
        (a, b), (c, d), (e, f) = _products(problem)
        p, q, r = a * b, c * d, e * f
        return [(a, "*", b, p), (c, "*", d, q), (e, "*", f, r), (p, "+", q, p + q), (p + q, "-", r, p + q - r)]
    if slip == "precedence" and problem["form"] == "ab-cd":  # (a*b - c) * d
        a, b, c, d = ops
        return [(a, "*", b, a * b), (a * b, "-", c, a * b - c), (a * b - c, "*", d, (a * b - c) * d)]
    if slip == "precedence":  # c-ab read as (c - a) * b
        c, a, b = ops
        return [(c, "-", a, c - a), (c - a, "*", b, (c - a) * b)]
    x, y = _final_operands(problem)
    return [(a, "*", b, a * b) for a, b in _products(problem)] + [_final_step(x, y, slip)]


def render_steps(steps):
    """'s1, so s2.' or 's1 and s2, so s3.': one surface format for correct and wrong traces."""
    texts = [f"{x}{op}{y}={z}" for x, op, y, z in steps]
    return " and ".join(texts[:-1]) + ", so " + texts[-1] + "."


def solve_trace(problem, slip=None):
    """A teacher generation for `problem`: (text, boxed answer as str); `slip` in SLIP_TYPES or None."""
    steps = trace_steps(problem, slip)
    answer = str(steps[-1][3])
    text = f"<think>\n{render_steps(steps)}\n</think>\n\n" + ANSWER_TEMPLATE.format(answer=answer)
    return text, answer


def final_boxed(text):
    """Content of the last \\boxed{...} after </think>, or None (no </think>, or no box after it)."""
    if "</think>" not in text:
        return None
    tail = text.rsplit("</think>", 1)[1]
    start = tail.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(tail)):
        depth += {"{": 1, "}": -1}.get(tail[j], 0)
        if depth == 0:
            return tail[i:j]
    return None


def parse_steps(text):
    """The `x op y=z` steps inside <think>...</think> (or the whole text if there is no </think>)."""
    think = text.split("</think>", 1)[0]
    return [(int(x), op, int(y), int(z)) for x, op, y, z in _STEP_RE.findall(think)]


def guess_trace(answer):
    """The risky path: no working, just a number (right only by luck). (text, answer as str)."""
    text = f"<think>\n{GUESS_TEMPLATE.format(answer=answer)}\n</think>\n\n" + ANSWER_TEMPLATE.format(answer=answer)
    return text, str(answer)


def trace_path(text):
    """"guess" if the thinking block guesses without a single step (the risky path), else "work"."""
    think = text.split("</think>", 1)[0]
    return "guess" if GUESS_TEMPLATE.split("{", 1)[0] in think and not parse_steps(text) else "work"


def path_stats(records):
    """Share of samples on each path and the accuracy on it, from (problem text, response, correct)
    triples (e.g. evaluate.py's generations.jsonl: problem from the test file, text, correct).

    Returns {"samples", "guess_share", "guess_accuracy", "work_accuracy", "labels": {label: count}}
    (an accuracy is None when no sample took that path).
    """
    n, taken, right, labels = 0, Counter(), Counter(), Counter()
    for problem_text, text, correct in records:
        path = trace_path(text)
        n += 1
        taken[path] += 1
        right[path] += int(bool(correct))
        labels[classify_trace(parse_problem(problem_text), text)] += 1
    acc = {p: (right[p] / taken[p] if taken[p] else None) for p in PATHS}
    return {"samples": n, "guess_share": taken["guess"] / n if n else 0.0,
            "guess_accuracy": acc["guess"], "work_accuracy": acc["work"],
            "labels": {name: labels[name] for name in TRACE_LABELS if labels[name]}}


def classify_trace(problem, text):
    """Label a trace (the teacher's or a student's) by its FIRST wrong step; one of TRACE_LABELS.

    "correct" if the boxed answer is right; a slip type if the first step that departs from the
    correct trace is exactly that slip's step; "guess" for a wrong answer on the guess path (no
    steps, see `trace_path`: a right guess is "correct", so ask `trace_path` for the path); "arithmetic" if it has the right operands but a
    wrong result; "other" for anything else; "malformed" if there is no boxed answer after </think>.
    """
    answer = final_boxed(text)
    if answer is None:
        return "malformed"
    if check_answer(problem, answer):
        return "correct"
    if trace_path(text) == "guess":
        return "guess"
    steps, gold = parse_steps(text), trace_steps(problem)
    first = next((i for i, s in enumerate(gold) if i >= len(steps) or steps[i] != s), None)
    if first is None or first >= len(steps):
        return "other"  # right steps, wrong box (or steps missing)
    for slip in eligible_slips(problem):
        slipped = trace_steps(problem, slip)
        if first < len(slipped) and steps[first] == slipped[first]:
            return slip
    return "arithmetic" if steps[first][:3] == gold[first][:3] else "other"


def check_answer(problem, answer):
    """Is `answer` (str or int) the exact answer? `problem`: a problem dict, a raw/test row, or text."""
    if isinstance(problem, str):
        gold = parse_problem(problem)["answer"]
    elif "text" in problem:
        gold = problem["answer"]
    else:  # a raw or test row: its `answer` column holds the gold string
        gold = int(problem["answer"])
    cleaned = str(answer).strip().strip("$").replace(" ", "").replace("\u2212", "-")
    return re.fullmatch(r"[-+]?\d+", cleaned) is not None and int(cleaned) == gold


# -----------------------------------------------------------------------------
# the teacher and the two verifiers


def sample_slip(problem, rng, slip_probs):
    """None (a correct trace) or one eligible slip type, P(s) = slip_probs[s]; one rng draw."""
    u, acc = rng.random(), 0.0
    for slip in eligible_slips(problem):
        acc += slip_probs[slip]
        if u < acc:
            return slip
    return None


def sample_guess(problem, rng, guess_right):
    """The guessed number: the answer with prob `guess_right`, else off by a nonzero offset."""
    if rng.random() < guess_right:
        return problem["answer"]
    offset = rng.randint(1, GUESS_MAX_OFFSET) * rng.choice((-1, 1))
    return problem["answer"] + offset


def teacher_generations(problem, rng, slip_probs, max_generations, judge_flip, p_guess=0.0, guess_right=0.0):
    """Sample until both verifiers accept a generation, at most `max_generations`.

    With prob `p_guess` a generation guesses (`guess_trace`, right with prob `guess_right`) instead
    of working; p_guess = 0 draws nothing extra, so the default data is unchanged to the byte.
    Returns [{"text", "answer", "slip", "exact", "judge"}, ...] in sampling order ("slip" is
    "guess" for a guess, right or wrong).
    """
    gens = []
    for _ in range(max_generations):
        if p_guess > 0 and rng.random() < p_guess:
            slip = "guess"
            text, answer = guess_trace(sample_guess(problem, rng, guess_right))
        else:
            slip = sample_slip(problem, rng, slip_probs)
            text, answer = solve_trace(problem, slip)
        exact = check_answer(problem, answer)
        judge = exact != (rng.random() < judge_flip)  # the judge errs both ways
        gens.append({"text": text, "answer": answer, "slip": slip, "exact": exact, "judge": judge})
        if exact and judge:
            break
    return gens


def make_row(problem, gens, source, problem_is_valid):
    """One OpenR1-Math-Raw row (every column of the schema, in its order)."""
    answer = str(problem["answer"])
    reasoning = render_steps(trace_steps(problem))
    exact = [g["exact"] for g in gens]
    return {
        "problem": problem["text"],
        "solution": f"{reasoning[:-1]}. Hence {problem['expr']}={answer}, "
                    f"and the answer is $\\boxed{{{answer}}}$.",
        "answer": answer,
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "problem_is_valid": problem_is_valid,
        "solution_is_valid": "Yes",
        "source": source,
        "synthetic": True,
        "generations": [g["text"] for g in gens],
        "generations_count": len(gens),
        "correctness": {"llama_verification": [g["judge"] for g in gens],
                        "math_verify_answer": list(exact),
                        "math_verify_reparsed_answer": list(exact)},
        "reparsed_answers": [answer],
    }


# -----------------------------------------------------------------------------
# the raw training file and the held-out test set

# p_* chosen so ~36% of problems give a pair (4000 problems -> ~1,390 pairs) with the tens-digit
# slips, the student's own kind of error, as most negatives; see docs/toy_task.md.
DEFAULT_KNOBS = dict(form_weights=(1.0, 1.0, 1.0, 0.0), max_generations=4,
                     p_sign=0.15, p_borrow=0.3, p_extra_borrow=0.3, p_precedence=0.1, p_ones=0.0,
                     judge_flip=0.02, frac_invalid=0.02, frac_cn_k12=0.02, p_guess=0.0, guess_right=0.2)

# Named task variants: knob presets on top of DEFAULT_KNOBS (explicit knobs override them).
#   slips  the default task: slips only, every negative a mistake in the work (the null case)
#   guess  the teacher often skips the work and guesses; a lucky guess is a positive, so SFT on
#          positives teaches guessing and only the negatives show that it fails (docs/toy_task.md)
VARIANTS = {
    "slips": {},
    "guess": dict(form_weights=(0.0, 0.0, 0.0, 1.0), p_sign=0.0, p_borrow=0.0, p_extra_borrow=0.0,
                  p_precedence=0.0, p_guess=0.68, guess_right=0.2),
}


def variant_knobs(variant, **overrides):
    """The full knob dict of a named variant, with `overrides` on top."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return validate_knobs({**VARIANTS[variant], **overrides})


def validate_knobs(knobs):
    """ValueError naming the knob if any is out of range; returns the full knob dict."""
    unknown = set(knobs) - set(DEFAULT_KNOBS)
    if unknown:
        raise TypeError(f"unknown knobs {sorted(unknown)}; expected some of {sorted(DEFAULT_KNOBS)}")
    k = {**DEFAULT_KNOBS, **knobs}
    k["form_weights"] = tuple(float(w) for w in k["form_weights"])
    if len(k["form_weights"]) != len(FORMS) or min(k["form_weights"]) < 0 or sum(k["form_weights"]) <= 0:
        raise ValueError(f"form_weights: expected {len(FORMS)} weights >= 0 for {list(FORMS)}, "
                         f"not all zero; got {k['form_weights']}")
    for name in [f"p_{s}" for s in SLIP_TYPES] + ["judge_flip", "frac_invalid", "frac_cn_k12", "p_guess",
                                                 "guess_right"]:
        if not 0.0 <= k[name] <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {k[name]}")
    # Slips are exclusive within a trace, so the probabilities of the largest eligible set must
    # fit in 1; borrow and extra_borrow are never eligible together (a subtraction borrows or not).
    worst = k["p_sign"] + max(k["p_borrow"], k["p_extra_borrow"]) + k["p_precedence"] + k["p_ones"]
    if worst > 1.0:
        raise ValueError(f"p_sign + max(p_borrow, p_extra_borrow) + p_precedence + p_ones must be <= 1, "
                         f"got {worst:.3f}")
    if k["frac_invalid"] + k["frac_cn_k12"] > 1.0:
        raise ValueError("frac_invalid + frac_cn_k12 must be <= 1")
    if int(k["max_generations"]) < 1:
        raise ValueError(f"max_generations: expected >= 1, got {k['max_generations']}")
    return k


def _distinct_problems(n, rng, form_weights, taken_keys, key_fn, max_misses=2000):
    """`n` random problems whose key_fn(problem) is new; updates `taken_keys`."""
    out, misses = [], 0
    while len(out) < n:
        problem = make_problem(rng, form_weights)
        key = key_fn(problem)
        if key in taken_keys:
            misses += 1
            if misses > max_misses:
                raise InputError(f"problem space exhausted after {len(out)} of {n} new problems "
                                 f"(forms {list(FORMS)}, weights {form_weights}); ask for fewer "
                                 f"(--num-problems, --num-test)")
            continue
        misses = 0
        taken_keys.add(key)
        out.append(problem)
    return out


def generate_raw(num_problems, seed=0, **knobs):
    """`num_problems` OpenR1-Math-Raw rows with distinct problem texts; see docs/toy_task.md."""
    k = validate_knobs(knobs)
    slip_probs = {s: k[f"p_{s}"] for s in SLIP_TYPES}
    rng = random.Random(f"toy-train:{seed}")
    problems = _distinct_problems(num_problems, rng, k["form_weights"], set(), lambda p: p["text"])
    rows = []
    for problem in problems:
        u = rng.random()
        valid = "No" if u < k["frac_invalid"] else "Yes"
        in_cn_k12 = k["frac_invalid"] <= u < k["frac_invalid"] + k["frac_cn_k12"]
        source = "cn_k12" if in_cn_k12 else rng.choice(OTHER_SOURCES)
        gens = teacher_generations(problem, rng, slip_probs, int(k["max_generations"]), k["judge_flip"],
                                   k["p_guess"], k["guess_right"])
        rows.append(make_row(problem, gens, source, valid))
    return rows


def generate_test(num_test, seed=0, exclude=(), form_weights=DEFAULT_KNOBS["form_weights"]):
    """Held-out benchmark rows {"id", "problem", "answer"}, none equal (up to factor order) to
    a problem in `exclude` (problem texts, or rows with a "problem" field)."""
    taken = {canonical_key(parse_problem(e["problem"] if isinstance(e, dict) else e)) for e in exclude}
    rng = random.Random(f"toy-test:{seed}")
    problems = _distinct_problems(num_test, rng, form_weights, taken, canonical_key)
    return [{"id": f"toy/{i}", "problem": p["text"], "answer": str(p["answer"])}
            for i, p in enumerate(problems)]


# -----------------------------------------------------------------------------
# summary (task.json)


def summarize(rows, test_rows):
    """Counts that make a run self-describing, including what curation should find."""
    c = Counter()
    labels, gens_per_row, forms = Counter(), Counter(), Counter()
    reasoning_chars = []
    for row in rows:
        problem = parse_problem(row["problem"])
        forms[problem["form"]] += 1
        gens_per_row[row["generations_count"]] += 1
        judge, exact = row["correctness"]["llama_verification"], row["correctness"]["math_verify_reparsed_answer"]
        positive = [j and m for j, m in zip(judge, exact)]  # curation's rule: both verifiers
        for text, j, m in zip(row["generations"], judge, exact):
            labels[classify_trace(problem, text)] += 1
            c["judge_flips"] += int(j != m)
            if trace_path(text) == "guess":   # only the guess variant has these keys
                c["guesses"] += 1
                c["lucky_guesses"] += int(j and m)
            reasoning_chars.append(len(text.split("<think>\n", 1)[1].split("\n</think>", 1)[0]))
        c["generations"] += len(positive)
        c["positives"] += sum(positive)
        c["problems_with_positive"] += int(any(positive))
        c["problems_with_pair"] += int(any(positive) and not all(positive))
        kept = row["problem_is_valid"].strip().lower() == "yes" and row["source"] != "cn_k12"
        c["rows_invalid"] += int(row["problem_is_valid"] != "Yes")
        c["rows_cn_k12"] += int(row["source"] == "cn_k12")
        c["expected_sft_examples"] += int(kept and any(positive))
        c["expected_pairs"] += int(kept and any(positive) and not all(positive))
    c["negatives"] = c["generations"] - c["positives"]
    return {"problems": len(rows), "test_problems": len(test_rows), **dict(sorted(c.items())),
            "trace_labels": {name: labels[name] for name in TRACE_LABELS if labels[name]},
            "generations_per_problem": {str(n): gens_per_row[n] for n in sorted(gens_per_row)},
            "forms": {f: forms[f] for f in FORMS},
            "mean_reasoning_chars": round(sum(reasoning_chars) / max(1, len(reasoning_chars)), 1)}


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("output and size")
    g.add_argument("--out-dir", required=True, help="directory for raw.jsonl, test.jsonl and task.json")
    g.add_argument("--num-problems", type=int, default=4000, help="training problems (rows of raw.jsonl)")
    g.add_argument("--num-test", type=int, default=300, help="held-out problems (rows of test.jsonl)")
    g.add_argument("--seed", type=int, default=0, help="seed; same seed and knobs give identical files")
    g = p.add_argument_group("task (a knob left unset takes the --variant's value)")
    g.add_argument("--variant", choices=sorted(VARIANTS), default="slips",
                   help="slips: the default task (slips in the work, the null case); guess: the teacher often "
                        "guesses, lucky guesses land among the positives (informative negatives)")
    g.add_argument("--form-weights", type=float, nargs=len(FORMS), default=None,
                   metavar=("AB_CD", "AB_C", "C_AB", "AB_CD_EF"),
                   help=f"relative weights of the forms {', '.join(FORMS)} (default {DEFAULT_KNOBS['form_weights']})")
    g = p.add_argument_group("teacher (slips are exclusive; each fires only where its rule is wrong)")
    g.add_argument("--p-sign", type=float, default=None,
                   help=f"P(drop the minus of a negative difference | the difference is negative) "
                        f"(default {DEFAULT_KNOBS['p_sign']})")
    g.add_argument("--p-borrow", type=float, default=None,
                   help=f"P(forget to reduce the tens after a borrow | the subtraction borrows) "
                        f"(default {DEFAULT_KNOBS['p_borrow']})")
    g.add_argument("--p-extra-borrow", type=float, default=None,
                   help=f"P(reduce the tens although nothing borrowed | no borrow, difference >= 10) "
                        f"(default {DEFAULT_KNOBS['p_extra_borrow']})")
    g.add_argument("--p-precedence", type=float, default=None,
                   help=f"P(evaluate left to right | that ignores precedence: forms ab-cd, c-ab) "
                        f"(default {DEFAULT_KNOBS['p_precedence']})")
    g.add_argument("--p-ones", type=float, default=None,
                   help="P(ones digit of the final difference off by two) -- the tiny SFT student's own most "
                        "common error, not a human rule; off by default (an experiment, see docs/toy_task.md)")
    g.add_argument("--p-guess", type=float, default=None,
                   help="P(a generation skips the work and guesses) (default 0; --variant guess: "
                        f"{VARIANTS['guess']['p_guess']})")
    g.add_argument("--guess-right", type=float, default=None,
                   help=f"P(a guess is right) (default {DEFAULT_KNOBS['guess_right']})")
    g.add_argument("--max-generations", type=int, default=None,
                   help=f"the teacher samples until both verifiers accept, at most this many times "
                        f"(default {DEFAULT_KNOBS['max_generations']})")
    g.add_argument("--judge-flip", type=float, default=None,
                   help=f"P(llama_verification disagrees with the exact check) per generation "
                        f"(default {DEFAULT_KNOBS['judge_flip']})")
    g = p.add_argument_group("rows curation must drop")
    g.add_argument("--frac-invalid", type=float, default=None,
                   help=f'fraction of rows with problem_is_valid "No" (default {DEFAULT_KNOBS["frac_invalid"]})')
    g.add_argument("--frac-cn-k12", type=float, default=None,
                   help=f'fraction of rows with source "cn_k12", disjoint from the invalid ones '
                        f'(default {DEFAULT_KNOBS["frac_cn_k12"]})')
    args = p.parse_args(argv)
    if args.num_problems < 1 or args.num_test < 0:
        p.error(f"--num-problems must be >= 1 and --num-test >= 0, "
                f"got {args.num_problems} and {args.num_test}")
    preset = {**DEFAULT_KNOBS, **VARIANTS[args.variant]}
    for name in DEFAULT_KNOBS:   # resolved here, so vars(args) in task.json holds the values used
        if getattr(args, name) is None:
            setattr(args, name, list(preset[name]) if name == "form_weights" else preset[name])
    try:
        validate_knobs(knobs_from_args(args))
    except ValueError as e:
        p.error(str(e))
    return args


def knobs_from_args(args):
    """The generate_raw keyword arguments from parsed command-line arguments."""
    return {name: getattr(args, name) for name in DEFAULT_KNOBS}


def write_jsonl(path, rows):
    """One JSON object per line, UTF-8, keys in insertion order (stable bytes for a seed)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv=None):
    args = parse_args(argv)
    knobs = validate_knobs(knobs_from_args(args))
    with exit_on_input_error("toy_task.py"):
        make_output_dir(args.out_dir, f"--out-dir {args.out_dir}")
        rows = generate_raw(args.num_problems, args.seed, **knobs)
        test_rows = generate_test(args.num_test, args.seed, exclude=rows, form_weights=knobs["form_weights"])
    raw_path, test_path = os.path.join(args.out_dir, "raw.jsonl"), os.path.join(args.out_dir, "test.jsonl")
    write_jsonl(raw_path, rows)
    write_jsonl(test_path, test_rows)
    digest = {name: hashlib.sha256(open(path, "rb").read()).hexdigest()
              for name, path in (("raw.jsonl", raw_path), ("test.jsonl", test_path))}
    # out_dir is left out so that the same arguments give the same bytes wherever they are written
    summary = {"args": {k: v for k, v in vars(args).items() if k != "out_dir"},
               "counts": summarize(rows, test_rows), "sha256": digest}
    with open(os.path.join(args.out_dir, "task.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    counts = summary["counts"]
    print(f"wrote {args.out_dir}: {counts['problems']} problems, {counts['generations']} generations "
          f"({counts['positives']} positive, {counts['negatives']} negative), "
          f"{counts['problems_with_pair']} problems with a pair, {len(test_rows)} test problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
