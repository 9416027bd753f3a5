"""Curation (curate.py; its outputs through data.py's loaders and `data.py check`): REDI's rules on
hand-made raw rows, with exact expected outputs.

Fixtures:
* `tests/data/openr1_raw_synthetic_fixture.jsonl`: the shared 8-row fixture whose expected
  outputs OPENR1_SCHEMA.md states (SFT A, D, E, H; pairs A, D, H).
* `tests/data/curation_raw.jsonl`: 19 rows, one per case; row i's problem starts "CASE i":
   0 mixed (gen0 Llama-only)      -> SFT gen1, pair (1, 0)
   1 " yes ", all positive        -> SFT gen0, no pair
   2/3/4 problem_is_valid "No" / null / missing -> invalid_problem
   5 cn_k12                       -> excluded_source
   6 all negative (each verifier alone says true once) -> no SFT, no pair
   7 labels shorter than generations, 8 correctness missing, 9 reparsed labels null -> bad_correctness
   10 problem "", 11 problem missing -> empty_problem
   12 generations [], 13 generations null -> empty_generations
   14 a null Llama label on gen0  -> gen0 negative: SFT gen1, pair (1, 0)
   15 prompt ~850 tokens          -> SFT gen0; pair over the prompt limit
   16 rejected ~860 tokens        -> SFT gen0; pair over the response limit (rejected)
   17 chosen and rejected ~860    -> SFT gen0; pair over the limit twice (chosen, rejected)
   18 source missing; shares a 13-gram with `curation_benchmark.jsonl` "bench/planted" -> SFT gen1, pair (1, 0)
  With the tiny tokenizer, limits 200/200 drop exactly the pairs of rows 15, 16, 17.
* `tests/data/curation_benchmark.jsonl`: "bench/planted", "bench/unrelated", and a problem
  shorter than 13 words ("bench/short").
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_script

import curate
import data
from cli import InputError

DATA = Path(__file__).resolve().parent / "data"
RAW = DATA / "curation_raw.jsonl"
BENCH = DATA / "curation_benchmark.jsonl"
SHARED_FIXTURE = ROOT / "tests" / "data" / "openr1_raw_synthetic_fixture.jsonl"
LIMITS = ["--max-prompt-tokens", "200", "--max-response-tokens", "200"]


def curate_raw(tmp_path, raw, *extra, name="out"):
    """Run `curate.py` in-process; returns (summary, SFT rows, pair rows) as written."""
    out = tmp_path / name
    argv = ["--raw", str(raw), "--sft-out", str(out / "sft.jsonl"),
            "--pairs-out", str(out / "pairs.jsonl"), *map(str, extra)]
    parser = curate.build_parser()
    args = parser.parse_args(argv)
    curate.validate_args(parser, args)
    summary = curate.curate(args)
    read = lambda p: [json.loads(line) for line in open(p, encoding="utf-8")]
    return summary, read(out / "sft.jsonl"), read(out / "pairs.jsonl")


def by_case(rows):
    """{case number: row}, the case being the raw row's original_index."""
    return {r["original_index"]: r for r in rows}


# ---- the shared fixture: OPENR1_SCHEMA.md's expected results ---------------------------


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_shared_fixture_gives_the_schema_notes_expected_outputs(tmp_path, tiny_model_dir, with_tokenizer):
    """SFT = A gen0, D gen1, E gen0, H gen3; pairs = A (0, 1), D (1, 0), H (3, 0); nothing length-filtered."""
    extra = ["--tokenizer", tiny_model_dir] if with_tokenizer else []
    summary, sft, pairs = curate_raw(tmp_path, SHARED_FIXTURE, *extra)
    letter = lambda r: (r["messages"][0] if "messages" in r else r["prompt"][0])["content"].split()[1][0]
    assert sorted((letter(r), r["chosen_gen_idx"]) for r in sft) == [("A", 0), ("D", 1), ("E", 0), ("H", 3)]
    assert sorted((letter(r), r["chosen_gen_idx"], r["rejected_gen_idx"]) for r in pairs) == [
        ("A", 0, 1), ("D", 1, 0), ("H", 3, 0)]
    assert summary["length_filter"]["dropped"] == 0
    assert [f["dropped"] for f in summary["row_filters"]] == [1, 1, 0, 0, 1]   # C, B, G
    assert summary["identical_pairs"] == {"found": 2, "action": "kept"}       # D and H: same text


