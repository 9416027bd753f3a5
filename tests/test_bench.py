"""bench/gpu.py and bench/gpu_check.sh cannot rot before a GPU is lent: their tiny modes run the same code on CPU."""
import json
import sys

import pytest

from conftest import ROOT, run_script


@pytest.mark.slow
def test_gpu_bench_tiny_runs_every_case_and_writes_its_json(tmp_path):
    """--tiny: REDI in every layout, DPO (cached reference) and SFT each report tokens/s, MFU and peak memory."""
    run_script([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--lengths", "32", "--steps", "2",
                "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["model"]["vocab"] == 151_936 and report["model"]["layers"] == 2
    cases = {(r["loss"], r["layout"]) for r in report["rows"]}
    # DPO and SFT run the scripts' default layout: padded with SDPA where flash-attn is absent (not packed-split)
    assert cases == {("redi", "padded"), ("redi", "packed-split"), ("dpo", "padded"), ("sft", "padded")}
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_mem_gb"] > 0
        assert row["tokens_per_step"] >= (32 if row["loss"] == "sft" else 64)
        assert row["models_alive_at_start"] == 0          # the previous case freed before the peak is reset


@pytest.mark.slow
def test_gpu_check_script_runs_every_step_and_reads_its_own_metrics(tmp_path):
    """TINY=1 bash bench/gpu_check.sh: every step exits 0 (set -e), and the summary reads the metrics' real keys
    (perf/tokens_per_s, perf/peak_mem_gb) for sft, redi and dpo."""
    import os

    proc = run_script(["bash", str(ROOT / "bench" / "gpu_check.sh")], env={"TINY": "1", "OUT": str(tmp_path),
                                                                          "PYTHON": sys.executable}, timeout=600)
    for run in ("sft", "redi", "dpo"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{run}: steps"))
        assert "tokens/s" in line and "peak" in line and "nan" not in line, line
    assert "hidden-chunked" in proc.stdout and os.path.isdir(tmp_path / "eval")


def _demo_results(stage1, redi, control, shares, sems=(0.5, 0.5, 0.5)):
    """A demo.py results.json with the given pass@1 (%) per model and guess shares (%)."""
    keys = ("stage 1 (SFT)", "stage 2: redi", "stage 2: sft_control")
    return {"wall_time_s": 600.0,
            "models": {k: {"test": {"pass@1": p / 100, "sem": s / 100}} for k, p, s in zip(keys, (stage1, redi, control), sems)},
            "paths": {k: {"guess_share": g / 100, "guess_accuracy": 0.2, "work_accuracy": 0.85}
                      for k, g in zip(keys, shares)}}


def test_demo_stability_answers_and_disagreement(tmp_path):
    """bench/demo_stability.py: 'higher' needs a gain beyond 2 x the combined SEM, 'cuts' a guess share at most
    half of stage 1's; runs that answer differently are reported as disagreeing."""
    sys.path.insert(0, str(ROOT / "bench"))
    import demo_stability as ds

    _, answers = ds.figures(_demo_results(73.0, 77.0, 73.5, (18, 5, 18)))
    assert answers == {"REDI vs stage 1": "higher", "control vs stage 1": "same",
                       "REDI guessing": "cuts", "control guessing": "keeps"}
    # +1.4 points with SEMs 0.5: 2 x sqrt(0.5^2 + 0.5^2) = 1.41 -> not beyond it
    _, answers = ds.figures(_demo_results(73.0, 74.4, 71.0, (18, 9, 10)))
    assert answers == {"REDI vs stage 1": "same", "control vs stage 1": "lower",
                       "REDI guessing": "cuts", "control guessing": "keeps"}
    for name, res in (("seed 0", _demo_results(73.0, 77.0, 73.5, (18, 5, 18))),
                      ("seed 1", _demo_results(94.0, 94.1, 94.0, (20, 2, 20)))):
        d = tmp_path / ds.run_dir("", name)
        d.mkdir()
        (d / "results.json").write_text(json.dumps(res))
    ds.report(str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "the runs DISAGREE on: REDI vs stage 1 (higher / same)" in text
    spread = json.loads((tmp_path / "report.json").read_text())["spread"]
    assert spread["stage 1 pass@1"]["min"] == 73.0 and spread["stage 1 pass@1"]["max"] == 94.0


def test_reading_path_lists_every_project_function_the_redi_loop_calls():
    """bench/reading_path.py counts a hand-written list: every project function train_redi.train calls
    (training.*, the loop's helper objects' methods, train_redi's own and imported functions) is on it or is
    set-up or stop machinery named here, so a new call in the loop cannot go uncounted."""
    import ast

    sys.path.insert(0, str(ROOT / "bench"))
    import reading_path

    tree = ast.parse((ROOT / "train_redi.py").read_text())
    own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
            and (ROOT / f"{n.module}.py").exists() for a in n.names}
    objects = {"training", "run_safety", "metrics", "checkpoints", "batch_order", "collapse"}
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    called = set()
    for call in (c for c in ast.walk(train) if isinstance(c, ast.Call)):
        f = call.func
        if isinstance(f, ast.Name) and f.id in own:
            called.add(f.id)
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in objects:
            called.add(f.attr)
    listed = {name.split(".")[-1] for names in reading_path.CALLED.values() for name in names} | {"train"}
    set_up_or_stop = {"Metrics", "Checkpoints", "CollapseMonitor", "StopSignals", "first_logged_logps", "print0",
                      "Preempted", "NonFiniteError", "for_stop", "for_nonfinite", "save", "close"}
    assert called - listed - set_up_or_stop == set()
    assert {"micro_batch_loss", "collate_pairs", "lr_at", "update_norm", "global_count"} <= called   # it sees calls
    lines = reading_path.count()
    assert set(lines) == {"train_redi.py", "redi_loss.py", "training.py", "data.py"} and all(lines.values())
