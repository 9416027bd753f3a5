"""Shared offline fixtures: a tiny chat-templated tokenizer and a tiny Qwen2 model dir.

Both are built with `toy/tiny_model.py` (the same builder the demo uses) and saved with
`save_pretrained`, so every test loads them through the real `--model DIR` code path.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The paper's five test sets, shipped in the repo (provenance and checksums: eval_sets/README.md).
EVAL_SETS = ROOT / "eval_sets"
sys.path.insert(0, str(ROOT))

# Keep every test offline and quiet, single-threaded per process (CI has 2 cores).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer Qwen2 (tied embeddings) plus tokenizer, as a model dir."""
    from toy import tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    return Path(tiny_model.save_tiny(str(out), seed=0))


@pytest.fixture(scope="session")
def turn_ending_model_dir(tmp_path_factory):
    """The tiny tokenizer (Qwen2.5-Math-1.5B base's conventions: eos `<|endoftext|>`) with a model whose
    first token, after any prompt, is `<|im_end|>` with probability ~1: every token embeds to the same
    one-hot vector, attention and MLP outputs are zero, so the last hidden state is that vector for any
    input, and the (untied) output layer scores only `<|im_end|>` on it."""
    import torch

    from toy import tiny_model

    out = tmp_path_factory.mktemp("turn_ending_model")
    tokenizer = tiny_model.build_tokenizer([])
    model = tiny_model.build_model(tokenizer, hidden_size=128, num_heads=4, num_kv_heads=2)  # head_dim 32 (vLLM CPU)
    model.config.tie_word_embeddings = False
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        embed = model.get_input_embeddings().weight  # [V, H]
        embed.zero_()
        embed[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros_like(embed)
        head[end, 0] = 2.0  # logit 2 sqrt(128) ~ 23 for <|im_end|>, 0 for every other token
        model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def run_script(args, cwd=ROOT, timeout=300, env=None, check=True):
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


def _arithmetic_rows(n, seed):
    """Tiny chat examples in the curated formats: (a+b) with a correct and a slipped trace."""
    import random

    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = a + b + rng.choice([-10, 10, -1, 1])
        padding = " Let me double check." * rng.randint(0, 3)     # varied lengths
        chosen = f"<think>\n{a}+{b}={a + b}.{padding}\n</think>\n\nThe answer is $\\boxed{{{a + b}}}$."
        rejected = f"<think>\n{a}+{b}={wrong}.\n</think>\n\nThe answer is $\\boxed{{{wrong}}}$."
        yield i, f"What is {a}+{b}?", chosen, rejected


def write_jsonl(path, rows):
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory):
    """13 SFT examples in the curated `messages` format (13: uneven for every batch size used)."""
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    return write_jsonl(path, [{"id": f"sft/{i}", "messages": [{"role": "user", "content": q},
                                                               {"role": "assistant", "content": c}]}
                              for i, q, c, _ in _arithmetic_rows(13, seed=0)])


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
    """13 preference pairs in the curated conversational format (prompt/chosen/rejected lists)."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return write_jsonl(path, [{"id": f"pair/{i}", "prompt": [{"role": "user", "content": q}],
                               "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}]}
                              for i, q, c, r in _arithmetic_rows(13, seed=1)])


@pytest.fixture
def single_rank_group(monkeypatch):
    """A one-process gloo group in this process (torchrun-free), torn down afterwards."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    import training

    yield training.setup_distributed()
    dist.destroy_process_group()
