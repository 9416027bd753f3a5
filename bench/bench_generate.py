"""Tokens/s of evaluate.py's sampler (sampler.sample_pool) vs Hugging Face `model.generate`, side by side.

    python bench/bench_generate.py                      # all three cases, defaults below (~10 min, 2 CPU cores)
    python bench/bench_generate.py --cases uneven --samples 32

Same random tiny Qwen2 (toy/tiny_model.py), same prompts, rows per forward and settings (T=0.6,
top-p 0.95, fp32, CPU, one thread); each sampler runs in this process, interleaved per round, and
figures are medians over --repeats rounds. Useful tokens are those kept in a record: up to and
including the stop token. Cases:
    fixed    every sample runs to --max-new-tokens (no stop token): the per-step cost alone.
    uneven   most samples stop within 16 tokens and a few run to --max-new-tokens: generate keeps each
             batch until its longest row ends, the pool refills a finished row at once. The lengths come
             from a scripted logits hook applied to both samplers alike (_LengthScript): one prompt in
             --long-every gets a "long" sample that never stops; every other sample stops with
             hazard --stop-hazard per token (mean 1/h tokens).
    context  one batch of rows decoding to --context-max tokens, timed per window of tokens (a forward
             hook on the model clocks each step): ms per step at contexts 512 ... 4096, and its growth.
Neither sampler is told the lengths; both see the same hooked model.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sampler  # noqa: E402
from evaluate import build_prompt  # noqa: E402
from toy import tiny_model  # noqa: E402


class _LengthScript:
    """Forward hooks that decide each sample's length from what the model is fed, identically for any
    sampler: tokens are split by parity into a "short" class (even ids) and a "long" class (odd ids).
    At the prompt (more than one input token), rows whose prompt holds `long_token` may only start with
    a long-class token, all others with a short one. After a long-class token only long-class tokens
    follow and never the stop token; after a short-class token only short-class ones, and the stop
    token gets probability `hazard` (set from the logsumexp of the allowed logits at the sampling
    temperature, so top-p keeps it)."""

    def __init__(self, model, stop_id, long_token, hazard, temperature):
        self.stop_id, self.long_token, self.temperature = stop_id, long_token, temperature
        self.log_odds = torch.tensor(hazard / (1 - hazard)).log()
        vocab = model.get_output_embeddings().weight.shape[0]
        self.odd = torch.arange(vocab) % 2 == 1
        self.odd[stop_id] = False
        self.even = ~self.odd
        self.even[stop_id] = False
        self.handles = [model.register_forward_pre_hook(self._inputs, with_kwargs=True),
                        model.get_output_embeddings().register_forward_hook(self._logits)]

    def _inputs(self, module, args, kwargs):
        self.input_ids = kwargs["input_ids"]                      # [B, T]

    def _logits(self, module, inputs, output):
        last = output[:, -1, :]                                   # [B, V]
        ids = self.input_ids
        if ids.shape[1] > 1:                                      # the prompt: choose the class
            long_row = (ids == self.long_token).any(1)
        else:
            long_row = self.odd[ids[:, 0]]
        banned = torch.where(long_row[:, None], self.even, self.odd)  # [B, V]
        banned[:, self.stop_id] = long_row
        last.masked_fill_(banned, float("-inf"))
        short = ~long_row
        if ids.shape[1] == 1 and short.any():
            allowed = last[short].clone()
            allowed[:, self.stop_id] = float("-inf")
            lse = torch.logsumexp(allowed / self.temperature, dim=-1)
            last[short, self.stop_id] = self.temperature * (lse + self.log_odds)
        return output

    def remove(self):
        for h in self.handles:
            h.remove()


def run_pool(model, prompts, max_new, stops, rows, temperature, top_p):
    jobs = [(i, p, 1000 + i) for i, p in enumerate(prompts)]
    t = time.perf_counter()
    lengths = [len(ids) for _, ids, _ in sampler.sample_pool(model, jobs, max_new, temperature, top_p, stops, rows)]
    return sum(lengths), time.perf_counter() - t, lengths


def run_hf(model, pad_id, prompts, max_new, stops, rows, temperature, top_p):
    """generate() on consecutive chunks of `rows` prompts, left-padded; a row's useful tokens end at its
    first stop token (generate pads finished rows until the batch's longest ends)."""
    t, lengths = time.perf_counter(), []
    for first in range(0, len(prompts), rows):
        chunk = prompts[first:first + rows]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                 top_p=top_p, top_k=0, max_new_tokens=max_new,
                                 min_new_tokens=0 if stops else max_new, eos_token_id=stops or None,
                                 pad_token_id=pad_id)
        for row in out[:, width:].tolist():
            lengths.append(next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row)))
    return sum(lengths), time.perf_counter() - t, lengths