def test_drop_identical_pairs_refuses_the_shared_fixtures_d_and_h(tmp_path):
    """--drop-identical-pairs: D's and H's chosen text equals their rejected, so only A's pair is written."""
    summary, sft, pairs = curate_raw(tmp_path, SHARED_FIXTURE, "--drop-identical-pairs")
    assert [p["chosen"] != p["rejected"] for p in pairs] == [True] and len(sft) == 4
    refused = {r["name"]: r["dropped"] for r in summary["refused"]["pairs"]}
    assert refused == {"empty_chosen": 0, "empty_rejected": 0, "chosen_equals_rejected": 2}
    assert summary["identical_pairs"] == {"found": 2, "action": "dropped"}


# ---- the hand-made raw fixture: exact outputs and counts ---------------------------------


def test_own_fixture_outputs_follow_redi_rules(tmp_path, tiny_model_dir):
    """Each case yields exactly the SFT pick and pair stated in the module docstring."""
    summary, sft, pairs = curate_raw(tmp_path, RAW, "--tokenizer", tiny_model_dir, *LIMITS)
    assert {i: r["chosen_gen_idx"] for i, r in by_case(sft).items()} == {
        0: 1, 1: 0, 14: 1, 15: 0, 16: 0, 17: 0, 18: 1}
    assert {i: (r["chosen_gen_idx"], r["rejected_gen_idx"]) for i, r in by_case(pairs).items()} == {
        0: (1, 0), 14: (1, 0), 18: (1, 0)}
    assert summary["outputs"]["sft"]["rows"] == 7 and summary["outputs"]["pairs"]["rows"] == 3


def test_output_rows_match_the_training_contract(tmp_path):
    """Rows carry the raw problem as the only user turn (no system, no instruction) and the raw generations."""
    raw = [json.loads(line) for line in open(RAW, encoding="utf-8")]
    _, sft, pairs = curate_raw(tmp_path, RAW)
    s, p = by_case(sft)[0], by_case(pairs)[0]
    assert s == {"id": "curation_raw/0", "source": "olympiads", "original_index": 0, "chosen_gen_idx": 1,
                 "messages": [{"role": "user", "content": raw[0]["problem"]},
                              {"role": "assistant", "content": raw[0]["generations"][1]}]}
    assert p == {"id": "curation_raw/0", "source": "olympiads", "original_index": 0,
                 "chosen_gen_idx": 1, "rejected_gen_idx": 0,
                 "prompt": [{"role": "user", "content": raw[0]["problem"]}],
                 "chosen": [{"role": "assistant", "content": raw[0]["generations"][1]}],
                 "rejected": [{"role": "assistant", "content": raw[0]["generations"][0]}]}
    assert by_case(sft)[18]["source"] is None   # a missing source is kept as null, not dropped


def test_summary_counts_every_row_and_every_reason(tmp_path, tiny_model_dir):
    """Exact per-filter drops with per-field detail, selection counts and length-filter counts."""
    summary, _, _ = curate_raw(tmp_path, RAW, "--tokenizer", tiny_model_dir, *LIMITS)
    filters = {f["name"]: (f["dropped"], f["detail"]) for f in summary["row_filters"]}
    assert list(filters) == ["invalid_problem", "excluded_source", "empty_problem", "empty_generations",
                             "bad_correctness"]
    assert filters == {
        "invalid_problem": (3, {'"No"': 1, "missing": 1, "null": 1}),
        "excluded_source": (1, {"cn_k12": 1}),
        "empty_problem": (2, {"problem empty string": 1, "problem missing": 1}),
        "empty_generations": (2, {"generations empty list": 1, "generations null": 1}),
        "bad_correctness": (3, {"correctness missing": 1,
                                "correctness.llama_verification length != len(generations)": 1,
                                "correctness.math_verify_reparsed_answer null": 1}),
    }
    assert summary["rows_read"] == 19 and summary["rows_kept"] == 8
    assert summary["rows_read"] == sum(d for d, _ in filters.values()) + summary["rows_kept"]
    assert summary["selection"] == {"no_positive": 1, "no_negative": 1, "problems_with_positive": 7}
    assert [r["dropped"] for kind in ("sft", "pairs") for r in summary["refused"][kind]] == [0, 0, 0, 0]
    assert summary["labels"]["null_labels_counted_negative"] == 1
    lf = summary["length_filter"]
    assert (lf["applied"], lf["pairs_before"], lf["dropped"]) == (True, 6, 3)
    assert lf["dropped_by_limit"] == {"prompt": 1, "chosen": 1, "rejected": 2}
    stats = summary["length_stats"]
    assert (stats["prompt"]["count"], stats["sft_response"]["count"]) == (3, 7)
    assert summary["inputs"] == [{"path": str(RAW), "rows": 19}]


