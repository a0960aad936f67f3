"""Refuse request bodies over a size limit with 413, before they are read into memory.

A declared Content-Length over the limit is refused at once. A body without one (chunked) is
counted as it streams in, and refused as soon as it passes the limit. The point limit
(``MAX_POINTS_PER_REQUEST``) is checked later, on the parsed body; this limit bounds the bytes
and the parsing work any request can cost.
"""

from __future__ import annotations

from fastapi import HTTPException  # FastAPI re-raises its own subclass from body parsing; others become 400
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import problem


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes (CMANP_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await problem(413, self._detail())(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app, so the app's HTTPException handler answers with a problem.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)
