"""Command-line plumbing every script shares, free of torch: errors that name file, line and field,
one-line exits for bad input, JSON Lines reading, output directories.

    InputError                  bad input (file, line, field, option); a ValueError
    exit_on_input_error(prog)   `with` block: an InputError becomes 'PROG: error: ...' and exit 2
    run_then_exit(main)         run a distributed entry point, then end without interpreter teardown
    data_error(...)             InputError 'PATH:LINE: field 'F': expected E, found X'
    read_jsonl(path)            (line number, record) for each non-blank line
    make_output_dir(path, what) a writable directory, or an InputError saying why not
    add_system_prompt_option    --system-prompt, one definition for curate, both trainers and evaluate
"""
from __future__ import annotations

import contextlib
import json
import os
import sys


def describe(value) -> str:
    """A short, JSON-flavoured description of a found value for error messages."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    text = json.dumps(value, ensure_ascii=False, default=repr)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{names.get(type(value), type(value).__name__)} {text}"


class InputError(ValueError):
    """Bad input from the user: a file, line, field or option that is not what was expected.

    Every CLI (data.py, train_*.py, evaluate.py, demo.py, toy/plot.py) runs under `exit_on_input_error`,
    which prints it as one line and exits non-zero without a traceback. Any other exception is a
    bug and keeps its traceback."""


@contextlib.contextmanager
def exit_on_input_error(prog: str):
    """`with exit_on_input_error("curate.py"):` -> 'PROG: error: MESSAGE' on stderr, exit 2."""
    try:
        yield
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_then_exit(main) -> None:
    """Run a distributed entry point's main(), then end the process without interpreter teardown.

    Gloo's worker threads can still be releasing a finished collective's tensors while Python
    finalises; the release needs the GIL, the thread is killed, and the process aborts
    ("terminate called without an active exception", SIGABRT) after the work is done and saved.
    It happened in about 1 of 8 two-rank runs on a loaded 2-core machine (core dump: the gloo
    runLoop thread in ~AsyncAllgatherWork; pytorch/pytorch#179291). Once main() has returned or
    exited (its files closed, the process group destroyed), output is flushed and os._exit ends
    the process with main's status. An uncaught exception is not caught here: its traceback
    prints as usual."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:                                   # sys.exit("message"): print it, as Python would
            print(e.code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def data_error(path, line, field, expected, found) -> InputError:
    """InputError 'PATH:LINE: field 'F': expected E, found X' (LINE: 1-based row for Parquet; None for
    a whole-file JSON document)."""
    where = str(path) + (f":{line}" if line is not None else "") + (f": field '{field}'" if field else "")
    return InputError(f"{where}: expected {expected}, found {found}")


def make_output_dir(path, what) -> str:
    """os.makedirs(path, exist_ok=True), or InputError 'WHAT: ...' saying why it cannot hold outputs
    (WHAT names the option, e.g. "--out-dir runs/x")."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what}: {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what}: cannot create the directory {path} ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{what}: cannot write into {path} (permission denied)")
    return path


def read_jsonl(path):
    """Yield (line_number, record) for every non-blank line of a JSON Lines file (lines are 1-based)."""
    try:
        f = open(path, "rb")
    except OSError as e:   # missing, a directory, no permission
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for line_number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{line_number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue  # blank lines hold no record (a trailing newline, say)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_number}: invalid JSON: {e.msg} at column {e.colno}") from None
            yield line_number, record


SYSTEM_PROMPT_HELP = (
    "the system message of conversations that have none; same meaning in curate.py, train_sft.py, train_redi.py "
    "and evaluate.py (docs/data_formats.md). Absent (default): the chat template's own default, if it has one "
    "(Qwen2.5-Math: 'Please reason step by step, and put your final answer within \\boxed{}.'; SmolLM2: 'You "
    "are a helpful AI assistant named SmolLM, ...'). TEXT: a system message with TEXT. '': an empty system "
    "message, which stops such templates inserting their default (they render an empty system turn; no option "
    "removes the turn itself). A data row's own system message is kept")


def add_system_prompt_option(group, note: str = "") -> None:
    """`--system-prompt TEXT` on an argparse parser or group (dest system_prompt; None when absent)."""
    group.add_argument("--system-prompt", default=None, metavar="TEXT", help=SYSTEM_PROMPT_HELP + note)
