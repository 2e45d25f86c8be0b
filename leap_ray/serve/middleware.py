"""Two small ASGI middlewares in front of the ingress app: API-key authentication (or a signed output
link, which needs no key), and a guard that
reads every POST body itself: JSON only (UTF-8), at most `max_body_bytes` (refused before reading past
the limit), and arriving at a sane pace (slow-loris clients get 408 instead of holding a slot). The
body reading is shared with the HTTP proxy's gate (leap_ray.serve.client_gate)."""

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from leap_ray.config import UploadLimits
from leap_ray.errors import LeapRayError, PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Whether a request (method, path, query string) is a signed link's that holds; raises Forbidden for
# one that does not (`leap_ray.serve.jobs.links.LinkSigner.verify`).
LinkCheck = Callable[[str, str, bytes], bool]

# Health checks and the API docs stay open with keys on: probes and people reading the docs have none.
OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # guarded: size, rate, content type
OPEN_PREFIXES = ("/docs/assets/",)  # the docs pages' JavaScript and CSS
# Take multipart/form-data: OpenAI's clients send files so, and Replicate's upload them so.
FORM_PATHS = frozenset({"/v1/images/edits", "/v1/files"})


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _path(scope: Scope) -> str:
    return scope["path"].removeprefix(scope.get("root_path", "")) or "/"


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def send_error(send: Send, error: LeapRayError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error.body()).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status_code, "headers": [*base, *headers]})
    await send({"type": "http.response.body", "body": body})


CLIENT = "leap_ray.client"  # in the ASGI scope: whose jobs the request may see


def client_of(scope: Scope) -> str | None:
    """Whose jobs a request may see: its API key's id ("" when the service has no keys: one user),
    or None for an admin key (everyone's)."""
    return scope.get(CLIENT, "")


