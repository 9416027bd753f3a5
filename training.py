"""What both training stages share: arguments, distributed setup, FSDP2 model loading, schedule,
the end of an optimizer step, checkpoints and resume, metrics. train_sft.py (stage 1) and
train_redi.py (stage 2) are scripts with their step loops written out; this module is their library.

Outputs in --output-dir:
    metrics.jsonl              first line {"args", "versions", "world_size", "total_steps",
                               "resumed_from_step"} (again after each resume); then one object per
                               optimizer step, all-reduced over ranks: step, epoch, lr, loss,
                               optim/grad_norm, optim/update_norm, data/tokens, perf/tokens_per_s,
                               perf/step_time_s, perf/peak_mem_gb, perf/elapsed_s, and each stage's
                               own metrics. A skipped step (--on-nonfinite skip) has optim/skipped
                               true and the common and perf fields only.
    checkpoints/step-NNNNNNN/  a Hugging Face model dir (safetensors, config, tokenizer, generation
                               config) + train_state/ (DCP shards of model and optimizer) +
                               trainer_state.json + rng-rank*.pt; written to a temp dir and renamed
    checkpoints/latest         name of the newest complete checkpoint (replaced atomically)
    final -> checkpoints/step-N   the model at the end of training (symlink)

Exit codes (every rank agrees, none waits for the process-group timeout): 0 done; 1 invalid
arguments; 2 bad input found before any compute (data file, --model, --output-dir, disk space;
one line "PROG [rank R]: error: ..." per rank, no traceback); 3 a non-finite loss or gradient with
--on-nonfinite stop (the last finite state is saved first); 4 a checkpoint could not be written
(the previous checkpoint and `latest` are untouched); 75 stopped by SIGTERM or SIGUSR1 (preemption:
every rank finishes the step, the step is saved, `--resume` continues (bitwise on CPU); torchrun forwards
SIGTERM to its workers and gives them 30 s before SIGKILL, SIGUSR1 must reach the workers, e.g.
SLURM's `--signal=USR1@120` on an srun step); 76 the worker's torchrun launcher died (each worker
exits within a second, writing nothing more). Any other exit is a bug: it has a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import transformers
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

from cli import InputError, add_system_prompt_option
from data import StepSampler, load_tokenizer
from redi_loss import IGNORE_INDEX, token_logps_from_hidden

# -----------------------------------------------------------------------------
# arguments


def build_parser(description: str, lr: float | None, global_batch: int, epochs: float,
                 lr_help: str | None = None) -> argparse.ArgumentParser:
    """Flags shared by both stages; the defaults passed in are the stage's paper recipe."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="Hugging Face causal-LM directory (or hub id) to start from")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="override the context length; saved into the exported config (REDI: 32768)")
    g.add_argument("--rope-theta", type=float, default=None,
                   help="override the RoPE base; saved into the exported config (REDI: 300000)")
    g.add_argument("--attn-implementation", default="auto",
                   choices=["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"],
                   help="attention kernel passed to transformers; auto: flash_attention_2 on GPU when the "
                        "flash-attn package is installed, else sdpa")
    g.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each decoder layer in backward (less memory, ~30%% more compute)")
    g.add_argument("--mixed-precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compute dtype; fp32 master weights/optimizer always. auto: bf16 on GPU, fp32 on CPU")
    g.add_argument("--save-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="dtype of the exported model (checkpoints' training state stays fp32 for exact "
                        "resume); auto: bf16 when training computes in bf16, else fp32")
    g.add_argument("--logps-chunk-size", type=int, default=1024,
                   help="tokens per chunk when computing log-probs from hidden states (memory vs speed)")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="JSON Lines file (curated by data.py, or your own format)")
    g.add_argument("--max-seq-len", type=int, default=None,
                   help="longest allowed sequence; longer examples are an error (default: model context)")
    add_system_prompt_option(g)
    g.add_argument("--layout", default="auto", choices=["auto", "padded", "packed"],
                   help="micro-batch layout: padded rows, or packed (one row, positions restart per sequence; "
                        "flash-attn varlen when available, else each sequence through causal SDPA). auto: "
                        "packed with flash-attn, else padded. Neither ever builds a [T, T] mask")
    g.add_argument("--packed", action="store_const", const="packed", dest="layout",
                   help="same as --layout packed")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=lr,
                   help=lr_help or f"peak learning rate (paper: {lr:g})")
    g.add_argument("--epochs", type=float, default=epochs, help="passes over the data (fractions allowed)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (smoke runs)")
    g.add_argument("--global-batch-size", type=int, default=global_batch,
                   help=f"examples per optimizer step over all ranks (paper: {global_batch})")
    g.add_argument("--micro-batch-size", type=int, default=1,
                   help="examples per forward/backward on each rank; accumulation is derived")
    g.add_argument("--max-tokens-per-micro-batch", type=int, default=None,
                   help="form micro-batches by a token budget instead of --micro-batch-size")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warmup")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon")
    g.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm (paper: off)")
    g.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                   help="when any rank sees a NaN/inf loss or gradient: stop (after saving) or skip the step")
    g.add_argument("--seed", type=int, default=42, help="seed for data order and initialisation")
    g = p.add_argument_group("checkpointing and logging")
    g.add_argument("--output-dir", required=True, help="where metrics and checkpoints go")
    g.add_argument("--save-every", type=int, default=0, help="save a checkpoint every N steps (0: only at the end)")
    g.add_argument("--no-save", action="store_true",
                   help="write no checkpoint at all, not even the final model (benchmarks, smoke runs)")
    g.add_argument("--keep-last", type=int, default=0, help="delete older step checkpoints beyond the last N (0: keep all)")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from OUTPUT_DIR/checkpoints/latest, or from the given checkpoint dir")
    g.add_argument("--report-to", default=None, choices=["wandb", "tensorboard"],
                   help="also send metrics to wandb or tensorboard (must be installed)")
    g.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p


