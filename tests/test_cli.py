"""Every module imports, every script answers --help without torch.distributed or a GPU, and the
layout is the design card's: flat scripts that nothing imports, libraries with no import cycle, and
what serves only the demo and the replication in toy/, which the reference never imports."""
import ast
import importlib
import sys

import pytest

from conftest import ROOT, run_script

# root modules by name, toy/'s as toy.NAME (run as `python -m toy.NAME`; its __init__ is a docstring)
SCRIPTS = sorted([p.stem for p in ROOT.glob("*.py")]
                 + [f"toy.{p.stem}" for p in (ROOT / "toy").glob("*.py") if p.stem != "__init__"])
# The user's design card: these files at the repo root.
REQUIRED = ["train_sft.py", "train_redi.py", "evaluate.py", "redi_loss.py", "data.py", "requirements.txt", "tests"]
# imported, not run
LIBRARIES = {"redi_loss", "sampler", "vllm_engine", "cli", "training", "run_safety", "dpo_reference", "toy.prefork"}
ENTRY_POINTS = {"train_sft", "train_redi"}                                                 # run, never imported


def test_the_design_cards_files_exist():
    """The design card's flat layout is present at the repo root."""
    missing = [name for name in REQUIRED if not (ROOT / name).exists()]
    assert not missing, missing


def _project_imports(module):
    """Project modules that `module` imports, anywhere in the file (function-level included)."""
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {name for alias in node.names for name in (alias.name, alias.name.split(".")[0])}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, node.module.split(".")[0]} | {f"{node.module}.{a.name}" for a in node.names}
    return found & set(SCRIPTS) - {module}


def test_no_module_imports_a_training_script_and_there_is_no_import_cycle():
    """train_sft.py / train_redi.py are imported by nothing; the import graph of the root modules is acyclic."""
    graph = {m: _project_imports(m) for m in SCRIPTS}
    importers = {m: sorted(n for n in SCRIPTS if m in graph[n]) for m in ENTRY_POINTS}
    assert importers == {m: [] for m in ENTRY_POINTS}
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) != "done":
            state[m] = "open"
            for n in sorted(graph[m]):
                visit(n, path + [m])
            state[m] = "done"
    for m in SCRIPTS:
        visit(m, [])


def test_the_reference_imports_nothing_from_toy():
    """At the root only demo.py uses toy/: the design card's files and their support stand without it."""
    users = sorted(m for m in SCRIPTS if "." not in m and any(n.startswith("toy.") for n in _project_imports(m)))
    assert users == ["demo"]


@pytest.mark.parametrize("module", SCRIPTS)
def test_module_imports(module):
    """Importing a module has no side effects that fail (no argument parsing, no process group)."""
    importlib.import_module(module)


@pytest.mark.parametrize("module", [m for m in SCRIPTS if m not in LIBRARIES])
def test_script_help(module):
    """`python SCRIPT.py --help` (`python -m toy.NAME --help`) prints usage and exits 0 (CUDA hidden, no torchrun
    env)."""
    where = ["-m", module] if "." in module else [str(ROOT / f"{module}.py")]
    proc = run_script([sys.executable, *where, "--help"], timeout=120, env={"CUDA_VISIBLE_DEVICES": ""})
    assert "usage:" in proc.stdout.lower()
