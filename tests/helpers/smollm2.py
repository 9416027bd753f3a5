"""SmolLM2-135M-Instruct for the tests, converted once by tools/convert_smollm2.py into a persistent cache.

    MODEL_DIR     $REDI_SMOLLM2_CACHE, else ~/.cache/redi-smollm2/SmolLM2-135M-Instruct (CI converts once)
    missing()     pip names of the packages the conversion needs that are not installed
    model_dir()   MODEL_DIR, converted first when absent (a subprocess, as a user runs the tool)
    INSTALL       the pip line that installs them
    PROMPTS       real prompts as a benchmark file's rows; the model answers the first in a few tokens
    hf_greedy(model_dir, problems, max_new_tokens) -> [(text, finish reason, new tokens)] by transformers'
                  greedy `generate`, decoded as evaluate.py decodes (the stop token counted, not written)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import convert_smollm2  # noqa: E402  (torch-free at import)

INSTALL = convert_smollm2.INSTALL
MODEL_DIR = Path(os.environ.get("REDI_SMOLLM2_CACHE")
                 or Path.home() / ".cache" / "redi-smollm2" / "SmolLM2-135M-Instruct")


def missing():
    return convert_smollm2.missing_packages()


def model_dir():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_smollm2.py"), "--out", str(MODEL_DIR)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"tools/convert_smollm2.py exited {proc.returncode}\n{proc.stderr[-6000:]}")
    return MODEL_DIR


PROMPTS = [{"id": "sum", "problem": "What is 2+3? Answer with the number only.", "answer": "5"},
           {"id": "capital", "problem": "What is the capital of France? Answer in one word.", "answer": "Paris"},
           {"id": "primes", "problem": "List three prime numbers.", "answer": "2, 3, 5"},
           {"id": "sea", "problem": "Write a sentence about the sea.", "answer": "-"}]


def hf_greedy(path, problems, max_new_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    results = []
    for problem in problems:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": problem}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            new = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)[0, ids.shape[1]:].tolist()
        stopped = new[-1] == model.generation_config.eos_token_id
        results.append((tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True),
                        "stop" if stopped else "length", len(new)))
    return results
