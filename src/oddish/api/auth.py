"""Bearer-token check, on when ODDISH_API_KEY is set (unset means local and open).

An ASGI middleware rather than a route dependency: the key is checked before anything of the
request's body is read, so a stranger cannot make the API parse (or hold) a body at all.

The dashboard (``/ui``) checks its own session, a cookie its login form sets; that cookie also
opens the API's reads (GET), so that a trial's files open from the dashboard in the browser. It
holds a value derived from the key, never the key, and is HttpOnly and SameSite=Strict: another
site's page can neither read it nor make the browser send it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from oddish.api.asgi_answers import drain_body, send_json_error
from oddish.config import get_settings

# Liveness and the API's own description are readable without the key.
OPEN_PATHS = frozenset(
    {"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# The documentation's scripts and styles (no data in them).
OPEN_PREFIXES = ("/api-assets/",)
# Served by the dashboard, which asks for the key through its login form.
DASHBOARD_PATH = "/ui"
SESSION_COOKIE = "oddish_session"
READ_METHODS = frozenset({"GET", "HEAD"})
UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <ODDISH_API_KEY>'"


def key_accepted(authorization: str | None, expected: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), expected.encode())


def session_token(api_key: str) -> str:
    """The dashboard session cookie's value for ``api_key``: changing the key ends every
    session."""
    return hmac.new(api_key.encode(), b"oddish dashboard session", hashlib.sha256).hexdigest()


def session_accepted(cookie_header: str | None, expected: str) -> bool:
    """Whether the Cookie header holds the session of the key ``expected``."""
    token = cookie_parser(cookie_header or "").get(SESSION_COOKIE, "")
    return secrets.compare_digest(token.encode(), session_token(expected).encode())


def _is_open(path: str) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


class ApiKeyGate:
    """Answers 401 to any request without the key (or, to read, the dashboard's session),
    except on the open paths and the dashboard's own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = get_settings().api_key
        if scope["type"] != "http" or not expected or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        cookie = headers.get(b"cookie", b"").decode("latin-1")
        if key_accepted(authorization, expected) or (
            scope["method"] in READ_METHODS and session_accepted(cookie, expected)
        ):
            await self.app(scope, receive, send)
            return
        # Read (and dropped) before the answer, never parsed or held: see drain_body.
        await drain_body(receive)
        await send_json_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
