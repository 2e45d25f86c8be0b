"""The middleware Serve's HTTP proxy runs (leap_ray.serve.proxy), in-process: the proxy's own
plain-text answers become our error shape; everything else passes untouched."""

import asyncio
import json

import pytest

from leap_ray.serve.proxy import ProxyErrorShape


def answer_with(status: int, content_type: bytes, body: bytes = b"text") -> object:
    async def app(scope, receive, send) -> None:
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


def run(app) -> tuple[int, dict, bytes]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    asyncio.run(ProxyErrorShape(app)({"type": "http", "method": "GET", "path": "/"}, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    ("status", "shaped", "error_type", "code"),
    [
        (500, 503, "model_unavailable_error", "ingress_failed"),
        (503, 503, "overloaded_error", "queue_full"),
        (404, 404, "not_found_error", "no_route"),
        (408, 408, "invalid_request_error", "timeout"),
    ],
)
def test_the_proxys_plain_text_answers_get_our_shape(status, shaped, error_type, code):
    got, headers, body = run(answer_with(status, b"text/plain"))
    error = json.loads(body)["error"]
    assert (got, error["type"], error["code"]) == (shaped, error_type, code)
    assert (headers.get(b"retry-after") == b"1") == (shaped == 503)


def test_an_ingress_that_died_before_answering_is_a_503():
    async def dies(scope, receive, send) -> None:
        raise RuntimeError("the replica's actor died")

    status, headers, body = run(dies)
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert json.loads(body)["error"]["code"] == "ingress_failed"


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (200, b"image/png"),
        (422, b"application/json"),
        (401, b"text/plain"),
        (413, b"text/plain"),
        (499, b"text/plain"),
    ],
)
def test_other_answers_pass_untouched(status, content_type):
    assert run(answer_with(status, content_type, b"as sent")) == (
        status,
        {b"content-type": content_type},
        b"as sent",
    )
