"""A small typed client for a running leap_ray service, synchronous and asynchronous. With
`on_progress`, generation goes through the event stream and reports each progress event.

    client = LeapRayClient("http://127.0.0.1:8000")
    images = client.generate_image({"prompt": "a lighthouse", "seed": 1}, on_progress=print)
    job = client.wait_job(client.submit_job("musicgen", {"prompt": "lo-fi", "duration": 30})["id"])
"""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from leap_ray.api.common import EVENT_STREAM
from leap_ray.api.jobs import FINISHED, JobView
from leap_ray.api.musicgen import MusicGenResponse
from leap_ray.api.sdxl import SDXLResponse
from leap_ray.errors import LeapRayError

Progress = Callable[[dict[str, Any]], None]


class ServiceError(LeapRayError):
    """An error answer from the service, with its status and error fields."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        error = body.get("error") or {}
        super().__init__(
            error.get("message", f"HTTP {status_code}"), param=error.get("param"), code=error.get("code")
        )
        self.status_code = status_code
        self.error_type = error.get("type", "error")


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    raise ServiceError(response.status_code, body)


class _EventParser:
    """Server-Sent Events, line by line: gives (event, data) when an event is complete."""

    def __init__(self) -> None:
        self.name: str | None = None

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        if line.startswith("event: "):
            self.name = line.removeprefix("event: ")
        elif line.startswith("data: ") and self.name:
            return self.name, json.loads(line.removeprefix("data: "))
        return None


def _outcome(name: str, data: dict[str, Any], on_progress: Progress) -> dict[str, Any] | None:
    """The result when the event carries it; reports progress; raises on an error event."""
    if name == "progress":
        on_progress(data)
    elif name == "error":
        raise ServiceError(500, data)
    elif name == "result":
        return data
    return None


def _body(request: Any) -> dict[str, Any]:
    return request if isinstance(request, dict) else request.model_dump(mode="json", exclude_none=True)


class LeapRayClient:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 900
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _generate(self, path: str, request: Any, on_progress: Progress | None) -> dict[str, Any]:
        if on_progress is None:
            return _checked(self.http.post(path, json=_body(request))).json()
        with self.http.stream(
            "POST", path, json=_body(request), headers={"Accept": EVENT_STREAM}
        ) as response:
            if not response.is_success:
                response.read()
                _checked(response)
            parser = _EventParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                result = event and _outcome(*event, on_progress)
                if result is not None:
                    return result
        raise ServiceError(502, {"error": {"message": "the event stream ended without a result"}})

    def generate_image(self, request: Any, on_progress: Progress | None = None) -> SDXLResponse:
        return SDXLResponse.model_validate(self._generate("/v1/sdxl", request, on_progress))

    def generate_music(self, request: Any, on_progress: Progress | None = None) -> MusicGenResponse:
        return MusicGenResponse.model_validate(self._generate("/v1/musicgen", request, on_progress))

    def submit_job(self, service: str, job_input: Any, **options: Any) -> JobView:
        body = {"service": service, "input": _body(job_input), **options}
        return JobView.model_validate(_checked(self.http.post("/v1/jobs", json=body)).json())

    def get_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(self.http.get(f"/v1/jobs/{job_id}")).json())

    def cancel_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(self.http.delete(f"/v1/jobs/{job_id}")).json())

    def wait_job(self, job_id: str, poll_s: float = 0.5, timeout_s: float = 3600) -> JobView:
        deadline = time.monotonic() + timeout_s
        while (job := self.get_job(job_id)).status not in FINISHED and time.monotonic() < deadline:
            time.sleep(poll_s)
        return job

    def job_output(self, job: JobView, index: int = 0) -> bytes:
        # Output URLs are absolute paths on the service's host (they include any route prefix).
        return _checked(self.http.get(self.http.base_url.copy_with(path=job.outputs[index]))).content


class AsyncLeapRayClient:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 900
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def _generate(self, path: str, request: Any, on_progress: Progress | None) -> dict[str, Any]:
        if on_progress is None:
            return _checked(await self.http.post(path, json=_body(request))).json()
        async with self.http.stream(
            "POST", path, json=_body(request), headers={"Accept": EVENT_STREAM}
        ) as response:
            if not response.is_success:
                await response.aread()
                _checked(response)
            parser = _EventParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                result = event and _outcome(*event, on_progress)
                if result is not None:
                    return result
        raise ServiceError(502, {"error": {"message": "the event stream ended without a result"}})

    async def generate_image(self, request: Any, on_progress: Progress | None = None) -> SDXLResponse:
        return SDXLResponse.model_validate(await self._generate("/v1/sdxl", request, on_progress))

    async def generate_music(self, request: Any, on_progress: Progress | None = None) -> MusicGenResponse:
        return MusicGenResponse.model_validate(await self._generate("/v1/musicgen", request, on_progress))

    async def aclose(self) -> None:
        await self.http.aclose()
