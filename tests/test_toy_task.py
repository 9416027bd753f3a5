"""Claims about toy/toy_task.py: schema, trace correctness, slip typing, determinism, knobs, CLI."""
import json
import re
import sys
from collections import Counter

import pytest

from conftest import ROOT, run_script

from toy import toy_task as T

SCHEMA_TYPES = {
    "problem": str, "solution": str, "answer": str, "problem_type": str, "question_type": str,
    "problem_is_valid": str, "solution_is_valid": str, "source": str, "synthetic": bool,
    "generations": list, "generations_count": int, "correctness": dict, "reparsed_answers": list,
}
VERIFIERS = ("llama_verification", "math_verify_answer", "math_verify_reparsed_answer")
STEP = re.compile(r"(-?\d+)([-+*])(\d+)=(-?\d+)")
APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


@pytest.fixture(scope="module")
def rows():
    return T.generate_raw(3000, seed=0)


def _positive(row):
    c = row["correctness"]
    return [bool(j and m) for j, m in zip(c["llama_verification"], c["math_verify_reparsed_answer"])]


def _steps(text):
    """Steps re-parsed here, independently of toy_task.parse_steps."""
    think = text[text.index("<think>") + len("<think>"):text.index("</think>")]
    return [(int(x), op, int(y), int(z)) for x, op, y, z in STEP.findall(think)]


def _boxed_after_think(text):
    tail = text.split("</think>", 1)[1]
    return re.findall(r"\\boxed\{([^{}]*)\}", tail)


def _gold(row):
    """The answer computed from the problem text with Python's own precedence rules."""
    expr = re.fullmatch(r"Compute ([0-9*\-]+)\.", row["problem"]).group(1)
    return eval(expr)  # digits, '*' and '-' only (checked by the regex)


# -----------------------------------------------------------------------------
# schema


def test_every_row_has_every_schema_column_with_the_right_type(rows):
    """Each raw row has exactly the OpenR1-Math-Raw columns, typed as the schema says."""
    for row in rows:
        assert set(row) == set(SCHEMA_TYPES)
        for col, typ in SCHEMA_TYPES.items():
            assert isinstance(row[col], typ), (col, row[col])
        assert row["problem_is_valid"] in ("Yes", "No") and row["solution_is_valid"] == "Yes"
        assert all(isinstance(g, str) for g in row["generations"])
        assert row["reparsed_answers"] == [row["answer"]]


def test_generations_count_and_correctness_lists_are_aligned(rows):
    """generations_count == len(generations) == len of each verifier list, all bools."""
    for row in rows:
        n = len(row["generations"])
        assert row["generations_count"] == n and 1 <= n <= T.DEFAULT_KNOBS["max_generations"]
        assert set(row["correctness"]) == set(VERIFIERS)
        for name in VERIFIERS:
            assert len(row["correctness"][name]) == n
            assert all(isinstance(v, bool) for v in row["correctness"][name])


def test_answer_column_is_the_value_of_the_problem_expression(rows):
    """`answer` equals the expression evaluated independently, and check_answer agrees."""
    for row in rows[:500]:
        assert int(row["answer"]) == _gold(row)
        assert T.check_answer(row, row["answer"]) and T.check_answer(row["problem"], row["answer"])
        assert not T.check_answer(row, str(_gold(row) + 1))


def test_teacher_stops_at_the_first_generation_both_verifiers_accept(rows):
    """Only the last generation of a row can be positive; earlier ones are all negative."""
    for row in rows:
        pos = _positive(row)
        assert not any(pos[:-1])
        assert pos[-1] or len(pos) == T.DEFAULT_KNOBS["max_generations"]


# -----------------------------------------------------------------------------
# traces


