"""What both training stages share: arguments, distributed setup, the FSDP2 policy, schedule, checkpoints, metrics.

train_sft.py (stage 1) and train_redi.py (stage 2) are scripts with their step loops written out; this
module is their library, in the order a run meets it: arguments -> process group -> model (LogpsModel:
per-sequence log-probs instead of logits; attention kernel choice; FSDP2 sharding; rank 0's weights
broadcast) -> `prepare` (all of that as one Setup) -> lr schedule and optimizer -> update norm ->
checkpoint save and resume (with RNG) -> metrics. What keeps a long multi-rank run safe (every rank
stopping together, preflight checks, atomic file installs, stop signals, exit codes) is run_safety.py.
Outputs, metric keys and exit codes: docs/training.md.
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
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import transformers
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

import run_safety
from cli import InputError, add_system_prompt_option
from data import BatchOrder, load_tokenizer
from redi_loss import IGNORE_INDEX, token_logps_from_hidden
from run_safety import CheckpointError, raise_on_every_rank

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
    run_safety.exit_if_launcher_dies()
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

    forward(...) -> (sum_logps [S], lengths [S]): for each of the S sequences in the batch,
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

    def forward(self, input_ids, labels, position_ids=None, seq_index=None,
                num_sequences=None, cu_seqlens=None, max_length=None):
        if seq_index is None:                 # padded rows: causal attention, no mask (class docstring)
            hidden = self.lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state    # [S, T, H]
        else:
            hidden = self.packed_hidden(input_ids, position_ids, seq_index, num_sequences, cu_seqlens, max_length)
        weight = self.lm.get_output_embeddings().weight
        per_token = token_logps_from_hidden(hidden, weight, labels, IGNORE_INDEX, self.chunk_size,
                                            self.logit_scale, self.softcap)                          # [S, T]
        valid = labels != IGNORE_INDEX
        valid[:, 0] = False                   # position 0 has no prediction
        if seq_index is None:                 # padded layout: one sequence per row
            return per_token.sum(-1), valid.sum(-1)
        # packed layout: one row [1, T]; seq_index [T] says which sequence each token belongs to
        sums = per_token.new_zeros(num_sequences).index_add(0, seq_index, per_token[0])
        counts = torch.zeros(num_sequences, dtype=torch.long, device=labels.device).index_add(
            0, seq_index, valid[0].long())
        return sums, counts

    def packed_hidden(self, input_ids, position_ids, seq_index, num_sequences, cu_seqlens, max_length):
        """The decoder's hidden states [1, T, H] of a packed row, attention kept within each sequence."""
        decoder = self.lm.get_decoder()
        if self.lm.config._attn_implementation.startswith("flash_attention"):
            # The boundaries go down to every layer as they are: no per-layer rebuild from position_ids.
            return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                           cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                           max_length_q=max_length, max_length_k=max_length).last_hidden_state
        # FSDP all-gathers every layer in each decoder call (and again in its backward), so every
        # rank must make as many calls as the rank with the most sequences in this micro-batch, or
        # the ranks' collectives mispair and hang. The extra calls run one token and add exactly 0.
        extra_calls = self.calls_to_match(num_sequences, input_ids.device)
        lengths = torch.bincount(seq_index, minlength=num_sequences).tolist()
        hidden = torch.cat([decoder(input_ids=part[None], use_cache=False).last_hidden_state[0]
                            for part in input_ids[0].split(lengths)])[None]                 # [1, T, H]
        for _ in range(extra_calls):
            hidden = hidden + 0.0 * decoder(input_ids=input_ids[:, :1], use_cache=False).last_hidden_state.sum()
        return hidden

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


class Kernels(NamedTuple):
    """--attn-implementation and --layout as they run: "auto" resolved for this device and model."""
    attn_implementation: str
    layout: str                       # "padded" | "packed"

    @property
    def packed(self) -> bool:
        return self.layout == "packed"

    def describe(self) -> str:
        varlen = self.attn_implementation.startswith("flash_attention")
        how = ("flash-attn varlen" if varlen else "one causal SDPA call per sequence") if self.packed else "causal, no mask"
        return f"layout: {self.layout} ({how}), attention {self.attn_implementation}"


