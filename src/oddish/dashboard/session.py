"""Who may see the dashboard, and which posts it acts on.

With ``ODDISH_API_KEY`` set, every page, fragment and action needs the session cookie that the
login form sets (``oddish.api.auth.session_token``); without it a page sends the browser to the
login form and a fragment answers 401, so nothing of the data is shown. Without a key the
dashboard is open, like the API.

Actions are POSTs from the dashboard's own pages: one whose Origin (or, lacking it, Referer) is
not this server is refused, so another site cannot make a visitor's browser cancel a task, with
or without a key (the cookie is SameSite=Strict besides).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import Request

from oddish.api.auth import SESSION_COOKIE, session_accepted, session_token
from oddish.config import get_settings

# A browser session: the cookie goes when the browser closes, or on logout.
COOKIE_PATH = "/"


class LoginRequired(Exception):
    """The request has no valid session while a key is set."""


class ForeignPost(Exception):
    """A POST that did not come from this server's pages."""


def has_session(request: Request) -> bool:
    expected = get_settings().api_key
    return not expected or session_accepted(request.headers.get("cookie"), expected)


async def require_session(request: Request) -> None:
    """A route dependency: LoginRequired unless the request may see the dashboard."""
    if not has_session(request):
        raise LoginRequired()


def key_matches(given: str) -> bool:
    expected = get_settings().api_key or ""
    return secrets.compare_digest(given.encode(), expected.encode())


def session_cookie_value() -> str:
    return session_token(get_settings().api_key or "")


async def require_same_origin(request: Request) -> None:
    """A route dependency of every action: ForeignPost unless the browser says the form was on
    a page of this server (Origin, else Referer; a POST without either is refused too)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        raise ForeignPost("the request says no origin")
    parts = urlsplit(source)
    own = urlsplit(str(request.base_url))
    if (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
        raise ForeignPost(f"a form of {parts.scheme}://{parts.netloc}, not of this server")


__all__ = [
    "COOKIE_PATH",
    "SESSION_COOKIE",
    "ForeignPost",
    "LoginRequired",
    "has_session",
    "key_matches",
    "require_same_origin",
    "require_session",
    "session_cookie_value",
]