def validate_args(args) -> None:
    """Fail fast, before any process group or model, on options that cannot work."""
    problems = []
    if args.micro_batch_size < 1:
        problems.append(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    if args.global_batch_size < 1:
        problems.append(f"--global-batch-size must be >= 1, got {args.global_batch_size}")
    if not 0 <= args.warmup_ratio < 1:
        problems.append(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.epochs <= 0 and not args.max_steps:
        problems.append("--epochs must be > 0 (or give --max-steps)")
    if args.max_tokens_per_micro_batch is not None and args.max_tokens_per_micro_batch < 1:
        problems.append("--max-tokens-per-micro-batch must be >= 1")
    if args.lr is None or args.lr <= 0:
        problems.append(f"--lr must be > 0, got {args.lr}")
    if problems:
        raise SystemExit("invalid arguments:\n  " + "\n  ".join(problems))
    # Checked here, on every rank, so that a missing package cannot stop rank 0 alone later.
    if args.report_to == "wandb":
        _optional_import("wandb", "--report-to wandb")
    elif args.report_to == "tensorboard":
        _optional_import("torch.utils.tensorboard", "--report-to tensorboard (pip install tensorboard)")


# -----------------------------------------------------------------------------
# distributed helpers


def setup_distributed(device: str = "auto", timeout_minutes: float = 30.0):
    """(rank, world_size, device): nccl on GPU, gloo on CPU; under torchrun or as one process.

    Without torchrun a process group of one is still created (over an in-memory store, no port),
    so the same collectives run everywhere. `device`: "auto" (cuda when available), "cuda", "cpu".
    Used by train_sft.py, train_redi.py and evaluate.py alike.
    """
    exit_if_launcher_dies()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:        # launched by torchrun
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


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


def rank_line(text: str) -> None:
    """One '[rank R] text' line on stderr in a single write(2): ranks share the launcher's stderr,
    and print() writes the text and its newline separately, so two ranks' lines could interleave
    ('...--resume[rank 0] stopped: ...'). A pipe write up to PIPE_BUF (4 KiB) bytes is atomic."""
    sys.stderr.flush()
    data = f"[rank {os.environ.get('RANK', 0)}] {text}\n".encode()
    while data:
        data = data[os.write(2, data):]


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


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# model


class LogpsModel(torch.nn.Module):
    """A causal LM whose forward returns per-sequence response log-probs, not logits.

    forward(...) -> (sum_logps [S], num_tokens [S]): for each of the S sequences in the batch,
    sum_t log p(y_t | x, y_<t) over its supervised tokens (labels != IGNORE_INDEX) and how many
    there are. Log-probs come from the decoder's final hidden states and the output embedding, a
    chunk of tokens at a time (redi_loss.token_logps_from_hidden), so [T, V] logits never exist.
    FSDP2 wraps this module as the root, so the (tied) embedding is gathered inside its forward.

    Attention never gets a [T, T] mask (it would be 3.2 GB in bf16 at T = 40k):
      padded rows (data.collate pads on the RIGHT): under causal attention a real token never
        sees the pads after it, so no mask is passed and SDPA runs its causal (flash) kernel;
      packed row + flash-attn: the varlen kernel gets the boundaries (cu_seqlens, max length) that
        data.collate built once per micro-batch;
      packed row otherwise: each sequence goes through the decoder alone (causal, no mask), and
        every rank makes as many decoder calls per micro-batch (FSDP's collectives must pair up).
    """

    def __init__(self, lm, chunk_size: int):
        super().__init__()
        self.lm, self.chunk_size = lm, chunk_size
        self.logit_scale, self.softcap = head_of(lm.config)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, seq_index=None,
                num_sequences=None, cu_seqlens=None, max_length=None):
        decoder = self.lm.get_decoder()
        if seq_index is None:
            hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state              # [S, T, H]
        elif self.lm.config._attn_implementation.startswith("flash_attention"):
            # The boundaries go down to every layer as they are: no per-layer rebuild from position_ids.
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                             cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                             max_length_q=max_length, max_length_k=max_length).last_hidden_state
        else:
            # FSDP all-gathers every layer in each decoder call (and again in its backward), so every
            # rank must make as many calls as the rank with the most sequences in this micro-batch, or
            # the ranks' collectives mispair and hang. The extra calls run one token and add exactly 0.
            extra_calls = self.calls_to_match(num_sequences, input_ids.device)
            lengths = torch.bincount(seq_index, minlength=num_sequences).tolist()
            hidden = torch.cat([decoder(input_ids=part[None], use_cache=False).last_hidden_state[0]
                                for part in input_ids[0].split(lengths)])[None]                 # [1, T, H]
            for _ in range(extra_calls):
                hidden = hidden + 0.0 * decoder(input_ids=input_ids[:, :1], use_cache=False).last_hidden_state.sum()
        weight = self.lm.get_output_embeddings().weight
        per_token = token_logps_from_hidden(hidden, weight, labels, IGNORE_INDEX, self.chunk_size,
                                            self.logit_scale, self.softcap)                          # [B, T]
        valid = labels != IGNORE_INDEX
        valid[:, 0] = False                   # position 0 has no prediction
        if seq_index is None:                 # padded layout: one sequence per row
            return per_token.sum(-1), valid.sum(-1)
        # packed layout: one row [1, T]; seq_index [T] says which sequence each token belongs to
        sums = per_token.new_zeros(num_sequences).index_add(0, seq_index, per_token[0])
        counts = torch.zeros(num_sequences, dtype=torch.long, device=labels.device).index_add(
            0, seq_index, valid[0].long())
        return sums, counts

    @staticmethod
    def calls_to_match(num_sequences: int, device) -> int:
        """How many decoder calls this rank lacks to match the busiest rank (one all-reduce)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return 0
        most = torch.tensor([num_sequences], device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item()) - num_sequences


def flash_attn_import_error() -> str | None:
    """None if flash_attn imports; else why not, in one line. A wheel built for another torch or CUDA
    is common, and `find_spec` finds it all the same: it fails only on import (ImportError with an
    undefined symbol, OSError from a shared library), which would be inside from_pretrained."""
    if importlib.util.find_spec("flash_attn") is None:
        return "not installed"
    try:
        importlib.import_module("flash_attn")
    except Exception as e:  # noqa: BLE001 - any failure to import means: do not use it
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return None


def head_of(config) -> tuple[float, float | None]:
    """(logit_scale, softcap) of what the model's head does after lm_head, read from its config:
    logits = softcap(logit_scale * lm_head(hidden)). Granite divides by `logits_scaling`, Cohere
    multiplies by `logit_scale`, Gemma2/3 soft-cap at `final_logit_softcapping`; most families do
    none of these (1.0, None). A head doing anything else is caught by check_logps_match."""
    scale = 1.0
    if getattr(config, "logits_scaling", None):
        scale /= config.logits_scaling
    if getattr(config, "logit_scale", None) is not None:
        scale *= config.logit_scale
    return scale, getattr(config, "final_logit_softcapping", None)


def model_class(config, path):
    """The class AutoModelForCausalLM builds for `config`, or InputError: a model transformers has no
    causal-LM class for (an encoder, or one that needs trust_remote_code) cannot be trained here."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise InputError(f"--model {path}: model type '{config.model_type}' has no causal-LM class in transformers "
                         f"{transformers.__version__} (remote code is not run); use a decoder transformers ships") from None


