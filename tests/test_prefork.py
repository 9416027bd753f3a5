"""toy/prefork.py: a job forked from a process with the libraries preloaded is `python script.py args` (or
`python -m toy.module args`) again.

Every check runs in a fresh driver interpreter (the pytest process has threads and torch state of
its own, which is exactly what the launcher must not have).
"""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import EVAL_SETS, ROOT

DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys, threading, time
    from toy import prefork
    spec = json.loads(sys.argv[1])
    if spec.get("thread"):
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    out = {}
    if spec.get("preload"):
        try:
            out["preload_s"] = prefork.preload()
        except RuntimeError as e:
            print(json.dumps({"preload_error": str(e)}))
            sys.exit(0)
    env = dict(os.environ, **spec.get("env", {}))
    for job in spec["jobs"]:
        cmd = [sys.executable, *job["argv"]]
        t = time.time()
        if job["how"] == "fork":
            proc = prefork.ForkedScript(cmd, job.get("cwd", os.getcwd()), env, job["log"])
        else:
            proc = subprocess.Popen(cmd, cwd=job.get("cwd", os.getcwd()), env=env, stdout=open(job["log"], "w"),
                                    stderr=subprocess.STDOUT)
        if job.get("kill_after"):
            time.sleep(job["kill_after"])
            proc.kill()
        out[job["log"]] = {"code": proc.wait(), "seconds": time.time() - t}
    print(json.dumps(out))
""")


def drive(spec, timeout=300):
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                                "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_forked_script_gets_its_argv_env_cwd_streams_and_exit_status(tmp_path):
    """argv, environment, working directory and both streams (unflushed output included) are the job's; the exit
    status is SystemExit's code, 1 with the message for a string, 1 with the traceback for an exception; atexit
    handlers run; stdin is empty."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import atexit, os, sys
        atexit.register(lambda: print("atexit ran"))
        print("argv", sys.argv[1:], "name", __name__, "file", os.path.basename(__file__))
        print("cwd", os.getcwd(), "env", os.environ.get("JOB_VAR"), "stdin", repr(sys.stdin.read()))
        sys.stderr.write("to stderr\\n")
        sys.stdout.write("unflushed at exit")
        how = sys.argv[1]
        if how == "code":
            sys.exit(3)
        if how == "message":
            sys.exit("a message for the user")
        if how == "raise":
            raise KeyError("a real bug")
    """))
    work = tmp_path / "work"
    work.mkdir()
    jobs = [{"argv": [str(script), how, "x y"], "how": "fork", "cwd": str(work), "log": str(tmp_path / f"{how}.log")}
            for how in ("ok", "code", "message", "raise")]
    got = drive({"jobs": jobs, "env": {"JOB_VAR": "set for the job"}})
    codes = {how: got[str(tmp_path / f"{how}.log")]["code"] for how in ("ok", "code", "message", "raise")}
    assert codes == {"ok": 0, "code": 3, "message": 1, "raise": 1}
    for how in codes:
        log = (tmp_path / f"{how}.log").read_text()
        assert f"argv ['{how}', 'x y'] name __main__ file job.py" in log
        assert f"cwd {work} env set for the job stdin ''" in log
        assert "to stderr" in log and "unflushed at exit" in log and "atexit ran" in log
    assert "a message for the user" in (tmp_path / "message.log").read_text()
    raised = (tmp_path / "raise.log").read_text()
    assert "Traceback" in raised and "KeyError: 'a real bug'" in raised


def test_a_forked_module_writes_what_python_dash_m_writes(tmp_path):
    """`-m toy.toy_task` forked from a launcher that has imported toy.toy_task writes the bytes `python -m toy.toy_task`
    writes and prints the same --help (its argv[0] is the module's file), without runpy's already-imported warning."""
    def jobs(how):
        out = ["--out-dir", str(tmp_path / how), "--num-problems", "60", "--num-test", "6", "--seed", "2"]
        return [{"argv": ["-m", "toy.toy_task", *args], "how": how, "log": str(tmp_path / f"{how}{i}.log")}
                for i, args in enumerate((out, ["--help"]))]
    got = drive({"preload": True, "jobs": jobs("fresh") + jobs("fork")})
    assert all(v["code"] == 0 for k, v in got.items() if k != "preload_s"), got
    for name in ("raw.jsonl", "test.jsonl", "task.json"):
        assert (tmp_path / "fork" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert (tmp_path / "fork1.log").read_text() == (tmp_path / "fresh1.log").read_text()
    assert "usage: toy_task.py" in (tmp_path / "fork1.log").read_text()
    assert "Warning" not in (tmp_path / "fork0.log").read_text()


def test_kill_stops_a_forked_job(tmp_path):
    """kill() is SIGKILL: the job ends at once with status -9."""
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n")
    got = drive({"jobs": [{"argv": [str(script)], "how": "fork", "log": str(tmp_path / "k.log"), "kill_after": 1}]})
    assert got[str(tmp_path / "k.log")]["code"] == -9 and got[str(tmp_path / "k.log")]["seconds"] < 10


def test_preload_refuses_a_process_with_a_thread():
    """A second thread (its locks) would not exist in the children: preload says so instead of forking."""
    got = drive({"thread": True, "preload": True, "jobs": []})
    assert "2 threads after preloading" in got["preload_error"]


@pytest.mark.slow
def test_forked_training_and_evaluation_equal_fresh_python_bitwise(tmp_path, tiny_model_dir, pairs_file):
    """train_redi.py and evaluate.py forked from the preloaded launcher write byte-identical weights, metrics and
    generations to the same commands as fresh interpreters (bench/bench_prefork.py measures the time saved)."""
    def train(out):
        return ["train_redi.py", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output-dir", str(out),
                "--loss", "redi", "--lr", "1e-3", "--global-batch-size", "4", "--micro-batch-size", "2",
                "--max-steps", "3", "--save-every", "0", "--keep-last", "0", "--seed", "5", "--no-progress"]

    def evaluate(model, out):
        return ["evaluate.py", "--model", str(model), "--data", str(EVAL_SETS / "math500_sample20.jsonl"),
                "--limit", "8", "--num-samples", "2", "--max-new-tokens", "16", "--batch-size", "16", "--seed", "3",
                "--grading-workers", "1", "--output-dir", str(out)]

    jobs = []
    for how in ("fresh", "fork"):
        jobs.append({"argv": train(tmp_path / f"train_{how}"), "how": how, "log": str(tmp_path / f"train_{how}.log")})
        jobs.append({"argv": evaluate(tmp_path / f"train_{how}" / "final", tmp_path / f"eval_{how}"), "how": how,
                     "log": str(tmp_path / f"eval_{how}.log")})
    got = drive({"preload": True, "jobs": jobs})
    assert all(v["code"] == 0 for k, v in got.items() if k != "preload_s"), got
    weights = [(tmp_path / f"train_{how}" / "final" / "model.safetensors").read_bytes() for how in ("fresh", "fork")]
    assert weights[0] == weights[1]

    def steps(how):
        rows = [json.loads(line) for line in (tmp_path / f"train_{how}" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(("time", "perf", "throughput"))}
                for r in rows if "step" in r]
    assert len(steps("fork")) == 3 and steps("fork") == steps("fresh")
    generations = [(tmp_path / f"eval_{how}" / "generations.jsonl").read_bytes() for how in ("fresh", "fork")]
    assert generations[0] == generations[1] and generations[0].count(b"\n") == 16
