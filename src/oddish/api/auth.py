"""Bearer-token check, on when ODDISH_API_KEY is set (unset means local and open)."""

from __future__ import annotations

import secrets

from fastapi import Header, HTTPException, status

from oddish.config import get_settings


async def require_api_key(authorization: str | None = Header(default=None)) -> None:
    expected = get_settings().api_key
    if not expected:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key: send 'Authorization: Bearer <ODDISH_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
