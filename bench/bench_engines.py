"""Tokens/s of evaluate.py's two engines, side by side: vLLM (vllm_engine) and the native sampler (sampler).

    python bench/bench_engines.py                       # defaults below (~3 min on the 2-core CPU box)
    python bench/bench_engines.py --native-rows 160     # also the native pool at 160 rows (~6 min more)

Needs vllm (README, "The vLLM engine": run it in that virtual environment). One random Qwen2 built by
toy/tiny_model.py, the same jobs evaluate.py would make (MATH-500's 20-problem sample, raw template, per-sample
seeds), the same settings (T=0.6, top-p 0.95, fp32, the stop set of sampler.stop_token_ids, at most
--max-new-tokens), both engines called as evaluate.py calls them: sampler.sample_pool at --batch-size auto
(16 rows off CUDA; also at --native-rows if given) and vllm_engine.sample_stream at the default
--engine-chunk 512.
Useful tokens are those each engine returns (up to and including the stop token); the two engines draw
different samples, so their lengths differ a little, and tokens/s is the fair figure. Rounds are
interleaved (native, vLLM) and figures are medians over --repeats rounds; vLLM's start
(engine processes, compilation, KV cache) is timed once, apart. Threads: the native sampler runs in this
process with one torch thread; vLLM's CPU worker binds its OpenMP threads per VLLM_CPU_OMP_THREADS_BIND
(auto: all cores but one, which it reserves for its front end; one core on a 2-core box).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="model width (head dim = width / --heads)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads (vLLM's CPU attention needs head dim >= 32)")
    p.add_argument("--samples-per-problem", type=int, default=8, help="samples of each of the 20 problems")
    p.add_argument("--max-new-tokens", type=int, default=256, help="budget per sample")
    p.add_argument("--repeats", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE, unless already set")
    p.add_argument("--native-rows", type=int, default=None, help="also time the native pool at this many rows")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    import evaluate
    import sampler
    import vllm_engine
    from toy import tiny_model

    torch.set_num_threads(1)
    model_dir = tiny_model.save_tiny(tempfile.mkdtemp(), seed=0, hidden_size=args.hidden, num_layers=args.layers,
                                     num_heads=args.heads, num_kv_heads=max(1, args.heads // 2))
    model, tokenizer = sampler.load_model(model_dir, torch.device("cpu"), "float32")
    stops = sampler.stop_token_ids(model, tokenizer)
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "math500_sample20.jsonl")
    problems = evaluate.read_benchmark(data, "math500_sample20")
    prompts = [tokenizer(evaluate.build_prompt(tokenizer, q["problem"], "raw"), add_special_tokens=False)["input_ids"]
               for q in problems]
    jobs = [(i * 100 + j, ids, evaluate.sample_seed(0, "math500_sample20", q["id"], j))
            for i, (q, ids) in enumerate(zip(problems, prompts)) for j in range(args.samples_per_problem)]
    jobs.sort(key=lambda job: len(job[1]))  # as evaluate.generate orders them
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95, stop_ids=stops)

    t = time.perf_counter()
    llm, _, vllm_stops, close = vllm_engine.load(model_dir, "float32", 1, 0)
    start_s = time.perf_counter() - t
    assert vllm_stops == stops
    runners = {"native, --batch-size auto": lambda: sampler.sample_pool(model, jobs, rows="auto", **settings)}
    if args.native_rows:
        runners[f"native, {args.native_rows} rows"] = lambda: sampler.sample_pool(model, jobs, rows=args.native_rows,
                                                                                  **settings)
    runners["vllm, --engine-chunk 512"] = lambda: vllm_engine.sample_stream(llm, jobs, in_flight=512, **settings)
    try:
        rounds = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                t = time.perf_counter()
                tokens = sum(len(ids) for _, ids, _ in run())
                rounds[name].append((tokens, time.perf_counter() - t))
    finally:
        close()

    print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {len(tokenizer)}, fp32; "
          f"{len(jobs)} samples ({len(problems)} problems x {args.samples_per_problem}) of prompts "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, up to {args.max_new_tokens} new tokens, "
          f"T=0.6, top-p 0.95; torch {torch.__version__}, vllm {evaluate.versions()['vllm']}, {os.cpu_count()} cores; "
          f"vLLM start {start_s:.1f} s (not in the figures)")
    print(f"{'engine':<28}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}")
    rates = {}
    for name, results in rounds.items():
        rates[name] = [tokens / seconds for tokens, seconds in results]
        print(f"{name:<28}{statistics.median(r[0] for r in results):>9.0f}"
              f"{statistics.median(r[1] for r in results):>9.2f}{statistics.median(rates[name]):>10.1f}")
    vllm_rates = rates["vllm, --engine-chunk 512"]
    for name in list(runners)[:-1]:
        ratios = [v / n for v, n in zip(vllm_rates, rates[name])]
        print(f"vllm / {name}: {statistics.median(ratios):.2f}x (median of paired rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