def supports_attention(cls, implementation: str) -> bool:
    """Whether a transformers model class declares support for an attention implementation
    (`_supports_flash_attn` in transformers 5, `_supports_flash_attn_2` before)."""
    if implementation == "eager":
        return True
    if implementation == "sdpa":
        return bool(getattr(cls, "_supports_sdpa", False))
    return bool(getattr(cls, "_supports_flash_attn", False) or getattr(cls, "_supports_flash_attn_2", False))


def choose_kernels(args, device, config=None) -> str:
    """Resolve --attn-implementation auto and --layout auto (in place); returns a line for the log.

    auto: flash_attention_2 on CUDA when flash-attn imports, the model supports it and compute is bf16
    (flash-attn rejects fp32); else SDPA where the model supports it; else eager (Gemma2: SDPA cannot
    soft-cap attention scores). An explicit choice the model (`config`) does not support is an InputError."""
    cls = None if config is None else model_class(config, args.model)
    supported = (lambda impl: True) if cls is None else (lambda impl: supports_attention(cls, impl))
    bf16 = computes_in_bf16(args, device) if hasattr(args, "mixed_precision") else device.type == "cuda"
    if args.attn_implementation == "auto":
        flash_error = flash_attn_import_error() if device.type == "cuda" else "not on CUDA"
        if flash_error not in (None, "not installed", "not on CUDA"):
            print0(f"warning: flash_attn is installed but does not import ({flash_error}); using SDPA")
        usable = flash_error is None and bf16 and supported("flash_attention_2")
        args.attn_implementation = "flash_attention_2" if usable else "sdpa" if supported("sdpa") else "eager"
    elif not supported(args.attn_implementation):
        raise InputError(f"--attn-implementation {args.attn_implementation}: {cls.__name__} ({args.model}) does not "
                         f"support it; use --attn-implementation auto (picks what the model supports)")
    elif args.attn_implementation.startswith("flash_attention") and not bf16:
        raise InputError(f"--attn-implementation {args.attn_implementation} needs bf16 compute (flash-attn rejects fp32); "
                         f"use --mixed-precision bf16, or --attn-implementation sdpa with fp32")
    varlen = args.attn_implementation.startswith("flash_attention")
    if args.layout == "auto":
        # Packed without varlen runs the decoder once per sequence: faster for a few long, uneven
        # sequences, ~2x slower for many short ones (BENCHMARKS.md); padded rows need no mask either.
        args.layout = "packed" if varlen else "padded"
    args.packed = args.layout == "packed"
    how = ("flash-attn varlen" if varlen else "one causal SDPA call per sequence") if args.packed else "causal, no mask"
    return f"layout: {args.layout} ({how}), attention {args.attn_implementation}"


