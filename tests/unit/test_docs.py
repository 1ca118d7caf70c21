"""The documentation: the reference pages generated from the code are current, the README stays short, and no
page cites a file that is not in the repository."""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README_LIMIT = 15 * 1024


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "bench" / "results").glob("*.md")),
    ]


def test_the_generated_reference_pages_are_current():
    """docs/reference/{cli,config,database}.md are what docs/generate.py writes from the code now (else: run it)."""
    stale = [
        str(path.relative_to(ROOT))
        for path, text in _generator().pages().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"stale generated pages, run `python docs/generate.py`: {stale}"


def test_a_change_in_the_code_makes_a_page_stale(monkeypatch):
    """The check sees a change: a config key's docstring edited in the code no longer matches the page (negative control)."""
    from tamer.config import RunConfig

    generator = _generator()
    before = generator.config_page()
    monkeypatch.setattr(RunConfig.model_fields["seed"], "description", "A changed docstring.")
    assert generator.config_page() != before and "A changed docstring." in generator.config_page()


def test_every_database_column_is_described():
    """Each column the migrations build has a description in tamer/state/columns.py, and each description a column."""
    from tamer.state.columns import COLUMNS, TABLES
    from tamer.state.db import Database

    with tempfile.TemporaryDirectory() as folder:
        database = Database(Path(folder) / "tamer.db")
        built = {
            name: [c.name for c in database.db[name].columns]
            for name in database.db.table_names()
            if not name.startswith("_")
        }
        database.close()
    assert set(built) == set(TABLES) == set(COLUMNS)
    assert {name: sorted(columns) for name, columns in built.items()} == {name: sorted(COLUMNS[name]) for name in built}


def test_the_readme_stays_short():
    """README.md is at most 15 KB: what tamer is, install, run, test, the demo; the manual lives in docs/."""
    assert len((ROOT / "README.md").read_bytes()) <= README_LIMIT


LINK = re.compile(r"\]\(([^)#\s]+)")
CODE_PATH = re.compile(r"`((?:tamer|tests|bench|docs)/[\w./-]+\.(?:py|md|txt|yml|sh))`")
OUTSIDE = ("../shared", "shared/data", "ANCHORS.md", "DESIGN.md", "STYLE.md")
SERVED = {
    ROOT / "docs" / "bench" / "results": ROOT / "bench" / "results",
    ROOT / "docs" / "changelog.md": ROOT / "CHANGELOG.md",
}
"""Paths the docs site serves from elsewhere in the repository (docs/hooks/repository_files.py)."""


def _target(document: Path, link: str) -> Path:
    resolved = (document.parent / link).resolve()
    for served, source in SERVED.items():
        if resolved == served or served in resolved.parents:
            return source / resolved.relative_to(served)
    return resolved


def test_no_document_cites_a_file_outside_the_repository():
    """Relative links and cited paths (`tamer/...py`, `bench/...`) in the README, the changelog, docs/ and
    bench/results/ name files that exist in the repository; nothing cites the steering folder (../shared)."""
    problems = []
    for document in _documents():
        text = document.read_text()
        problems += [f"{document.relative_to(ROOT)}: cites {word}" for word in OUTSIDE if word in text]
        for link in LINK.findall(text):
            if "://" in link or link.startswith("mailto:"):
                continue
            target = _target(document, link)
            if ROOT not in target.parents or not target.exists():
                problems.append(f"{document.relative_to(ROOT)}: link {link} (no {target})")
        for path in CODE_PATH.findall(text):
            if not (ROOT / path).exists():
                problems.append(f"{document.relative_to(ROOT)}: cites {path}, which does not exist")
    assert not problems, "\n".join(problems)
