"""How many lines a reader reads for one REDI step: the stage-2 loop and every project function it calls.

    python bench/reading_path.py          # per file and in all, from the source as it is now

One step of `torchrun train_redi.py --loss redi` (padded layout, no DPO reference), followed by hand
through every project function the loop calls, transitively; the list is written out below (CALLED), so a
change to the loop that calls something new must be added here to be counted. A function or class counts
with its decorators, docstring and comments (ast spans). Library code (torch, transformers) is not counted.
"""
from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLED = {
    "train_redi.py": ["train", "micro_batch_loss", "pair_values", "pair_means", "CollapseMonitor.check"],
    "redi_loss.py": ["redi_loss", "_check_lengths", "token_logps_from_hidden", "_check_shapes", "_LogpsFromHidden",
                     "_mm_fp32", "_apply_head"],
    "training.py": ["total_training_steps", "lr_at", "sync_gradients", "LogpsModel.forward", "local_shards",
                    "update_norm", "nonfinite_message", "Metrics.start_step", "Metrics.elapsed", "Metrics.log_step",
                    "Metrics.log", "Checkpoints.is_save_step"],
    "data.py": ["collate_pairs", "collate", "_padded", "TokenizedExamples.__getitem__", "TokenizedExamples._sequence",
                "BatchOrder.rank_slices", "BatchOrder.epoch_order", "BatchOrder._balanced_positions",
                "BatchOrder.global_count", "BatchOrder.micro_batches"],
}


def spans(path: str) -> dict[str, ast.AST]:
    """{name or Class.method: node} of a file's top-level functions and classes and their methods."""
    out = {}
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
            for sub in node.body if isinstance(node, ast.ClassDef) else []:
                if isinstance(sub, ast.FunctionDef):
                    out[f"{node.name}.{sub.name}"] = sub
    return out


def count(root: str = ROOT) -> dict[str, int]:
    """{file: lines on the path}; a name that no longer exists raises KeyError (update CALLED)."""
    lines = {}
    for name, called in CALLED.items():
        nodes = spans(os.path.join(root, name))
        lines[name] = sum(nodes[c].end_lineno - min([nodes[c].lineno] + [d.lineno for d in nodes[c].decorator_list])
                          + 1 for c in called)
    return lines


def main() -> None:
    lines = count(sys.argv[1] if len(sys.argv) > 1 else ROOT)
    for name, n in lines.items():
        print(f"{name:15} {n:4}  ({', '.join(CALLED[name])})")
    print(f"one REDI step: {sum(lines.values())} lines in {len(lines)} files")


if __name__ == "__main__":
    main()