def test_every_trace_has_think_block_and_one_boxed_answer_after_it(rows):
    """<think>, </think>, and exactly one \\boxed{} after </think>; T.final_boxed finds it."""
    for row in rows:
        for text in row["generations"]:
            assert text.startswith("<think>\n") and text.count("</think>") == 1
            boxed = _boxed_after_think(text)
            assert len(boxed) == 1 and text.count("\\boxed{") == 1
            assert T.final_boxed(text) == boxed[0]


def test_exactly_correct_traces_have_gold_box_and_only_right_steps(rows):
    """A trace math_verify accepts boxes the gold, and every step re-checks arithmetically."""
    n = 0
    for row in rows:
        for text, exact in zip(row["generations"], row["correctness"]["math_verify_reparsed_answer"]):
            if not exact:
                continue
            n += 1
            assert int(_boxed_after_think(text)[0]) == _gold(row)
            steps = _steps(text)
            assert len(steps) in (2, 3)
            assert all(APPLY[op](x, y) == z for x, op, y, z in steps), text
            assert steps[-1][3] == _gold(row)
    assert n > 1000


def test_wrong_traces_differ_from_gold_and_first_wrong_step_is_a_declared_slip(rows):
    """Every wrong trace is classified as a slip type; its steps before the slip are right."""
    seen = Counter()
    for row in rows:
        problem = T.parse_problem(row["problem"])
        correct_steps = T.trace_steps(problem)
        for text, exact in zip(row["generations"], row["correctness"]["math_verify_reparsed_answer"]):
            if exact:
                continue
            assert int(_boxed_after_think(text)[0]) != _gold(row)
            label = T.classify_trace(problem, text)
            assert label in T.SLIP_TYPES, (text, label)
            seen[label] += 1
            steps = _steps(text)
            first = next(i for i, s in enumerate(steps) if s != correct_steps[i])
            assert all(APPLY[op](x, y) == z for x, op, y, z in steps[:first])
            if label == "precedence":  # a wrong order, but every step's arithmetic is right
                assert all(APPLY[op](x, y) == z for x, op, y, z in steps)
            else:  # sign and borrow slip in the last step, on the right operands
                assert first == len(steps) - 1 and steps[first][:3] == correct_steps[first][:3]
    assert set(seen) == {s for s in T.SLIP_TYPES if T.DEFAULT_KNOBS[f"p_{s}"] > 0}, seen


def test_slips_match_their_textbook_mistakes():
    """Hand-checked examples: 56-72 drops the sign or the borrow; 50-6*7 goes left to right."""
    p = T.parse_problem("Compute 7*8-9*8.")
    assert T.solve_trace(p) == ("<think>\n7*8=56 and 9*8=72, so 56-72=-16.\n</think>\n\n"
                                "The answer is $\\boxed{-16}$.", "-16")
    assert T.solve_trace(p, "sign")[1] == "16"
    assert T.solve_trace(p, "borrow")[1] == "-26"
    assert T.solve_trace(p, "precedence")[1] == str((56 - 9) * 8)
    q = T.parse_problem("Compute 50-6*7.")
    assert T.eligible_slips(q) == ("borrow", "precedence", "ones")  # 50-42: 0 < 2 borrows
    assert "50-6=44, so 44*7=308." in T.solve_trace(q, "precedence")[0]
    r = T.parse_problem("Compute 9*7-31.")
    assert T.eligible_slips(r) == ("extra_borrow", "ones")  # 63-31: positive, no borrow, left to right is right
    assert "63-31=22." in T.solve_trace(r, "extra_borrow")[0]
    assert T.eligible_slips(T.parse_problem("Compute 7*7-43.")) == ("ones",)  # 49-43=6: no tens to reduce
    assert T.solve_trace(p, "ones")[1] == "-18" and T.solve_trace(r, "ones")[1] == "34"   # ones digit +2
    assert T.solve_trace(T.parse_problem("Compute 9*9-2*2."), "ones")[1] == "79"          # 77: ones 7 -> 9
    assert T.solve_trace(T.parse_problem("Compute 9*9-3*4."), "ones")[1] == "67"          # 69: ones 9 -> 7
    with pytest.raises(ValueError, match=r"slip 'sign' is not a mistake for 9\*7-31; eligible: \('extra_borrow', "
                                         r"'ones'\)"):
        T.solve_trace(r, "sign")


