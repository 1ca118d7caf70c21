"""The import rules of tamer, checked on the source of the imported tamer package.

The package order (LAYERS): a package imports only packages below it, at module level or inside a
function; the packages of one floor are siblings that never import each other (the ground floor's
modules excepted: they are one floor of small records and rules). A function-level import of a tamer
module is for cutting torch or start-up cost only, and says so in a comment (tamer/cli/ loads each
command's modules lazily by design, said once in tamer/cli/__init__.py).

The torch line: the supervisor side (everything but tamer/engine/) never imports torch, transformers,
peft, bitsandbytes or tamer.engine, at module level or inside a function: a process that supervises all
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

LAYERS = [
    # the ground floor: records and rules every side reads; they import nothing above it
    {
        "tamer",
        "tamer.protocol",
        "tamer.errors",
        "tamer.units",
        "tamer.schema",
        "tamer.plan",
        "tamer.outcome",
        "tamer.inject",
        "tamer.hub",
        "tamer.presets",
        "tamer.checkpoint_policy",
        "tamer.logs",
        "tamer.output",
        "tamer.outputs",
    },
    {"tamer.state", "tamer.strategies", "tamer.recipes"},  # storage, the rungs, the tasks
    {"tamer.config"},  # what the user asked for
    {"tamer.planner", "tamer.notify", "tamer.trackers"},  # plans predicted; being told; trackers written
    {
        "tamer.daemon",
        "tamer.inspect",
        "tamer.engine",
    },  # the supervisor, reading a run back, the child: never each other
    {"tamer.cli"},  # the command line
    {"tamer.__main__"},  # `python -m tamer`
]
"""The package order, ground floor first. A unit is a subpackage (tamer.daemon and every module in it) or a
top-level module; a unit imports units of lower floors only."""
GROUND_FLOOR = 0
LAZY_BY_DESIGN = (
    "tamer.cli"  # each command imports what it runs when it runs (start-up cost), said in tamer/cli/__init__.py
)


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
    nodes = (
        _top_level(tree.body)
        if module_level_only
        else [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    )
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
    allowed = next(
        (roots for prefix, roots in ALLOWED.items() if module == prefix or module.startswith(prefix + ".")), set()
    )
    return (root in HEAVY and root not in allowed) or imported == CHILD_SIDE or imported.startswith(CHILD_SIDE + ".")


def unit_of(module: str) -> str:
    """The unit of the package order `module` belongs to: its subpackage, else the module itself."""
    parts = module.split(".")
    candidate = ".".join(parts[:2])
    return candidate if any(candidate in layer for layer in LAYERS) else module


def floor(unit: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if unit in layer)


def _tamer_imports(path: Path) -> list[tuple[ast.stmt, bool]]:
    """Every import statement of the file, with whether it runs inside a function (or a method)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[ast.stmt, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def _targets(module: str, path: Path, node: ast.stmt) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    names = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return names or ({base} if base in MODULES else set())


def layering_violations() -> list[str]:
    """Imports (module level or in a function) that run up the package order or across one floor."""
    violations = []
    for module, path in MODULES.items():
        unit = unit_of(module)
        for node, _ in _tamer_imports(path):
            for imported in _targets(module, path, node):
                other = unit_of(imported)
                if other == unit or (floor(unit) == floor(other) == GROUND_FLOOR):
                    continue
                if floor(other) >= floor(unit):
                    where = "a sibling" if floor(other) == floor(unit) else "a package above it"
                    violations.append(f"{module}:{node.lineno} imports {imported} ({where})")
    return violations


def unexplained_lazy_imports() -> list[str]:
    """Function-level imports of tamer modules outside tamer/cli without a comment (on the statement or the line above)."""
    missing = []
    for module, path in MODULES.items():
        if unit_of(module) == LAZY_BY_DESIGN:
            continue
        lines = path.read_text().splitlines()
        for node, in_function in _tamer_imports(path):
            if not in_function or not _targets(module, path, node):
                continue
            statement = lines[node.lineno - 2 : node.end_lineno]  # the line above and the statement's own lines
            if not any("#" in line for line in statement):
                missing.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return missing


def supervisor_side_violations() -> list[str]:
    violations = []
    for module, path in MODULES.items():
        if module == CHILD_SIDE or module.startswith(CHILD_SIDE + "."):
            continue
        violations += [
            f"{module} imports {imported}"
            for imported in sorted(imported_names(module, path, False))
            if _forbidden(module, imported)
        ]
    return violations


def import_cycle() -> list[str] | None:
    """One cycle of module-level imports between tamer's modules, as the modules along it, or None."""
    graph = {
        module: sorted(
            imported for imported in imported_names(module, path, True) if imported in MODULES and imported != module
        )
        for module, path in MODULES.items()
    }
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for imported in graph[module]:
            if state.get(imported) == "open":
                return stack[stack.index(imported) :] + [imported]
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
    assert {
        "tamer.cli.common",
        "tamer.daemon.supervisor",
        "tamer.protocol",
        "tamer.engine.child",
        "tamer.engine.trainer",
    } <= set(MODULES)
    assert any(
        _forbidden("tamer.daemon.x", name)
        for name in imported_names("tamer.engine.trainer", MODULES["tamer.engine.trainer"], False)
    )


def test_supervisor_side_never_imports_torch_or_the_engine():
    """No module outside tamer/engine imports torch, transformers, peft, bitsandbytes or tamer.engine, even inside a function."""
    violations = supervisor_side_violations()
    assert not violations, (
        "the supervisor side must not import the child's side (run it through python -m tamer.engine.*):\n"
        + "\n".join(violations)
    )


def test_every_unit_has_a_floor():
    """Every module of the package belongs to a unit the package order places (a new package must be placed)."""
    unplaced = sorted({unit_of(module) for module in MODULES} - set().union(*LAYERS))
    assert not unplaced, f"place these in LAYERS (tests/unit/test_architecture.py): {unplaced}"


def test_imports_follow_the_package_order():
    """No module imports a package above its own or a sibling on its floor, at module level or inside a function."""
    violations = layering_violations()
    assert not violations, "imports against the package order (move the shared record down instead):\n" + "\n".join(
        violations
    )


def test_the_order_check_sees_an_upward_import(tmp_path):
    """The check flags a ground-floor module importing the daemon, and a daemon module importing the engine (negative control)."""
    assert floor(unit_of("tamer.daemon.supervisor")) > floor(unit_of("tamer.outcome"))
    assert floor(unit_of("tamer.daemon.supervisor")) == floor(unit_of("tamer.engine.trainer"))
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from tamer.daemon import supervisor\n")
    assert _targets("tamer.plan", fake, _tamer_imports(fake)[0][0]) == {"tamer.daemon.supervisor"}
    assert _tamer_imports(fake)[0][1] is True


def test_function_level_imports_say_why():
    """A function-level import of a tamer module (outside the lazily loading CLI) carries a comment saying why it is not at the top."""
    missing = unexplained_lazy_imports()
    assert not missing, (
        "say why each is imported inside a function (torch or start-up cost), or move it to the top:\n"
        + "\n".join(missing)
    )


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
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "run",
            "squad",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--max-steps",
            "1",
            "--data",
            str(BUNDLED_DATA),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), f"the child was never started (exit {done.returncode}): {done.stderr[-2000:]}"
    started = json.loads(report.read_text())
    assert "tamer.engine.child" in started["command"]
    assert started["heavy"] == [], f"the supervisor process imported {started['heavy']} before starting the child"


def test_a_chat_run_reaches_the_child_without_importing_torch(tmp_path):
    """`tamer run chat` reads, renders and tokenizes every row in preflight and plans, all without torch or transformers."""
    report = tmp_path / "report.json"
    environment = {**os.environ, "TAMER_HOME": str(tmp_path / "home"), "ARCHITECTURE_REPORT": str(report)}
    script = SUPERVISOR_UP_TO_THE_CHILD.format(heavy=set(HEAVY))
    done = subprocess.run(
        [sys.executable, "-c", script, "run", "chat", "--preset", "tiny", "--device", "cpu", "--max-steps", "1"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), f"the child was never started (exit {done.returncode}): {done.stderr[-2000:]}"
    started = json.loads(report.read_text())
    assert started["heavy"] == [], f"the supervisor process imported {started['heavy']} before starting the child"
    assert (
        json.loads((next((tmp_path / "home" / "runs").iterdir()) / "run.json").read_text())["data_profile"]["examples"]
        > 0
    )
