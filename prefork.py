"""Run the project's scripts in processes forked from one that has already imported their libraries.

replicate.py runs ~700 short jobs (a stage-2 run ~21 s, a validation eval ~2 s, forked). As fresh
interpreters each one spends ~3 s importing torch, transformers, torch.distributed.checkpoint
and sympy before its first line of work: about a tenth of the whole comparison's compute. Here
the launching process imports them once (`preload`), and each job is an `os.fork()` of it that
runs the script as `__main__` (`runpy.run_path`), as `python script.py args` would:

    proc = ForkedScript([sys.executable, "evaluate.py", "--model", ...], cwd, env, log_path)
    while proc.poll() is None: ...

What makes a forked job equal to a fresh one (tests/test_prefork.py checks the outputs bitwise):
- the launcher imports under the jobs' environment (libgomp reads OMP_NUM_THREADS, huggingface_hub
  HF_HUB_OFFLINE, when loaded) and only imports: it never runs a torch op, so no OpenMP pool or
  other thread exists to be lost across the fork (`preload` checks the process has one thread),
  and torch's default RNG is in its import-time state, as in a fresh interpreter;
- the child sets the job's environment, working directory, argv and stdout/stderr (both into the
  log) itself, and torch's thread count from the job's OMP_NUM_THREADS;
- SystemExit gives the exit status (a string is printed, status 1); an exception prints its
  traceback into the log, status 1; atexit handlers run and the streams are flushed, then
  os._exit: the child never returns into the launcher's stack.

POSIX only (fork). Meant for CPU jobs: a CUDA context does not survive a fork, so the launcher must
never create one (importing torch does not).
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
           "curate", "toy_task", "tiny_model")   # not train_sft / train_redi: scripts only run, never imported
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
    """`subprocess.Popen([sys.executable, script, *args], cwd=, env=, stdout=log, stderr=STDOUT)`, by fork."""

    def __init__(self, argv, cwd, env, log_path):
        if len(argv) < 2 or argv[0] != sys.executable or not argv[1].endswith(".py"):
            raise ValueError(f"prefork runs '{sys.executable} script.py ...', got {argv[:2]}")
        self.args, self.returncode = [str(a) for a in argv], None
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()   # else the child would write this process's buffered output again
        sys.stderr.flush()
        # a signal between fork and the child's own handlers would run this process's handlers in the child
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
        self.pid = os.fork()
        if self.pid == 0:
            os._exit(_run_child(self.args[1], self.args[2:], cwd, env, log_fd, blocked))
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


def _run_child(script, args, cwd, env, log_fd, sigmask) -> int:
    """In the forked child: become `python script args` and return its exit status (never raise)."""
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
        script = os.path.abspath(script)
        sys.argv = [script, *args]
        sys.path[0] = os.path.dirname(script)
        if "OMP_NUM_THREADS" in env and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
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
