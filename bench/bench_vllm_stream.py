"""Does evaluate.py keep vLLM as busy as vLLM's own LLM.generate? Samples of uneven length, real vLLM.

    python bench/bench_vllm_stream.py                   # defaults below (~6 min on the 2-core CPU box)

Needs vllm (README, "The vLLM engine": run it in that virtual environment). Three ways to sample the same
requests with one vllm.LLM, timed in the same rounds (their order rotated round to round):
    LLM.generate        vLLM's own call over every request at once: the bar
    evaluate, stream    evaluate.generate (prompts, vllm_engine.sample_stream, each record decoded and
                        written as it finishes) at --engine-chunk 512 requests in flight
    evaluate, chunked   the same with the sampler evaluate.py had before (LLM.generate per 512 requests,
                        a chunk handed over when its longest sample ends), copied below
The figure is tokens/s of the sampling stage (engine start, grading and summary not included), ratios
taken within a round. The model makes the lengths uneven on purpose: a random Qwen2 (toy/tiny_model.py)
whose attention and MLP outputs are zeroed and whose tied embedding rows all point one way, so every
step has the same next-token distribution: uniform, except the stop tokens, weighted so that a sample
stops after --mean-length tokens on average (geometric: most stop early, a few run long), capped at
--max-new-tokens. Every layer still runs: the compute per token is the model's. Same seeds -> the same
samples in all three (checked: total tokens and per-sample lengths are printed).
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample_chunks(llm, jobs, max_new_tokens, temperature, top_p, stop_ids, in_flight):
    """vllm_engine.sample_chunks as of commit 4fc19a1 (before sample_stream), for comparison."""
    import vllm

    from vllm_engine import finish_reason

    jobs, stops = list(jobs), set(stop_ids)
    for start in range(0, len(jobs), in_flight):
        part = jobs[start:start + in_flight]
        params = [vllm.SamplingParams(n=1, seed=seed, temperature=temperature, top_p=top_p,
                                      max_tokens=max_new_tokens, stop_token_ids=list(stop_ids), detokenize=False)
                  for _, _, seed in part]
        outputs = llm.generate([{"prompt_token_ids": list(ids)} for _, ids, _ in part], params, use_tqdm=False)
        for (key, _, _), output in zip(part, outputs):
            ids = list(output.outputs[0].token_ids)
            yield key, ids, finish_reason(ids, output.outputs[0].finish_reason, stops)


def geometric_model(out_dir, args):
    """toy/tiny_model.py's Qwen2 with every step's next-token distribution fixed (module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sampler
    from toy import tiny_model

    tiny_model.save_tiny(out_dir, seed=0, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                         num_kv_heads=max(1, args.heads // 2))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out_dir), AutoTokenizer.from_pretrained(out_dir)
    stops = sampler.stop_token_ids(model, tokenizer)
    vocab, width, base = model.config.vocab_size, model.config.hidden_size, 4.0
    # p(stop) per step = s / (s + vocab - len(stops)), s = len(stops) * exp(gap / T); top-p then drops ~5% of the rest
    p = 1 / args.mean_length
    gap = args.temperature * math.log(p * (vocab - len(stops)) / ((1 - p) * len(stops)))
    with torch.no_grad():
        for layer in model.model.layers:  # each block adds 0: the residual stream is the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        rows = torch.zeros(vocab, width)
        rows[:, 0] = base / width ** 0.5  # after the final RMSNorm: sqrt(width) e0, whatever the token
        rows[stops, 0] = (base + gap) / width ** 0.5  # tied: these rows are also the logits' weights
        model.model.embed_tokens.weight.copy_(rows)
    model.save_pretrained(out_dir)
    return stops


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="model width (head dim = width / --heads)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=8, help="attention heads (vLLM's CPU attention needs head dim >= 32)")
    p.add_argument("--samples-per-problem", type=int, default=60, help="samples of each of the 20 problems")
    p.add_argument("--mean-length", type=float, default=60, help="mean sample length before the cap, in tokens")
    p.add_argument("--max-new-tokens", type=int, default=512, help="cap per sample")
    p.add_argument("--engine-chunk", type=int, default=512, help="evaluate.py's --engine-chunk")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (top-p 0.95)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE, unless already set")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import evaluate
    import vllm_engine

    work_dir = tempfile.mkdtemp()
    model_dir = os.path.join(work_dir, "model")
    stops = geometric_model(model_dir, args)
    data = os.path.join(ROOT, "benchmarks", "math500_sample20.jsonl")
    eval_args = evaluate.parse_args(["--engine", "vllm", "--model", model_dir, "--data", data, "--output-dir",
                                     work_dir, "--n", str(args.samples_per_problem), "--temperature",
                                     str(args.temperature), "--top-p", "0.95", "--max-new-tokens",
                                     str(args.max_new_tokens), "--dtype", "float32", "--prompt-template", "raw",
                                     "--engine-chunk", str(args.engine_chunk)])
    problems = evaluate.read_benchmark(data, "math500_sample20")
    work = evaluate.missing_work([("math500_sample20", problems)], set(), args.samples_per_problem, 0, 1)

    t = time.perf_counter()
    llm, tokenizer, vllm_stops, close = vllm_engine.load(model_dir, "float32", 1, 0)
    start_s = time.perf_counter() - t
    assert vllm_stops == stops, (vllm_stops, stops)
    vllm_engine.load = lambda *_: (llm, tokenizer, vllm_stops, lambda: None)  # evaluate.generate gets this engine
    streamed = vllm_engine.sample_stream

    def evaluate_generate(sampler_fn):
        def run():
            vllm_engine.sample_stream = sampler_fn
            path = os.path.join(work_dir, "generations.part.jsonl")
            if os.path.exists(path):
                os.remove(path)
            evaluate.generate(eval_args, work, path, 0, None)
            with open(path, encoding="utf-8") as f:
                return {(r["id"], r["sample"]): r["num_tokens"] for r in map(json.loads, f)}
        return run

    import vllm
    prompts = evaluate.prompts_of(tokenizer, work, "raw")
    requests = [({"prompt_token_ids": prompts[q["benchmark"], q["id"]][0]},
                 evaluate.sample_seed(0, q["benchmark"], q["id"], j), (q["id"], j)) for q, j in work]
    requests.sort(key=lambda request: len(request[0]["prompt_token_ids"]))  # as evaluate.generate orders them

    def llm_generate():
        params = [vllm.SamplingParams(n=1, seed=seed, temperature=args.temperature, top_p=0.95,
                                      max_tokens=args.max_new_tokens, stop_token_ids=stops, detokenize=False)
                  for _, seed, _ in requests]
        outputs = llm.generate([prompt for prompt, _, _ in requests], params, use_tqdm=False)
        return {key: len(o.outputs[0].token_ids) for (_, _, key), o in zip(requests, outputs)}

    runners = {"LLM.generate": llm_generate, "evaluate, stream": evaluate_generate(streamed),
               "evaluate, chunked": evaluate_generate(sample_chunks)}
    try:
        warm_up = vllm.SamplingParams(temperature=args.temperature, max_tokens=128, stop_token_ids=stops)
        llm.generate([prompt for prompt, _, _ in requests[:256]], warm_up, use_tqdm=False)  # batches of 1 to 256
        rounds, lengths = [], {}
        for r in range(args.repeats):
            names = list(runners)[r % 3:] + list(runners)[:r % 3]
            rounds.append({})
            for name in names:
                t = time.perf_counter()
                lengths[name] = runners[name]()
                rounds[-1][name] = (sum(lengths[name].values()), time.perf_counter() - t)
                print(f"round {r + 1} {name}: {rounds[-1][name][0]} tokens, {rounds[-1][name][1]:.2f} s", flush=True)
    finally:
        vllm_engine.sample_stream = streamed
        close()

    reference = lengths["LLM.generate"]
    print(f"\nmodel: Qwen2 hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {len(tokenizer)}, "
          f"fp32; {len(work)} requests (20 problems x {args.samples_per_problem}), lengths: mean "
          f"{statistics.mean(reference.values()):.1f}, median {statistics.median(reference.values()):.0f}, max "
          f"{max(reference.values())}, {sum(v == args.max_new_tokens for v in reference.values())} at the cap "
          f"{args.max_new_tokens}; T={args.temperature}, top-p 0.95; --engine-chunk {args.engine_chunk}; vllm "
          f"{evaluate.versions()['vllm']}, {os.cpu_count()} cores; vLLM start {start_s:.1f} s (not in the figures)")
    for name in runners:
        same = sum(lengths[name][k] == v for k, v in reference.items())
        print(f"{name}: per-sample lengths equal LLM.generate's on {same}/{len(reference)}")
    print(f"{'sampler':<20}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}{'/ LLM.generate (each round)':>36}")
    for name in runners:
        rates = [one[name][0] / one[name][1] for one in rounds]
        ratios = [one[name][0] / one[name][1] / (one["LLM.generate"][0] / one["LLM.generate"][1]) for one in rounds]
        print(f"{name:<20}{statistics.median(one[name][0] for one in rounds):>9.0f}"
              f"{statistics.median(one[name][1] for one in rounds):>9.2f}{statistics.median(rates):>10.1f}"
              f"{statistics.median(ratios):>8.3f}x ({', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