def choose_kernels(args, device, config=None) -> Kernels:
    """--attn-implementation and --layout for this device and model (`config`); args is left as parsed.

    auto: flash_attention_2 on CUDA when flash-attn imports, the model supports it and compute is bf16
    (flash-attn rejects fp32); else SDPA where the model supports it; else eager (Gemma2: SDPA cannot
    soft-cap attention scores). An explicit choice the model does not support is an InputError."""
    cls = None if config is None else model_class(config, args.model)
    supported = (lambda impl: True) if cls is None else (lambda impl: supports_attention(cls, impl))
    bf16 = computes_in_bf16(args, device) if hasattr(args, "mixed_precision") else device.type == "cuda"
    attn = args.attn_implementation
    if attn == "auto":
        flash_error = flash_attn_import_error() if device.type == "cuda" else "not on CUDA"
        if flash_error not in (None, "not installed", "not on CUDA"):
            print0(f"warning: flash_attn is installed but does not import ({flash_error}); using SDPA")
        usable = flash_error is None and bf16 and supported("flash_attention_2")
        attn = "flash_attention_2" if usable else "sdpa" if supported("sdpa") else "eager"
    else:
        check_attention(attn, cls, args.model, bf16)
    # Packed without varlen runs the decoder once per sequence: faster for a few long, uneven
    # sequences, ~2x slower for many short ones (BENCHMARKS.md); padded rows need no mask either.
    layout = ("packed" if attn.startswith("flash_attention") else "padded") if args.layout == "auto" else args.layout
    return Kernels(attn, layout)


def check_attention(attn: str, cls, path, bf16: bool) -> None:
    """InputError unless model class `cls` (None: not known yet) supports attention `attn`, with bf16 for flash-attn."""
    if cls is not None and not supports_attention(cls, attn):
        raise InputError(f"--attn-implementation {attn}: {cls.__name__} ({path}) does not "
                         f"support it; use --attn-implementation auto (picks what the model supports)")
    if attn.startswith("flash_attention") and not bf16:
        raise InputError(f"--attn-implementation {attn} needs bf16 compute (flash-attn rejects fp32); "
                         f"use --mixed-precision bf16, or --attn-implementation sdpa with fp32")


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


def load_model(path, args, device, kernels: Kernels | None = None, trainable: bool = True):
    """Load a HF causal LM in fp32, wrap it as LogpsModel, and shard it with FSDP2.

    Each decoder layer is its own FSDP unit, then the root (embeddings, final norm, lm_head; tied
    embeddings are one parameter, sharded once). Master weights and optimizer state stay fp32;
    on GPU (or --mixed-precision bf16) the forward/backward run in bf16 with fp32 gradient
    reduction: at lr 1e-6, bf16 master weights would round most updates away. `kernels`: prepare()'s
    choice (DPO's reference model runs the policy's), checked for this model; None: chosen here.
    """
    config, rank, world = load_config(path, args), dist.get_rank(), dist.get_world_size()
    if kernels is None:
        kernels = choose_kernels(args, device, config)
    else:
        check_attention(kernels.attn_implementation, model_class(config, path), path, computes_in_bf16(args, device))
    if rank == 0 or world == 1:
        lm = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32,
                                                  attn_implementation=kernels.attn_implementation)
    else:   # only shapes: rank 0 broadcasts the weights after sharding, so a node holds one full copy
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                  attn_implementation=kernels.attn_implementation)
    # rank 0 alone holds the weights to check; every rank stops, or none
    raise_on_every_rank(check_logps_match(lm, path) if rank == 0 else None)
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
    elif trainable:     # one rank: keep the gathered parameters from forward to backward (see sync_gradients)
        model.set_reshard_after_forward(False)
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


