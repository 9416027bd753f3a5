"""Training throughput at the paper's scale on one GPU: REDI, DPO (cached reference) and SFT steps.

    python bench/gpu.py                # one H100/H200, at most ~6 minutes; table + $OUT/gpu_bench.json
    python bench/gpu.py --tiny         # the same code on CPU in seconds (tests/test_bench.py runs it)

Builds a randomly initialised model with Qwen2.5-1.5B's config (28 layers, hidden 1536, 12 heads,
2 KV heads, MLP 8960, vocabulary 151,936, tied embeddings; `--tiny`: 2 layers, hidden 64) and a
synthetic pair file whose chosen and rejected responses have L tokens each, then runs the project's
real `train_redi.main` / `train_sft.main` in this process (bf16 compute on GPU, fp32 master weights,
activation checkpointing, one pair per step, --no-save) for each case:
    REDI  every available layout (padded; packed = one causal SDPA call per sequence; packed with
          flash-attn varlen when flash_attn is installed) x L in {4k, 8k, 16k}
    DPO   --precompute-ref (reference log-probs cached first, not timed), the scripts' default layout
          (default_layout: packed-varlen with flash-attn, else padded), same L
    SFT   the chosen traces, the default layout, same L
The first step of each case is warm-up; figures are medians of the others, read from metrics.jsonl.
Peak memory is torch.cuda.max_memory_allocated, reset between cases after the previous case is
garbage-collected (CPU: the process's peak RSS, which only grows). Work files go to a temp dir that is removed.

MFU = tokens/s x FLOPs per token / 989e12 (H100/H200 bf16 dense peak), with FLOPs per token
    6 N_non-embedding  +  6 V H (supervised fraction)  +  6 layers hidden L_seq
(weights fwd+bwd; the output projection only on supervised positions, where log-probs are formed;
causal attention on a sequence of L_seq tokens). Activation recomputation is not counted.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train_redi  # noqa: E402
import train_sft  # noqa: E402
import training  # noqa: E402
from toy import tiny_model  # noqa: E402

PEAK_FLOPS = 989e12
QWEN25_15B = dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)


def build_model_dir(work, tiny: bool) -> tuple[str, dict]:
    """Tokenizer (small BPE) + random model of the chosen sizes with V = 151,936, saved in bf16."""
    tokenizer = tiny_model.build_tokenizer(["0 1 2 3 4 5 6 7 8 9 think answer boxed"] * 8, vocab_size=300)
    sizes = TINY if tiny else QWEN25_15B
    with torch.device("cpu" if tiny else ("cuda" if torch.cuda.is_available() else "cpu")):
        model = tiny_model.build_model(tokenizer, max_position_embeddings=40_000, **sizes)
        model.resize_token_embeddings(151_936)       # Qwen2.5's vocabulary; ids beyond the tokenizer's unused
    model = model.to(torch.float32 if tiny else torch.bfloat16)
    path = os.path.join(work, "model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = model.config
    numel = sum(p.numel() for p in model.parameters())
    info = {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "vocab": config.vocab_size,
            "params": numel, "params_non_embedding": numel - config.vocab_size * config.hidden_size}
    del model
    gc.collect()
    return path, info


def write_pairs(work, model_dir, length: int) -> tuple[str, str]:
    """One pair (and its SFT twin) whose responses tokenize to about `length` tokens each."""
    tok = training.load_tokenizer(model_dir)
    unit = " 7 3"
    per_unit = len(tok(unit * 100, add_special_tokens=False)["input_ids"]) / 100
    body = unit * int(length / per_unit)
    chosen = f"<think>\n{body}\n</think>\n\n\\boxed{{1}}"
    rejected = f"<think>\n{body}\n</think>\n\n\\boxed{{2}}"
    prompt = [{"role": "user", "content": "What is 1?"}]
    pairs, sft = os.path.join(work, f"pairs-{length}.jsonl"), os.path.join(work, f"sft-{length}.jsonl")
    with open(pairs, "w") as f:
        f.write(json.dumps({"id": "p0", "prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
    with open(sft, "w") as f:
        f.write(json.dumps({"id": "s0", "messages": prompt + [{"role": "assistant", "content": chosen}]}) + "\n")
    return pairs, sft


def models_alive() -> int:
    """Training models (policy or reference) still reachable: each holds its weights and more."""
    return sum(isinstance(o, training.LogpsModel) for o in gc.get_objects())


def free_previous_case() -> None:
    """Before a case: the previous case's model, optimizer and activations freed, then the peak reset.
    FSDP modules sit in reference cycles, so only the cycle collector frees them; without it the
    next case's peak would include the last one's model and optimizer."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_case(work, model_dir, loss, data, layout, attn, steps, info, tiny) -> dict:
    """One case through the real training script; its figures from metrics.jsonl."""
    out = tempfile.mkdtemp(dir=work)
    argv = ["--model", model_dir, "--data", data, "--output-dir", out, "--max-steps", str(steps), "--epochs", str(steps),
            "--global-batch-size", "1", "--layout", layout, "--attn-implementation", attn, "--lr", "1e-6",
            "--no-save", "--no-progress", "--activation-checkpointing", "--logps-chunk-size", "1024"]
    free_previous_case()
    alive_at_start = models_alive()
    started = time.time()
    try:
        if loss == "sft":
            train_sft.main(argv)
        else:
            train_redi.main(argv + ["--loss", loss] + (["--precompute-ref"] if loss == "dpo" else []))
    except torch.cuda.OutOfMemoryError as e:
        return {"error": f"out of memory: {str(e).splitlines()[0]}"}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "perf/tokens_per_s" in r]
    timed = records[1:] or records
    tokens_per_s = statistics.median(r["perf/tokens_per_s"] for r in timed)
    tokens = records[-1]["data/tokens"]
    seq_len = tokens / (1 if loss == "sft" else 2)
    flops = (6 * info["params_non_embedding"] + 6 * info["vocab"] * info["hidden"] * 0.98
             + 6 * info["layers"] * info["hidden"] * seq_len)
    shutil.rmtree(out, ignore_errors=True)
    return {"models_alive_at_start": alive_at_start, "tokens_per_step": tokens, "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops / PEAK_FLOPS,
            "peak_mem_gb": records[-1]["perf/peak_mem_gb"], "wall_s": time.time() - started}


