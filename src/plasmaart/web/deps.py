"""Dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from plasmaart.platform import Platform
from plasmaart.web.pagination import DEFAULT_LIMIT, PageParams


async def get_platform(request: Request) -> Platform:
    """Async, as it only reads the app's state: FastAPI runs a plain ``def``
    dependency in the thread pool, a hop every route would pay for nothing."""
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size (default 50, max 200)")]
CursorQuery = Annotated[str | None, Query(description="Opaque cursor from next_cursor")]


async def _page_params(limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None) -> PageParams:
    """Async for the reason ``get_platform`` is."""
    return PageParams(limit, cursor)


# ``?limit=&cursor=`` of a paged list.
PageQuery = Annotated[PageParams, Depends(_page_params)]
