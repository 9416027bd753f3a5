"""Preemption and launcher death, on real 2-rank torchrun runs (CPU, gloo).

A scheduler's SIGTERM (or SLURM's SIGUSR1) must cost nothing: every rank finishes the step, it is
saved, the run exits 75, and --resume continues bitwise. A torchrun killed with SIGKILL must take
its workers with it within seconds, before they write anything more into the output dir."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

import run_safety

ARGS = ["--no-progress", "--seed", "3", "--loss", "redi", "--global-batch-size", "2", "--micro-batch-size", "1",
        "--lr", "1e-3", "--epochs", "100"]


def _start(out, model, data, *extra):
    """torchrun 2 x train_redi.py in a session of its own (so the test can always clean up)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_redi.py"), "--model", str(model), "--data", str(data), "--output-dir", str(out),
           *ARGS, *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return [r for r in lines if "step" in r]


def _wait_for_step(proc, out, at_least, timeout=120):
    deadline = time.time() + timeout
    while len(_steps(out)) < at_least:
        assert proc.poll() is None, f"run ended early:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no progress"
        time.sleep(0.05)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"      # a zombie has stopped running
    except FileNotFoundError:
        return False


def _workers(launcher_pid):
    """{rank: pid} of the launcher's child processes (torchrun starts the workers itself)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry)
    return found


def _tree(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files)


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, pairs_file):
    """The reference: 30 steps in one go."""
    out = tmp_path_factory.mktemp("preempt") / "full"
    code, _, err = _finish(_start(out, tiny_model_dir, pairs_file, "--max-steps", "30"))
    assert code == 0, err[-3000:]
    return out


def _assert_bitwise_equal(full, resumed):
    a, b = _steps(full), _steps(resumed)
    assert [r["step"] for r in b] == list(range(1, 31))            # each step once: none recomputed
    for key in ("loss", "optim/grad_norm", "optim/update_norm", "logps/chosen", "logps/rejected", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    from safetensors.torch import load_file
    sa, sb = load_file(full / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGUSR1 to rank 1 only", "SIGTERM to torchrun"])
def test_a_stop_signal_saves_the_step_exits_75_and_resume_is_bitwise(how, tmp_path, tiny_model_dir, pairs_file,
                                                                        uninterrupted):
    """Signal mid-run: both ranks stop after the same step, which is saved; --resume ends bitwise equal to no stop."""
    out = tmp_path / "run"
    proc = _start(out, tiny_model_dir, pairs_file, "--max-steps", "30")
    _wait_for_step(proc, out, 3)
    if how == "SIGTERM to torchrun":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.kill(_workers(proc.pid)[1], signal.SIGUSR1)
    code, _, err = _finish(proc)
    assert code != 0
    stopped = [line for line in err.splitlines() if "stopped: stop signal after step" in line]
    assert len(stopped) == 2, err[-3000:]                           # both ranks, the same step
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert all(f"after step {step};" in line for line in stopped) and 3 <= step < 30
    assert f"exitcode  : {run_safety.EXIT_PREEMPTED}" in err or how == "SIGTERM to torchrun"
    assert [r["step"] for r in _steps(out)] == list(range(1, step + 1))
    assert (out / "checkpoints" / "latest").read_text() == f"step-{step:07d}"
    assert sorted(p for p in os.listdir(out / "checkpoints") if p.startswith("step-")) == [f"step-{step:07d}"]
    code, _, err = _finish(_start(out, tiny_model_dir, pairs_file, "--max-steps", "30", "--resume"))
    assert code == 0, err[-3000:]
    _assert_bitwise_equal(uninterrupted, out)


@pytest.mark.slow
@pytest.mark.parametrize("state", ["training", "rank 0 blocked in a collective"])
def test_workers_stop_within_seconds_when_torchrun_is_killed(state, tmp_path, tiny_model_dir, pairs_file):
    """kill -9 of torchrun at step >= 5: both workers are gone within 5 s and write nothing more,
    even when rank 0 waits in a collective (rank 1 stopped) and so cannot run Python."""
    out = tmp_path / "run"
    proc = _start(out, tiny_model_dir, pairs_file, "--max-steps", "100000", "--save-every", "50")
    _wait_for_step(proc, out, 5)
    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1]
    if state != "training":
        os.kill(workers[1], signal.SIGSTOP)
        time.sleep(1.5)                                  # rank 0 reaches the next collective and waits there
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    try:
        while any(_alive(pid) for pid in workers.values()) and time.time() - killed_at < 5:
            time.sleep(0.05)
        survivors = [pid for pid in workers.values() if _alive(pid)]
        assert not survivors, f"workers {survivors} still running {time.time() - killed_at:.1f} s after the kill"
        print(f"workers gone {time.time() - killed_at:.2f} s after the kill")
        size, entries = (out / "metrics.jsonl").stat().st_size, _tree(out)
        time.sleep(2)
        assert (out / "metrics.jsonl").stat().st_size == size and _tree(out) == entries
    finally:
        for pid in workers.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def test_ranks_lines_on_a_shared_stderr_never_interleave():
    """Two ranks writing their stop lines into one pipe at once (torchrun's shared stderr): every line whole.
    With print() (text, then newline: two writes) about a tenth of the lines came out joined."""
    code = ("import os, sys, time; sys.path.insert(0, sys.argv[1]); os.environ['RANK'] = sys.argv[2]\n"
            "import run_safety\n"
            "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"     # both start writing together
            "for i in range(2000):\n"
            "    run_safety.rank_line('stopped: stop signal after step 4; saved checkpoint step-0000004; continue')\n")
    read, write = os.pipe()
    start = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(rank), start], stderr=write)
             for rank in (0, 1)]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        lines = pipe.read().decode().splitlines()
    assert [p.wait() for p in procs] == [0, 0]
    assert len(lines) == 4000
    assert all(line.count("stopped:") == 1 and line.endswith("continue") for line in lines)
    assert sorted({line[:8] for line in lines}) == ["[rank 0]", "[rank 1]"]
