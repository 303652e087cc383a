"""``/healthz``, ``/readyz`` and ``/metrics`` for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from plasmaart.db.migrate import head_revision, probe_revision
from plasmaart.db.outage import kind_of
from plasmaart.web.degradation import degraded
from plasmaart.web.deps import PlatformDep
from plasmaart.web.problems import UNAVAILABLE_RETRY_AFTER_S, problem

router = APIRouter(tags=["operations"])
# The longest the readiness probe waits for the database's answer.
READY_WITHIN_S = 3.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    migration: str | None
    # What this process works without now (web/degradation.py): still ready.
    degraded: list[str] = []


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it does not touch the database)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"description": "Not ready"}})
def readyz(platform: PlatformDep) -> Readiness | JSONResponse:
    """The database answers and its schema is at the migrations' head."""
    db = platform.db
    try:
        # Quick: a load balancer's probe gives up after a few seconds.
        with db.deadline(min(READY_WITHIN_S, platform.settings.db_timeout_s)):
            revision = probe_revision(db)
    except SQLAlchemyError as exc:
        return problem(
            503,
            "not_ready",
            "Not ready",
            f"database unreachable ({kind_of(exc)}): {type(exc).__name__}",
            {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        )
    head = head_revision()
    if revision != head:
        return problem(
            503,
            "not_ready",
            "Not ready",
            f"database schema at {revision or 'nothing'}, code needs {head}: "
            "run `plasmaart migrate`",
        )
    return Readiness(
        status="ready", database=platform.db.dialect, migration=revision, degraded=degraded()
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition: the HTTP metrics (of every API process)
    and the business metrics (web/business_metrics.py)."""
    return Response(
        generate_latest(request.app.state.metrics.exposition), media_type=CONTENT_TYPE_LATEST
    )