PROBE_TOKENS = 48           # check_logps_match's probe: cheap on a 7B model, long enough to exercise attention
PROBE_TOLERANCE = 1e-3      # nats per token, fp32; a head this code does not reproduce is off by ~0.1-1


def check_logps_match(lm, path) -> str | None:
    """Start-up self-check on the full fp32 model: the chunked log-probs (decoder hidden states, lm_head,
    head_of's scale and soft-cap) of a random probe equal the model's own `log_softmax(lm(ids).logits)`.
    None if they do, else why not (a head or decoder path no list of families foresaw: a bias, an extra
    norm or multiplier after the decoder, a custom head)."""
    scale, softcap = head_of(lm.config)
    weight = lm.get_output_embeddings().weight
    length = min(PROBE_TOKENS, getattr(lm.config, "max_position_embeddings", PROBE_TOKENS))
    ids = torch.randint(0, weight.shape[0], (1, length), generator=torch.Generator().manual_seed(0)).to(weight.device)
    with torch.no_grad():
        own = torch.log_softmax(lm(input_ids=ids, use_cache=False).logits.float(), -1)[0, :-1]     # [T-1, V]
        own = own.gather(-1, ids[0, 1:, None])[:, 0]
        hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        ours = token_logps_from_hidden(hidden, weight, ids, IGNORE_INDEX, 1024, scale, softcap)[0, 1:]
    diff = (ours - own).abs().max().item()
    if diff <= PROBE_TOLERANCE:
        return None
    return (f"--model {path}: {type(lm).__name__}'s own forward and the chunked log-probs this project trains on "
            f"differ by {diff:.3g} nats per token on a {length}-token probe (head read from the config: logit scale "
            f"{scale:g}, soft-cap {softcap}); the model does something after its decoder and lm_head that this code "
            f"does not reproduce, so training would use wrong log-probs. Supported: logits = "
            f"softcap(scale * lm_head(decoder(x))) with no lm_head bias")


def load_config(path, args):
    """The model config with the --max-position-embeddings / --rope-theta overrides applied.

    The reference model (DPO) gets the same overrides as the policy, so that at step 0 the two
    compute identical log-probs."""
    config = AutoConfig.from_pretrained(path)
    if args.max_position_embeddings is not None:
        config.max_position_embeddings = args.max_position_embeddings
    if args.rope_theta is not None:
        if isinstance(getattr(config, "rope_parameters", None), dict):   # transformers >= 5
            config.rope_parameters["rope_theta"] = args.rope_theta
        else:
            config.rope_theta = args.rope_theta
    config.use_cache = False
    return config