def test_without_tokenizer_the_length_filter_is_skipped_and_says_so(tmp_path):
    """No --tokenizer: all 6 pairs are written, and the summary states that they were not length-filtered."""
    summary, _, pairs = curate_raw(tmp_path, RAW)
    assert len(pairs) == 6 and summary["length_filter"]["applied"] is False
    assert "NOT length-filtered" in summary["length_filter"]["note"]
    assert summary["length_stats"] is None


def test_length_counts_are_what_training_tokenizes(tiny_tokenizer):
    """prompt = the prompt training masks (generation prompt included); response = the tokens training supervises."""
    c = curate.Candidate(id="x", original_index=0, source=None, problem="What is 12+35?", chosen_gen_idx=0,
                         chosen="<think>\n12+35=47\n</think>\n\n$\\boxed{47}$", rejected_gen_idx=1,
                         rejected="<think>\n48\n</think>")
    curate.measure_lengths(tiny_tokenizer, [c], curate.CurationStats())
    prompt = [{"role": "user", "content": c.problem}]
    chosen, rejected = (data.tokenize_example(tiny_tokenizer, prompt, text, "x") for text in (c.chosen, c.rejected))
    assert c.prompt_tokens == chosen["labels"].count(data.IGNORE_INDEX) == rejected["labels"].count(data.IGNORE_INDEX)
    assert c.chosen_tokens == sum(t != data.IGNORE_INDEX for t in chosen["labels"])
    assert c.rejected_tokens == sum(t != data.IGNORE_INDEX for t in rejected["labels"])
    assert curate.over_limits(c, c.prompt_tokens, c.rejected_tokens) == ["chosen"]


def test_excluded_sources_are_configurable(tmp_path):
    """`--exclude-source` alone keeps cn_k12 (row 5 then yields an SFT example and a pair)."""
    summary, sft, pairs = curate_raw(tmp_path, RAW, "--exclude-source")
    assert summary["row_filters"][1]["dropped"] == 0
    assert 5 in by_case(sft) and 5 in by_case(pairs)


def write_rows(path, rows):
    lines = [(r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def good_row():
    return json.loads(RAW.read_text(encoding="utf-8").splitlines()[0])


# ---- refusals: every row curate writes loads ------------------------------------------------


def refusal_rows():
    """Row 0 of curation_raw (gen1 the first positive, gen0 the first negative), varied:
    0 as is; 1 gen1 ''; 2 all positive with gen0 ''; 3 gen0 ''; 4 gen0 = gen1; 5 gen0 and gen1 ''."""
    rows = []
    for case in range(6):
        row = good_row()
        row["problem"] = f"REFUSAL CASE {case}: compute 0+0."
        gens = row["generations"]
        if case in (1, 5):
            gens[1] = ""
        if case in (3, 5):
            gens[0] = ""
        if case == 2:
            gens[0] = ""
            row["correctness"] = {k: [True] * 4 for k in row["correctness"]}
        if case == 4:
            gens[0] = gens[1]
        rows.append(row)
    return rows


@pytest.mark.parametrize("drop_identical", [False, True])
def test_refused_candidates_are_counted_by_reason_and_every_written_row_loads(tmp_path, drop_identical):
    """Empty chosen / rejected (and, with --drop-identical-pairs, identical pairs) are not written but
    counted by name; the files written load entirely; rows in = rows out + counted drops."""
    raw = write_rows(tmp_path / "raw.jsonl", refusal_rows())
    extra = ["--drop-identical-pairs"] if drop_identical else []
    summary, sft, pairs = curate_raw(tmp_path, raw, *extra)
    refused = {kind: {r["name"]: r["dropped"] for r in summary["refused"][kind]} for kind in ("sft", "pairs")}
    assert refused == {"sft": {"empty_response": 3},                     # cases 1, 2, 5
                       "pairs": {"empty_chosen": 2, "empty_rejected": 1,  # cases 1, 5; case 3
                                 "chosen_equals_rejected": int(drop_identical)}}   # case 4
    assert summary["identical_pairs"] == {"found": 1, "action": "dropped" if drop_identical else "kept"}
    assert sorted(by_case(sft)) == [0, 3, 4]
    assert sorted(by_case(pairs)) == ([0] if drop_identical else [0, 4])
    out = tmp_path / "out"
    assert len(data.load_sft_examples(out / "sft.jsonl")) == len(sft)
    assert len(data.load_pairs(out / "pairs.jsonl")) == len(pairs)
    assert summary["rows_read"] == len(sft) + sum(refused["sft"].values())
    with_negative = summary["selection"]["problems_with_positive"] - summary["selection"]["no_negative"]
    assert with_negative == len(pairs) + sum(refused["pairs"].values())
    table = curate.format_summary(summary)
    for name in ("empty_response", "empty_chosen", "empty_rejected", "chosen_equals_rejected"):
        assert f"refused: {name}" in table
    assert "pairs with chosen == rejected" in table


def test_a_lone_surrogate_in_a_text_to_write_is_an_error_naming_its_field(tmp_path):
    """'\\ud800' is valid JSON but not encodable as UTF-8: an InputError naming file, line and field."""
    row = good_row()
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps(good_row()) + "\n" + json.dumps(row).replace("0-1\\n", "0-1\\ud800\\n", 1) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{raw}:2: field 'generations[1]': expected text "
                                                        f"that UTF-8 can encode, found a lone surrogate")):
        curate_raw(tmp_path, raw)


