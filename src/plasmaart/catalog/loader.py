"""Reading the catalog file and refusing a bad one with a message an operator can act on."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plasmaart.catalog.schema import Catalog

DEFAULT_CATALOG_PATH = Path(__file__).with_name("catalog.toml")


class CatalogError(ValueError):
    """The catalog cannot be used. One line per problem, each naming the source."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"catalog file {source}: {problem}" for problem in problems))


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog at ``path``, or the packaged seed catalog."""
    path = DEFAULT_CATALOG_PATH if path is None else path
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise CatalogError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(str(path), [f"TOML syntax error: {exc}"]) from exc
    return catalog_from_dict(data, source=str(path))


def catalog_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Catalog:
    """Validate already-parsed catalog data; ``source`` names it in errors."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(
            source, [_describe(error["loc"], error["msg"]) for error in exc.errors()]
        ) from exc


def _describe(loc: tuple[int | str, ...], message: str) -> str:
    # A ValueError raised by one of our validators already reads as a
    # sentence; pydantic's "Value error, " prefix adds nothing for an operator.
    reason = message.removeprefix("Value error, ")
    path = _field_path(loc)
    return f"{path}: {reason}" if path else reason


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``("models", 3, "credits")`` -> ``models[3].credits``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            # "[key]" marks an error in a mapping's key; the key itself is the
            # previous part and the message says what was expected.
            path += f".{part}" if path else part
    return path