def load_model(path, args, device, trainable: bool = True):
    """Load a HF causal LM in fp32, wrap it as LogpsModel, and shard it with FSDP2.

    Each decoder layer is its own FSDP unit, then the root (embeddings, final norm, lm_head; tied
    embeddings are one parameter, sharded once). Master weights and optimizer state stay fp32;
    on GPU (or --mixed-precision bf16) the forward/backward run in bf16 with fp32 gradient
    reduction: at lr 1e-6, bf16 master weights would round most updates away.
    """
    config, rank, world = load_config(path, args), dist.get_rank(), dist.get_world_size()
    choose_kernels(args, device, config)          # resolved by prepare(); checks an explicit choice for this model
    if rank == 0 or world == 1:
        lm = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32,
                                                  attn_implementation=args.attn_implementation)
    else:   # only shapes: rank 0 broadcasts the weights after sharding, so a node holds one full copy
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                  attn_implementation=args.attn_implementation)
    # Every rank stops, or none: rank 0 alone holds the weights to check.
    problem = [check_logps_match(lm, path) if rank == 0 or world == 1 else None]
    if world > 1:
        dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise InputError(problem[0])
    if args.activation_checkpointing and trainable:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = LogpsModel(lm, args.logps_chunk_size)
    full_state = model.state_dict() if rank == 0 and world > 1 else {}
    bf16 = computes_in_bf16(args, device)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in lm.get_decoder().layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    # Losses are already divided by the GLOBAL token/pair count, so gradients must be SUMMED
    # over ranks; FSDP's default reduction averages (divides by the world size).
    if not hasattr(model, "set_force_sum_reduction_for_comms"):
        raise RuntimeError(f"torch {torch.__version__} lacks FSDPModule.set_force_sum_reduction_for_comms; "
                           f"this project needs torch>=2.8 (requirements.txt)")
    for module in [*lm.get_decoder().layers, model]:
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)    # plain SUM: gloo has no PREMUL_SUM
    if world > 1:
        broadcast_weights(model, full_state, device)
    if not trainable:
        model.eval().requires_grad_(False)
    else:
        model.train()
    return model, lm


def broadcast_weights(model, full_state: dict, device) -> None:
    """Rank 0's full (unsharded) state -> every rank's shards; buffers (e.g. RoPE's inv_freq, which no
    state dict holds) copied from rank 0. The other ranks' parameters are on the meta device until here."""
    if dist.get_rank() != 0:
        model.to_empty(device=device)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def preflight(args) -> None:
    """Checks before any compute, on every rank; a problem on any rank stops every rank (InputError)
    instead of leaving the others waiting at the first collective."""
    problems = []
    try:
        config = _check_model_dir(args, problems)
        if config is not None:
            _check_output_dir(args, config, problems)
    except OSError as e:
        problems.append(str(e))
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, problems)
    messages = sorted({p for rank_problems in found for p in rank_problems})
    if messages:
        raise InputError("; ".join(messages))


def _check_model_dir(args, problems):
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


def computes_in_bf16(args, device) -> bool:
    return args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and device.type == "cuda")


def export_dtype(args, device) -> torch.dtype:
    """--save-dtype resolved: the dtype the exported model is written in."""
    if args.save_dtype == "auto":
        return torch.bfloat16 if computes_in_bf16(args, device) else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[args.save_dtype]


def prepare(args):
    """Shared start of both stages: process group, checks, seeds, tokenizer, policy, optimizer."""
    rank, world_size, device = setup_distributed()
    preflight(args)
    print0(choose_kernels(args, device, load_config(args.model, args)))   # resolves --layout / --attn-implementation auto
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model)
    model, lm = load_model(args.model, args, device)
    if args.max_seq_len is None:
        args.max_seq_len = lm.config.max_position_embeddings
    optimizer = build_optimizer(model, args)
    return rank, world_size, device, tokenizer, model, lm, optimizer