def test_ones_slip_is_off_by_default_and_classified_when_on():
    """Default p_ones is 0; with only p_ones=1 every first trace is a 'ones' slip, off by exactly 2."""
    assert T.DEFAULT_KNOBS["p_ones"] == 0.0
    knobs = {f"p_{s}": 0.0 for s in T.SLIP_TYPES}
    rows = T.generate_raw(60, seed=3, **{**knobs, "p_ones": 1.0}, judge_flip=0.0, max_generations=2)
    for row in rows:
        problem = T.parse_problem(row["problem"])
        first = row["generations"][0]
        assert T.classify_trace(problem, first) == "ones"
        assert abs(abs(int(T.final_boxed(first))) - abs(problem["answer"])) == 2


def test_classify_trace_labels_student_style_mistakes():
    """Arithmetic errors, missing </think> and right-steps-wrong-box get their own labels."""
    p = T.parse_problem("Compute 7*8-9*8.")
    wrap = "<think>\n{}\n</think>\n\nThe answer is $\\boxed{{{}}}$."
    assert T.classify_trace(p, wrap.format("7*8=56 and 9*8=72, so 56-72=-16.", -16)) == "correct"
    assert T.classify_trace(p, wrap.format("7*8=54 and 9*8=72, so 54-72=-18.", -18)) == "arithmetic"
    assert T.classify_trace(p, wrap.format("7*8=56 and 9*8=72, so 56-72=-16.", 16)) == "other"
    assert T.classify_trace(p, "<think>\n7*8=56 and 9*8=72, so 56-72=-16.") == "malformed"


# -----------------------------------------------------------------------------
# determinism, test set, knobs


def test_same_seed_gives_identical_rows_and_different_seed_differs():
    """generate_raw / generate_test are pure functions of (size, seed, knobs)."""
    a, b, c = (T.generate_raw(300, seed=s) for s in (5, 5, 6))
    dump = lambda rs: "\n".join(json.dumps(r) for r in rs)  # noqa: E731
    assert dump(a) == dump(b) and dump(a) != dump(c)
    assert T.generate_test(50, 5, exclude=a) == T.generate_test(50, 5, exclude=a)
    assert T.generate_test(50, 5, exclude=a) != T.generate_test(50, 6, exclude=a)


def test_training_problems_are_distinct_and_test_set_is_disjoint_up_to_factor_order(rows):
    """No repeated training problem; no test problem equals one even with factors swapped."""
    texts = [r["problem"] for r in rows]
    assert len(set(texts)) == len(texts)
    test = T.generate_test(300, seed=0, exclude=rows)
    assert [t["id"] for t in test] == [f"toy/{i}" for i in range(300)]
    assert all(set(t) == {"id", "problem", "answer"} for t in test)
    train_keys = {T.canonical_key(T.parse_problem(t)) for t in texts}
    test_keys = [T.canonical_key(T.parse_problem(t["problem"])) for t in test]
    assert len(set(test_keys)) == len(test_keys) and not set(test_keys) & train_keys
    for t in test:
        assert int(t["answer"]) == _gold(t)