def median_case(label, runs, print_lengths=False):
    """runs: {sampler: [(tokens, seconds, lengths)]} -> one printed row per sampler + the ratio."""
    rates = {}
    for name, results in runs.items():
        tokens = statistics.median(r[0] for r in results)
        seconds = statistics.median(r[1] for r in results)
        rates[name] = statistics.median(r[0] / r[1] for r in results)
        extra = ""
        if print_lengths:
            lengths = sorted(results[0][2])
            extra = (f"  lengths: median {statistics.median(lengths):.0f}, <=16: "
                     f"{sum(n <= 16 for n in lengths)}/{len(lengths)}, max {lengths[-1]}")
        print(f"{label:<8}{name:<14}{tokens:>9.0f}{seconds:>9.2f}{rates[name]:>10.1f}{extra}")
    ratios = [a[0] / a[1] / (b[0] / b[1]) for a, b in zip(runs["sample_pool"], runs["hf generate"])]
    print(f"{label:<8}speed-up (pool / generate, median of paired rounds) {statistics.median(ratios):.2f}x  "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return statistics.median(ratios)


class StepClock:
    """A forward pre-hook that records the time of every decode step (one input token per row)."""

    def __init__(self, model):
        self.times = []
        self.handle = model.register_forward_pre_hook(self._tick, with_kwargs=True)

    def _tick(self, module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            self.times.append(time.perf_counter())


def context_case(args, model, pad_id, prompt, rows):
    """ms per decode step at each context length, both samplers, one batch of `rows` samples."""
    marks = [m for m in (512, 1024, 2048, 3072, 4096) if m <= args.context_max]
    results = {}
    for name in ("sample_pool", "hf generate"):
        clock = StepClock(model)
        prompts = [prompt] * rows
        if name == "sample_pool":
            run_pool(model, prompts, args.context_max, [], rows, args.temperature, args.top_p)
        else:
            run_hf(model, pad_id, prompts, args.context_max, [], rows, args.temperature, args.top_p)
        clock.handle.remove()
        steps = [b - a for a, b in zip(clock.times, clock.times[1:])]  # step i: context len(prompt) + i
        results[name] = [1000 * statistics.median(steps[max(0, m - 128):m - 1]) for m in marks]
    print(f"{'context':<10}" + "".join(f"{m:>9}" for m in marks) + "   (ms per decode step, "
          f"{rows} rows; median of the 128 steps before each context length)")
    for name, ms in results.items():
        print(f"{name:<10}" + "".join(f"{x:>9.2f}" for x in ms)
              + f"   growth {marks[0]}->{marks[-1]}: {ms[-1] / ms[0]:.2f}x")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["fixed", "uneven", "context"],
                   choices=["fixed", "uneven", "context"], help="which cases to run")
    p.add_argument("--hidden", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--samples", type=int, default=64, help="prompts (one sample each) for fixed and uneven")
    p.add_argument("--rows", type=int, default=16, help="rows per forward (pool size, generate batch)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="budget per sample")
    p.add_argument("--long-every", type=int, default=16, help="uneven: one prompt in this many runs long")
    p.add_argument("--stop-hazard", type=float, default=1 / 6, help="uneven: per-token stop probability")
    p.add_argument("--context-max", type=int, default=4096, help="context: decode up to this many tokens")
    p.add_argument("--context-rows", type=int, default=4, help="context: rows decoding together")
    p.add_argument("--repeats", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = tiny_model.save_tiny(tempfile.mkdtemp(), seed=0, hidden_size=args.hidden, num_layers=args.layers,
                          max_position_embeddings=max(2048, args.context_max + 128))
    model, tokenizer = sampler.load_model(d, torch.device("cpu"), "float32")
    stops = sampler.stop_token_ids(model, tokenizer)
    marker = tokenizer("@", add_special_tokens=False)["input_ids"][0]
    texts = [f"Problem {i}: what is {i} + {i * 7}?" + (" @" if i % args.long_every == 0 else "") for i in range(args.samples)]
    prompts = [tokenizer(build_prompt(tokenizer, t, "raw"), add_special_tokens=False)["input_ids"] for t in texts]
    assert all((marker in ids) == (i % args.long_every == 0) for i, ids in enumerate(prompts))
    print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {len(tokenizer)}; {args.samples} prompts "
          f"of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.rows} rows, T={args.temperature}, "
          f"top-p {args.top_p}, torch {torch.__version__}, 1 thread")
    print(f"{'case':<8}{'sampler':<14}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}")
    pad = tokenizer.pad_token_id
    for case in args.cases:
        if case == "context":
            context_case(args, model, pad, prompts[1], args.context_rows)
            continue
        script = (_LengthScript(model, stops[0], marker, args.stop_hazard, args.temperature)
                  if case == "uneven" else None)
        case_stops = stops[:1] if case == "uneven" else []
        runs = {"sample_pool": [], "hf generate": []}
        for _ in range(args.repeats):
            runs["sample_pool"].append(run_pool(model, prompts, args.max_new_tokens, case_stops, args.rows,
                                                args.temperature, args.top_p))
            runs["hf generate"].append(run_hf(model, pad, prompts, args.max_new_tokens, case_stops, args.rows,
                                              args.temperature, args.top_p))
        median_case(case, runs, print_lengths=case == "uneven")
        if script:
            script.remove()


if __name__ == "__main__":
    main()