def sync_gradients(model, last: bool) -> None:
    """One rank: FSDP2's gathers and reduce-scatters are copies, so the step's micro-batches share one gather
    and reduce-scatter once, at the `last` (bitwise the same step; docs/training.md). More ranks: each does."""
    if dist.get_world_size() == 1:
        model.set_requires_gradient_sync(last)
        model.set_reshard_after_backward(last)


def computes_in_bf16(args, device) -> bool:
    return args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and device.type == "cuda")


def export_dtype(args, device) -> torch.dtype:
    """--save-dtype resolved: the dtype the exported model is written in."""
    if args.save_dtype == "auto":
        return torch.bfloat16 if computes_in_bf16(args, device) else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[args.save_dtype]


@dataclass
class Setup:
    """What prepare() builds for a stage, and the options it settled for this device and model."""
    rank: int
    world_size: int
    device: torch.device
    tokenizer: object
    model: LogpsModel               # FSDP2-sharded; forward -> per-sequence summed log-probs, token counts
    lm: torch.nn.Module             # the Hugging Face model inside it (config, export)
    optimizer: torch.optim.Optimizer
    kernels: Kernels                # --attn-implementation / --layout, auto resolved
    max_seq_len: int                # --max-seq-len, default the model's context

    def saved_args(self, args) -> dict:
        """The run's options as metrics.jsonl and every checkpoint record them: vars(args), the settled ones
        in place of "auto" / None, and the layout's `packed` bool last."""
        return {**vars(args), "attn_implementation": self.kernels.attn_implementation, "layout": self.kernels.layout,
                "max_seq_len": self.max_seq_len, "packed": self.kernels.packed}


def prepare(args) -> Setup:
    """Shared start of both stages: process group, checks, seeds, tokenizer, policy, optimizer."""
    rank, world_size, device = setup_distributed()
    run_safety.preflight(args, load_config, model_class)
    kernels = choose_kernels(args, device, load_config(args.model, args))
    print0(kernels.describe())
    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)    # nothing here draws from it, but checkpoints save its state: same bytes
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model)
    model, lm = load_model(args.model, args, device, kernels)
    optimizer = build_optimizer(model, args)
    max_seq_len = lm.config.max_position_embeddings if args.max_seq_len is None else args.max_seq_len
    return Setup(rank, world_size, device, tokenizer, model, lm, optimizer, kernels, max_seq_len)


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


