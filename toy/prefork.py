"""Run the project's scripts in processes forked from one that has already imported their libraries.

toy/replicate.py runs ~700 short jobs (a stage-2 run ~21 s, a validation eval ~2 s); as fresh interpreters
each would spend ~3 s importing torch, transformers and sympy, about a tenth of the comparison's compute.
Here the launcher imports them once (`preload`), and each job is an `os.fork()` of it that runs the
script as `__main__`, as `python script.py args` or `python -m toy.module args` would:

    prefork.preload()
    proc = ForkedScript([sys.executable, "evaluate.py", "--model", ...], cwd, env, log_path)
    proc = ForkedScript([sys.executable, "-m", "toy.toy_task", "--out-dir", ...], cwd, env, log_path)
    while proc.poll() is None: ...

What makes a forked job equal to a fresh one (tests/test_prefork.py checks the outputs bitwise):
docs/replication.md. POSIX only (fork); CPU jobs only: a CUDA context does not survive a fork, so
the launcher must never create one (importing torch does not).
"""
from __future__ import annotations

import atexit
import importlib
import os
import runpy
import signal
import sys
import time
import traceback

# What the jobs import, and the modules they import lazily (transformers resolves its model
# classes on first use; evaluate.py and the grader import inside functions).
PRELOAD = ("numpy", "torch", "torch.distributed", "torch.distributed.checkpoint", "torch.distributed.fsdp",
           "safetensors.torch", "tokenizers", "transformers", "transformers.models.qwen2.modeling_qwen2",
           "transformers.models.qwen2.configuration_qwen2", "transformers.generation",
           "transformers.integrations.sdpa_attention", "transformers.tokenization_utils_fast", "sympy",
           "sympy.parsing.sympy_parser", "tqdm",
           "cli", "data", "token_cache", "redi_loss", "run_safety", "training", "sampler", "grader", "evaluate", "dpo_reference",
           "curate", "toy.toy_task", "toy.tiny_model")   # not train_sft / train_redi: scripts only run, never imported
_CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD)
_LAZY_ATTRIBUTES = ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast",
                    "GenerationConfig", "Qwen2Config", "Qwen2ForCausalLM")


def preload() -> float:
    """Import PRELOAD (and resolve transformers' lazy classes) in this process; seconds taken."""
    t = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    transformers = sys.modules["transformers"]
    for name in _LAZY_ATTRIBUTES:
        getattr(transformers, name)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads != 1:   # a thread (and any lock it holds) would not exist in the children
        raise RuntimeError(f"prefork: {threads} threads after preloading; forking from here is not safe")
    return time.perf_counter() - t


class ForkedScript:
    """`subprocess.Popen([sys.executable, script, *args], cwd=, env=, stdout=log, stderr=STDOUT)`, by fork;
    `[sys.executable, "-m", module, *args]` runs a module (`python -m toy.plot ...`)."""

    def __init__(self, argv, cwd, env, log_path):
        argv = [str(a) for a in argv]
        module = len(argv) >= 3 and argv[1] == "-m"
        if len(argv) < 2 or argv[0] != sys.executable or not (module or argv[1].endswith(".py")):
            raise ValueError(f"prefork runs '{sys.executable} script.py ...' or '{sys.executable} -m module ...', "
                             f"got {argv[:3]}")
        self.args, self.returncode = argv, None
        target, args = (("-m", argv[2]), argv[3:]) if module else ((None, argv[1]), argv[2:])
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()   # else the child would write this process's buffered output again
        sys.stderr.flush()
        # a signal between fork and the child's own handlers would run this process's handlers in the child
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
        self.pid = os.fork()
        if self.pid == 0:
            os._exit(_run_child(target, args, cwd, env, log_fd, blocked))
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(log_fd)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self):
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _run_child(target, args, cwd, env, log_fd, sigmask) -> int:
    """In the forked child: become `python script args` (target (None, script)) or `python -m module args`
    (target ("-m", module)) and return its exit status (never raise)."""
    code = 1
    try:
        for signum in _CHILD_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        os.close(log_fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        if "OMP_NUM_THREADS" in env and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
        how, name = target
        if how == "-m":
            sys.modules.pop(name, None)   # a fresh `python -m` runs it as __main__ only, never imported too
            sys.argv = [name, *args]      # run_module puts the module's file in argv[0], as `python -m` does
            sys.path[0] = os.getcwd()     # `python -m` searches the working directory first
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(name)
            sys.argv = [script, *args]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
            code = code or 1
    return code
