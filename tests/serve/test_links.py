"""The links in answers (jobs, Replicate and cog predictions, OpenAI `url` images) start with the
operator's `public_url`, else the address the connection reached, and never with the request's Host
header (found by hostile testing: `Host: evil.example` gave `http://evil.example/...` links)."""

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from leap_ray.config import IngressSettings
from leap_ray.serve.jobs.service import link_base
from tests.helpers import APP_URL, InProcessApp, in_process_app

IMAGE = {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 5}
FORGED = {"Host": "evil.example"}
PUBLIC_URL = "https://images.example.com/leap"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://images.example.com/", "https://images.example.com"),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("https://example.com/leap/", "https://example.com/leap"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
    ids=["trailing-slash-dropped", "address-and-port", "with-a-path", "ipv6"],
)
def test_a_public_url_is_kept_without_its_trailing_slash(url, kept):
    assert IngressSettings(public_url=url).public_url == kept


@pytest.mark.parametrize(
    "url",
    [
        "/v1",
        "images.example.com",
        "ftp://images.example.com",
        "https://",
        "https://user:secret@images.example.com",
        "https://images.example.com/?a=1",
        "https://images.example.com?",
        "https://images.example.com/#top",
        "https://images.example.com:99999",
        "https://images.example.com:port",
        "https://images example.com",
        "https://images.example.com\n",
    ],
    ids=[
        "relative",
        "no-scheme",
        "not-http",
        "no-host",
        "user-info",
        "query",
        "empty-query",
        "fragment",
        "port-out-of-range",
        "port-not-a-number",
        "space",
        "control-character",
    ],
)
def test_a_public_url_that_links_cannot_start_with_is_refused(url):
    with pytest.raises(ValidationError) as refused:
        IngressSettings(public_url=url)
    assert refused.value.errors()[0]["loc"] == ("public_url",)


@pytest.mark.parametrize(
    ("scope", "public_url", "base"),
    [
        ({"scheme": "http", "server": ("10.0.0.5", 8000)}, None, "http://10.0.0.5:8000"),
        ({"scheme": "https", "server": ("10.0.0.5", 443)}, None, "https://10.0.0.5"),
        ({"scheme": "http", "server": ("10.0.0.5", None)}, None, "http://10.0.0.5"),
        ({"scheme": "http", "server": ("::1", 8000), "root_path": "/app"}, None, "http://[::1]:8000/app"),
        ({"scheme": "http", "server": None, "root_path": "/app"}, None, "/app"),
        (
            {"scheme": "http", "server": ("10.0.0.5", 8000), "root_path": "/app"},
            PUBLIC_URL,
            PUBLIC_URL + "/app",
        ),
    ],
    ids=[
        "address",
        "default-port-left-out",
        "no-port",
        "ipv6-with-route-prefix",
        "unix-socket",
        "public-url",
    ],
)
def test_links_start_with_the_public_url_else_the_address_the_connection_reached(scope, public_url, base):
    headers = [(b"host", b"evil.example")]
    assert link_base({"type": "http", "headers": headers, **scope}, public_url) == base


def links(answer: httpx.Response) -> list[str]:
    """Every link in a job's, a prediction's or an OpenAI answer's JSON."""
    body = answer.json()
    assert answer.status_code < 300, answer.text
    found = []
    for item in body if isinstance(body, list) else [body]:
        found += [item.get("url"), *(item.get("outputs") or []), *(item.get("urls") or {}).values()]
        found += [*(item.get("output") or []), *(image.get("url") for image in item.get("data", []))]
    return [link for link in found if link]


def answers_with_links(app: InProcessApp) -> Iterator[httpx.Response]:
    """Every entry point whose answer carries links, called with a forged Host header."""
    http = app.http
    job = http.post("/v1/jobs", json={"service": "sdxl", "input": IMAGE}, headers=FORGED)
    yield job
    yield http.get(f"/v1/jobs/{job.json()['id']}", headers=FORGED)
    yield http.get("/v1/jobs", headers=FORGED)
    yield http.delete(f"/v1/jobs/{job.json()['id']}", headers=FORGED)
    yield http.post("/predictions", json={"input": IMAGE}, headers=FORGED)
    yield http.put("/predictions/linked", json={"input": IMAGE}, headers=FORGED)
    yield http.get("/v1/predictions/linked", headers=FORGED)
    yield http.post("/v1/predictions/linked/cancel", headers=FORGED)
    yield http.post("/v1/models/leap-ray/sdxl/predictions", json={"input": IMAGE}, headers=FORGED)
    body = {"prompt": "a red fox", "size": "64x64", "response_format": "url", "num_inference_steps": 2}
    yield http.post("/v1/images/generations", json=body, headers=FORGED)


@pytest.mark.parametrize(
    ("settings", "start"),
    [({}, f"{APP_URL}/v1/"), ({"public_url": PUBLIC_URL + "/"}, f"{PUBLIC_URL}/v1/")],
    ids=["the-connections-address", "the-public-url"],
)
def test_a_forged_host_never_reaches_a_link(tmp_path, settings, start):
    with in_process_app(tmp_path, **settings) as app:
        answers = list(answers_with_links(app))
    for answer in answers:
        found = links(answer)
        assert found and all(link.startswith(start) for link in found), (answer.request.url, found)
    assert not any("evil.example" in answer.text for answer in answers)


def test_on_the_real_graph_links_name_the_address_the_client_reached(client, graph):
    # Through Serve's proxy, whose ASGI scope carries the connection's address (`server`).
    job = client.post("/v1/jobs", json={"service": "sdxl", "input": IMAGE}, headers=FORGED)
    assert job.status_code == 202 and job.json()["url"].startswith(f"{graph.url}/v1/jobs/")
