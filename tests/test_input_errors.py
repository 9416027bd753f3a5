"""Bad input to every CLI (curate.py, data.py check, demo.py, toy/plot.py, toy/toy_task.py, toy/tiny_model.py) is
one clear line on stderr and a non-zero exit, never a traceback; a real bug keeps its traceback.

Each case runs the script in a subprocess, as a user would, and checks: exit status 2 (1 for a
failed demo stage), stderr holds 'PROG: error:' and names the file, line and field where there
are some, and 'Traceback' is not in stderr.
"""
import json
import sys

import pytest

from conftest import ROOT, run_script

RAW_ROW = json.loads((ROOT / "tests" / "data" / "curation_raw.jsonl").read_text(encoding="utf-8").splitlines()[0])
NOT_UTF8 = b'{"problem": "caf\xe9"}\n'   # Latin-1 bytes, not UTF-8


def run_cli(script, *args):
    """`python SCRIPT.py args` for a root script, `python -m toy.MODULE args` for a toy/ module."""
    where = [str(ROOT / script)] if script.endswith(".py") else ["-m", script]
    return run_script([sys.executable, *where, *map(str, args)], check=False, timeout=120)


def assert_one_clear_error(proc, prog, *fragments, code=2):
    """Exit status `code`, 'PROG: error:' on stderr with each fragment, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert f"{prog}: error:" in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def write(path, content):
    """Write bytes as they are, str as UTF-8, a list as JSON Lines (one value per line)."""
    if isinstance(content, list):
        content = "".join(json.dumps(value) + "\n" for value in content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---- curate.py -------------------------------------------------------------------------------


def curate_case(tmp_path, case):
    """(extra args, the fragments stderr must hold) for one bad `curate.py` input."""
    raw, a_file = tmp_path / "raw.jsonl", write(tmp_path / "a_file", "not a directory")
    outputs = {"--sft-out": tmp_path / "out" / "sft.jsonl", "--pairs-out": tmp_path / "out" / "pairs.jsonl"}
    args, fragments = ["--raw", raw], []
    if case == "missing_raw":
        fragments = [f"{raw}: no such file or directory"]
    elif case == "raw_dir_without_shards":
        (tmp_path / "shards").mkdir()
        args, fragments = ["--raw", tmp_path / "shards"], [f"{tmp_path / 'shards'}: the directory holds no *.jsonl"]
    elif case == "not_utf8":
        write(raw, json.dumps(RAW_ROW).encode() + b"\n" + NOT_UTF8)
        fragments = [f"{raw}:2: not valid UTF-8"]
    elif case == "json_list_row":
        write(raw, [RAW_ROW, [RAW_ROW]])
        fragments = [f"{raw}:2: expected a JSON object (one OpenR1-Math-Raw row), found list"]
    elif case == "wrong_field_type":
        write(raw, [RAW_ROW, dict(RAW_ROW, generations="one string")])
        fragments = [f"{raw}:2: field 'generations': expected a list of strings, found string"]
    elif case == "empty_raw":
        write(raw, "")
        fragments = [f"--raw {raw}: no rows to curate"]
    elif case == "negative_seed":
        write(raw, [RAW_ROW])
        args, fragments = args + ["--seed", "-1"], ["--seed must be >= 0 (numpy's shuffle), got -1"]
    elif case == "unwritable_output_dir":
        write(raw, [RAW_ROW])
        outputs["--sft-out"] = a_file / "sub" / "sft.jsonl"
        fragments = [f"--sft-out {a_file / 'sub' / 'sft.jsonl'}: cannot create the directory {a_file / 'sub'}"]
    elif case == "output_is_a_directory":
        write(raw, [RAW_ROW])
        outputs["--pairs-out"] = tmp_path
        fragments = [f"--pairs-out {tmp_path} is a directory"]
    elif case == "tokenizer_not_found":
        write(raw, [RAW_ROW])
        args = args + ["--tokenizer", tmp_path / "no_model"]
        fragments = [f"{tmp_path / 'no_model'}: cannot load a tokenizer", "no such directory"]
    elif case == "benchmark_missing":
        write(raw, [RAW_ROW])
        bench = tmp_path / "math500.jsonl"
        args, fragments = args + ["--benchmarks", bench], [f"{bench}: cannot read (No such file or directory)"]
    elif case == "benchmark_without_problem":
        write(raw, [RAW_ROW])
        bench = write(tmp_path / "math500.jsonl", [{"question": "What is 1+1?"}])
        args, fragments = args + ["--benchmarks", bench], [f"{bench}:1: field 'problem': expected a string"]
    return args + [x for kv in outputs.items() for x in kv], fragments


CURATE_CASES = ["missing_raw", "raw_dir_without_shards", "not_utf8", "json_list_row", "wrong_field_type", "empty_raw",
                "negative_seed", "unwritable_output_dir", "output_is_a_directory", "tokenizer_not_found",
                "benchmark_missing", "benchmark_without_problem"]


@pytest.mark.parametrize("case", CURATE_CASES)
def test_curate_bad_input_is_one_clear_line(tmp_path, case):
    """`curate.py` on each bad input: one line naming file / line / field or option, exit 2, no traceback."""
    args, fragments = curate_case(tmp_path, case)
    assert_one_clear_error(run_cli("curate.py", *args), "curate.py", *fragments)
    assert not (tmp_path / "out" / "sft.jsonl").exists()


# ---- data.py check ----------------------------------------------------------------------------


USER, ANSWER = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}


@pytest.mark.parametrize("case, content, fragment", [
    ("missing", None, "{f}: cannot read (No such file or directory)"),
    ("directory", "dir", "{f}: cannot read (Is a directory)"),
    ("not_utf8", json.dumps({"messages": [USER, ANSWER]}).encode() + b"\n" + NOT_UTF8, "{f}:2: not valid UTF-8"),
    ("json_list_row", [{"messages": [USER, ANSWER]}, [USER, ANSWER]], "{f}:2: expected a JSON object, found list"),
    ("wrong_field_type", [{"messages": [USER, dict(ANSWER, content=42)]}],
     "{f}:1: field 'messages[1]': expected a message"),
    ("empty", "", "{f}: no records (the file is empty)"),
])
def test_check_bad_input_is_one_clear_line(tmp_path, case, content, fragment):
    """`data.py check` on a missing / directory / non-UTF-8 / malformed / empty file: one line, exit 2."""
    path = tmp_path / "data.jsonl"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        write(path, content)
    assert_one_clear_error(run_cli("data.py", "check", "--data", path), "data.py check", fragment.format(f=path))


def test_a_bug_inside_data_main_keeps_its_traceback(tmp_path):
    """A ValueError that is not an InputError is a bug: data.main shows its traceback (it used to print one line)."""
    code = ("import data\n"
            "def run_check(args):\n"
            "    return int('not a number')   # a bug, not bad input\n"
            "data.run_check = run_check\n"
            f"data.main(['check', '--data', {str(tmp_path / 'x.jsonl')!r}])\n")
    proc = run_script([sys.executable, "-c", code], check=False, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: invalid literal for int()" in proc.stderr
    assert "data.py check: error:" not in proc.stderr


# ---- toy/plot.py ------------------------------------------------------------------------------


def plot_case(tmp_path, case):
    """(args, fragments) for one bad `plot.py` input; the run dir is tmp_path/run."""
    run = tmp_path / "run"
    run.mkdir()
    metrics, step = run / "metrics.jsonl", {"step": 1, "loss": 0.5}
    write(metrics, [{"args": {}}, step])
    summary = run / "evals" / "step-0000001" / "summary.json"
    summary.parent.mkdir(parents=True)
    write(summary, json.dumps({"benchmarks": {"toy_test": {"pass@1": 0.5}}}))
    args, fragments = [run], []
    if case == "missing_dir":
        args, fragments = [tmp_path / "nope"], [f"{tmp_path / 'nope'}: no such directory"]
    elif case == "not_utf8":
        write(metrics, json.dumps(step).encode() + b"\n" + NOT_UTF8)
        fragments = [f"{metrics}:2: not valid UTF-8"]
    elif case == "json_list_row":
        write(metrics, [step, [1, 2]])
        fragments = [f"{metrics}:2: expected a JSON object (a metrics record), found list"]
    elif case == "step_not_an_integer":
        write(metrics, [step, {"step": "2", "loss": 0.4}])
        fragments = [f"{metrics}:2: field 'step': expected an integer"]
    elif case == "summary_invalid_json":
        write(summary, '{"benchmarks": ')
        fragments = [f"{summary}:1: invalid JSON"]
    elif case == "summary_without_benchmarks":
        write(summary, json.dumps({"pass@1": 0.5}))
        fragments = [f"{summary}: field 'benchmarks': expected an object"]
    elif case == "unwritable_out":
        a_file = write(tmp_path / "a_file", "x")
        args, fragments = [run, "--out", a_file / "png"], [f"--out {a_file / 'png'}: cannot create the directory"]
    elif case == "nothing_to_plot":
        write(metrics, [{"args": {}}])
        summary.unlink()
        fragments = ["nothing to plot: no step metrics and no eval summaries in"]
    return args, fragments


@pytest.mark.parametrize("case", ["missing_dir", "not_utf8", "json_list_row", "step_not_an_integer",
                                  "summary_invalid_json", "summary_without_benchmarks", "unwritable_out",
                                  "nothing_to_plot"])
def test_plot_bad_input_is_one_clear_line(tmp_path, case):
    """`plot.py` on each bad run directory or --out: one line naming file / line / field, exit 2, no traceback."""
    args, fragments = plot_case(tmp_path, case)
    assert_one_clear_error(run_cli("toy.plot", *args), "plot.py", *fragments)


# ---- demo.py, toy/toy_task.py, toy/tiny_model.py ----------------------------------------------


def test_demo_bad_out_and_nproc_are_one_clear_line(tmp_path):
    """`demo.py --out FILE` and `--nproc 0`: one line each, exit 2, no traceback, nothing run."""
    a_file = write(tmp_path / "a_file", "x")
    proc = run_cli("demo.py", "--quick", "--out", a_file)
    assert_one_clear_error(proc, "demo.py", f"--out {a_file}: {a_file} exists and is not a directory")
    assert "===" not in proc.stdout
    assert_one_clear_error(run_cli("demo.py", "--quick", "--nproc", "0", "--out", tmp_path / "d"),
                           "demo.py", "--nproc must be >= 1, got 0")


def test_demo_failed_stage_is_its_own_message_plus_one_line(tmp_path):
    """A stage that fails (here toy_task.py: data/ is a file) prints its error; demo names the stage, exits 1."""
    write(tmp_path / "data", "a file where the data directory goes")
    proc = run_cli("demo.py", "--quick", "--out", tmp_path)
    assert_one_clear_error(proc, "demo.py", f"toy_task.py: error: --out-dir {tmp_path / 'data'}:",
                           "demo.py: error: stage '1. teacher data", "failed (exit status 2)", code=1)


def test_toy_task_bad_out_dir_and_too_many_problems_are_one_clear_line(tmp_path):
    """`toy_task.py --out-dir FILE/x` and a --num-test the problem space cannot fill: one line, exit 2."""
    a_file = write(tmp_path / "a_file", "x")
    assert_one_clear_error(run_cli("toy.toy_task", "--out-dir", a_file / "x"), "toy_task.py",
                           f"--out-dir {a_file / 'x'}: cannot create the directory")
    assert_one_clear_error(run_cli("toy.toy_task", "--out-dir", tmp_path / "toy", "--num-problems", "10",
                                   "--num-test", "100000"),
                           "toy_task.py", "problem space exhausted", "(--num-problems, --num-test)")


@pytest.mark.parametrize("case", ["missing_corpus", "not_utf8_corpus", "heads_do_not_divide", "out_is_a_file"])
def test_tiny_model_bad_input_is_one_clear_line(tmp_path, case):
    """`tiny_model.py` with a missing / non-UTF-8 corpus, heads that do not divide, --out a file: one line, exit 2."""
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "model"
    args, fragment = ["--corpus", corpus, "--out", out], f"{corpus}: cannot read (No such file or directory)"
    if case == "not_utf8_corpus":
        write(corpus, NOT_UTF8)
        fragment = f"{corpus}:1: not valid UTF-8"
    elif case == "heads_do_not_divide":
        args, fragment = ["--out", out, "--num-heads", "3"], "--hidden-size (64) must be a multiple of --num-heads (3)"
    elif case == "out_is_a_file":
        out = write(tmp_path / "a_file", "x")
        args, fragment = ["--out", out], f"--out {out}: {out} exists and is not a directory"
    assert_one_clear_error(run_cli("toy.tiny_model", *args), "tiny_model.py", fragment)
