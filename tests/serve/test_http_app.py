"""The ingress's HTTP app in-process (no Ray): error shape on every path, body parsing off the loop,
body timeouts, open docs with keys on. The model side is a stub gateway: these tests are about HTTP."""

import asyncio
import json
import time

import httpx
import pytest

from leap_ray.config import UploadLimits
from tests.helpers import APP_URL, assert_error, call, make_app


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)[0]


def post_raw(app, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return call(app, "POST", "/v1/sdxl", content=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/no/such/path", 404), ("DELETE", "/v1/sdxl", 405), ("GET", "/v1/musicgen", 405)],
    ids=["404", "405-delete", "405-get"],
)
def test_routing_errors_use_the_error_shape(app, method, path, status):
    assert_error(call(app, method, path), status)


BAD_BODIES = [
    ("nested-100k-deep", b"[" * 100_000 + b"]" * 100_000, 400, "json_too_deep"),
    ("invalid-utf8", b'{"prompt": "\xff\xfe"}', 400, "invalid_utf8"),
    ("integer-of-5000-digits", b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", 400, "json_invalid"),
    ("truncated", b'{"prompt": "a",', 400, "json_invalid"),
    (
        "million-unknown-keys",
        json.dumps({f"k{i}": 1 for i in range(1_000_000)}).encode(),
        413,
        "too_many_items",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_malformed_bodies_are_4xx_in_the_error_shape(app, body, status, code):
    assert assert_error(post_raw(app, body), status)["code"] == code


def test_an_unknown_key_is_refused_before_validation_naming_it(app):
    body = {"prompt": "a", **{f"extra{i}": 1 for i in range(20_000)}}
    error = assert_error(post_raw(app, json.dumps(body).encode()), 422, "extra0")
    assert error["code"] == "extra_forbidden"


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "iso-8859-1"])
def test_json_in_another_charset_is_415(app, charset):
    response = post_raw(app, b'{"prompt": "a"}', f"application/json; charset={charset}")
    assert assert_error(response, 415, "charset")["code"] == "charset"


def test_utf8_charset_is_fine(app):
    response = post_raw(app, b'{"prompt": "a", "seed": 3}', "application/json; charset=UTF-8")
    assert response.status_code == 200, response.text


def test_bodies_are_parsed_and_validated_off_the_event_loop(tmp_path, monkeypatch):
    """Validation that blocks (a melody to decode, a huge body) must not hold up other clients:
    with every validation taking a blocking second, /healthz still answers at once."""
    from leap_ray.serve import bodies

    real = bodies.validated

    def slow_validated(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(bodies, "validated", slow_validated)
    app, gateway = make_app(tmp_path)

    async def go() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as client:
            posts = [asyncio.create_task(client.post("/v1/sdxl", json={"prompt": "a"})) for _ in range(4)]
            await asyncio.sleep(0.1)
            started = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            waited = time.perf_counter() - started
            assert [response.status_code for response in await asyncio.gather(*posts)] == [200] * 4
            return waited

    assert asyncio.run(go()) < 0.5
    assert len(gateway.generated) == 4


def test_open_paths_stay_open_with_keys_on_and_the_spec_declares_bearer(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sekret-key\n")
    app, _ = make_app(tmp_path, api_keys_file=str(keys))
    for path in ("/docs", "/openapi.json", "/healthz"):
        assert call(app, "GET", path).status_code == 200, path
    assert_error(call(app, "POST", "/v1/sdxl", json={"prompt": "a"}), 401)
    spec = call(app, "GET", "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    body = spec["paths"]["/v1/sdxl"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SDXLRequest"}
    assert spec["components"]["schemas"]["SDXLRequest"]["properties"]["num_inference_steps"]["maximum"] == 150


class SlowBody:
    """An ASGI receive() that sends a body a byte at a time, `gap_s` apart."""

    def __init__(self, body: bytes, gap_s: float) -> None:
        self.chunks = [body[i : i + 1] for i in range(len(body))]
        self.gap_s = gap_s

    async def __call__(self) -> dict:
        if not self.chunks:
            await asyncio.sleep(3600)  # the client has nothing more to say
        await asyncio.sleep(self.gap_s)
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def run_slow(app, body: bytes, gap_s: float) -> tuple[int, dict, float]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/sdxl",
        "raw_path": b"/v1/sdxl",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
    }
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def go() -> float:
        started = time.monotonic()
        await app(scope, SlowBody(body, gap_s), send)
        return time.monotonic() - started

    elapsed = asyncio.run(go())
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:])), elapsed


def test_a_body_that_stops_arriving_gets_408(tmp_path):
    app, _ = make_app(tmp_path, uploads=UploadLimits(idle_timeout_s=0.3))
    status, body, elapsed = run_slow(app, b'{"prompt": "a"}', gap_s=1.0)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    assert elapsed < 1.0


