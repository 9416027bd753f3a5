"""toy/plot.py reads any run's metrics.jsonl and eval summaries and draws the Figure-6 panels."""
import json
import sys

import pytest

from cli import InputError
from conftest import run_script, write_jsonl
from toy import plot


def _fake_run(run_dir, steps, evals):
    """A stage-2 run dir: a header line, step records, one skipped step, eval summaries per checkpoint."""
    rows = [{"args": {"loss": "redi"}, "versions": {}}]
    rows += [{"step": s, "loss": 1.0 / s, "logps/chosen": -0.1 * s, "logps/rejected": -0.2 * s,
              "optim/update_norm": 0.01 * s, "logps/collapse_warning": False} for s in range(1, steps + 1)]
    rows.insert(3, {"step": 99, "optim/skipped": True, "loss": float("nan")})
    run_dir.mkdir(parents=True)
    write_jsonl(run_dir / "metrics.jsonl", rows)
    for step, acc in evals.items():
        d = run_dir / "evals" / f"step-{step:07d}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"benchmarks": {"toy_test": {"pass@1": acc}}}))


def test_load_run_extracts_series_and_checkpoint_accuracy(tmp_path):
    """Numeric keys become (step, value) series; skipped steps (listed apart) and booleans are left out;
    evals sorted."""
    _fake_run(tmp_path / "redi", 4, {4: 0.5, 0: 0.25, 2: 0.375})
    series = plot.load_run(str(tmp_path / "redi"))
    assert series["logps/chosen"] == [(1, -0.1), (2, -0.2), (3, pytest.approx(-0.3)), (4, -0.4)]
    assert [s for s, _ in series["loss"]] == [1, 2, 3, 4]
    assert series["optim/skipped"] == [(99, 1)]
    assert "collapse_warning" not in series
    assert series["accuracy"] == [(0, 0.25), (2, 0.375), (4, 0.5)]
    with pytest.raises(InputError, match="no benchmark 'math500'"):
        plot.load_run(str(tmp_path / "redi"), benchmark="math500")


def test_cli_writes_a_png_for_several_runs(tmp_path):
    """`python -m toy.plot DIR` finds both runs below DIR and writes dynamics.png (a real PNG)."""
    pytest.importorskip("matplotlib")
    _fake_run(tmp_path / "runs" / "redi", 5, {0: 0.1, 5: 0.2})
    _fake_run(tmp_path / "runs" / "sft_control", 5, {})
    proc = run_script([sys.executable, "-m", "toy.plot", str(tmp_path / "runs"), "--out", str(tmp_path / "png")])
    assert "redi: 5 steps (1 skipped step left out), 2 evaluated checkpoints" in proc.stdout
    assert "sft_control: 5 steps (1 skipped step left out), 0 evaluated checkpoints" in proc.stdout
    png = (tmp_path / "png" / "dynamics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_missing_matplotlib_skips_with_a_message(tmp_path, monkeypatch, capsys):
    """Without matplotlib the data are still read and the script says plots were skipped."""
    _fake_run(tmp_path / "run", 2, {})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    plot.main([str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "matplotlib is not installed: plots skipped" in out and "2 steps" in out
    assert not (tmp_path / "run" / "dynamics.png").exists()


def test_no_metrics_is_a_clear_error(tmp_path, capsys):
    """A directory without metrics.jsonl: one line on stderr naming it, exit status 2."""
    with pytest.raises(SystemExit, match="^2$"):
        plot.main([str(tmp_path)])
    assert capsys.readouterr().err == (f"plot.py: error: no metrics.jsonl under {tmp_path} (train_sft.py / "
                                       f"train_redi.py write one per --output-dir)\n")