def test_knob_fractions_are_roughly_honoured(rows):
    """Slip rates per eligible generation, judge flips, and dropped-row fractions match the knobs."""
    k = T.DEFAULT_KNOBS
    eligible, slipped, flips, gens = Counter(), Counter(), 0, 0
    for row in rows:
        problem = T.parse_problem(row["problem"])
        c = row["correctness"]
        for text, m, j in zip(row["generations"], c["math_verify_reparsed_answer"], c["llama_verification"]):
            gens += 1
            flips += m != j
            label = T.classify_trace(problem, text)
            for s in T.eligible_slips(problem):
                eligible[s] += 1
                slipped[s] += label == s
    for s in T.SLIP_TYPES:
        assert eligible[s] > 800
        assert abs(slipped[s] / eligible[s] - k[f"p_{s}"]) < 0.04, (s, slipped[s], eligible[s])
    assert abs(flips / gens - k["judge_flip"]) < 0.01
    n = len(rows)
    assert abs(sum(r["problem_is_valid"] == "No" for r in rows) / n - k["frac_invalid"]) < 0.01
    assert abs(sum(r["source"] == "cn_k12" for r in rows) / n - k["frac_cn_k12"]) < 0.01
    assert not any(r["problem_is_valid"] == "No" and r["source"] == "cn_k12" for r in rows)
    pairs = sum(any(_positive(r)) and not all(_positive(r)) for r in rows) / n
    assert 0.25 < pairs < 0.45, pairs


def test_tens_digit_slips_go_both_ways_so_no_global_shift_removes_them(rows):
    """borrow negatives are +10 where a column borrows, extra_borrow -10 where none does, in
    similar numbers: a context-free shift of the tens digit cannot push both down."""
    shifts = Counter()
    for row in rows:
        problem = T.parse_problem(row["problem"])
        for text in row["generations"]:
            label = T.classify_trace(problem, text)
            if label in ("borrow", "extra_borrow"):
                borrows = "borrow" in T.eligible_slips(problem)
                assert borrows == (label == "borrow")
                shifts[label, abs(_steps(text)[-1][3]) - abs(problem["answer"])] += 1
    assert set(shifts) == {("borrow", 10), ("extra_borrow", -10)}
    assert 0.7 < shifts["borrow", 10] / shifts["extra_borrow", -10] < 1.4, shifts


def test_knobs_can_switch_slip_types_off():
    """With only p_sign > 0 every wrong exact-check trace is a sign slip; bad knobs are refused."""
    only_sign = T.generate_raw(300, seed=1, p_sign=0.5, p_borrow=0.0, p_extra_borrow=0.0, p_precedence=0.0)
    labels = {T.classify_trace(T.parse_problem(r["problem"]), g)
              for r in only_sign for g in r["generations"]}
    assert labels == {"correct", "sign"}
    with pytest.raises(ValueError, match=r"p_sign \+ max\(p_borrow, p_extra_borrow\) \+ p_precedence \+ p_ones "
                                         r"must be <= 1, got 1\.300"):
        T.generate_raw(10, p_sign=0.6, p_borrow=0.6)
    with pytest.raises(TypeError, match=r"unknown knobs \['p_typo'\]"):
        T.generate_raw(10, p_typo=0.1)


# -----------------------------------------------------------------------------
# command line


def test_cli_writes_raw_test_and_task_json(tmp_path):
    """`python -m toy.toy_task --out-dir D --num-problems 200 --num-test 20` writes three consistent files."""
    out = tmp_path / "toy"
    run_script([sys.executable, "-m", "toy.toy_task", "--out-dir", str(out),
                "--num-problems", "200", "--num-test", "20"])
    raw = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    task = json.loads((out / "task.json").read_text())
    assert len(raw) == 200 and len(test) == 20
    assert raw == T.generate_raw(200, seed=0)
    counts = task["counts"]
    assert counts["generations"] == sum(r["generations_count"] for r in raw)
    assert counts["positives"] + counts["negatives"] == counts["generations"]
    assert sum(counts["trace_labels"].values()) == counts["generations"]
    assert task["args"]["p_sign"] == T.DEFAULT_KNOBS["p_sign"]