def test_a_slow_loris_body_gets_408_though_no_gap_exceeds_the_idle_timeout(tmp_path):
    # A byte every 0.1 s never trips a 0.5 s idle timeout, but falls behind 100 bytes a second.
    app, gateway = make_app(tmp_path, uploads=UploadLimits(idle_timeout_s=0.5, min_rate_bytes_s=100))
    status, _, elapsed = run_slow(app, b'{"prompt": "' + b"a" * 200 + b'"}', gap_s=0.1)
    assert status == 408 and elapsed < 5 and not gateway.generated


def test_a_slow_but_steady_body_is_accepted(tmp_path):
    app, gateway = make_app(tmp_path, uploads=UploadLimits(idle_timeout_s=0.5, min_rate_bytes_s=1000))
    status, _, _ = run_slow(app, b'{"prompt": "a", "seed": 9}', gap_s=0.01)
    assert status == 200 and gateway.generated[0].seed == 9


def test_a_steady_body_past_the_total_body_timeout_gets_408(tmp_path):
    # Fast enough for the rate rule (1 byte per 10 ms against 1 byte a second), too long in all.
    app, gateway = make_app(
        tmp_path, uploads=UploadLimits(idle_timeout_s=5, min_rate_bytes_s=1, timeout_s=0.5)
    )
    status, _, elapsed = run_slow(app, b'{"prompt": "' + b"a" * 200 + b'"}', gap_s=0.01)
    assert status == 408 and elapsed < 1.5 and not gateway.generated


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/sdxl", b'{"\\udfff": 1, "prompt": "x"}', "\\udfff"),
        ("/v1/jobs", b'{"service": "musicgen", "input": {"prompt": "x", "\\ud800": 1}}', "input.\\ud800"),
    ],
    ids=["top-level", "job-input"],
)
def test_an_unknown_key_with_a_lone_surrogate_is_a_422_with_the_key_escaped(app, path, body, param):
    response = call(app, "POST", path, content=body, headers={"Content-Type": "application/json"})
    assert assert_error(response, 422, param)["code"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "application/json"),
        ("image/png", "image/png"),
        ("image/png;q=0", "application/json"),
        ("application/json;q=0, image/png", "image/png"),
        ("application/json, image/png", "application/json"),
        ("image/png;q=0.5, application/json;q=0.9", "application/json"),
        ("image/webp;q=0.2, image/png;q=0.8", "image/png"),
        ("*/*", "application/json"),
        ("image/gif, image/png", "image/png"),
        ("image/png;q=abc, image/jpeg", "image/jpeg"),
        ("image/*", "image/png"),
        ("image/*;q=0.5, application/json;q=0.9", "application/json"),
        ("audio/*, image/webp;q=0.1", "image/webp"),
        ("text/event-stream", "text/event-stream; charset=utf-8"),
    ],
)
def test_accept_is_negotiated_with_q_values(app, accept, content_type):
    headers = {"Accept": accept} if accept else {}
    response = call(app, "POST", "/v1/sdxl", json={"prompt": "a", "seed": 1}, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == content_type


@pytest.mark.parametrize("accept", ["image/gif", "audio/*", "text/html, application/xml;q=0.9"])
def test_an_accept_naming_no_type_offered_gets_406_naming_accept(app, accept):
    response = call(app, "POST", "/v1/sdxl", json={"prompt": "a", "seed": 1}, headers={"Accept": accept})
    assert response.status_code == 406
    assert (
        response.json()["error"]["param"] == "accept" and "image/png" in response.json()["error"]["message"]
    )


def test_the_spec_describes_every_operation_parameter_and_field(app):
    spec = app.openapi()
    operations = [operation for path in spec["paths"].values() for operation in path.values()]
    assert all(operation.get("tags") and operation.get("summary") for operation in operations)
    ids = [operation["operationId"] for operation in operations]
    assert len(set(ids)) == len(ids) and not [
        i for i in ids if i.endswith(("_get", "_post", "_put", "_delete"))
    ]
    undescribed = [
        parameter["name"]
        for operation in operations
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    fields = [
        f"{name}.{field}"
        for name, schema in spec["components"]["schemas"].items()
        for field, value in schema.get("properties", {}).items()
        if not value.get("description")
    ]
    assert undescribed == [] and fields == []
    job_input = spec["components"]["schemas"]["JobSubmission"]["properties"]["input"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in job_input["anyOf"]} == {"SDXLRequest", "MusicGenRequest"}


def test_a_put_body_is_guarded_as_a_post_body_is(app):
    wrong_type = call(app, "PUT", "/predictions/p1", content=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    declared = {"Content-Type": "application/json", "Content-Length": str(10**10)}
    too_large = call(app, "PUT", "/predictions/p1", content=b"{}", headers=declared)
    assert too_large.status_code == 413
