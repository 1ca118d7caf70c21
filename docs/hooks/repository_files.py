"""MkDocs hook: pages that live elsewhere in the repository, served by the site without copies.

- bench/results/* (the measured figures, next to the scripts that produce them) as `bench/results/...`, and the
  `RESULTS` line of benchmarks.md replaced by a list of them, so a new result file is linked without an edit;
- CHANGELOG.md as `changelog.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PLACEHOLDER = "RESULTS"


def _results() -> list[Path]:
    return sorted(path for path in RESULTS.iterdir() if path.is_file() and path.suffix in (".md", ".txt"))


def on_files(files: Files, config: Any) -> Files:
    for path in _results():
        files.append(
            File.generated(
                config, f"bench/results/{path.name}", abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV
            )
        )  # linked from benchmarks.md
    files.append(File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri != "benchmarks.md":
        return markdown
    listing = "\n".join(f"- [{path.name}](bench/results/{path.name})" for path in _results())
    return markdown.replace(f"\n{PLACEHOLDER}\n", f"\n{listing}\n")