def test_an_empty_raw_file_is_an_error_and_writes_nothing(tmp_path):
    """Zero rows: InputError naming --raw; no output and no spool file is left behind."""
    raw = write_rows(tmp_path / "raw.jsonl", [])
    with pytest.raises(InputError, match=re.escape(f"--raw {raw}: no rows to curate")):
        curate_raw(tmp_path, raw)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


# ---- bad input: errors that name file, line and field -------------------------------------


@pytest.mark.parametrize("field, value, expected", [
    (None, [1, 2], "expected a JSON object"),
    ("generations", "one long string", "field 'generations': expected a list of strings, found string"),
    ("generations", ["ok", 3, "ok", "ok"], "field 'generations[1]': expected a string, found number 3"),
    ("correctness", {"llama_verification": [True, 1, True, False], "math_verify_reparsed_answer": [True] * 4},
     "field 'correctness.llama_verification[1]': expected true, false or null, found number 1"),
    ("correctness", {"llama_verification": "TTTF", "math_verify_reparsed_answer": [True] * 4},
     "field 'correctness.llama_verification': expected a list of booleans"),
    ("problem", 42, "field 'problem': expected a string, found number 42"),
    ("problem_is_valid", True, "field 'problem_is_valid': expected a string"),
])
def test_wrong_types_are_errors_naming_file_line_and_field(tmp_path, field, value, expected):
    """A value of the wrong JSON type means another schema: InputError 'FILE:LINE: field ...', not a skip."""
    bad = value if field is None else dict(good_row(), **{field: value})
    path = write_rows(tmp_path / "raw.jsonl", [good_row(), bad])
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}:2: .*{re.escape(expected)}"):
        curate_raw(tmp_path, path)


