"""bench/gpu.py cannot rot before a GPU is lent: its --tiny mode runs the same code on CPU."""
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
    assert cases == {("redi", "padded"), ("redi", "packed-split"), ("dpo", "packed-split"), ("sft", "packed-split")}
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_mem_gb"] > 0
        assert row["tokens_per_step"] >= (32 if row["loss"] == "sft" else 64)
        assert row["models_alive_at_start"] == 0          # the previous case freed before the peak is reset
