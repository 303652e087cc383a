"""Reading ``plasmaart doctor``'s table back, the way a person reads it: the
columns start where their headers start, a row starts with its check's name,
and the lines below it without one continue its finding and fix."""

from __future__ import annotations

from dataclasses import dataclass

HEADERS = ("CHECK", "STATUS", "FINDING", "FIX")


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    finding: str
    fix: str


def parse_table(out: str) -> tuple[list[Row], str]:
    """The rows of the table and the summary line after it. Asserts the
    table's shape: the header first, every cell inside its column."""
    lines = out.rstrip("\n").splitlines()
    header, *body, last = lines
    starts = [header.index(name) for name in HEADERS]
    assert starts[0] == 0, header
    assert starts == sorted(starts), header
    assert header.split() == list(HEADERS), header
    rows: list[list[str]] = []
    for line in body:
        cells = [
            line[start:end].strip()
            for start, end in zip(starts, [*starts[1:], len(line) + 1], strict=True)
        ]
        # A cell's text never spills into the gap before the next column.
        for start in starts[1:]:
            assert line[start - 1 : start].strip() == "", f"misaligned: {line!r}"
        if cells[0]:
            assert cells[1] in ("ok", "warning", "error"), line
            rows.append(cells)
        else:
            assert rows, f"a continuation line before any row: {line!r}"
            assert not cells[1], line
            for column in (2, 3):
                if cells[column]:
                    rows[-1][column] = f"{rows[-1][column]} {cells[column]}".strip()
    return [Row(*cells) for cells in rows], last


def levels(rows: list[Row]) -> dict[str, list[str]]:
    """Each check's statuses, in order."""
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.check, []).append(row.status)
    return found
