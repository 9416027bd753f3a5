"""cli.run_then_exit: entry points end without interpreter teardown, with main's exit status.

Why: gloo's worker threads can release a finished collective's tensors while Python finalises,
which aborts the process (SIGABRT) after a successful run; see cli.run_then_exit."""
import subprocess
import sys
import textwrap

from conftest import ROOT

import pytest


def run_snippet(body):
    script = textwrap.dedent(f"""
        import atexit, sys
        sys.path.insert(0, {str(ROOT)!r})
        from cli import run_then_exit
        atexit.register(lambda: print("teardown ran", flush=True))
        def main():
        {textwrap.indent(textwrap.dedent(body), '    ')}
        run_then_exit(main)
        print("not reached", flush=True)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("body, code, stderr", [
    ("print('done')", 0, ""),
    ("print('done'); sys.exit(0)", 0, ""),
    ("print('done'); sys.exit(4)", 4, ""),
    ("print('done'); sys.exit('stopped: bad input')", 1, "stopped: bad input\n"),
])
def test_exit_status_is_mains_and_teardown_is_skipped(body, code, stderr):
    proc = run_snippet(body)
    assert proc.returncode == code
    assert proc.stdout == "done\n"            # flushed; no atexit handler, nothing after run_then_exit
    assert proc.stderr == stderr


def test_an_uncaught_exception_still_shows_its_traceback():
    proc = run_snippet("raise RuntimeError('a real bug')")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a real bug" in proc.stderr


@pytest.mark.parametrize("script", ["train_sft.py", "train_redi.py", "evaluate.py"])
def test_distributed_entry_points_exit_through_it(script):
    tail = (ROOT / script).read_text().rstrip().splitlines()[-1].strip()
    assert tail == "run_then_exit(main)"
