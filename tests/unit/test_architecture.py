"""The import rules of tamer's two sides, checked on the source of the imported tamer package.

The supervisor side (everything but tamer/engine/) never imports torch, transformers, peft,
bitsandbytes or tamer.engine, at module level or inside a function: a process that supervises all
night must not carry them, and the child's side is reached only through `python -m tamer.engine.*`
and tamer/protocol.py. No module-level import cycle anywhere. And a real `tamer run` process, stopped
where it would start the child, has none of them in sys.modules.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import tamer
from tamer.recipes.squad import BUNDLED_DATA

PACKAGE = Path(tamer.__file__).parent
CHILD_SIDE = "tamer.engine"
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")
# Tokenisation runs in the child, but lives with the torch-free recipe: the recipe may import transformers there.
ALLOWED = {"tamer.recipes": {"transformers"}}


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["tamer", *path.relative_to(PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Import statements run when the module is imported: its body, inside if/try, not under TYPE_CHECKING."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                found += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            found += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                found += _top_level(handler.body)
    return found


def imported_names(name: str, path: Path, module_level_only: bool) -> set[str]:
    """The dotted names `name` imports (a `from X import Y` names X, and X.Y when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = _top_level(tree.body) if module_level_only else [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names.add(base)
        names |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return names


def _forbidden(module: str, imported: str) -> bool:
    root = imported.split(".")[0]
    allowed = next((roots for prefix, roots in ALLOWED.items() if module == prefix or module.startswith(prefix + ".")), set())
    return (root in HEAVY and root not in allowed) or imported == CHILD_SIDE or imported.startswith(CHILD_SIDE + ".")


def supervisor_side_violations() -> list[str]:
    violations = []
    for module, path in MODULES.items():
        if module == CHILD_SIDE or module.startswith(CHILD_SIDE + "."):
            continue
        violations += [f"{module} imports {imported}" for imported in sorted(imported_names(module, path, False)) if _forbidden(module, imported)]
    return violations


def import_cycle() -> list[str] | None:
    """One cycle of module-level imports between tamer's modules, as the modules along it, or None."""
    graph = {module: sorted(imported for imported in imported_names(module, path, True) if imported in MODULES and imported != module)
             for module, path in MODULES.items()}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for imported in graph[module]:
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_walk_sees_both_sides():
    """The module walk finds the supervisor's modules and the child's (so the rules below check something)."""
    assert {"tamer.cli.common", "tamer.daemon.supervisor", "tamer.protocol", "tamer.engine.child", "tamer.engine.trainer"} <= set(MODULES)
    assert any(_forbidden("tamer.daemon.x", name) for name in imported_names("tamer.engine.trainer", MODULES["tamer.engine.trainer"], False))


def test_supervisor_side_never_imports_torch_or_the_engine():
    """No module outside tamer/engine imports torch, transformers, peft, bitsandbytes or tamer.engine, even inside a function."""
    violations = supervisor_side_violations()
    assert not violations, "the supervisor side must not import the child's side (run it through python -m tamer.engine.*):\n" + "\n".join(violations)


def test_no_import_cycle():
    """tamer's modules import each other, at module level, without a cycle."""
    cycle = import_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Runs `tamer run` for real, with subprocess.Popen replaced: when the supervisor starts the child, the
# process writes which heavy modules it has loaded and exits.
SUPERVISOR_UP_TO_THE_CHILD = """
import json, os, subprocess, sys

real_popen = subprocess.Popen

def popen(command, *args, **kwargs):
    if any(str(part).startswith("tamer.engine.") for part in command):
        heavy = sorted(name for name in sys.modules if name in {heavy} or name.startswith("tamer.engine"))
        with open(os.environ["ARCHITECTURE_REPORT"], "w") as report:
            json.dump({{"command": [str(part) for part in command], "heavy": heavy}}, report)
        os._exit(0)
    return real_popen(command, *args, **kwargs)

subprocess.Popen = popen
from tamer.cli import main

sys.argv = ["tamer", *sys.argv[1:]]
main()
"""


def test_supervisor_reaches_the_child_without_importing_torch(tmp_path):
    """A `tamer run` process, through preflight, run creation and planning up to starting the child, has not imported torch."""
    report = tmp_path / "report.json"
    environment = {**os.environ, "TAMER_HOME": str(tmp_path / "home"), "ARCHITECTURE_REPORT": str(report)}
    script = SUPERVISOR_UP_TO_THE_CHILD.format(heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", script, "run", "squad", "--preset", "tiny", "--device", "cpu", "--max-steps", "1",
                           "--data", str(BUNDLED_DATA)], env=environment, capture_output=True, text=True, timeout=300)
    assert report.is_file(), f"the child was never started (exit {done.returncode}): {done.stderr[-2000:]}"
    started = json.loads(report.read_text())
    assert "tamer.engine.child" in started["command"]
    assert started["heavy"] == [], f"the supervisor process imported {started['heavy']} before starting the child"


def test_a_chat_run_reaches_the_child_without_importing_torch(tmp_path):
    """`tamer run chat` reads, renders and tokenizes every row in preflight and plans, all without torch or transformers."""
    report = tmp_path / "report.json"
    environment = {**os.environ, "TAMER_HOME": str(tmp_path / "home"), "ARCHITECTURE_REPORT": str(report)}
    script = SUPERVISOR_UP_TO_THE_CHILD.format(heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", script, "run", "chat", "--preset", "tiny", "--device", "cpu", "--max-steps", "1"],
                          env=environment, capture_output=True, text=True, timeout=300)
    assert report.is_file(), f"the child was never started (exit {done.returncode}): {done.stderr[-2000:]}"
    started = json.loads(report.read_text())
    assert started["heavy"] == [], f"the supervisor process imported {started['heavy']} before starting the child"
    assert json.loads((next((tmp_path / "home" / "runs").iterdir()) / "run.json").read_text())["data_profile"]["examples"] > 0
