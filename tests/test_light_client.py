"""The light client: importable without torch, Ray or diffusers; its sync and async halves have the
same methods; a 503 is retried after its Retry-After; an error answer that is not JSON (a proxy's
page) is one line naming its status and URL."""

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from leap_ray.client import AsyncLeapRayClient, LeapRayClient, NotTheServiceError

JOB = {
    "id": "j1",
    "service": "sdxl",
    "status": "succeeded",
    "cancel_requested": False,
    "created_at": 1.0,
    "started_at": 2.0,
    "finished_at": 3.0,
    "progress": None,
    "error": None,
    "outputs": [],
    "url": "/v1/jobs/j1",
}


def test_importing_the_client_imports_neither_torch_ray_nor_diffusers():
    code = "import sys, leap_ray.client; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.replace("'", '"')
    )
    assert not {"torch", "ray", "diffusers", "transformers", "numpy"} & set(loaded)


def test_the_sync_and_async_clients_have_the_same_methods():
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")} - {"close", "aclose"}

    assert public(LeapRayClient) == public(AsyncLeapRayClient)


class Busy:
    """A server answering 503 with Retry-After: 1 to the first request, then the job."""

    def __init__(self) -> None:
        self.times: list[float] = []
        busy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                busy.times.append(time.monotonic())
                first = len(busy.times) == 1
                body = json.dumps({"error": {"message": "busy"}} if first else JOB).encode()
                self.send_response(503 if first else 200)
                if first:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_a_503_is_retried_after_its_retry_after_by_both_clients():
    busy = Busy()
    with LeapRayClient(busy.url) as client:
        assert client.get_job("j1").status == "succeeded"
    assert busy.times[1] - busy.times[0] >= 0.9

    async def fetch() -> str:
        async with AsyncLeapRayClient(busy.url) as client:
            return (await client.get_job("j1")).status

    busy.times.clear()
    assert asyncio.run(fetch()) == "succeeded"
    assert busy.times[1] - busy.times[0] >= 0.9
    busy.server.shutdown()


@pytest.mark.parametrize(
    ("status", "content_type", "text", "message"),
    [
        (
            502,
            "text/html; charset=utf-8",
            "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>",
            "HTTP 502 Bad Gateway from http://host/v1/sdxl (an HTML page, not the service's error)",
        ),
        (
            400,
            "text/plain",
            "Invalid HTTP request\nreceived.",
            "HTTP 400 Bad Request from http://host/v1/sdxl: Invalid HTTP request received.",
        ),
        (504, "", "", "HTTP 504 Gateway Timeout from http://host/v1/sdxl"),
    ],
    ids=["html-page", "plain-text", "empty"],
)
def test_an_error_answer_that_is_not_json_is_one_line_naming_status_and_url(
    status, content_type, text, message
):
    request = httpx.Request("POST", "http://host/v1/sdxl")
    response = httpx.Response(status, headers={"content-type": content_type}, text=text, request=request)
    error = NotTheServiceError(response)
    assert (error.message, error.status_code, error.param) == (message, status, None)
