"""Pure ASGI guards that answer before the framework reads or routes anything.

`BodyLimit` caps the request body while it is read: a declared `Content-Length` over the cap is
refused before a byte of the body is read, and a chunked body as soon as the running total
passes it, so the server never buffers more than the cap. `PathGuard` refuses a path holding a
NUL: no resource is named that way, and the database would refuse it as a parameter.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems


class BodyTooLarge(HTTPException):
    """Raised from `receive`: it reaches the API's error handler through the framework (which
    re-raises HTTP exceptions met while parsing a body), or this middleware if nothing else
    catches it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this API's limit of {limit} bytes",
                         headers={"Connection": "close"})


async def _answer(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    headers, payload = problems.raw(status, detail)
    if close:
        # What is left of the body is never read; the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, BodyTooLarge(self.max_bytes).detail, close=True)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _answer(send, 413, exc.detail, close=True)


class PathGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            await _answer(send, 404, "Not Found")
            return
        await self.app(scope, receive, send)
