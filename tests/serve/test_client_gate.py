"""The client gate at Serve's HTTP proxy (leap_ray.serve.client_gate), in-process: a request reaches
the ingress only with its whole body, each client has its own upload and rate allowance, and
/healthz never waits for the ingress."""

import asyncio
import json

import pytest

from leap_ray.config import Limits, RateLimits, UploadLimits
from leap_ray.serve.client_gate import MAX_BUCKETS, ClientGate, TokenBuckets

BODY = b'{"prompt": "a lighthouse"}'  # 26 bytes


class Ingress:
    """The app behind the gate: records what reached it, with the body it read."""

    def __init__(self) -> None:
        self.reached: list[tuple[str, bytes]] = []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.reached.append((scope["path"], message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def scope_of(method="POST", path="/v1/sdxl", key=None, address="10.0.0.1", length=26) -> dict:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers, "client": (address, 5000)}


def chunks(*parts: bytes, gap_s: float = 0.0, then_stall: bool = False):
    """A client's receive(): the parts, `gap_s` apart, then (with then_stall) nothing ever again."""
    queue = list(parts)

    async def receive() -> dict:
        await asyncio.sleep(gap_s)
        if not queue:
            await asyncio.Event().wait() if then_stall else None
            return {"type": "http.disconnect"}
        part = queue.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(queue) or then_stall}

    return receive


async def request(gate: ClientGate, scope: dict, receive) -> tuple[int, dict]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body) if body else {}


def limits(**uploads: object) -> Limits:
    return Limits(uploads=UploadLimits(**uploads), rate=RateLimits(requests_per_s=0))


def test_a_body_reaches_the_ingress_only_whole_and_one_that_stops_gets_408_without_reaching_it():
    ingress = Ingress()
    gate = ClientGate(ingress, limits(idle_timeout_s=0.2))
    status, _ = asyncio.run(request(gate, scope_of(), chunks(BODY[:5], BODY[5:], gap_s=0.05)))
    assert status == 200 and ingress.reached == [("/v1/sdxl", BODY)]
    status, answer = asyncio.run(request(gate, scope_of(), chunks(BODY[:5], then_stall=True)))
    assert status == 408 and answer["error"]["code"] == "body_timeout"
    assert len(ingress.reached) == 1 and gate.buffered == 0 and not gate.uploading


def test_a_client_sending_too_many_bodies_at_once_gets_429_while_others_go_on():
    ingress = Ingress()
    gate = ClientGate(ingress, limits(per_client=2, idle_timeout_s=0.5))

    async def go() -> list[tuple[int, dict]]:
        stalled = [
            asyncio.ensure_future(request(gate, scope_of(key="k1"), chunks(b"{", then_stall=True)))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)  # both are being read
        third = await request(gate, scope_of(key="k1", address="10.0.0.9"), chunks(BODY))
        same_address = await request(gate, scope_of(key="k2"), chunks(BODY))
        other = await request(gate, scope_of(key="k2", address="10.0.0.2"), chunks(BODY))
        return [third, same_address, other, *await asyncio.gather(*stalled)]

    third, same_address, other, *stalled = asyncio.run(go())
    for refused in (third, same_address):  # its key's, or its address's, two bodies are arriving
        assert refused[0] == 429 and refused[1]["error"]["code"] == "too_many_uploads"
    assert other[0] == 200 and ingress.reached == [("/v1/sdxl", BODY)]
    assert [status for status, _ in stalled] == [408, 408] and not gate.uploading


def test_past_the_proxy_wide_byte_bound_an_upload_gets_503_with_retry_after():
    gate = ClientGate(Ingress(), limits(buffered_bytes=10))
    status, answer = asyncio.run(request(gate, scope_of(), chunks(BODY)))
    assert status == 503 and answer["error"]["type"] == "overloaded_error" and gate.buffered == 0


