"""A JSON error answered straight from ASGI middleware, before any route (or body) is reached."""

from __future__ import annotations

import json

from starlette.types import Receive, Send

# A client sends its whole body before it reads the answer: one refused mid-body sees a reset
# connection, not the reason. Bodies up to this size are read (and dropped, chunk by chunk, so
# they cost no memory) before the answer; larger ones are cut off.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


async def drain_body(receive: Receive, max_bytes: int = DRAIN_MAX_BYTES) -> None:
    """Read and drop the rest of the request's body, at most ``max_bytes`` of it."""
    drained = 0
    while drained <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def send_json_error(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
