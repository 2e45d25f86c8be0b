"""Slow, reconnecting and flooding clients are answered at Ray Serve's HTTP proxy, before a request
takes one of the ingress's slots (installed with our error shape, leap_ray.serve.proxy).

Serve's proxy hands a request to an ingress replica at once and the replica pulls its body from the
client: a slow body held a slot for as long as it trickled in, and 550 of them, reconnecting after
each 408, took all 512 (health checks then waited 9-13 s). Here the proxy reads each body whole
first, under the same pace rules (`read_whole_body`), so a request reaches the ingress complete, and:
- one client (its address, and its key when it names one: both must have room) may send
  `uploads.per_client` bodies at once (429),
  and the proxy holds at most `uploads.buffered_bytes` of bodies, from everyone (503). A slow body
  costs the proxy a connection and its bytes so far: no count of them is capped, since one cap for
  everyone is one that many addresses fill, turning away everyone else;
- each client has a token bucket of `rate.requests_per_s`, `rate.burst` deep (429);
- GET /healthz is answered here: this node's HTTP entry is up (Serve health-checks the ingress
  replicas itself, and /readyz reports the models).
Limits are per proxy (one per node). The proxy cannot check a key (the ingress does): a request
counts against its address too, so made-up keys bring no allowance of their own."""

import hashlib
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from leap_ray.config import LIMITS, Limits
from leap_ray.errors import LeapRayError, MalformedRequest, Overloaded, TooManyRequests
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
MAX_BUCKETS = 4096  # clients tracked; past it the least recently seen is forgotten (a full bucket)
SERVE_ROUTES = frozenset({"/-/healthz", "/-/routes"})  # Serve's own, answered by the proxy


def clients_of_request(scope: Scope) -> list[str]:
    """Whom a request is counted against: its address, and its bearer key when it names one. Both:
    the proxy cannot check a key, so a made-up one must not bring a fresh allowance."""
    address = scope.get("client") or ("unknown", 0)
    clients = [f"ip:{address[0]}"]
    authorization = header(scope, b"authorization")
    if authorization:
        clients.append("key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16])
    return clients


def is_healthz(scope: Scope) -> bool:
    """GET or HEAD of /healthz, under a route prefix of one segment or none."""
    segments = scope["path"].strip("/").split("/")
    return scope["method"] in ("GET", "HEAD") and segments[-1] == "healthz" and len(segments) <= 2


class TokenBuckets:
    """A token bucket per client: `rate` tokens a second, at most `burst` held."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client: (tokens, when)

    def take(self, clients: list[str]) -> bool:
        """Takes a token of each client's; False when one has none (or True when there is no limit)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        refilled = {client: self.refilled(client, now) for client in clients}
        allowed = all(tokens >= 1 for tokens in refilled.values())
        for client, tokens in refilled.items():
            self.buckets[client] = (tokens - 1 if allowed else tokens, now)
            self.buckets.move_to_end(client)
        while len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return allowed

    def refilled(self, client: str, now: float) -> float:
        tokens, then = self.buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)


class ClientGate:
    def __init__(self, app: ASGIApp, limits: Limits = LIMITS) -> None:
        self.app = app
        self.limits = limits
        self.rates = TokenBuckets(limits.rate.requests_per_s, limits.rate.burst)
        self.uploading: Counter[str] = Counter()  # bodies being read, per client
        self.buffered = 0  # bytes of the bodies being read or not yet handed on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in SERVE_ROUTES:
            return await self.app(scope, receive, send)
        if is_healthz(scope):
            return await _send_json(send, HEALTHY, with_body=scope["method"] == "GET")
        clients = clients_of_request(scope)
        if not self.rates.take(clients):
            error = TooManyRequests(f"more than {self.limits.rate.requests_per_s:g} requests a second")
            return await send_error(send, error, RETRY_AFTER)
        if not has_body(scope):
            return await self.app(scope, receive, send)
        refusal = self.body_refusal(scope, clients)
        if refusal is not None:
            return await send_error(send, refusal, RETRY_AFTER if refusal.status_code in (429, 503) else ())
        await self.pass_on_whole(scope, receive, send, clients)

    def body_refusal(self, scope: Scope, clients: list[str]) -> LeapRayError | None:
        """Why a body is refused before a byte of it is read, if it is."""
        if scope["method"] not in BODY_METHODS:  # Serve would queue it unread for the request's life
            return MalformedRequest(f"a {scope['method']} request takes no body", code="unexpected_body")
        declared = header(scope, b"content-length")
        if declared.isdecimal() and int(declared) > self.limits.max_body_bytes:
            return too_large(self.limits.max_body_bytes)
        per_client = self.limits.uploads.per_client
        if any(self.uploading[client] >= per_client for client in clients):
            return TooManyRequests(
                f"this client is sending {per_client} request bodies already", code="too_many_uploads"
            )
        return None

    async def pass_on_whole(self, scope: Scope, receive: Receive, send: Send, clients: list[str]) -> None:
        """Reads the body whole, then hands the request on with it. Every count taken is given back,
        however the request ends (an error, the client gone, the task cancelled)."""
        held = 0

        def count(size: int) -> None:
            nonlocal held
            if self.buffered + size > self.limits.uploads.buffered_bytes:
                raise Overloaded("the service holds as many request bodies as it takes; retry")
            held, self.buffered = held + size, self.buffered + size

        def handed_on() -> None:  # the ingress has the body: it no longer counts here
            nonlocal held
            self.buffered, held = self.buffered - held, 0

        self.uploading.update(clients)
        try:
            try:
                body = await read_whole_body(receive, self.limits.uploads, self.limits.max_body_bytes, count)
            finally:
                self.uploading.subtract(clients)
                for client in clients:
                    if not self.uploading[client]:
                        del self.uploading[client]
            if body is not None:  # else the client went away
                whole, body = replaying(body, receive, handed_on), None  # the replay alone holds it
                await self.app(scope, whole, send)
        except LeapRayError as error:
            await send_error(send, error, RETRY_AFTER if error.status_code == 503 else ())
        finally:
            handed_on()


async def _send_json(send: Send, body: bytes, with_body: bool = True) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body if with_body else b""})
