"""Two small ASGI middlewares in front of the ingress app: API-key authentication, and a guard that
refuses request bodies that are too large (before reading past the limit) or not JSON."""

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from leap_ray.errors import LeapRayError, PayloadTooLarge, Unauthorized, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _path(scope: Scope) -> str:
    return scope["path"].removeprefix(scope.get("root_path", "")) or "/"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def send_error(send: Send, error: LeapRayError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error.body()).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status_code, "headers": [*base, *headers]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every path but the health checks; keys compared in constant time."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys if key]

    def _allowed(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        token_bytes = token.strip().encode()
        # Compare with every key, so the time taken does not tell which one nearly matched.
        return sum(hmac.compare_digest(token_bytes, key) for key in self.keys) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or _path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self._allowed(_header(scope, b"authorization")):
            error = Unauthorized("a valid API key is required: Authorization: Bearer <key>")
            return await send_error(send, error, [(b"www-authenticate", b'Bearer realm="leap_ray"')])
        return await self.app(scope, receive, send)


class RequestGuard:
    """POST bodies must be JSON and at most `max_body_bytes`. The body is read here, so a large one
    (declared or chunked) is refused as soon as it passes the limit; the app then reads it from memory
    and later receive() calls still reach the client, so disconnects are still seen."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        media_type = _header(scope, b"content-type").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            wrong_type = UnsupportedMediaType("send the request as Content-Type: application/json")
            return await send_error(send, wrong_type)
        too_large = PayloadTooLarge(f"the request body is larger than {self.max_body_bytes} bytes")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await send_error(send, too_large)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await send_error(send, too_large)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)