def layouts() -> list[tuple[str, str, str]]:
    """(name, --layout, --attn-implementation) for every layout this machine can run."""
    found = [("padded", "padded", "sdpa"), ("packed-split", "packed", "sdpa")]
    if torch.cuda.is_available() and training.flash_attn_import_error() is None:
        found.append(("packed-varlen", "packed", "flash_attention_2"))
    return found


def default_layout() -> tuple[str, str, str]:
    """What the training scripts pick with --layout auto --attn-implementation auto (training.choose_kernels):
    packed with flash-attn varlen when flash-attn imports on CUDA, else padded rows with SDPA."""
    varlen = [case for case in layouts() if case[0] == "packed-varlen"]
    return varlen[0] if varlen else layouts()[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, short sequences")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="tokens per response (default 4k 8k 16k)")
    p.add_argument("--steps", type=int, default=None, help="steps per case, first one is warm-up (default 3)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="where gpu_bench.json goes (default $OUT)")
    args = p.parse_args(argv)
    lengths = args.lengths or ([48, 96] if args.tiny else [4096, 8192, 16384])
    steps = args.steps or (2 if args.tiny else 3)
    work = tempfile.mkdtemp(prefix="redi-gpu-bench-")
    try:
        model_dir, info = build_model_dir(work, args.tiny)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        print(f"model: {info}; device: {device}; layouts: {[name for name, _, _ in layouts()]}", flush=True)
        rows = []
        for length in lengths:
            pairs, sft = write_pairs(work, model_dir, length)
            cases = [("redi", name, layout, attn) for name, layout, attn in layouts()]
            default = default_layout()
            cases += [("dpo", default[0], default[1], default[2]), ("sft", default[0], default[1], default[2])]
            for loss, name, layout, attn in cases:
                result = run_case(work, model_dir, loss, sft if loss == "sft" else pairs, layout, attn, steps, info,
                                  args.tiny)
                rows.append({"loss": loss, "layout": name, "response_tokens": length, **result})
                print(format_row(rows[-1]), flush=True)
        report = {"device": device, "torch": torch.__version__, "model": info, "peak_flops": PEAK_FLOPS,
                  "steps_per_case": steps, "rows": rows}
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "gpu_bench.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_row(r: dict) -> str:
    head = f"{r['loss']:5s} {r['layout']:14s} 2x{r['response_tokens']:<6d}" if r["loss"] != "sft" else \
        f"{r['loss']:5s} {r['layout']:14s} 1x{r['response_tokens']:<6d}"
    if "error" in r:
        return f"{head} {r['error']}"
    return (f"{head} {r['tokens_per_s']:10.0f} tokens/s  MFU {100 * r['mfu']:5.1f}%  "
            f"peak {r['peak_mem_gb']:6.2f} GB  ({r['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