# -----------------------------------------------------------------------------
# schedule and optimizer


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_ratio: float) -> float:
    """Linear warmup over the first warmup_ratio of steps, then linear decay to 0 at total_steps."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def total_training_steps(args, steps_per_epoch: int) -> int:
    total = math.ceil(args.epochs * steps_per_epoch)
    return min(total, args.max_steps) if args.max_steps else total


def build_optimizer(model, args):
    # fused: one kernel for the whole update on GPU; on CPU the foreach (multi-tensor) path
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps,
                             weight_decay=args.weight_decay, foreach=not fused, fused=fused)


def build_sampler(args, lengths, world_size, rank):
    return StepSampler(lengths, args.global_batch_size, world_size, rank, args.seed,
                       micro_batch_size=None if args.max_tokens_per_micro_batch else args.micro_batch_size,
                       max_tokens=args.max_tokens_per_micro_batch, balance=True)


# -----------------------------------------------------------------------------
# the end of an optimizer step


def local_shards(model) -> list[torch.Tensor]:
    """This rank's shard of every parameter (FSDP2 DTensors' local part), detached: no copy."""
    return [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in model.parameters()]


def update_norm(before: list[torch.Tensor], model) -> float:
    """Global norm of the parameter change ||theta_new - theta_old|| from copies of the shards taken before
    optimizer.step() (`before`, overwritten); one all-reduce."""
    torch._foreach_sub_(before, local_shards(model))         # before now holds -delta, shard by shard
    update_sq = torch.stack(torch._foreach_norm(before)).double().pow(2).sum()
    dist.all_reduce(update_sq)
    return math.sqrt(update_sq.item())


def nonfinite_message(step, stats) -> str:
    return (f"non-finite loss ({stats['loss']}) or gradient norm ({stats['grad_norm']}) at step {step}; "
            f"no optimizer step was taken")


class NonFiniteError(RuntimeError):
    pass


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 reached a rank: the run saved its state and stops (exit EXIT_PREEMPTED)."""


EXIT_PREEMPTED = 75       # sysexits' EX_TEMPFAIL: "try again later", i.e. requeue with --resume
EXIT_LAUNCHER_GONE = 76


class StepClock:
    """Wall time of the current step and of the whole run (carried over a resume)."""

    def __init__(self, state):
        self.elapsed0 = state.get("elapsed_s", 0.0) if state else 0.0
        self.run_start = self.step_start = time.time()

    def start_step(self):
        self.step_start = time.time()

    def step_seconds(self) -> float:
        return time.time() - self.step_start

    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.run_start


# -----------------------------------------------------------------------------
# checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous one is intact."""


def _agree(error: Exception | None, what: str) -> None:
    """Raise CheckpointError on EVERY rank if any rank failed `what`, so no rank is left waiting
    at the next collective until the process-group timeout."""
    failed = [None] * dist.get_world_size()
    dist.all_gather_object(failed, None if error is None else f"{type(error).__name__}: {error}")
    problems = [f"rank {r}: {e}" for r, e in enumerate(failed) if e is not None]
    if problems:
        raise CheckpointError(f"{what} failed ({'; '.join(problems)}); the previous checkpoint is untouched")


def save_checkpoint(out_dir, step, model, lm, optimizer, tokenizer, args, extra=None, with_state=True):
    """Write checkpoints/step-N atomically: HF export + (optionally) resumable training state.

    Everything goes to a temp dir first; only a complete dir is renamed into place, and the
    `latest` pointer is replaced with os.replace, so a crash mid-save never leaves a corrupt
    latest checkpoint. A failure on any rank (disk full, read-only) raises CheckpointError on
    every rank; re-saving an existing step moves the old copy aside before the new one takes its
    name, and `latest` names a complete checkpoint at every moment.
    """
    ckpt_root = os.path.join(out_dir, "checkpoints")
    name = f"step-{step:07d}"
    final, tmp = os.path.join(ckpt_root, name), os.path.join(ckpt_root, f".tmp-{name}")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error = None
    if is_main():
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            # Tied weights (Qwen2.5-1.5B ties lm_head to embed_tokens) are saved once, as HF does.
            unique = {n for n, _ in lm.named_parameters()} | {n for n, _ in lm.named_buffers()}
            dtype = export_dtype(args, next(model.parameters()).device)
            export = {k.removeprefix("lm."): v.to(dtype) if v.is_floating_point() else v
                      for k, v in full.items() if k.removeprefix("lm.") in unique}
            lm.save_pretrained(tmp, state_dict=export)
            config = copy.deepcopy(lm.config)
            config.dtype = dtype               # save_pretrained records the fp32 master weights' dtype
            save_config(config, tmp)
            tokenizer.save_pretrained(tmp)
        except OSError as e:
            error = e
    del full
    _agree(error, f"saving checkpoint {name} (model export)")
    if with_state:
        try:
            dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
                     checkpoint_id=os.path.join(tmp, "train_state"))
            torch.save(_rng_state(), os.path.join(tmp, f"rng-rank{dist.get_rank()}.pt"))
        except (OSError, dcp.api.CheckpointException) as e:
            error = e
        _agree(error, f"saving checkpoint {name} (training state)")
    if is_main():
        try:
            _atomic_write(os.path.join(tmp, "trainer_state.json"),
                          json.dumps({"step": step, "args": vars(args), **(extra or {})}, indent=1))
            _install_checkpoint(out_dir, ckpt_root, name, tmp)
            _prune(ckpt_root, args.keep_last)
        except OSError as e:
            error = e
    _agree(error, f"saving checkpoint {name} (finalising)")
    return final