def test_healthz_is_answered_at_the_proxy_even_when_the_ingress_would_never_answer():
    async def never(scope, receive, send) -> None:
        await asyncio.Event().wait()

    gate = ClientGate(never, limits())
    status, answer = asyncio.run(
        asyncio.wait_for(request(gate, scope_of("GET", "/healthz", length=0), chunks()), 1.0)
    )
    assert status == 200 and answer == {"status": "ok"}


def test_each_client_has_its_own_token_bucket_that_refills_at_its_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take(["a"]) for _ in range(4)] == [True, True, True, False]
    assert buckets.take(["b"])  # another client's allowance is its own
    now[0] = 0.5  # one token back
    assert [buckets.take(["a"]), buckets.take(["a"])] == [True, False]
    assert all(TokenBuckets(rate=0, burst=1).take(["a"]) for _ in range(3))


def test_a_request_needs_a_token_of_its_address_and_of_its_key():
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, clock=lambda: now[0])
    assert buckets.take(["ip:1", "key:a"]) and buckets.take(["ip:1", "key:b"])
    assert not buckets.take(["ip:1", "key:c"])  # a made-up key brings no fresh allowance
    assert buckets.take(["ip:2", "key:a"])  # key a's second token, from another address
    assert not buckets.take(["ip:3", "key:a"])  # and no third, from any address
    assert buckets.buckets["key:b"][0] == 1.0  # a refused request takes no token


def test_a_rate_limited_request_gets_429_whatever_authorization_it_makes_up_and_clients_stay_bounded():
    gate = ClientGate(Ingress(), Limits(rate=RateLimits(requests_per_s=1, burst=1)))
    statuses = [
        asyncio.run(request(gate, scope_of("GET", "/v1/jobs", key=f"junk-{n}", length=0), chunks()))[0]
        for n in range(3)
    ]
    assert statuses == [200, 429, 429]
    buckets = TokenBuckets(rate=1.0, burst=1, clock=lambda: 0.0)
    for client in range(MAX_BUCKETS + 10):
        buckets.take([str(client)])
    assert len(buckets.buckets) == MAX_BUCKETS and "0" not in buckets.buckets  # the oldest forgotten


def test_counts_come_back_when_the_request_is_cancelled_mid_body():
    gate = ClientGate(Ingress(), limits(idle_timeout_s=5))

    async def cancelled() -> None:
        task = asyncio.ensure_future(request(gate, scope_of(), chunks(b"{", then_stall=True)))
        await asyncio.sleep(0.05)
        assert gate.buffered == 1 and gate.uploading
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(cancelled())
    assert gate.buffered == 0 and not gate.uploading


def test_a_body_on_a_get_is_refused_and_paths_under_serves_prefix_are_gated_too():
    ingress = Ingress()
    gate = ClientGate(ingress, limits(idle_timeout_s=0.2))
    status, answer = asyncio.run(request(gate, scope_of("GET", "/v1/jobs"), chunks(BODY)))
    assert status == 400 and answer["error"]["code"] == "unexpected_body"
    status, _ = asyncio.run(request(gate, scope_of("POST", "/-/x"), chunks(b"{", then_stall=True)))
    assert status == 408 and not ingress.reached  # read at the proxy like any other body
    status, _ = asyncio.run(request(gate, scope_of("HEAD", "/healthz", length=0), chunks()))
    assert status == 200 and not ingress.reached


@pytest.mark.parametrize("path", ["/-/healthz", "/-/routes"])
def test_serves_own_routes_pass_untouched(path):
    ingress = Ingress()
    asyncio.run(request(ClientGate(ingress, limits()), scope_of("GET", path, length=0), chunks()))
    assert ingress.reached == [(path, b"")]


def test_a_declared_length_past_the_limit_gets_413_before_any_byte_is_read():
    ingress = Ingress()
    gate = ClientGate(ingress, Limits(max_body_bytes=10, rate=RateLimits(requests_per_s=0)))
    status, answer = asyncio.run(asyncio.wait_for(request(gate, scope_of(), chunks(then_stall=True)), 1.0))
    assert status == 413 and answer["error"]["type"] == "invalid_request_error" and not ingress.reached
