"""Operator limits (set through the replicas' environment) bound requests, show in /openapi.json,
and cap the body size; schemathesis then fuzzes that application from its own schema."""

import socket

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from leap_ray.config import LIMITS as NODES_LIMITS

MAX_BODY = 65_536
LIMITS_ENV = {
    "LEAP_RAY_MAX_BODY_BYTES": str(MAX_BODY),
    "LEAP_RAY_SDXL__MAX_SIZE": "128",
    "LEAP_RAY_SDXL__MAX_STEPS": "3",
    "LEAP_RAY_SDXL__MAX_IMAGES_PER_PROMPT": "2",
    "LEAP_RAY_SDXL__MAX_PROMPTS": "2",
    "LEAP_RAY_SDXL__MAX_PIXELS": str(128 * 128 * 2),
    "LEAP_RAY_SDXL__MAX_PROMPT_CHARS": "200",
    "LEAP_RAY_MUSICGEN__MAX_DURATION_S": "1",
    "LEAP_RAY_MUSICGEN__MAX_MELODY_BYTES": "20000",
}


@pytest.fixture(scope="module")
def limited(variants) -> str:
    variants.deploy_with(variants.variant("limited", env=LIMITS_ENV))
    return f"{variants.url}/limited"


def test_openapi_bounds_are_the_operators_limits(limited):
    properties = httpx.get(f"{limited}/openapi.json").json()["components"]["schemas"]
    sdxl, musicgen = properties["SDXLRequest"]["properties"], properties["MusicGenRequest"]["properties"]
    assert sdxl["width"]["maximum"] == sdxl["height"]["maximum"] == 128
    assert sdxl["num_inference_steps"]["maximum"] == 3
    assert sdxl["num_images_per_prompt"]["maximum"] == 2
    assert musicgen["duration"]["maximum"] == 1


def test_defaults_follow_lower_limits(limited):
    response = httpx.post(
        f"{limited}/v1/sdxl", json={"prompt": "a"}, timeout=60, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200
    assert response.content[16:24] == (128).to_bytes(4, "big") * 2  # PNG header: width, height
    music = httpx.post(f"{limited}/v1/musicgen", json={"prompt": "a"}, timeout=60).json()
    assert music["duration"] == 1.0


def test_requests_past_the_limits_are_422(limited):
    response = httpx.post(f"{limited}/v1/sdxl", json={"prompt": "a", "width": 136})
    assert (response.status_code, response.json()["error"]["param"]) == (422, "width")
    response = httpx.post(f"{limited}/v1/musicgen", json={"prompt": "a", "duration": 1.5})
    assert (response.status_code, response.json()["error"]["param"]) == (422, "duration")


def test_a_body_over_the_limit_is_413(limited):
    response = httpx.post(f"{limited}/v1/sdxl", json={"prompt": "x" * (MAX_BODY + 1)})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_chunked_body_is_refused_at_the_proxys_limit_before_it_ends(graph, limited):
    """The body never ends (no final chunk); the 413 must come anyway. The proxy reads bodies before
    the application does: its limit is the nodes' (this process's environment), the application's
    (lower) one applies once the body is whole (test_a_body_over_the_limit_is_413)."""
    with socket.create_connection(("127.0.0.1", graph.port), timeout=30) as sock:
        sock.sendall(
            b"POST /limited/v1/sdxl HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65_536
        for _ in range(NODES_LIMITS.max_body_bytes // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status_line = sock.recv(4096).split(b"\r\n")[0]
    assert b" 413 " in status_line


@pytest.mark.parametrize("path", ["/v1/sdxl", "/v1/musicgen", "/healthz", "/readyz"])
def test_fuzzing_finds_no_server_error_and_no_response_outside_the_schema(limited, path):
    schema = schemathesis.openapi.from_url(f"{limited}/openapi.json")
    (operation,) = [result.ok() for result in schema.get_all_operations() if result.ok().path == path]
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=limited, timeout=120, checks=checks)

    call()