def test_malformed_json_line_is_an_error_with_file_and_line(tmp_path):
    """The CLI exits non-zero with 'FILE:3: invalid JSON' and leaves no output or spool file behind."""
    path = write_rows(tmp_path / "raw.jsonl", [good_row(), "", '{"problem": "x", ', good_row()])
    proc = run_script([sys.executable, "curate.py", "--raw", path, "--sft-out", tmp_path / "s.jsonl",
                       "--pairs-out", tmp_path / "p.jsonl"], check=False)
    assert proc.returncode != 0
    assert f"{path}:3: invalid JSON" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.jsonl"]


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    """Reading Parquet with pyarrow missing is an InputError naming the file and 'pip install pyarrow'."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "train-00000.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"00000\.parquet: reading Parquet needs pyarrow: pip install pyarrow"):
        list(curate.read_records(str(path)))


# ---- order, shards, CLI ---------------------------------------------------------------------


def test_shuffle_is_deterministic_by_seed(tmp_path):
    """Same seed: identical bytes; another seed: same rows in another order."""
    read = lambda name, f: (tmp_path / name / f).read_bytes()
    curate_raw(tmp_path, RAW, "--seed", "42", name="a")
    curate_raw(tmp_path, RAW, "--seed", "42", name="b")
    curate_raw(tmp_path, RAW, "--seed", "7", name="c")
    for f in ("sft.jsonl", "pairs.jsonl"):
        assert read("a", f) == read("b", f)
        assert read("a", f) != read("c", f)
        assert sorted(read("a", f).splitlines()) == sorted(read("c", f).splitlines())


def test_output_order_is_the_datasets_shuffle_of_the_raw_rows(tmp_path):
    """Outputs appear in the order of np.random.default_rng(seed).permutation(rows), as REDI's loop saw them."""
    _, sft, _ = curate_raw(tmp_path, RAW, "--seed", "42")
    shuffled_rows = np.random.default_rng(42).permutation(19).tolist()
    assert [r["original_index"] for r in sft] == [i for i in shuffled_rows if i in {0, 1, 14, 15, 16, 17, 18}]


def test_directory_of_shards_equals_the_single_file(tmp_path):
    """Shards read in name order give the same original_index, ids and bytes as the whole file."""
    lines = RAW.read_text(encoding="utf-8").splitlines(keepends=True)
    shards = tmp_path / "curation_raw"
    shards.mkdir()
    (shards / "train-00001.jsonl").write_text("".join(lines[7:]), encoding="utf-8")
    (shards / "train-00000.jsonl").write_text("".join(lines[:7]), encoding="utf-8")
    (shards / "README.md").write_text("not data", encoding="utf-8")
    summary, _, _ = curate_raw(tmp_path, shards, name="shards")
    curate_raw(tmp_path, RAW, name="single")
    assert [f["rows"] for f in summary["inputs"]] == [7, 12]
    for f in ("sft.jsonl", "pairs.jsonl"):
        assert (tmp_path / "shards" / f).read_bytes() == (tmp_path / "single" / f).read_bytes()


