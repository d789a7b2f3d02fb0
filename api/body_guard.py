"""Request bodies are checked before routing, authentication or JSON parsing: at most 16 KiB (413
PAYLOAD_TOO_LARGE), UTF-8, and JSON nested at most 32 levels deep (422 VALIDATION_ERROR). The depth is
counted by a flat scan, so a body nested 100,000 deep never reaches a recursive decoder."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import ErrorCode

MAX_BODY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 32


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (strings skipped), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


class BodyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _refuse(
                send, 413, ErrorCode.PAYLOAD_TOO_LARGE, f"request body is larger than {MAX_BODY_BYTES} bytes"
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _refuse(
                    send,
                    413,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request body is larger than {MAX_BODY_BYTES} bytes",
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                await _refuse(send, 422, ErrorCode.VALIDATION_ERROR, "request body is not valid UTF-8")
                return
            if json_depth(text) > MAX_JSON_DEPTH:
                await _refuse(
                    send, 422, ErrorCode.VALIDATION_ERROR, f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, code: ErrorCode, message: str) -> None:
    payload: dict[str, Any] = {"error": {"code": code.value, "message": message}}
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
