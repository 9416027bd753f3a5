"""Plot REDI training dynamics in the style of the paper's Figure 6, from any run directory.

    python -m toy.plot RUN_DIR [RUN_DIR ...] [--out DIR] [--benchmark NAME]

Every `metrics.jsonl` found under the given directories (as written by train_sft.py and
train_redi.py) is one line in each panel, labelled by its directory relative to the argument.
Panels against the optimizer step:
    held-out accuracy   pass@1 from `<run>/evals/step-NNNNNNN/summary.json` (evaluate.py's summary,
                        one per evaluated checkpoint; step 0 = the starting model), if any exist
    chosen LogPS        mean log p(y_w|x)/|y_w|  (metrics key logps/chosen)
    rejected LogPS      mean log p(y_l|x)/|y_l|  (logps/rejected)
    update size         norm of the parameter change of each step (optim/update_norm)
plus the training loss. Writes OUT/dynamics.png (default OUT: the first RUN_DIR) and prints per run
the steps plotted, the skipped steps left out (`optim/skipped`) and the evaluated checkpoints.
Without matplotlib the data are still read and checked, the plots skipped, exit 0. Bad input is one
line, `plot.py: error: FILE:LINE: field 'F': expected ..., found ...`, and exit status 2.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from cli import InputError, data_error, describe, exit_on_input_error, make_output_dir, read_jsonl

PANELS = [("accuracy", "held-out pass@1"), ("logps/chosen", "chosen LogPS"),
          ("logps/rejected", "rejected LogPS"), ("optim/update_norm", "update size ||Δθ||"), ("loss", "training loss")]


def load_run(run_dir: str, benchmark: str | None = None) -> dict:
    """{metric: [(step, value), ...]} for one training run dir (holding metrics.jsonl); a skipped
    step is not plotted but appears in the series "optim/skipped" as (step, 1)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    series: dict[str, list] = {}
    for line, record in read_jsonl(path):
        if not isinstance(record, dict):
            raise data_error(path, line, None, "a JSON object (a metrics record)", describe(record))
        if "step" not in record:
            continue   # the header line of a (re)start: args and versions, no metrics
        if isinstance(record["step"], bool) or not isinstance(record["step"], int):
            raise data_error(path, line, "step", "an integer (the optimizer step)", describe(record["step"]))
        if record.get("optim/skipped"):
            series.setdefault("optim/skipped", []).append((record["step"], 1))
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
        step_dir = os.path.basename(os.path.dirname(path))
        if not step_dir.removeprefix("step-").isdigit():
            raise InputError(f"{path}: expected it in a directory named step-<number> (the checkpoint's "
                             f"step), found {step_dir!r}")
        benchmarks = read_json(path).get("benchmarks")
        if not isinstance(benchmarks, dict) or not benchmarks:
            raise data_error(path, None, "benchmarks", "an object {name: {\"pass@1\": number}} (evaluate.py's "
                             "summary)", "it missing" if benchmarks is None else describe(benchmarks))
        name = benchmark or sorted(benchmarks)[0]
        if name not in benchmarks:
            raise InputError(f"{path}: no benchmark {name!r} (has {sorted(benchmarks)})")
        accuracy = benchmarks[name].get("pass@1") if isinstance(benchmarks[name], dict) else None
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
            raise data_error(path, None, f"benchmarks.{name}.pass@1", "a number", describe(accuracy))
        points.append((int(step_dir.removeprefix("step-")), accuracy))
    return sorted(points)


def read_json(path: str) -> dict:
    """A JSON object from a file; InputError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise data_error(path, None, None, "a JSON object", describe(value))
    return value


def find_runs(roots: list[str]) -> dict[str, str]:
    """{label: run dir} for every metrics.jsonl under the roots."""
    runs = {}
    for root in roots:
        if not os.path.isdir(root):
            raise InputError(f"{root}: {'not a directory' if os.path.exists(root) else 'no such directory'}; "
                             f"expected a run directory (or a folder of them) holding metrics.jsonl")
        for path in sorted(glob.glob(os.path.join(root, "**", "metrics.jsonl"), recursive=True)):
            run_dir = os.path.dirname(path)
            label = os.path.relpath(run_dir, root)
            runs[os.path.basename(os.path.normpath(root)) if label == "." else label] = run_dir
    if not runs:
        raise InputError(f"no metrics.jsonl under {', '.join(roots)} (train_sft.py / train_redi.py write one "
                         f"per --output-dir)")
    return runs


def plot(all_series: dict[str, dict], out_path: str) -> str | None:
    """Draw the panels to out_path (its directory must exist); returns None (and says why) when
    matplotlib is missing."""
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
    with_data = [ax for ax in axes if ax.get_lines()]
    if with_data:
        with_data[0].legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(out_path, dpi=110)
    except OSError as e:
        raise InputError(f"{out_path}: cannot write the plot ({e.strerror})") from None
    finally:
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
    with exit_on_input_error("plot.py"):
        runs = find_runs(args.runs)
        all_series = {label: load_run(run_dir, args.benchmark) for label, run_dir in runs.items()}
        for label, series in all_series.items():
            skipped = len(series.get("optim/skipped", []))
            print(f"{label}: {len(series.get('loss', []))} steps"
                  + (f" ({skipped} skipped {'step' if skipped == 1 else 'steps'} left out)" if skipped else "")
                  + f", {len(series.get('accuracy', []))} evaluated checkpoints")
        if not any(series.get(key) for series in all_series.values() for key, _ in PANELS):
            raise InputError(f"nothing to plot: no step metrics and no eval summaries in {', '.join(runs.values())}")
        out_dir = make_output_dir(args.out or args.runs[0], f"--out {args.out or args.runs[0]}")
        path = plot(all_series, os.path.join(out_dir, "dynamics.png"))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
