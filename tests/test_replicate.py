"""Claims about replicate.py: the plan (seeds, selection on validation), the scheduler, the tables, a smoke run."""
import json
import os
import sys

import pytest

from conftest import ROOT, run_script

import replicate as R


def _plans(cfg_name="full", seeds=(0, 1, 2)):
    out = {}
    for variant in ("slips", "guess"):
        for i, seed in enumerate(seeds):
            out[(variant, seed)] = R.seed_jobs("/tmp/unused", variant, seed, R.CONFIGS[cfg_name], extras=(i == 0))
    return out


def test_help_works_without_running_anything(capsys):
    """--help prints the spec and exits 0."""
    with pytest.raises(SystemExit, match="^0$"):
        R.parse_args(["--help"])
    assert "Figure 2" in capsys.readouterr().out


def test_headline_rows_run_on_every_seed_and_grids_on_the_first():
    """REDI 0.8 and the SFT control on every seed of both variants; grids, sweep, stability on the first."""
    for (variant, seed), (jobs, plan) in _plans().items():
        assert {"redi_0.8", "sft_control"} <= set(plan["methods"])
        extras = {"redi_1.0", "dpo", "simpo", "redi_0.2", "redi_0.5"}
        assert (extras <= set(plan["methods"])) == (seed == 0) and bool(plan["stability"]) == (seed == 0)
        names = [j.name for j in jobs]
        assert len(names) == len(set(names))


def test_no_test_split_before_selection():
    """Validation evals read val.jsonl; a method's test eval waits on every one of its validation evals."""
    jobs, plan = _plans()[("guess", 0)]
    by_name = {j.name: j for j in jobs}
    for method, info in plan["methods"].items():
        test_job = by_name[f"guess/s0 {method} test"]
        settings = [j for j in jobs if j.name.startswith(f"guess/s0 {method} [")]
        vals = [j for j in settings if j.name.endswith("] val")]
        assert all("val.jsonl" in " ".join(map(str, j.cmd)) for j in vals)
        deps = {d.name for d in test_job.deps}
        assert {j.name for j in vals} <= deps <= {j.name for j in settings} and deps


def _summary(path, bench, p1):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"benchmarks": {bench: {"pass@1": p1}}}, f)


def test_pick_by_validation_takes_the_best_validation_setting(tmp_path):
    """The picked setting is the one with the highest validation pass@1, whatever the test split says."""
    entries = []
    for k, (val, test) in enumerate([(0.5, 0.9), (0.7, 0.1), (0.6, 0.8)]):
        run = tmp_path / f"run{k}"
        _summary(run / "evals" / "val", "val", val)
        _summary(run / "evals" / "test", "test", test)
        entries.append({"label": str(k), "run": str(run)})
    assert R.pick_by_validation(entries)["label"] == "1"
    assert R.pick_by_validation(entries[:1])["label"] == "0"


def test_mean_sem_is_the_standard_error_over_seeds():
    """mean_sem: mean and std(ddof=1)/sqrt(S); no SEM for one value."""
    mean, sem = R.mean_sem([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and sem == pytest.approx(0.1 / 3 ** 0.5)
    assert R.mean_sem([0.4]) == (0.4, None)


def _metrics(p1, share):
    return {"pass@1": p1, "sem": 0.01, "pass@k": {"1": p1, "2": p1 + 0.05}, "guess_share": share,
            "guess_accuracy": 0.3, "work_accuracy": 0.9}


def test_tables_say_how_many_seeds_each_row_has():
    """Headline rows give their seed count; a one-seed row says its SEM is over samples; differences per seed."""
    per_seed = {}
    for s in (0, 1, 2):
        methods = {"redi_0.8": {"settings": [{"label": "lr 3e-5", "val": None}], "picked": "lr 3e-5",
                                "test": _metrics(0.8 + 0.01 * s, 0.05)},
                   "sft_control": {"settings": [{"label": "lr 3e-5", "val": None}], "picked": "lr 3e-5",
                                   "test": _metrics(0.75, 0.2)}}
        if s == 0:
            methods["dpo"] = {"settings": [{"label": "a", "val": 0.7}, {"label": "b", "val": 0.6}], "picked": "a",
                              "test": _metrics(0.7, 0.1)}
        per_seed[s] = {"stage1": _metrics(0.74, 0.2), "methods": methods, "curve": []}
    table = R.headline_table(per_seed)
    assert "| REDI alpha 0.8 | 3 | 81.0 +- 0.6 |" in table
    assert "| DPO (grid, picked on val) | 1 | 70.0 +- 1.0 (over samples) |" in table
    diffs = R.differences_table(per_seed)
    assert "| REDI alpha 0.8 - SFT control (chosen only) | 3 | 6.0 +- 0.6 | +5.0, +6.0, +7.0 |" in diffs
    assert "| REDI alpha 0.8 - DPO (grid, picked on val) | 1 (SEM over samples) |" in diffs
    assert "| dpo | a | 70.0 | - | - |" in R.grid_table(per_seed)


def test_scheduler_runs_dependencies_first_and_stops_on_a_failure(tmp_path):
    """run_jobs starts a job only after its deps, runs `after`, and raises naming a failed job."""
    order = tmp_path / "order.txt"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    a = R.Job("a", [sys.executable, "-c", append, order, "a"], str(tmp_path / "a.log"))
    b = R.Job("b", [sys.executable, "-c", append, order, "b"], str(tmp_path / "b.log"), [a], priority=0,
              after=lambda: order.open("a").write("after b\n"))
    R.run_jobs([b, a], 2, 0.0)
    assert order.read_text().split("\n")[:3] == ["a", "b", "after b"]
    bad = R.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "bad.log"))
    with pytest.raises(RuntimeError, match="job 'bad' failed \\(exit status 3\\)"):
        R.run_jobs([bad], 1, 0.0)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_run_writes_tables_figures_and_results(tmp_path):
    """`replicate.py --smoke` (one variant, one seed, every kind of job once) writes report, results, figures."""
    out = tmp_path / "rep"
    proc = run_script([sys.executable, str(ROOT / "replicate.py"), "--smoke", "--variants", "guess", "--seeds", "0",
                       "--out", str(out)], timeout=1400)
    assert "wall time" in proc.stdout
    results = json.loads((out / "results.json").read_text())["results"]["guess"]["0"]
    assert {"redi_0.8", "sft_control", "redi_1.0", "dpo", "simpo", "redi_0.2"} <= set(results["methods"])
    assert 0 <= results["stage1"]["guess_share"] <= 1 and results["curve"]
    report = (out / "report.md").read_text()
    assert "| REDI alpha 0.8 | 1 |" in report and "Stability at a high learning rate" in report
    for png in ("fig_stage1.png", "fig_alpha.png", "dynamics_guess/dynamics.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
