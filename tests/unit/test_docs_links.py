"""The repository stands on its own: its README and docs link only to files
in it, never to ../shared (which a clone does not have)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and reference definitions "[x]: target"; code spans removed first.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.M)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _relative_links(page: Path) -> list[str]:
    text = _CODE.sub("", page.read_text())
    targets = [a or b for a, b in _LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text
    assert "/work/shared" not in text


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_in_the_repository(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        path = (page.parent / unquote(target.split("#", 1)[0])).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)} links to what the repository lacks"


def test_the_pages_have_links_to_check() -> None:
    assert "docs/pricing.md" in _relative_links(ROOT / "README.md")
    assert len([t for page in PAGES for t in _relative_links(page)]) > 20
