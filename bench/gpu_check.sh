#!/usr/bin/env bash
# One prepared GPU session for the device tool (one H100, ~15 minutes in all): bf16 FSDP2 training,
# the log-prob benchmark on CUDA, and sampling speed, on a tiny model built offline.
#   run: bash bench/gpu_check.sh    (from the repo root; writes figures to $OUT or ./gpu_out)
# Every step prints figures; paste them into BENCHMARKS.md with the date and the card.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/env.txt"

# 1. a task and a small model (hidden 512, 8 layers), offline
python toy_task.py --out-dir "$OUT/data" --num-problems 4000 --num-test 200 --seed 0 >/dev/null
python tiny_model.py --out "$OUT/init" --corpus "$OUT/data/raw.jsonl" --hidden-size 512 --num-layers 8 \
    --num-heads 8 --num-kv-heads 4 --system-prompt "Box the answer." >/dev/null
python curate.py --raw "$OUT/data/raw.jsonl" --sft-out "$OUT/data/sft.jsonl" \
    --pairs-out "$OUT/data/pairs.jsonl" --tokenizer "$OUT/init" >/dev/null

# 2. bf16 FSDP2 SFT on one GPU, then REDI and DPO from it: tokens/s, peak memory, finite losses
python train_sft.py --model "$OUT/init" --data "$OUT/data/sft.jsonl" --output-dir "$OUT/sft" --epochs 1 \
    --lr 1e-3 --global-batch-size 64 --micro-batch-size 64 --no-progress 2>&1 | tail -2
for loss in redi dpo; do
  python train_redi.py --model "$OUT/sft/final" --data "$OUT/data/pairs.jsonl" --output-dir "$OUT/$loss" \
      --loss "$loss" --lr 1e-5 --global-batch-size 32 --micro-batch-size 32 --max-steps 20 --no-progress 2>&1 | tail -1
done
python - "$OUT" <<'EOF'
import json, sys
for run in ("sft", "redi", "dpo"):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")][1:]
    last = rows[-1]
    print(f"{run}: steps {len(rows)}, loss {rows[0]['loss']:.4f} -> {last['loss']:.4f}, "
          f"tokens/s {sum(r['tokens_per_s'] for r in rows[2:]) / max(1, len(rows) - 2):.0f}, "
          f"peak {max(r['peak_mem_gb'] for r in rows):.2f} GB")
EOF

# 3. the log-prob benchmark at Qwen2.5-1.5B-like sizes (T 8192, V 151936, H 1536)
python bench/bench_logps.py --tokens 8192 --vocab 151936 --hidden 1536 --chunk 1024 --repeats 3

# 4. sampling speed
python evaluate.py --model "$OUT/sft/final" --data "$OUT/data/test.jsonl" --num-samples 16 \
    --max-new-tokens 64 --prompt-template raw --batch-size 512 --output-dir "$OUT/eval" 2>&1 | tail -4
