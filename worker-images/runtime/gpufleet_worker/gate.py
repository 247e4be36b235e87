"""The worker's front door: the token, then the body's size, checked before any route reads it.

A route that parses its body reads the whole of it first, so a check inside the route (a
FastAPI dependency) comes too late: anyone who can reach the port could make the worker
hold and parse bodies of any size. This ASGI middleware answers ``401`` to a request
without the token before reading a byte of its body, and ``413`` to an authenticated one
whose body is over the limit (by its ``Content-Length``, or while a chunked body streams
in); only then does the route see the body, replayed from a buffer of at most that size.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Refusal
from .protocol import AUTH_HEADER, AUTH_SCHEME, Reason


def refusal_response(error: Refusal) -> JSONResponse:
    """The answer for ``error``: its status code and an ErrorResponse body."""
    headers = {"WWW-Authenticate": AUTH_SCHEME} if error.reason is Reason.UNAUTHORIZED else None
    content = error.response().model_dump(by_alias=True, exclude_none=True)
    return JSONResponse(status_code=error.status_code, content=content, headers=headers)


def too_large(limit: int) -> Refusal:
    return Refusal(
        Reason.REQUEST_TOO_LARGE,
        f"request body: at most {limit} bytes (the worker's maxRequestBytes)",
    )


class RequestGate:
    """Refuses unauthenticated and oversized requests before their bodies are read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        accepts: Callable[[str | None], bool],
        public_paths: Collection[str],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.accepts = accepts
        self.public_paths = frozenset(public_paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.accepts(headers.get(AUTH_HEADER)):
            refusal = Refusal(Reason.UNAUTHORIZED, "a valid bearer token is required")
            await refusal_response(refusal)(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await refusal_response(too_large(self.max_body_bytes))(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await refusal_response(too_large(self.max_body_bytes))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then the server's own messages (a
    streaming response waits on them to learn that the client went away)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
