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
