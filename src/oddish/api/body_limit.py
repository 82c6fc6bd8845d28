"""Refuses request bodies over a size limit, before or while they arrive, declared length or not.

Every body is bounded: uploads by the upload limit, everything else (JSON) by a much smaller
one. A chunked upload carries no Content-Length: without this, the multipart parser would spool
the whole body to disk before the archive's own size check could refuse it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oddish.api.asgi_answers import drain_body, send_json_error


class BodyTooLarge(HTTPException):
    """An HTTPException, so that the framework's body parsing passes it on as the 413 it is."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes; the limit is exceeded")


class BodySizeLimit:
    """ASGI middleware: a body longer than its path's limit gets a 413, unread. ``limits``
    gives some paths their own limit; every other path has ``default_max_bytes``."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default_max_bytes: int) -> None:
        self.app = app
        self.limits = limits
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limits.get(scope["path"], self.default_max_bytes)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await _refuse(receive, send, BodyTooLarge(max_bytes))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _refuse(receive, send, exc)


async def _refuse(receive: Receive, send: Send, exc: BodyTooLarge) -> None:
    await drain_body(receive)
    # Past the drain limit the body is left unread: the connection cannot carry another request.
    await send_json_error(send, 413, exc.detail, [(b"connection", b"close")])
