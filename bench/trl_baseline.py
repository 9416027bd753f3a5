"""The Hugging Face TRL side of bench/bench_trl.py: one TRL training run, timed, in this process.

Runs ONLY under a separate environment with TRL installed (the project never depends on TRL):

    /work/trl-venv/bin/python bench/trl_baseline.py --mode dpo --model DIR --data pairs.jsonl --out result.json
    /work/trl-venv/bin/python bench/trl_baseline.py --mode sft --model DIR --data sft_trl.jsonl --out result.json

Modes (all fp32 on CPU, one process, no gradient checkpointing, the same AdamW, schedule and batch
shape as the project's runs it is compared with):
    dpo             DPOTrainer, sigmoid loss, live reference model (a second copy, loaded by TRL)
    dpo-precompute  DPOTrainer with precompute_ref_log_probs=True (reference log-probs computed in
                    the trainer's __init__, i.e. before trainer.train(), and the reference freed)
    sft             SFTTrainer on prompt/completion records, completion-only loss, no packing
TRL's overheads that the project's runs do not have are turned off: no saving, no evaluation, no
logging callbacks (logging_strategy="no", report_to="none", tqdm off), dataloader workers 0.
What TRL always does per step is kept (e.g. SFTTrainer's entropy / token-accuracy metrics).

Writes JSON: train_s (wall time of trainer.train()), train_cpu_s (its process CPU time), step_times_s (per optimizer step, from a
callback: on_step_begin -> on_step_end), tokens (unpadded tokens trained on, as the project counts
them: every sequence's prompt + completion, chosen and rejected both for DPO), steps.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=["dpo", "dpo-precompute", "sft"], help="which TRL trainer")
    p.add_argument("--model", required=True, help="Hugging Face model dir (tokenizer with chat template inside)")
    p.add_argument("--data", required=True, help="JSON Lines: prompt/chosen/rejected (dpo) or prompt/completion (sft)")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--work", default=None, help="trainer output_dir (nothing is saved there); default next to --out")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps (max_steps)")
    p.add_argument("--micro-batch-size", type=int, default=1, help="per_device_train_batch_size")
    p.add_argument("--grad-accum", type=int, default=4, help="gradient_accumulation_steps")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--max-length", type=int, default=1024, help="max_length (no sequence is longer: no truncation)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warmup fraction, then linear decay")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=42, help="seed")
    return p.parse_args(argv)


def common_config(args, work) -> dict:
    """TrainingArguments shared by both trainers: fp32 CPU, no saving/eval/logging, our optimizer settings."""
    import math
    return dict(output_dir=work, max_steps=args.steps, per_device_train_batch_size=args.micro_batch_size,
                gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="linear",
                warmup_steps=math.ceil(args.warmup_ratio * args.steps), weight_decay=args.weight_decay,
                adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=0.0, optim="adamw_torch",
                bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=args.seed,
                max_length=args.max_length)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    work = args.work or os.path.splitext(args.out)[0] + "-trainer"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    dataset = load_dataset("json", data_files=args.data, split="train", cache_dir=os.path.join(work, "hf-cache"))

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *_, **__):
            self.start = time.time()

        def on_step_end(self, *_, **__):
            self.times.append(time.time() - self.start)

    clock = StepTimes()
    if args.mode == "sft":
        config = SFTConfig(**common_config(args, work), packing=False, padding_free=False, completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[clock])
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    else:
        config = DPOConfig(**common_config(args, work), loss_type=["sigmoid"], beta=args.beta,
                           precompute_ref_log_probs=args.mode == "dpo-precompute")
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[clock])
        d = trainer.train_dataset
        tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]))
    before_train, before_cpu = time.time(), time.process_time()
    trainer.train()
    train_s, train_cpu_s = time.time() - before_train, time.process_time() - before_cpu
    result = {"mode": args.mode, "train_s": train_s, "train_cpu_s": train_cpu_s, "step_times_s": clock.times, "steps": len(clock.times),
              "tokens": tokens, "setup_s": before_train - started, "trl": __import__("trl").__version__,
              "torch_threads": torch.get_num_threads()}
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}))


if __name__ == "__main__":
    main()
