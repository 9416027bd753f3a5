"""Plot REDI training dynamics in the style of the paper's Figure 6, from any run directory.

    python plot.py RUN_DIR [RUN_DIR ...] [--out DIR] [--benchmark NAME]

Every `metrics.jsonl` found under the given directories (as written by train_sft.py and
train_redi.py) is one line in each panel, labelled by its directory relative to the argument.
Panels against the optimizer step:
    held-out accuracy   pass@1 from `<run>/evals/step-NNNNNNN/summary.json` (evaluate.py's summary,
                        one per evaluated checkpoint; step 0 = the starting model), if any exist
    chosen LogPS        mean log p(y_w|x)/|y_w|  (metrics key logps/chosen)
    rejected LogPS      mean log p(y_l|x)/|y_l|  (logps/rejected)
    update size         norm of the parameter change of each step (optim/update_norm)
plus the training loss. SFT runs have no LogPS; their panels show what they have.
Writes OUT/dynamics.png (default OUT: the first RUN_DIR) and prints the path.

matplotlib is optional: without it the data are still read and checked, and the script says
that the plots were skipped and exits 0.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

PANELS = [("accuracy", "held-out pass@1"), ("logps/chosen", "chosen LogPS"),
          ("logps/rejected", "rejected LogPS"), ("optim/update_norm", "update size ||Δθ||"), ("loss", "training loss")]


def load_run(run_dir: str, benchmark: str | None = None) -> dict:
    """{metric: [(step, value), ...]} for one training run dir (holding metrics.jsonl)."""
    from data import read_jsonl

    series: dict[str, list] = {}
    for _, record in read_jsonl(os.path.join(run_dir, "metrics.jsonl")):
        if "step" not in record or record.get("optim/skipped"):
            continue
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                series.setdefault(key, []).append((record["step"], value))
    accuracy = load_eval_accuracy(run_dir, benchmark)
    if accuracy:
        series["accuracy"] = accuracy
    return series


def load_eval_accuracy(run_dir: str, benchmark: str | None = None) -> list:
    """[(step, pass@1)] from run_dir/evals/step-*/summary.json, sorted by step."""
    points = []
    for path in glob.glob(os.path.join(run_dir, "evals", "step-*", "summary.json")):
        step = int(os.path.basename(os.path.dirname(path)).removeprefix("step-"))
        with open(path, encoding="utf-8") as f:
            benchmarks = json.load(f)["benchmarks"]
        name = benchmark or sorted(benchmarks)[0]
        if name not in benchmarks:
            raise ValueError(f"{path}: no benchmark {name!r} (has {sorted(benchmarks)})")
        points.append((step, benchmarks[name]["pass@1"]))
    return sorted(points)


def find_runs(roots: list[str]) -> dict[str, str]:
    """{label: run dir} for every metrics.jsonl under the roots."""
    runs = {}
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "metrics.jsonl"), recursive=True)):
            run_dir = os.path.dirname(path)
            label = os.path.relpath(run_dir, root)
            runs[os.path.basename(os.path.normpath(root)) if label == "." else label] = run_dir
    if not runs:
        raise SystemExit(f"no metrics.jsonl under {', '.join(roots)}")
    return runs


def plot(all_series: dict[str, dict], out_path: str) -> str | None:
    """Draw the panels to out_path; returns None (and says why) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for label, series in all_series.items():
            if series.get(key):
                steps, values = zip(*series[key])
                ax.plot(steps, values, marker="o" if key == "accuracy" else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="directories searched (recursively) for metrics.jsonl")
    p.add_argument("--out", default=None, help="directory for dynamics.png (default: the first run dir)")
    p.add_argument("--benchmark", default=None,
                   help="which benchmark of the eval summaries to plot (default: the first by name)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    runs = find_runs(args.runs)
    all_series = {label: load_run(run_dir, args.benchmark) for label, run_dir in runs.items()}
    for label, series in all_series.items():
        n_steps = len(series.get("loss", []))
        n_evals = len(series.get("accuracy", []))
        print(f"{label}: {n_steps} steps, {n_evals} evaluated checkpoints")
    path = plot(all_series, os.path.join(args.out or args.runs[0], "dynamics.png"))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