def test_cli_writes_outputs_summary_and_table(tmp_path, tiny_model_dir):
    """`python curate.py` writes both outputs, <sft stem>.summary.json, and prints the table."""
    proc = run_script([sys.executable, "curate.py", "--raw", RAW, "--sft-out", tmp_path / "sft.jsonl",
                       "--pairs-out", tmp_path / "pairs.jsonl", "--tokenizer", tiny_model_dir, *LIMITS])
    summary = json.loads((tmp_path / "sft.summary.json").read_text(encoding="utf-8"))
    assert (summary["outputs"]["sft"]["rows"], summary["outputs"]["pairs"]["rows"]) == (7, 3)
    assert len((tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert "dropped: bad_correctness" in proc.stdout and "pairs written" in proc.stdout
    assert summary["timing"]["rows_per_second"] > 0


def test_expect_counts_fails_loudly_when_counts_differ(tmp_path):
    """--expect-counts 7 6 passes (no length filter); 77629 53175 on this fixture exits 1 naming both counts."""
    base = [sys.executable, "curate.py", "--raw", RAW, "--sft-out", tmp_path / "sft.jsonl",
            "--pairs-out", tmp_path / "pairs.jsonl", "--expect-counts"]
    run_script(base + ["7", "6"])
    proc = run_script(base + ["77629", "53175"], check=False)
    assert proc.returncode == 1
    assert "expected {'sft': 77629, 'pairs': 53175} but wrote {'sft': 7, 'pairs': 6}" in proc.stderr
    assert json.loads((tmp_path / "sft.summary.json").read_text())["expected_counts"]["ok"] is False


def test_help_works_for_every_command():
    """`curate.py --help`, `data.py --help` and `data.py check --help` run without a tokenizer or data."""
    for script, args in (("curate.py", []), ("data.py", []), ("data.py", ["check"])):
        proc = run_script([sys.executable, script, *args, "--help"])
        assert f"usage: {script}" in proc.stdout


# ---- decontamination --------------------------------------------------------------------------


def test_decontamination_reports_the_planted_overlap_only(tmp_path):
    """Row 18 hits bench/planted by the shared 13-gram; nothing hits bench/unrelated; bench/short is counted."""
    summary, sft, _ = curate_raw(tmp_path, RAW, "--benchmarks", BENCH)
    d = summary["decontamination"]
    assert d["hits"] == [{"curated_id": "curation_raw/18", "benchmark": "curation_benchmark",
                          "benchmark_id": "bench/planted", "shared_ngrams": 1,
                          "ngram": "a regular hexagon can be divided into six equilateral triangles of "
                                   "equal area"}]
    assert d["benchmarks"]["curation_benchmark"]["too_short"] == 1
    assert d["action"] == "report only" and len(sft) == 7


def test_drop_contaminated_removes_the_problem_from_both_outputs(tmp_path):
    """--drop-contaminated removes row 18 from SFT and pairs and counts it."""
    summary, sft, pairs = curate_raw(tmp_path, RAW, "--benchmarks", BENCH, "--drop-contaminated")
    assert 18 not in by_case(sft) and 18 not in by_case(pairs)
    assert summary["decontamination"]["dropped"] == {"sft": 1, "pairs": 1}
    assert (len(sft), len(pairs)) == (6, 5)


def test_decontamination_normalises_case_and_punctuation():
    """Case, LaTeX punctuation and whitespace do not hide a shared n-gram; --decontam-ngram sets n."""
    assert curate.ngram_words("Find $\\frac{1}{2}$,  THEN x!") == ["find", "frac", "1", "2", "then", "x"]
    index = curate.BenchmarkIndex([str(BENCH)], n=4)
    hits = index.hits("HOW many Positive   divisors, does 196 have?")
    assert set(hits) == {("curation_benchmark", "bench/unrelated")}
    assert index.hits("a completely different question about primes") == {}


# ---- bring your own data ---------------------------------------------------------------------


USER = {"role": "user", "content": "Q?"}
SYSTEM = {"role": "system", "content": "Be brief."}
ANSWER = {"role": "assistant", "content": "A."}
WRONG = {"role": "assistant", "content": "B."}


@pytest.mark.parametrize("record, expected", [
    ({"id": "p1", "prompt": "Q?", "chosen": "A.", "rejected": "B."},
     {"id": "p1", "prompt_messages": [USER], "chosen": "A.", "rejected": "B."}),
    ({"prompt": [SYSTEM, USER], "chosen": [ANSWER], "rejected": [WRONG]},                 # TRL explicit prompt
     {"id": "f.jsonl:7", "prompt_messages": [SYSTEM, USER], "chosen": "A.", "rejected": "B."}),
    ({"chosen": [USER, ANSWER], "rejected": [USER, WRONG]},                               # TRL implicit prompt
     {"id": "f.jsonl:7", "prompt_messages": [USER], "chosen": "A.", "rejected": "B."}),
    ({"prompt": "Q?", "chosen": [USER, ANSWER], "rejected": [USER, WRONG], "uuid": "u"},  # REDI's own pair rows
     {"id": "f.jsonl:7", "prompt_messages": [USER], "chosen": "A.", "rejected": "B."}),
    ({"id": 3, "messages": [SYSTEM, USER, ANSWER]},
     {"id": "3", "prompt_messages": [SYSTEM, USER], "response": "A."}),
    ({"prompt": "Q?", "completion": "A."}, {"id": "f.jsonl:7", "prompt_messages": [USER], "response": "A."}),
    ({"prompt": [USER], "completion": [ANSWER]},
     {"id": "f.jsonl:7", "prompt_messages": [USER], "response": "A."}),
])
def test_normalize_record_accepts_each_documented_format(record, expected):
    """Strings, message lists, implicit-prompt conversations, messages, prompt/completion: all map to canonical."""
    assert data.normalize_record(record, "dir/f.jsonl", 7) == expected


@pytest.mark.parametrize("record, message", [
    ([1], "expected a JSON object, found list [1]"),
    ({"text": "hello"}, "expected a pair (prompt/chosen/rejected) or an SFT example"),
    ({"prompt": "Q?", "chosen": "A."}, "field 'rejected': expected both 'chosen' and 'rejected'"),
    ({"chosen": "A.", "rejected": "B."}, "field 'prompt': expected a prompt, or 'chosen'/'rejected' as full"),
    ({"chosen": [USER, ANSWER], "rejected": [SYSTEM, USER, WRONG]},
     "field 'rejected': expected [assistant message]"),
    ({"prompt": "Q?", "chosen": [ANSWER, ANSWER], "rejected": "B."}, "first 1 differ from the prompt"),
    ({"prompt": "Q?", "chosen": [USER], "rejected": "B."}, "field 'chosen[0].role': expected \"assistant\""),
    ({"prompt": "Q?", "chosen": "", "rejected": "B."}, "field 'chosen': expected a non-empty response"),
    ({"prompt": [ANSWER], "chosen": "A.", "rejected": "B."}, "field 'prompt[0].role': expected \"user\""),
    ({"prompt": [{"role": "user", "content": ["part"]}], "completion": "A."},
     "field 'prompt[0]': expected a message"),
    ({"messages": [USER, USER]}, "field 'messages[1].role': expected \"assistant\""),
    ({"messages": [ANSWER]}, "field 'messages': expected prompt turn(s) followed by an assistant message"),
    ({"prompt": "Q?"}, "field 'completion': expected both 'prompt' and 'completion'"),
    ({"id": ["x"], "prompt": "Q?", "completion": "A."},
     "field 'id': expected a non-empty string or an integer"),
])
def test_normalize_record_rejects_bad_rows_naming_file_line_and_field(record, message):
    """Each malformed row raises InputError starting 'FILE:LINE' and naming what was expected."""
    with pytest.raises(InputError, match=f"^dir/f\\.jsonl:7: .*{re.escape(message)}"):
        data.normalize_record(record, "dir/f.jsonl", 7)


def test_loaders_read_curate_outputs_as_canonical_records(tmp_path):
    """load_sft_examples / load_pairs read curate's outputs; a problem's SFT example and pair share the id."""
    curate_raw(tmp_path, RAW)
    sft = data.load_sft_examples(tmp_path / "out" / "sft.jsonl")
    pairs = data.load_pairs(tmp_path / "out" / "pairs.jsonl")
    raw = [json.loads(line) for line in open(RAW, encoding="utf-8")]
    pair0 = next(p for p in pairs if p["id"] == "curation_raw/0")
    assert pair0 == {"id": "curation_raw/0",
                     "prompt_messages": [{"role": "user", "content": raw[0]["problem"]}],
                     "chosen": raw[0]["generations"][1], "rejected": raw[0]["generations"][0]}
    assert {p["id"] for p in pairs} <= {s["id"] for s in sft}
    with pytest.raises(InputError, match="expected preference pairs .* found SFT examples"):
        data.load_pairs(tmp_path / "out" / "sft.jsonl")


def test_loaders_reject_mixed_kinds_duplicate_ids_and_empty_files(tmp_path):
    """One kind per file, unique ids, at least one record; each error names file and line."""
    pair, sft = {"prompt": "Q?", "chosen": "A.", "rejected": "B."}, {"prompt": "Q?", "completion": "A."}
    mixed = write_rows(tmp_path / "mixed.jsonl", [pair, pair, sft])
    with pytest.raises(InputError, match=r"mixed\.jsonl:3: this row is sft but line 1 is pairs"):
        data.load_pairs(mixed)
    dup = write_rows(tmp_path / "dup.jsonl", [dict(sft, id="a"), dict(sft, id="a")])
    with pytest.raises(InputError, match=r"dup\.jsonl:2: field 'id': .*'a' again \(first on line 1\)"):
        data.load_sft_examples(dup)
    with pytest.raises(InputError, match=r"empty\.jsonl: no records \(the file is empty\)"):
        data.load_sft_examples(write_rows(tmp_path / "empty.jsonl", []))


def test_check_cli_prints_counts_and_fails_on_a_bad_file(tmp_path):
    """`data.py check` prints kind and count per file; a bad row exits non-zero naming file and line."""
    good = write_rows(tmp_path / "good.jsonl", [{"messages": [USER, ANSWER]}] * 3)
    proc = run_script([sys.executable, "data.py", "check", "--data", good])
    assert f"{good}: 3 SFT examples" in proc.stdout
    bad = write_rows(tmp_path / "bad.jsonl", [{"messages": [USER, ANSWER]}, {"messages": [USER]}])
    proc = run_script([sys.executable, "data.py", "check", "--data", bad], check=False)
    assert proc.returncode != 0 and f"{bad}:2: field 'messages'" in proc.stderr