def key_id(key: bytes) -> str:
    """A key's id in job records: a hash, so that the store never holds a key."""
    return hashlib.sha256(key).hexdigest()[:16]


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every path but the open ones; keys compared in constant time.
    The key's id goes into the scope (`client_of`): jobs belong to the key that made them, and
    admin keys see every job. A request by a signed output link (`check_link`) needs no key; one whose
    link does not hold (expired, altered) is refused (403) unless it carries a valid key, which then
    holds it to that key's jobs as any keyed request."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        admin_keys: Iterable[str] = (),
        check_link: LinkCheck | None = None,
    ) -> None:
        self.app = app
        self.check_link = check_link
        self.admin_keys = {key.encode() for key in admin_keys if key}
        self.keys = [key.encode() for key in keys if key] + sorted(self.admin_keys)

    def _matching(self, authorization: str) -> bytes | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token_bytes = token.strip().encode()
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matches = [key for key in self.keys if hmac.compare_digest(token_bytes, key)]
        return matches[0] if matches else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            linked = self.check_link is not None and self.check_link(
                scope["method"], _path(scope), scope.get("query_string", b"")
            )
        except LeapRayError as error:
            # A job view older than its links' lifetime, fetched with the key that made the job (the
            # light client's job_output) works as an unsigned keyed fetch would; without a key, 403.
            key = self._matching(header(scope, b"authorization"))
            if key is None:
                return await send_error(send, error)
            return await self._as_key(key, scope, receive, send)
        if linked:
            # The link opens one output of one job (its path names the job's store id): whoever made
            # it could see that job, so its fetch is not held to a key's jobs.
            scope[CLIENT] = None
            return await self.app(scope, receive, send)
        if not self.keys or _is_open(_path(scope)):
            return await self.app(scope, receive, send)
        key = self._matching(header(scope, b"authorization"))
        if key is None:
            error = Unauthorized("a valid API key is required: Authorization: Bearer <key>")
            return await send_error(send, error, [(b"www-authenticate", b'Bearer realm="leap_ray"')])
        return await self._as_key(key, scope, receive, send)

    async def _as_key(self, key: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        scope[CLIENT] = None if key in self.admin_keys else key_id(key)
        return await self.app(scope, receive, send)


def _media_type_error(content_type: str, path: str) -> LeapRayError | None:
    """Why a Content-Type is refused: not JSON (nor a form where forms are taken), or JSON in a
    charset other than UTF-8 (RFC 8259)."""
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if path in FORM_PATHS:
        if media_type != "multipart/form-data":
            return UnsupportedMediaType("send the request as Content-Type: multipart/form-data")
        return None
    if media_type != "application/json" and not media_type.endswith("+json"):
        return UnsupportedMediaType("send the request as Content-Type: application/json")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return UnsupportedMediaType("JSON bodies must be UTF-8", param="charset", code="charset")
    return None


class RequestGuard:
    """Reads each POST body here (`read_whole_body`), refusing what is not JSON (or a form, on
    FORM_PATHS), larger than `max_body_bytes`, or too slow (`uploads`). The app then reads the body
    from memory; later receive() calls still reach the client, so disconnects are still seen. Under
    Serve the proxy has read the body already (leap_ray.serve.client_gate): this guard is what holds
    without it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, uploads: UploadLimits) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        # A POST without a body (a cancel) needs no content type; one with a body must be JSON.
        content_type = header(scope, b"content-type")
        wrong_type = _media_type_error(content_type, _path(scope))
        if (content_type or has_body(scope)) and wrong_type is not None:
            return await send_error(send, wrong_type)
        if declared.isdecimal() and int(declared) > self.max_body_bytes:
            return await send_error(send, too_large(self.max_body_bytes))
        try:
            body = await read_whole_body(receive, self.uploads, self.max_body_bytes)
        except LeapRayError as error:
            return await send_error(send, error)
        if body is None:  # the client went away
            return None
        return await self.app(scope, replaying(body, receive), send)


def has_body(scope: Scope) -> bool:
    declared = header(scope, b"content-length")
    return declared not in ("", "0") or bool(header(scope, b"transfer-encoding"))


def too_large(max_body_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {max_body_bytes} bytes")


def replaying(
    body: bytes | bytearray, receive: Receive, on_replayed: Callable[[], None] | None = None
) -> Receive:
    """A receive() that gives the body read already (then lets it go, telling `on_replayed`), then
    passes on to the client's (a disconnect)."""
    held: bytes | bytearray | None = body

    async def replay() -> Message:
        nonlocal held
        if held is None:
            return await receive()
        message = {"type": "http.request", "body": bytes(held), "more_body": False}
        held = None
        if on_replayed is not None:
            on_replayed()
        return message

    return replay


async def read_whole_body(
    receive: Receive, uploads: UploadLimits, max_bytes: int, on_chunk: Callable[[int], None] | None = None
) -> bytearray | None:
    """The whole body, or None when the client went away. Raises RequestTimeout after a gap of
    `idle_timeout_s` between chunks, when the body is still arriving after idle_timeout_s + received /
    `min_rate_bytes_s` seconds (mod_reqtimeout's rule: a byte every few seconds cannot hold a slot
    for long) or after `timeout_s` however steadily; PayloadTooLarge as soon as it passes `max_bytes`.
    `on_chunk` is told each chunk's size (and may raise)."""
    body = bytearray()
    started = time.monotonic()
    while True:
        by_rate = uploads.idle_timeout_s + len(body) / uploads.min_rate_bytes_s
        allowed = started + min(by_rate, uploads.timeout_s) - time.monotonic()
        try:
            message = await asyncio.wait_for(receive(), min(uploads.idle_timeout_s, max(allowed, 0.0)))
        except TimeoutError:
            raise RequestTimeout("the request body arrived too slowly", code="body_timeout") from None
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        body += chunk
        if len(body) > max_bytes:
            raise too_large(max_bytes)
        if on_chunk is not None:
            on_chunk(len(chunk))
        if not message.get("more_body", False):
            return body
