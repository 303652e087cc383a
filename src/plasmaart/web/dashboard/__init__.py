"""The dashboard: server-rendered pages (Jinja2) over the same services as the
API, with small scripts that call the JSON API for every action and follow
``/v1/events`` for live balances, generations and notifications.

``install(app)`` adds the page routes and serves the static assets under
``/assets``; see docs/dashboard.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from plasmaart.web.dashboard import invitation_pages, mail_pages, password_pages
from plasmaart.web.dashboard.pages import STATIC_DIR, not_found, router

ASSETS_PATH = "/assets"

__all__ = ["ASSETS_PATH", "install", "router"]


def install(app: FastAPI) -> None:
    """The pages, and their CSS and scripts, on ``app``."""
    app.include_router(router)
    app.include_router(password_pages.router)
    app.include_router(invitation_pages.router)
    app.include_router(mail_pages.router)
    # A browser asking for a page that does not exist gets the styled 404.
    app.add_exception_handler(404, not_found)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="dashboard-assets")
