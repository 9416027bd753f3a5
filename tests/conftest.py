"""Shared offline fixtures: a tiny chat-templated tokenizer and a tiny Qwen2 model dir.

Both are built with `tiny_model.py` (the same builder the demo uses) and saved with
`save_pretrained`, so every test loads them through the real `--model DIR` code path.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BENCHMARKS = SHARED / "benchmarks"
sys.path.insert(0, str(ROOT))

# Keep every test offline and quiet, single-threaded per process (CI has 2 cores).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer Qwen2 (tied embeddings) plus tokenizer, as a model dir."""
    import tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    return Path(tiny_model.save_tiny(str(out), seed=0))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def run_script(args, cwd=ROOT, timeout=600, env=None, check=True):
    """Run a repo script in a subprocess (as a user would); returns CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def torchrun(nproc, script, *args, **kwargs):
    """`torchrun --nproc_per_node nproc script args...` on CPU (gloo), standalone rendezvous."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / script), *map(str, args)]
    return run_script(cmd, **kwargs)
