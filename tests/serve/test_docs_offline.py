"""/docs and /redoc render in a real headless browser (Debian's chromium) that may reach nothing but
the service: their scripts and styles come from the package, not a CDN."""

import functools
import os
import shutil
import subprocess
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it when run as root")
        pytest.skip("chromium is not installed (`make test` installs it when run as root)")
    return binary


def rendered(chromium: str, url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, every host but the service's unresolvable."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_swagger_ui_renders_every_operation_offline(graph, chromium, tmp_path):
    dom = rendered(chromium, f"{graph.url}/docs", tmp_path)
    operations = [
        operation["summary"]
        for path in httpx.get(f"{graph.url}/openapi.json").json()["paths"].values()
        for operation in path.values()
    ]
    assert "swagger-ui" in dom and len(operations) > 8
    missing = [summary for summary in operations if summary not in dom]
    assert missing == []


def test_redoc_renders_offline(graph, chromium, tmp_path):
    dom = rendered(chromium, f"{graph.url}/redoc", tmp_path)
    assert "Generate images with Stable Diffusion XL" in dom and "redoc" in dom.lower()


def test_every_example_in_the_spec_is_a_request_the_service_accepts(graph):
    spec = httpx.get(f"{graph.url}/openapi.json").json()
    concrete = {"{owner}": "leap-ray", "{name}": "sdxl", "{prediction_id}": f"example-{time.time_ns()}"}
    posted = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            reference = body.get("schema", {}).get("$ref")
            if reference is None:
                continue
            schema = spec["components"]["schemas"][reference.rsplit("/", 1)[1]]
            for example in schema.get("examples", []):
                url = graph.url + functools.reduce(lambda p, kv: p.replace(*kv), concrete.items(), path)
                response = httpx.request(method, url, json=example, timeout=300)
                assert response.status_code in (200, 201, 202), (path, response.text[:300])
                posted.append(path)
    assert len(posted) >= 8  # both models, jobs, OpenAI, and the four prediction routes
