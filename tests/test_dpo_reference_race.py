"""dpo_reference: DPO jobs sharing a pairs file (a hyperparameter grid) may compute its --precompute-ref cache at once."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_script

RACE = ROOT / "tests" / "helpers" / "dpo_reference_race.py"
ARGS = ["--loss", "dpo", "--precompute-ref", "--global-batch-size", "4", "--max-steps", "1", "--no-progress",
        "--seed", "3"]


def _data(tmp_path, name, pairs_file):
    os.makedirs(tmp_path / name)
    return shutil.copy(pairs_file, tmp_path / name / "pairs.jsonl")


def _cache(data):
    caches = sorted(data.parent.glob("pairs.jsonl.ref-logps.*.jsonl"))
    assert len(caches) == 1, caches
    return caches[0].read_text()


@pytest.mark.slow
def test_jobs_publishing_the_reference_cache_at_once_all_exit_0_and_leave_one_complete_cache(tmp_path, tiny_model_dir,
                                                                                             pairs_file):
    """3 DPO jobs, each held just before its publish until all have written their temp file: all exit 0, no temp is
    left, and the cache is byte-equal to the one a single job writes (one row per pair)."""
    jobs = 3
    data, barrier = _data(tmp_path, "race", pairs_file), tmp_path / "publish"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = []
    for j in range(jobs):
        with open(tmp_path / f"job{j}.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, str(RACE), str(barrier), str(jobs), "--model", str(tiny_model_dir), "--data", str(data),
                 "--output-dir", str(tmp_path / f"out{j}"), *ARGS],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=240) for p in procs]
    logs = [(tmp_path / f"job{j}.log").read_text() for j in range(jobs)]
    assert codes == [0] * jobs, "\n".join(log[-3000:] for log in logs)
    assert all("reference log-probs: computing for 13 pairs" in log for log in logs)
    assert len(list(tmp_path.glob("publish.arrived-*"))) == jobs             # the hold was reached: the race happened
    assert not [n for n in os.listdir(data.parent) if n.endswith(".tmp")], os.listdir(data.parent)
    single = _data(tmp_path, "single", pairs_file)
    run_script([sys.executable, "train_redi.py", "--model", tiny_model_dir, "--data", single,
                "--output-dir", tmp_path / "single-out", *ARGS])
    expected = _cache(single)
    assert len(expected.splitlines()) == 13
    assert _cache(data) == expected
