"""The main job: `python demo.py --quick` runs every stage's real CLI and leaves every artifact."""
import json
import sys

import pytest

from conftest import ROOT, run_script


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Two --quick demos with the same seed (the second checks reproducibility)."""
    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(f"demo_{name}")
        proc = run_script([sys.executable, str(ROOT / "demo.py"), "--quick", "--out", str(out), "--seed", "5"],
                          timeout=900)
        outs.append((out, proc))
    return outs


@pytest.mark.slow
@pytest.mark.timeout(1200)   # the module's fixture runs the quick demo twice
def test_quick_demo_writes_every_artifact(quick_runs):
    """Data (the guess variant), curation summary, three trained models, metrics, per-checkpoint evals,
    a table with the path shares, plot."""
    out, proc = quick_runs[0]
    for stage in ("1. teacher data", "3. curation", "4. stage 1", "5. stage 2: redi", "5. stage 2: sft_control",
                  "6. evaluate", "7. plots"):
        assert stage in proc.stdout
    raw, test = _jsonl(out / "data" / "raw.jsonl"), _jsonl(out / "data" / "test.jsonl")
    assert len(raw) == 200 and len(test) == 12 and {"problem", "answer"} <= test[0].keys()
    summary = json.loads((out / "data" / "sft.summary.json").read_text())
    assert summary["outputs"]["sft"]["rows"] == len(_jsonl(out / "data" / "sft.jsonl")) > 0
    assert summary["outputs"]["pairs"]["rows"] == len(_jsonl(out / "data" / "pairs.jsonl")) > 0
    for run in ("sft", "redi", "sft_control"):
        assert (out / run / "final" / "model.safetensors").exists()
        header, *steps = _jsonl(out / run / "metrics.jsonl")
        assert "args" in header and steps and all("loss" in r for r in steps)
    redi_steps = _jsonl(out / "redi" / "metrics.jsonl")[1:]
    assert all({"logps/chosen", "logps/rejected", "optim/update_norm"} <= r.keys() for r in redi_steps)
    for run in ("redi", "sft_control"):
        evals = sorted(p.name for p in (out / run / "evals").iterdir())
        assert evals == ["step-0000000", "step-0000002", "step-0000004"]
        for e in evals:
            bench = json.loads((out / run / "evals" / e / "summary.json").read_text())["benchmarks"]["test"]
            assert bench["n_problems"] == 12 and bench["n_samples"] == 2 and 0 <= bench["pass@1"] <= 1
            assert len(_jsonl(out / run / "evals" / e / "generations.jsonl")) == 24
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"stage 1 (SFT)", "stage 2: redi", "stage 2: sft_control"}
    table = (out / "results.md").read_text()
    assert "| stage 2: redi |" in table and "pass@1 (%) +- SEM" in table and "wall time" in table
    assert "guess share (%)" in table and "acc. when working (%)" in table   # the guess variant's paths
    assert set(results["paths"]) == set(results["models"])
    assert all(0 <= p["guess_share"] <= 1 and p["samples"] == 24 for p in results["paths"].values())
    assert "--variant guess" in proc.stdout
    assert (out / "dynamics.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_demo_is_reproducible_with_the_same_seed(quick_runs):
    """Same seed, fresh directory: identical training losses and identical evaluation results."""
    (a, _), (b, _) = quick_runs
    for run in ("sft", "redi", "sft_control"):
        loss_a = [r["loss"] for r in _jsonl(a / run / "metrics.jsonl")[1:]]
        loss_b = [r["loss"] for r in _jsonl(b / run / "metrics.jsonl")[1:]]
        assert loss_a == loss_b, run
    models_a = json.loads((a / "results.json").read_text())["models"]
    models_b = json.loads((b / "results.json").read_text())["models"]
    strip = {"answers_per_second"}        # a timing, not a result
    assert ({m: {k: v for k, v in r["test"].items() if k not in strip} for m, r in models_a.items()}
            == {m: {k: v for k, v in r["test"].items() if k not in strip} for m, r in models_b.items()})
    paths_a = json.loads((a / "results.json").read_text())["paths"]
    assert paths_a == json.loads((b / "results.json").read_text())["paths"]
