#!/usr/bin/env bash
# One prepared GPU session for the device tool (one H100, ~15 minutes in all): bf16 FSDP2 training,
# the log-prob benchmark on CUDA, and sampling speed, on a small model built offline.
#   run: bash bench/gpu_check.sh          (from the repo root; figures to $OUT or ./gpu_out)
#        TINY=1 bash bench/gpu_check.sh   (the same steps on CPU at toy sizes: tests/test_bench.py runs it)
# Every step prints figures; paste them into BENCHMARKS.md with the date and the card. Any failing step
# stops the script with its status (set -e, pipefail) and its full log stays in $OUT/*.log.
set -euo pipefail
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${TINY:-0}" = 1 ]; then
  problems=64; hidden=64; layers=2; heads=4; kv=2; sft_batch=8; pair_batch=4; steps=2
  logps_args=(--tokens 256 --vocab 1024 --hidden 64 --chunk 64 --repeats 1); samples=2; new_tokens=8
else
  problems=4000; hidden=512; layers=8; heads=8; kv=4; sft_batch=64; pair_batch=32; steps=20
  logps_args=(--tokens 8192 --vocab 151936 --hidden 1536 --chunk 1024 --repeats 3); samples=16; new_tokens=64
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/env.txt"

# 1. a task and a small model, offline
"$PY" -m toy.toy_task --out-dir "$OUT/data" --num-problems "$problems" --num-test 32 --seed 0 > "$OUT/data.log"
"$PY" -m toy.tiny_model --out "$OUT/init" --corpus "$OUT/data/raw.jsonl" --hidden-size "$hidden" --num-layers "$layers" \
    --num-heads "$heads" --num-kv-heads "$kv" > "$OUT/init.log"
"$PY" curate.py --raw "$OUT/data/raw.jsonl" --sft-out "$OUT/data/sft.jsonl" \
    --pairs-out "$OUT/data/pairs.jsonl" --tokenizer "$OUT/init" > "$OUT/curate.log"

# 2. bf16 FSDP2 SFT on one GPU (fp32 on CPU), then REDI and DPO from it: tokens/s, peak memory, finite losses
"$PY" train_sft.py --model "$OUT/init" --data "$OUT/data/sft.jsonl" --output-dir "$OUT/sft" --epochs 1 \
    --lr 1e-3 --global-batch-size "$sft_batch" --micro-batch-size "$sft_batch" --no-progress > "$OUT/sft.log" 2>&1
for loss in redi dpo; do
  "$PY" train_redi.py --model "$OUT/sft/final" --data "$OUT/data/pairs.jsonl" --output-dir "$OUT/$loss" \
      --loss "$loss" --lr 1e-5 --global-batch-size "$pair_batch" --micro-batch-size "$pair_batch" \
      --max-steps "$steps" --no-progress > "$OUT/$loss.log" 2>&1
done
"$PY" - "$OUT" <<'EOF'
import json, math, sys
for run in ("sft", "redi", "dpo"):
    rows = [r for r in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl")) if "step" in r]
    assert rows and all(math.isfinite(r["loss"]) for r in rows), f"{run}: no steps, or a non-finite loss"
    timed = rows[2:] or rows
    print(f"{run}: steps {len(rows)}, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, "
          f"tokens/s {sum(r['perf/tokens_per_s'] for r in timed) / len(timed):.0f}, "
          f"peak {max(r['perf/peak_mem_gb'] for r in rows):.2f} GB")
EOF

# 3. the log-prob benchmark (full run: Qwen2.5-1.5B-like sizes, T 8192, V 151936, H 1536)
"$PY" bench/bench_logps.py "${logps_args[@]}"

# 4. sampling speed, native engine
"$PY" evaluate.py --model "$OUT/sft/final" --data "$OUT/data/test.jsonl" --num-samples "$samples" \
    --max-new-tokens "$new_tokens" --prompt-template raw --output-dir "$OUT/eval" > "$OUT/eval.log" 2>&1
tail -4 "$OUT/eval.log"