def test_main_is_deterministic_to_the_byte(tmp_path):
    """Same seed -> byte-identical raw.jsonl, test.jsonl and task.json; another seed differs."""
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert T.main(["--out-dir", str(tmp_path / name), "--num-problems", "150",
                       "--num-test", "10", "--seed", str(seed)]) == 0
    for f in ("raw.jsonl", "test.jsonl", "task.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()


def test_help_works_and_bad_knobs_exit_with_a_message(capsys):
    """--help prints the spec; an impossible knob combination is a usage error naming it."""
    with pytest.raises(SystemExit, match="^0$"):
        T.main(["--help"])
    assert "--p-borrow" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^2$"):
        T.main(["--out-dir", "unused", "--p-sign", "0.9", "--p-borrow", "0.5"])
    assert "p_sign + max(p_borrow, p_extra_borrow)" in capsys.readouterr().err


def test_curation_on_toy_raw_keeps_rows_and_pairs_by_redi_rules(tmp_path):
    """`curate.py` on the toy raw file: SFT = kept rows with a positive, pairs = those with
    a negative too, chosen/rejected = lowest-index positive/negative (counted here independently)."""
    out = tmp_path / "toy"
    T.main(["--out-dir", str(out), "--num-problems", "400", "--num-test", "0", "--seed", "2"])
    raw = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    expected_sft, expected_pairs = {}, {}
    for i, row in enumerate(raw):
        if row["problem_is_valid"].strip().lower() != "yes" or row["source"] == "cn_k12":
            continue
        pos = _positive(row)
        if any(pos):
            expected_sft[i] = pos.index(True)
            if not all(pos):
                expected_pairs[i] = (pos.index(True), pos.index(False))
    assert 0 < len(expected_pairs) < len(expected_sft) < len(raw)  # the filters and labels bite
    run_script([sys.executable, str(ROOT / "curate.py"), "--raw", str(out / "raw.jsonl"),
                "--sft-out", str(tmp_path / "sft.jsonl"), "--pairs-out", str(tmp_path / "pairs.jsonl")])
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert {r["original_index"]: r["chosen_gen_idx"] for r in sft} == expected_sft
    assert {r["original_index"]: (r["chosen_gen_idx"], r["rejected_gen_idx"]) for r in pairs} == expected_pairs
    assert len(sft) == len(expected_sft) and len(pairs) == len(expected_pairs)
    task = json.loads((out / "task.json").read_text())["counts"]
    assert (task["expected_sft_examples"], task["expected_pairs"]) == (len(sft), len(pairs))
    for p in pairs:  # chosen is right; rejected is a slip, or right but refused by the noisy judge
        problem = T.parse_problem(p["prompt"][0]["content"])
        assert T.classify_trace(problem, p["chosen"][0]["content"]) == "correct"
        assert T.classify_trace(problem, p["rejected"][0]["content"]) in T.SLIP_TYPES + ("correct",)


# -----------------------------------------------------------------------------
# the two variants: slips (the default, the null case) and guess (informative negatives)

# sha256 of the default outputs, measured before the guess variant existed (commit 53a1d39):
# adding a variant must not move a byte of the default task.
DEFAULT_SHA256 = {
    ("4000", "300", "0"): {"raw.jsonl": "ea331f16211812a88c44005856905aefda851aacef459eddb9449ee1c0656940",
                           "test.jsonl": "821ccd9e350ad3af52384013c2bfc52cf385ede9299d7755b46ddc5021fa2241"},
    ("500", "50", "1"): {"raw.jsonl": "6b43017649d0a3293ea5dfec30357f19fd65e56abe20cf2aa02f229b1dc6ce3a",
                         "test.jsonl": "ef65a24285d5b42cb5549c4b309ecea62e4149580973a7533683a8255ad18034"},
}


@pytest.mark.parametrize("size", sorted(DEFAULT_SHA256))
def test_default_task_bytes_are_unchanged_by_the_guess_variant(tmp_path, size):
    """The default outputs (and --variant slips) have the sha256s measured before the variant existed."""
    import hashlib
    n, n_test, seed = size
    for extra in ([], ["--variant", "slips"]):
        out = tmp_path / f"v{len(extra)}"
        assert T.main(["--out-dir", str(out), "--num-problems", n, "--num-test", n_test, "--seed", seed, *extra]) == 0
        for name, digest in DEFAULT_SHA256[size].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert "guesses" not in json.loads((out / "task.json").read_text())["counts"]


@pytest.fixture(scope="module")
def guess_rows():
    return T.generate_raw(1500, seed=0, **T.VARIANTS["guess"])


def test_guess_variant_is_deterministic_and_differs_by_seed():
    """Same seed and variant -> identical rows; another seed -> different rows."""
    knobs = T.VARIANTS["guess"]
    assert T.generate_raw(200, seed=3, **knobs) == T.generate_raw(200, seed=3, **knobs)
    assert T.generate_raw(200, seed=3, **knobs) != T.generate_raw(200, seed=4, **knobs)


def test_guess_traces_are_labelled_guess_path_and_lucky_guesses_are_positives(guess_rows):
    """Every guess trace has no steps and trace_path 'guess'; a wrong one is classified 'guess', a
    right one 'correct' and counted positive; worked traces are all correct (slips are off)."""
    lucky = guesses = worked = 0
    for row in guess_rows:
        problem = T.parse_problem(row["problem"])
        assert problem["form"] == "ab+cd-ef"
        for text, exact in zip(row["generations"], row["correctness"]["math_verify_reparsed_answer"]):
            label = T.classify_trace(problem, text)
            if T.trace_path(text) == "guess":
                guesses += 1
                assert T.parse_steps(text) == [] and label == ("correct" if exact else "guess")
                lucky += int(exact)
            else:
                worked += 1
                assert exact and label == "correct"
    positives = sum(sum(_positive(r)) for r in guess_rows)
    # p_guess 0.68 and right 20%: ~30% of the positives are lucky guesses, as sized for T=0.6
    assert 0.6 < guesses / (guesses + worked) < 0.76 and 0.16 < lucky / guesses < 0.24
    assert 0.22 < lucky / positives < 0.38


def test_wrong_guesses_are_off_by_a_nonzero_offset_of_at_most_15(guess_rows):
    """A failed guess boxes answer + d with 1 <= |d| <= 15 (close enough to look plausible)."""
    for row in guess_rows[:300]:
        for text in row["generations"]:
            if T.trace_path(text) == "guess":
                d = int(T.final_boxed(text)) - int(row["answer"])
                assert d == 0 or 1 <= abs(d) <= T.GUESS_MAX_OFFSET


def test_path_stats_counts_shares_and_per_path_accuracy():
    """path_stats: share of guess samples, accuracy on each path, labels (hand-built samples)."""
    p = T.parse_problem("Compute 3*4-41.")
    work, _ = T.solve_trace(p)
    right_guess, _ = T.guess_trace(-29)
    wrong_guess, _ = T.guess_trace(-25)
    s = T.path_stats([(p["text"], work, True), (p["text"], right_guess, True), (p["text"], wrong_guess, False),
                      (p["text"], wrong_guess, False)])
    assert s["samples"] == 4 and s["guess_share"] == 0.75
    assert s["guess_accuracy"] == pytest.approx(1 / 3) and s["work_accuracy"] == 1.0
    assert s["labels"] == {"correct": 2, "guess": 2}


def test_cli_guess_variant_counts_guesses_and_explicit_knobs_override_it(tmp_path):
    """--variant guess writes guess counts in task.json; an explicit --p-guess wins over the preset."""
    T.main(["--out-dir", str(tmp_path / "g"), "--variant", "guess", "--num-problems", "300", "--num-test", "10"])
    task = json.loads((tmp_path / "g" / "task.json").read_text())
    assert task["args"]["p_guess"] == T.VARIANTS["guess"]["p_guess"] and task["counts"]["lucky_guesses"] > 0
    T.main(["--out-dir", str(tmp_path / "h"), "--variant", "guess", "--p-guess", "0", "--num-problems", "300",
            "--num-test", "10"])
    assert "guesses" not in json.loads((tmp_path / "h" / "task.json").read_text())["counts"]
