"""The page an invitation's mail links to: ``/invitations?token=...``.

It is public, like the link it is reached by: the token is
the proof. It shows the team, who invited, the address invited and what
joining means, with Accept and Decline buttons that call the JSON API. A
visitor who is not signed in is asked to log in or sign up with links that
come back here (``next=``); one signed in with another address is told so
and offered to switch accounts; a member of the team, an answered, withdrawn
or expired invitation and an unknown token each get their own message.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from plasmaart.errors import InvalidToken
from plasmaart.teams.service import InvitationView
from plasmaart.web.dashboard import views
from plasmaart.web.dashboard.pages import _viewer, render
from plasmaart.web.deps import PlatformDep

router = APIRouter(include_in_schema=False)


@router.get("/invitations")
def invitation_page(
    request: Request,
    platform: PlatformDep,
    token: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    principal = _viewer(request, platform)
    user = None if principal is None else principal.user
    found: InvitationView | None
    with platform.db.read() as conn:
        try:
            found = platform.teams.invitation_by_token(conn, token or "", user)
        except InvalidToken:
            found = None
        frame = None if user is None else views.frame(conn, platform, user)
    here = "/invitations?" + urlencode({"token": token or ""})
    context: dict[str, Any] = {
        "title": "Team invitation",
        "invitation": found,
        "token": token or "",
        "viewer": user,
        "login_url": "/login?" + urlencode({"next": here}),
        "signup_url": "/signup?" + urlencode({"next": here}),
        "must_verify": (
            user is not None
            and platform.settings.email_verification_required
            and not user.email_verified
        ),
        "active": "team",
    }
    if frame is not None:
        context["frame"] = frame
    return render(request, "invitation.html", context, status_code=200 if found else 400)