def build_batch_order(args, lengths, world_size, rank) -> BatchOrder:
    """Which examples each rank sees in each step (data.BatchOrder), as the options ask."""
    return BatchOrder(lengths, args.global_batch_size, world_size, rank, args.seed,
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


# -----------------------------------------------------------------------------
# checkpoints


def _raise_if_any_rank_failed(error: Exception | None, what: str) -> None:
    """CheckpointError on EVERY rank if any rank failed `what` (run_safety.raise_on_every_rank)."""
    raise_on_every_rank(None if error is None else f"rank {dist.get_rank()}: {type(error).__name__}: {error}",
                        CheckpointError, f"{what} failed ({{}}); the previous checkpoint is untouched")


def save_checkpoint(out_dir, step, model, lm, optimizer, tokenizer, args, extra=None, with_state=True,
                    saved_args: dict | None = None):
    """Write checkpoints/step-N atomically: HF export + (optionally) resumable training state.

    Everything goes to a temp dir first; only a complete dir is renamed into place, and the
    `latest` pointer is replaced with os.replace, so a crash mid-save never leaves a corrupt
    latest checkpoint. A failure on any rank (disk full, read-only) raises CheckpointError on
    every rank; re-saving an existing step moves the old copy aside before the new one takes its
    name, and `latest` names a complete checkpoint at every moment. `saved_args`: the options recorded
    in trainer_state.json (Setup.saved_args; default vars(args)).
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
    _raise_if_any_rank_failed(error, f"saving checkpoint {name} (model export)")
    if with_state:
        try:
            dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
                     checkpoint_id=os.path.join(tmp, "train_state"))
            torch.save(_rng_state(), os.path.join(tmp, f"rng-rank{dist.get_rank()}.pt"))
        except (OSError, dcp.api.CheckpointException) as e:
            error = e
        _raise_if_any_rank_failed(error, f"saving checkpoint {name} (training state)")
    if is_main():
        try:
            run_safety.atomic_write(os.path.join(tmp, "trainer_state.json"),
                                    json.dumps({"step": step, "args": vars(args) if saved_args is None else saved_args, **(extra or {})},
                                               indent=1))
            run_safety.install_checkpoint(out_dir, ckpt_root, name, tmp)
            run_safety.prune_checkpoints(ckpt_root, args.keep_last)
        except OSError as e:
            error = e
    _raise_if_any_rank_failed(error, f"saving checkpoint {name} (finalising)")
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
        run_safety.atomic_write(path, json.dumps(saved, indent=2, sort_keys=True) + "\n")


class Checkpoints:
    """This run's checkpoints: save(step); is_save_step(step): every --save-every steps and the last one;
    for_stop(step) and for_nonfinite(step, stats) save what a stop keeps and say what it saved."""

    def __init__(self, args, setup: Setup, total_steps, elapsed):
        self.args, self.setup, self.total_steps, self.elapsed = args, setup, total_steps, elapsed   # seconds so far

    def save(self, step, extra=None):
        s = self.setup
        return save_checkpoint(self.args.output_dir, step, s.model, s.lm, s.optimizer, s.tokenizer, self.args,
                               {"elapsed_s": self.elapsed(), **(extra or {})}, saved_args=s.saved_args(self.args))

    def is_save_step(self, step: int) -> bool:
        """The last step is saved, and every --save-every N steps; nothing with --no-save."""
        every = self.args.save_every
        return not self.args.no_save and (step == self.total_steps or (bool(every) and step % every == 0))

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


# -----------------------------------------------------------------------------
# metrics


class Metrics:
    """metrics.jsonl on rank 0 (+ optional wandb/tensorboard), a tqdm bar when available, and the clocks:
    the current step's wall time and the whole run's (carried over a resume in the checkpoint's state)."""

    def __init__(self, args, setup: Setup, total_steps, start_step, state=None):
        self.device, self.elapsed0 = setup.device, state.get("elapsed_s", 0.0) if state else 0.0
        self.run_start = self.step_start = time.time()
        world_size = dist.get_world_size()
        self.enabled = is_main()
        self.bar = self.writer = self.wandb = None
        if not self.enabled:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        self.path = os.path.join(args.output_dir, "metrics.jsonl")
        run_safety.truncate_metrics(self.path, start_step)
        self.file = open(self.path, "a")
        self._write({"args": setup.saved_args(args), "versions": library_versions(), "world_size": world_size,
                     "total_steps": total_steps, "resumed_from_step": start_step or None})
        if args.report_to == "wandb":
            self.wandb = _optional_import("wandb", "--report-to wandb")
            self.wandb.init(config=setup.saved_args(args), dir=args.output_dir)
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

    def start_step(self):
        self.step_start = time.time()

    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.run_start

    def log_step(self, step, epoch, lr, stats, fields) -> None:
        """One optimizer step's line: the stage's `fields` between the common ones and the perf ones."""
        seconds = time.time() - self.step_start
        self.log({"step": step, "epoch": epoch, "lr": lr, "loss": stats["loss"], "optim/grad_norm": stats["grad_norm"],
                  **fields, "data/tokens": int(stats["tokens"]), "perf/tokens_per_s": stats["tokens"] / seconds,
                  "perf/step_time_s": seconds, "perf/peak_mem_gb": peak_memory_gb(self.device),
                  "perf/elapsed_s": self.elapsed()})

    def log(self, record):
        if not self.enabled:
            return
        self._write(record)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb:
            self.wandb.log(numbers, step=record["step"])
        for k, v in numbers.items() if self.writer else ():
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
