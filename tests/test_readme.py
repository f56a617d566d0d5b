"""The README stays true: every setting documented, the test command the one CI runs, every
link and every named source path pointing at something that exists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# app/... or bench/... up to the first character a path here does not have (`<type>` stops it).
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:app|bench)/[A-Za-z0-9_./]*)")


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme]
    assert not missing, f"settings missing from the README: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    command = "python -m pytest -q"
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


def prose_and_code(page: Path) -> tuple[list[str], list[str]]:
    """The page's lines outside fenced code blocks, and those inside."""
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for
    repeats."""
    seen: Counter[str] = Counter()
    out = set()
    for line in prose_and_code(page)[0]:
        if match := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return out


def test_links_lead_to_files_and_headings_that_exist() -> None:
    broken = []
    for page in PAGES:
        for line in prose_and_code(page)[0]:
            for target in LINK.findall(line):
                if target.startswith(("http://", "https://", "mailto:")):
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists() or (anchor and anchor not in anchors(dest)):
                    broken.append(f"{page.name}: {target}")
    assert not broken, f"links that lead nowhere: {broken}"


def test_named_source_paths_exist() -> None:
    missing = sorted({f"{page.name}: {path}" for page in PAGES
                      for line in sum(prose_and_code(page), [])
                      for path in SOURCE_PATH.findall(line)
                      if not (ROOT / path.rstrip(".")).exists()})
    assert not missing, f"paths named in the docs that do not exist: {missing}"
