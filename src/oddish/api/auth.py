"""Bearer-token check, on when ODDISH_API_KEY is set (unset means local and open).

An ASGI middleware rather than a route dependency: the key is checked before anything of the
request's body is read, so a stranger cannot make the API parse (or hold) a body at all.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from oddish.api.asgi_answers import drain_body, send_json_error
from oddish.config import get_settings

# Liveness and the API's own description are readable without the key.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <ODDISH_API_KEY>'"


def key_accepted(authorization: str | None, expected: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), expected.encode())


class ApiKeyGate:
    """Answers 401 to any request without the key, except on OPEN_PATHS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = get_settings().api_key
        if scope["type"] != "http" or not expected or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if key_accepted(authorization, expected):
            await self.app(scope, receive, send)
            return
        # Read (and dropped) before the answer, never parsed or held: see drain_body.
        await drain_body(receive)
        await send_json_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