def save_config(config, directory) -> None:
    """config.json, with RoPE's theta also at the top level: transformers >= 5 writes it only inside
    `rope_parameters`, which transformers 4.x (and engines that follow its schema) do not read; they
    would silently fall back to theta 10000. Both places hold the same value."""
    config.save_pretrained(directory)
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    theta = (saved.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and saved.get("rope_theta") != theta:
        saved["rope_theta"] = theta
        _atomic_write(path, json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _install_checkpoint(out_dir, ckpt_root, name, tmp):
    """Rename the complete temp dir to `name` and point `latest` and `final` at it.

    If `name` already exists (the same step saved again), `latest` is first pointed at the old
    copy under a new name, so it never names a directory that is missing."""
    final = os.path.join(ckpt_root, name)
    replaced = os.path.join(ckpt_root, f".replaced-{name}")
    if os.path.exists(final):
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
        _atomic_write(os.path.join(ckpt_root, "latest"), os.path.basename(replaced))
    os.replace(tmp, final)
    _atomic_write(os.path.join(ckpt_root, "latest"), name)
    _atomic_symlink(os.path.join("checkpoints", name), os.path.join(out_dir, "final"))
    shutil.rmtree(replaced, ignore_errors=True)


class Checkpoints:
    """This run's checkpoints: save(step) on demand; save_if_due(step) every --save-every steps and the
    last one; for_stop(step) and for_nonfinite(step, stats) save what a stop keeps and say what it saved."""

    def __init__(self, args, model, lm, optimizer, tokenizer, total_steps, clock):
        self.args, self.model, self.lm, self.optimizer, self.tokenizer = args, model, lm, optimizer, tokenizer
        self.total_steps, self.clock = total_steps, clock

    def save(self, step, extra=None):
        return save_checkpoint(self.args.output_dir, step, self.model, self.lm, self.optimizer, self.tokenizer,
                               self.args, {"elapsed_s": self.clock.elapsed(), **(extra or {})})

    def is_save_step(self, step: int) -> bool:
        """The last step is saved, and every --save-every N steps; nothing with --no-save."""
        every = self.args.save_every
        return not self.args.no_save and (step == self.total_steps or (bool(every) and step % every == 0))

    def save_if_due(self, step: int) -> None:
        if self.is_save_step(step):
            self.save(step)

    def for_stop(self, step: int) -> str:
        """After a stop signal that reached any rank, following step `step` (1-based count of steps done,
        already saved if due): that step saved; returns the stop line. --resume continues with the next."""
        if self.args.no_save:
            return f"stop signal after step {step}; --no-save: nothing saved"
        if not self.is_save_step(step):
            self.save(step)
        return f"stop signal after step {step}; saved checkpoint step-{step:07d}; continue with --resume"

    def for_nonfinite(self, step, stats) -> str:
        """--on-nonfinite stop: the last finite state (no update was applied) saved; returns the stop line."""
        message = nonfinite_message(step, stats)
        if self.args.no_save:
            return message + " (--no-save: nothing saved)"
        self.save(step, {"stopped": message})
        return message + f"; saved the last finite state as checkpoint step-{step:07d}"


def resume(args, model, optimizer) -> dict | None:
    """--resume: restore model, optimizer and RNG from the checkpoint; its trainer_state, or None."""
    path = resolve_resume(args)
    if path is None:
        return None
    state = load_checkpoint(path, model, optimizer)
    print0(f"resumed from {path} at step {state['step']}")
    return state


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore model, optimizer and this rank's RNG from a checkpoint dir; returns trainer_state."""

    if not os.path.isdir(os.path.join(path, "train_state")):
        raise InputError(f"--resume {path}: no train_state/ to resume from (not a checkpoint dir, or a "
                         f"model-only export)")
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=os.path.join(path, "train_state"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    rng_file = os.path.join(path, f"rng-rank{dist.get_rank()}.pt")
    if os.path.exists(rng_file):
        _set_rng_state(torch.load(rng_file, weights_only=False))
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f)


def resolve_resume(args) -> str | None:
    if args.resume is None:
        return None
    if args.resume != "latest":
        return args.resume
    pointer = os.path.join(args.output_dir, "checkpoints", "latest")
    if not os.path.exists(pointer):
        raise InputError(f"--resume: no {pointer}; nothing to resume from (no checkpoint was saved yet)")
    with open(pointer) as f:
        return os.path.join(args.output_dir, "checkpoints", f.read().strip())


def _rng_state():

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _atomic_symlink(target, link):
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _prune(ckpt_root, keep_last):
    steps = sorted(d for d in os.listdir(ckpt_root) if d.startswith("step-"))
    if keep_last > 0:
        for d in steps[:-keep_last]:
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


# -----------------------------------------------------------------------------
# metrics


class Metrics:
    """metrics.jsonl on rank 0 (+ optional wandb/tensorboard) and a tqdm bar when available."""

    def __init__(self, args, total_steps, start_step, clock, device):
        self.clock, self.device = clock, device
        world_size = dist.get_world_size()
        self.enabled = is_main()
        self.bar = self.writer = self.wandb = None
        if not self.enabled:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        self.path = os.path.join(args.output_dir, "metrics.jsonl")
        _truncate_metrics(self.path, start_step)
        self.file = open(self.path, "a")
        self._write({"args": vars(args), "versions": library_versions(), "world_size": world_size,
                     "total_steps": total_steps, "resumed_from_step": start_step or None})
        if args.report_to == "wandb":
            self.wandb = _optional_import("wandb", "--report-to wandb")
            self.wandb.init(config=vars(args), dir=args.output_dir)
        elif args.report_to == "tensorboard":
            tb = _optional_import("torch.utils.tensorboard", "--report-to tensorboard (pip install tensorboard)")
            self.writer = tb.SummaryWriter(os.path.join(args.output_dir, "tensorboard"))
        # Progress: a tqdm bar on a terminal; otherwise (logs, pipes, no tqdm) ~20 plain lines per run.
        self.print_every = 0 if args.no_progress else max(1, total_steps // 20)
        if not args.no_progress and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm
                self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self.total_steps = total_steps

    def _write(self, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def log_step(self, step, epoch, lr, stats, fields) -> None:
        """One optimizer step's line: the stage's `fields` between the common ones and the perf ones."""
        seconds = self.clock.step_seconds()
        self.log({"step": step, "epoch": epoch, "lr": lr, "loss": stats["loss"], "optim/grad_norm": stats["grad_norm"],
                  **fields, "data/tokens": int(stats["tokens"]), "perf/tokens_per_s": stats["tokens"] / seconds,
                  "perf/step_time_s": seconds, "perf/peak_mem_gb": peak_memory_gb(self.device),
                  "perf/elapsed_s": self.clock.elapsed()})

    def log(self, record):
        if not self.enabled:
            return
        self._write(record)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb:
            self.wandb.log(numbers, step=record["step"])
        if self.writer:
            for k, v in numbers.items():
                self.writer.add_scalar(k, v, record["step"])
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record.get('perf/tokens_per_s', 0):.0f}")
        elif self.print_every and (record["step"] % self.print_every == 0 or record["step"] == self.total_steps):
            print(f"step {record['step']}/{self.total_steps}  loss {record['loss']:.4f}  "
                  f"{record.get('perf/tokens_per_s', 0):.0f} tokens/s  {record.get('perf/elapsed_s', 0):.0f}s", flush=True)

    def close(self):
        if not self.enabled:
            return
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.close()
        if self.wandb:
            self.wandb.finish()
        self.file.close()


def _truncate_metrics(path, start_step):
    """On resume keep only the lines up to the resumed step, so a restart never duplicates steps.

    A last line cut short by a kill mid-write is not JSON; it is dropped with a note."""
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
            print0(f"{path}:{number}: dropped a cut-short last line (killed mid-write?)")
            continue
        if record.get("step", 0) <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
        f.writelines(kept)


def _optional_import(module, what):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"{what} needs the optional package '{module.split('.')[0]}': {e}") from e


def library_versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20    # Linux reports KiB


# -----------------------------------------------------------------------------
# how a run ends early

STOPS = (NonFiniteError, CheckpointError, Preempted)


def exit_stopped(e) -> None:
    """A run stopped by a non-finite step (exit 3), a failed save (exit 4) or a stop signal
    (exit EXIT_PREEMPTED, after saving): one line per rank."""
    rank_line(f"stopped: {e}")
    sys.exit({NonFiniteError: 3, CheckpointError: 4, Preempted: EXIT_PREEMPTED}[type(e)])
