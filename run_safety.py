"""Run safety for both training stages: no rank left hanging, no torn file, a clear exit code for every stop.

Not needed to read how REDI trains (training.py and the two scripts are): this is what a long run on a
shared cluster needs on top. One rank's failure stops every rank (`raise_on_every_rank`); checks of
--model, --output-dir and disk space run before any compute (`preflight`); checkpoints are installed
by atomic renames and pruned (`install_checkpoint`); a stop signal is a flag the step loop agrees on
(`StopSignals`); a worker ends when its torchrun launcher dies (`exit_if_launcher_dies`); metrics.jsonl
is repaired on resume (`truncate_metrics`); every early stop exits with its own code (`exit_stopped`).
The exit codes and the output layout: docs/training.md. Imports no other training module.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import transformers
from transformers import AutoModelForCausalLM

from cli import InputError
from data import load_tokenizer

# -----------------------------------------------------------------------------
# every rank stops, or none


def raise_on_every_rank(problems, error=InputError, message: str = "{}") -> None:
    """Raise `error(message)` on EVERY rank if any rank has a problem, so no rank is left waiting at the
    next collective until the process-group timeout. `problems`: this rank's, a string, a list of strings,
    or None (fine here); `message`'s {} receives all ranks' distinct problems, sorted, joined by '; '."""
    mine = [problems] if isinstance(problems, str) else list(problems or [])
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, mine)
    everyone = sorted({p for rank_problems in found for p in rank_problems})
    if everyone:
        raise error(message.format("; ".join(everyone)))


class NonFiniteError(RuntimeError):
    """A NaN/inf loss or gradient norm with --on-nonfinite stop: the last finite state is saved (exit 3)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous one is intact (exit 4)."""


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 reached a rank: the run saved its state and stops (exit EXIT_PREEMPTED)."""


EXIT_PREEMPTED = 75       # sysexits' EX_TEMPFAIL: "try again later", i.e. requeue with --resume
EXIT_LAUNCHER_GONE = 76
STOPS = (NonFiniteError, CheckpointError, Preempted)


def exit_stopped(e) -> None:
    """A run stopped by a non-finite step (exit 3), a failed save (exit 4) or a stop signal
    (exit EXIT_PREEMPTED, after saving): one line per rank."""
    rank_line(f"stopped: {e}")
    sys.exit({NonFiniteError: 3, CheckpointError: 4, Preempted: EXIT_PREEMPTED}[type(e)])


def rank_line(text: str) -> None:
    """One '[rank R] text' line on stderr in a single write(2): ranks share the launcher's stderr,
    and print() writes the text and its newline separately, so two ranks' lines could interleave
    ('...--resume[rank 0] stopped: ...'). A pipe write up to PIPE_BUF (4 KiB) bytes is atomic."""
    sys.stderr.flush()
    data = f"[rank {os.environ.get('RANK', 0)}] {text}\n".encode()
    while data:
        data = data[os.write(2, data):]


# -----------------------------------------------------------------------------
# signals and the launcher


class StopSignals:
    """SIGTERM and SIGUSR1 (schedulers' "you will be killed soon": SLURM --signal, spot instances)
    only raise a flag; the step loop all-reduces it with the step's statistics, so every rank learns
    of a signal that reached any rank at the same step, finishes that step, saves and exits
    EXIT_PREEMPTED. A second signal while saving is ignored: the save is what it asks for."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received = None
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name
            rank_line(f"{self.received}: will save after this step and exit")


def exit_if_launcher_dies(poll_seconds: float = 0.5) -> None:
    """Under torchrun, end this worker within a second of its launcher's death.

    torchrun starts each worker in a session of its own, so when torchrun itself is killed (kill -9,
    the OOM killer) nothing stops the workers: they would train on, orphaned, and write checkpoints
    into an output dir a user may already be resuming into. On Linux the kernel sends this process
    SIGKILL when its parent exits (prctl PR_SET_PDEATHSIG; torchrun starts workers from its main
    thread, the thread the kernel watches); that works even while a collective blocks the
    interpreter. A daemon thread also watches the parent pid (other systems; a launcher gone before
    the prctl). Either way nothing more is
    written; checkpoints are atomic, so the output dir stays consistent."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    launcher = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    def watch():
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        # one raw write, no flush of Python's streams: nothing may hold up the exit
        os.write(2, f"[rank {os.environ.get('RANK', '?')}] launcher (pid {launcher}) is gone; exiting\n".encode())
        os._exit(EXIT_LAUNCHER_GONE)
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


# -----------------------------------------------------------------------------
# checks before any compute


