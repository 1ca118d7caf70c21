"""Every SQL statement tamer runs lives in tamer/state (db.py, queries.py): a string literal with SQL
anywhere else in the package fails here. `tamer sql` (tamer/inspect/query.py) runs the user's own query
and is the one exception; docstrings may show SQL as an example."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tamer"
ALLOWED = ("state/", "inspect/query.py")
SQL = re.compile(r"\bSELECT\s+[\w*(]|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (never executed)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.add(id(first.value))
    return found


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal in `source` (f-string parts included) that reads as SQL."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and SQL.search(node.value)
    ]


def test_the_scan_finds_sql_in_plain_and_f_strings():
    """The scan flags a query in a plain string and in an f-string, and passes prose and docstrings."""
    source = (
        '"""SELECT * FROM runs, as an example."""\n'
        'a = "SELECT id FROM runs"\nb = f"UPDATE queue SET claimed_at = {x}"\nc = "select a rung to apply"\n'
    )
    assert [line for line, _ in sql_literals(source)] == [2, 3]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_sql_outside_the_state_package(path):
    """SQL text outside tamer/state (and the user's `tamer sql`) belongs in tamer/state/queries.py as a named query."""
    relative = path.relative_to(PACKAGE).as_posix()
    if relative.startswith(ALLOWED):
        return
    found = sql_literals(path.read_text())
    assert not found, (
        f"{relative}: SQL outside tamer/state at lines {[line for line, _ in found]}; move it into tamer/state/queries.py"
    )
