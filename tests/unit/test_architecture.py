"""The shape of the code (docs/architecture.md), checked on the source itself.

The import layers are import-linter's job (`make lint`); these are the rules
it cannot see:

* SQL lives in repositories: only modules named ``repository.py`` or
  ``*_repository.py``, the ledger's read models (``ledger/queries.py``,
  ``ledger/invariants.py``) and the ``db`` package build statements, that is
  import the tables or SQLAlchemy's statement constructors;
* untyped rows stay there too: no ``Row[...]`` or ``AnyRow`` anywhere else,
  so that what crosses into services and routes is a dataclass mypy checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "plasmaart"

# SQLAlchemy names that build or run SQL; importing one outside a repository
# means SQL is being written there.
STATEMENT_NAMES = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "text",
        "func",
        "and_",
        "or_",
        "case",
        "exists",
        "literal",
        "bindparam",
        "Row",
    }
)


def repository_like(path: Path) -> bool:
    rel = path.relative_to(SRC)
    if rel.parts[0] == "db":
        return True
    if path.name == "repository.py" or path.name.endswith("_repository.py"):
        return True
    return rel.as_posix() in {"ledger/queries.py", "ledger/invariants.py"}


def services_and_routes() -> list[Path]:
    """Every server module but the repositories (the client talks HTTP only)."""
    return sorted(
        p
        for p in SRC.rglob("*.py")
        if p.relative_to(SRC).parts[0] != "client" and not repository_like(p)
    )


def sql_imports(source: str) -> list[str]:
    """What a module imports that builds SQL: the tables, or statement constructors."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            # The tables' allowed values are in db.values, which anyone may use.
            if node.module == "plasmaart.db.tables" or (
                node.module == "plasmaart.db" and any(a.name == "tables" for a in node.names)
            ):
                found.append(node.module)
            elif node.module.split(".")[0] == "sqlalchemy":
                found += [a.name for a in node.names if a.name in STATEMENT_NAMES]
    return found


def untyped_rows(source: str) -> list[int]:
    """Lines that name ``Row[...]`` or ``AnyRow`` (``repo.AnyRow`` too)."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        named_any_row = (isinstance(node, ast.Name) and node.id == "AnyRow") or (
            isinstance(node, ast.Attribute) and node.attr == "AnyRow"
        )
        row_of = (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Row"
        )
        if named_any_row or row_of:
            lines.append(node.lineno)
    return lines


def test_the_checks_see_sql_and_untyped_rows() -> None:
    # The detectors themselves: a module that writes SQL and passes rows on.
    source = (
        "from sqlalchemy import Row, select\n"
        "from plasmaart.db.tables import users\n"
        "from plasmaart.accounts.repository import AnyRow\n"
        "def f(row: Row[Any]) -> AnyRow: ...\n"
        "def g(row: repo.AnyRow) -> None: ...\n"
    )
    assert sql_imports(source) == ["Row", "select", "plasmaart.db.tables"]
    assert sorted(untyped_rows(source)) == [4, 4, 5]
    assert sql_imports("from sqlalchemy import Connection\n") == []
    assert sql_imports("from plasmaart.db.values import LOT_SOURCES\n") == []
    assert sql_imports("from plasmaart.db import tables\n") == ["plasmaart.db"]


@pytest.mark.parametrize("path", services_and_routes(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_sql_and_untyped_rows_stay_in_repositories(path: Path) -> None:
    source = path.read_text()
    assert sql_imports(source) == [], f"{path.name} builds SQL outside a repository"
    assert untyped_rows(source) == [], f"{path.name} passes untyped rows (Row[Any])"