def preflight(args, load_config, model_class) -> None:
    """--model, --output-dir and disk space checked on every rank before any compute; a problem on any
    rank stops every rank (InputError) instead of leaving the others waiting at the first collective.
    `load_config(path, args)` and `model_class(config, path)` are training.py's, passed in so that this
    module imports no training module."""
    problems = []
    try:
        config = _check_model_dir(args, problems, load_config, model_class)
        if config is not None:
            _check_output_dir(args, config, problems)
    except OSError as e:
        problems.append(str(e))
    raise_on_every_rank(problems)


def _check_model_dir(args, problems, load_config, model_class):
    """--model is a model directory with a config and a chat-templated tokenizer; context fits."""
    if not os.path.isdir(args.model):
        problems.append(f"--model {args.model}: no such directory (a Hugging Face model dir, e.g. from "
                        f"`huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir DIR`)")
        return None
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        problems.append(f"--model {args.model}: no config.json; not a Hugging Face model directory")
        return None
    try:
        config = load_config(args.model, args)
    except (ValueError, KeyError) as e:  # transformers' words for an unknown model type or remote code
        problems.append(f"--model {args.model}: transformers {transformers.__version__} cannot read its config "
                        f"({(str(e).strip().splitlines() or [type(e).__name__])[0]}); remote code is not run")
        return None
    try:
        cls = model_class(config, args.model)
    except InputError as e:
        problems.append(str(e))
        return None
    with torch.device("meta"):
        head = cls(config).get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        problems.append(f"--model {args.model}: {cls.__name__} has an lm_head bias, which the chunked log-prob code "
                        f"does not add; models with a bias-free output layer only")
    if not getattr(load_tokenizer(args.model), "chat_template", None):
        problems.append(f"--model {args.model}: the tokenizer has no chat template (tokenizer_config.json "
                        f"'chat_template'); prompts and responses are formatted with it")
    context = config.max_position_embeddings
    if args.max_seq_len is not None and args.max_seq_len > context:
        problems.append(f"--max-seq-len {args.max_seq_len} exceeds the model's context {context} "
                        f"(--max-position-embeddings extends it)")
    return config


def checkpoint_bytes(config) -> int:
    """Estimated size of one checkpoint: fp32 export (4 B/param) + DCP fp32 weights (4) + AdamW (8)."""
    with torch.device("meta"):
        numel = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return 16 * numel


def _check_output_dir(args, config, problems):
    """--output-dir is writable and has room for one checkpoint."""
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        probe = os.path.join(args.output_dir, f".write-test-rank{dist.get_rank()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        problems.append(f"--output-dir {args.output_dir}: not writable ({e.strerror or e})")
        return
    need, free = checkpoint_bytes(config), shutil.disk_usage(args.output_dir).free
    if free < need:
        problems.append(f"--output-dir {args.output_dir}: {free / 2**30:.2f} GiB free, one checkpoint needs "
                        f"about {need / 2**30:.2f} GiB (16 bytes per parameter)")


# -----------------------------------------------------------------------------
# files that are whole or absent


def install_checkpoint(out_dir, ckpt_root, name, tmp):
    """Rename the complete temp dir to `name` and point `latest` and `final` at it.

    If `name` already exists (the same step saved again), `latest` is first pointed at the old
    copy under a new name, so it never names a directory that is missing."""
    final = os.path.join(ckpt_root, name)
    replaced = os.path.join(ckpt_root, f".replaced-{name}")
    if os.path.exists(final):
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
        atomic_write(os.path.join(ckpt_root, "latest"), os.path.basename(replaced))
    os.replace(tmp, final)
    atomic_write(os.path.join(ckpt_root, "latest"), name)
    atomic_symlink(os.path.join("checkpoints", name), os.path.join(out_dir, "final"))
    shutil.rmtree(replaced, ignore_errors=True)


def prune_checkpoints(ckpt_root, keep_last):
    """--keep-last N: delete all but the newest N step checkpoints (0: keep all)."""
    steps = sorted(d for d in os.listdir(ckpt_root) if d.startswith("step-"))
    if keep_last > 0:
        for d in steps[:-keep_last]:
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def atomic_write(path, text):
    """`text` into `path` through a synced temp file and a rename: readers see the old file or the new one."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def atomic_symlink(target, link):
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def truncate_metrics(path, start_step):
    """On resume keep only the lines up to the resumed step, so a restart never duplicates steps
    (a fresh run removes the file). A last line cut short by a kill mid-write is not JSON; it is dropped
    with a note."""
    if not start_step:
        if os.path.exists(path):
            os.remove(path)
        return
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise SystemExit(f"{path}:{number}: not JSON ({line[:60]!r}); only a cut-short last line is "
                                 f"repaired on --resume")
            print(f"{path}:{number}: dropped a cut-short last line (killed mid-write?)", flush=True)
            continue
        if record.get("step", 0) <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
        f.writelines(kept)
