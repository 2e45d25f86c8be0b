"""Slow, reconnecting and flooding clients are answered at Ray Serve's HTTP proxy, before a request
takes one of the ingress's slots (installed with our error shape, leap_ray.serve.proxy).

Serve's proxy hands a request to an ingress replica at once and the replica pulls its body from the
client: a slow body held a slot for as long as it trickled in, and 550 of them, reconnecting after
each 408, took all 512 (health checks then waited 9-13 s). Here the proxy reads each body whole
first, under the same pace rules (`read_whole_body`), so a request reaches the ingress complete, and:
- one client (its API key, else its IP address) may send `uploads.per_client` bodies at once (429),
  and the proxy holds at most `uploads.buffered_bytes` of bodies, from everyone (503). A slow body
  costs the proxy a connection and its bytes so far: no count of them is capped, since one cap for
  everyone is one that many addresses fill, turning away everyone else;
- each client has a token bucket of `rate.requests_per_s`, `rate.burst` deep (429);
- GET /healthz is answered here: this node's HTTP entry is up (Serve health-checks the ingress
  replicas itself, and /readyz reports the models).
Limits are per proxy (one per node); a request is counted against its key when it has one (the
ingress checks the key), so clients behind one address each have their own allowance."""

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable

from leap_ray.config import LIMITS, Limits
from leap_ray.errors import LeapRayError, Overloaded
from leap_ray.serve.middleware import (
    BODY_METHODS,
    ASGIApp,
    Receive,
    Scope,
    Send,
    has_body,
    header,
    read_whole_body,
    replaying,
    send_error,
    too_large,
)

RETRY_AFTER = [(b"retry-after", b"1")]
HEALTHY = json.dumps({"status": "ok"}).encode()
MAX_BUCKETS = 4096  # clients tracked before the idle ones (full buckets) are forgotten


class TooManyRequests(LeapRayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


def client_of_request(scope: Scope) -> str:
    """Whom a request is counted against: a hash of its bearer key, else its address."""
    authorization = header(scope, b"authorization")
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    address = scope.get("client") or ("unknown", 0)
    return f"ip:{address[0]}"


class TokenBuckets:
    """A token bucket per client: `rate` tokens a second, at most `burst` held."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, when counted)

    def take(self, client: str) -> bool:
        """Takes a token of the client's; False when it has none (or True when there is no limit)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, then = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(self.buckets) >= MAX_BUCKETS:
            self.forget_idle(now)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return False
        self.buckets[client] = (tokens - 1, now)
        return True

    def forget_idle(self, now: float) -> None:
        """Drops the clients whose buckets are full again: they are as if never seen."""
        full = self.burst / self.rate
        self.buckets = {c: (t, when) for c, (t, when) in self.buckets.items() if now - when < full}


class ClientGate:
    def __init__(self, app: ASGIApp, limits: Limits = LIMITS) -> None:
        self.app = app
        self.limits = limits
        self.rates = TokenBuckets(limits.rate.requests_per_s, limits.rate.burst)
        self.uploading: Counter[str] = Counter()  # bodies being read, per client
        self.buffered = 0  # bytes of the bodies being read or handed on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/-/"):  # Serve's own routes
            return await self.app(scope, receive, send)
        if scope["method"] == "GET" and scope["path"].rstrip("/").endswith("/healthz"):
            return await _send_json(send, HEALTHY)
        client = client_of_request(scope)
        if not self.rates.take(client):
            error = TooManyRequests(f"more than {self.limits.rate.requests_per_s:g} requests a second")
            return await send_error(send, error, RETRY_AFTER)
        if scope["method"] not in BODY_METHODS or not has_body(scope):
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        if declared.isdecimal() and int(declared) > self.limits.max_body_bytes:
            return await send_error(send, too_large(self.limits.max_body_bytes))
        refusal = self.upload_refusal(client)
        if refusal is not None:
            return await send_error(send, refusal, RETRY_AFTER)
        await self.pass_on_whole(scope, receive, send, client)

    def upload_refusal(self, client: str) -> LeapRayError | None:
        uploads = self.limits.uploads
        if self.uploading[client] >= uploads.per_client:
            return TooManyRequests(
                f"this client is sending {uploads.per_client} request bodies already", code="too_many_uploads"
            )
        return None

    async def pass_on_whole(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        """Reads the body whole, then hands the request on with it."""
        held = 0

        def count(size: int) -> None:
            nonlocal held
            if self.buffered + size > self.limits.uploads.buffered_bytes:
                raise Overloaded("the service holds as many request bodies as it takes; retry")
            held, self.buffered = held + size, self.buffered + size

        self.uploading[client] += 1
        try:
            body = await read_whole_body(receive, self.limits.uploads, self.limits.max_body_bytes, count)
        except LeapRayError as error:
            body, refusal = None, error
        else:
            refusal = None
        finally:
            self.uploading[client] -= 1
            if not self.uploading[client]:
                del self.uploading[client]
        try:
            if refusal is not None:
                await send_error(send, refusal, RETRY_AFTER if refusal.status_code == 503 else ())
            elif body is not None:  # else the client went away
                await self.app(scope, replaying(body, receive), send)
        finally:
            self.buffered -= held


async def _send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
